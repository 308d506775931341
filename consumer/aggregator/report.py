"""What the consumer prints: a `Consumed:` line per message, a `Flushed:` line per window and
a `Metrics:` line per flush, summarised when there are too many to read."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

from aggregator.core.accumulator import PendingFlush
from aggregator.core.windows import WindowStats
from btcpipe.contract import DecodedEvent
from btcpipe.contract.rules import SAMPLES

log = logging.getLogger("consumer")

PER_MESSAGE_LIMIT = 10  # more than this in one poll: summarise instead
SUMMARY_EVERY_SECONDS = 5.0
PER_WINDOW_LIMIT = 5  # more windows than this in one flush: one summary line


def money(price: Decimal) -> str:
    """43250.75000000 -> 43250.75; keeps at least two decimals."""
    text = format(price.normalize(), "f")
    whole, _, fraction = text.partition(".")
    return f"{whole}.{fraction.ljust(2, '0')}"


class ConsumedLog:
    """One line per message at live rates; during a backlog, a count every few seconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        """`clock`: monotonic seconds, for the summaries' cadence and rate."""
        self.clock = clock
        self._count = 0
        self._since = clock()

    def wants_each(self, messages_in_poll: int) -> bool:
        return messages_in_poll <= PER_MESSAGE_LIMIT and self._count == 0

    def each(self, consumed: list[tuple[DecodedEvent, bool]]) -> None:
        for event, late in consumed:
            note = " (late)" if late else ""
            log.info("Consumed: %s = $%s%s", event.symbol, money(event.price), note)

    def count(self, messages: int) -> None:
        if not self._count:
            self._since = self.clock()
        self._count += messages
        self.summarise_if_due()

    def summarise_if_due(self) -> None:
        elapsed = self.clock() - self._since
        if self._count and elapsed >= SUMMARY_EVERY_SECONDS:
            log.info(
                "Consumed: %d messages in %.0f s (%.0f/s)",
                self._count,
                elapsed,
                self._count / elapsed,
            )
            self._count = 0


def _window_line(symbol: str, start_ms: int, feed: str, stats: WindowStats) -> str:
    start = datetime.fromtimestamp(start_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")
    avg = (stats.price_sum / stats.count).quantize(Decimal("0.01"))
    kind = "" if feed == SAMPLES else f" {feed}"
    line = (
        f"Flushed: {start} {symbol}{kind} | {stats.count} events | avg {money(avg)}"
        f" | min {money(stats.min)} | max {money(stats.max)}"
    )
    if stats.volume is not None:
        line += f" | volume {stats.volume.normalize():f} | {stats.trade_count} trades"
    return line


def report_flush(pending: PendingFlush, duration_ms: float) -> None:
    deltas = pending.windows.deltas
    if len(deltas) <= PER_WINDOW_LIMIT:
        for (symbol, start, feed), stats in sorted(deltas.items()):
            log.info(_window_line(symbol, start, feed, stats))
    else:
        symbols = len({symbol for symbol, _, _ in deltas})
        log.info("Flushed: %d windows of %d symbols", len(deltas), symbols)
    m = pending.metrics
    lag = "-" if m.lag_avg_seconds is None else f"{m.lag_avg_seconds:.1f}s"
    extra = ""
    if m.replayed_events:
        extra += f" | {m.replayed_events} replayed"
    if m.late_events:
        extra += f" | {m.late_events} late"
    if m.duplicate_events:
        extra += f" | {m.duplicate_events} repeats skipped"
    if m.skipped_offsets:
        extra += f" | {m.skipped_offsets} offsets removed unread"
    if m.invalid_events:
        extra += f" | {m.invalid_events} invalid"
    log.info(
        "Metrics: %d events | lag %s | %.2f KB%s | flush %.0f ms",
        m.events,
        lag,
        m.bytes / 1024,
        extra,
        duration_ms,
    )
