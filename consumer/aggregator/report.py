"""What the consumer prints: `Consumed:`, `Flushed:` and `Metrics:` lines, as the original did,
summarised when there are too many to read."""

from __future__ import annotations

import logging
import time
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal

from aggregator.batch import Consumed, PendingFlush
from aggregator.store import FlushContext
from aggregator.windows import WindowStats

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
    """One line per message at live rates; a summary every few seconds during a backlog."""

    def __init__(self) -> None:
        self._batch: list[Consumed] = []
        self._summary: Counter[str] = Counter()
        self._summary_since = time.monotonic()

    def add(self, consumed: Consumed) -> None:
        self._batch.append(consumed)

    def emit(self) -> None:
        batch, self._batch = self._batch, []
        if len(batch) <= PER_MESSAGE_LIMIT and not self._summary:
            for c in batch:
                late = " (late)" if c.late else ""
                log.info("Consumed: %s = $%s%s", c.event.symbol, money(c.event.price), late)
            return
        self._summary.update(c.event.symbol for c in batch)
        if time.monotonic() - self._summary_since >= SUMMARY_EVERY_SECONDS:
            self.emit_summary()

    def emit_summary(self) -> None:
        if self._summary:
            total = sum(self._summary.values())
            top = ", ".join(f"{s} {n}" for s, n in self._summary.most_common(5))
            log.info("Consumed: %d events (%s)", total, top)
        self._summary.clear()
        self._summary_since = time.monotonic()


def _window_line(symbol: str, start_ms: int, stats: WindowStats) -> str:
    start = datetime.fromtimestamp(start_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")
    avg = (stats.price_sum / stats.count).quantize(Decimal("0.01"))
    return (
        f"Flushed: {start} {symbol} | {stats.count} events | avg {money(avg)}"
        f" | min {money(stats.min)} | max {money(stats.max)}"
    )


def report_flush(pending: PendingFlush, ctx: FlushContext, duration_ms: float) -> None:
    deltas = pending.windows.deltas
    if len(deltas) <= PER_WINDOW_LIMIT:
        for (symbol, start), stats in sorted(deltas.items()):
            log.info(_window_line(symbol, start, stats))
    else:
        symbols = len({symbol for symbol, _ in deltas})
        log.info("Flushed: %d windows of %d symbols", len(deltas), symbols)
    m = pending.metrics
    lag = "-" if m.lag_avg_seconds is None else f"{m.lag_avg_seconds:.1f}s"
    extra = ""
    if m.replayed_events:
        extra += f" | {m.replayed_events} replayed"
    if m.late_events:
        extra += f" | {m.late_events} late"
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
