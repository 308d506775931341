"""Runs a poll source on the fixed-rate clock: poll, publish, and on a failed poll retry as
the failure says, then rejoin the grid."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from btcpipe.backoff import Backoff
from pricefeed.binance.rest import ALL_SYMBOLS
from pricefeed.sources.base import PollFailed, PollSource
from pricefeed.sources.timing import FixedRateSchedule

if TYPE_CHECKING:
    from pricefeed.settings import Settings
    from pricefeed.kafka_sink.sink import KafkaSink

log = logging.getLogger("producer")

ECHO_MAX_SYMBOLS = 20  # beyond this, one `Produced:` line per tick instead of one per price
TEND_EVERY_SECONDS = 1.0


def echoes_each_price(symbols: tuple[str, ...]) -> bool:
    return symbols != ALL_SYMBOLS and len(symbols) <= ECHO_MAX_SYMBOLS


class FixedRatePoller:
    """A poll source as a Source: its polls on the fixed-rate clock of the settings."""

    def __init__(self, source: PollSource, settings: Settings) -> None:
        self.source = source
        self.settings = settings
        self.echoes_each_event = echoes_each_price(source.symbols)

    def run(self, sink: KafkaSink, stop: threading.Event) -> None:
        symbols, sequencer = self.source.symbols, self.source.sequencer
        log.info(
            "Polling %s every %g s for %s (run %s: each symbol's events numbered from 1)",
            sequencer.source,
            self.settings.poll_interval,
            "every pair Binance lists" if symbols == ALL_SYMBOLS else ", ".join(symbols),
            sequencer.run_id,
        )
        run_polling(self.source, sink, self.settings, stop)


def run_polling(
    source: PollSource,
    sink: KafkaSink,
    settings: Settings,
    stop: threading.Event,
    clock=time.monotonic,
) -> None:
    """Poll on the fixed grid; on failure retry with backoff, then rejoin the grid."""
    schedule = FixedRateSchedule(clock(), settings.poll_interval, settings.poll_jitter)
    backoff = Backoff(settings.backoff_base, settings.backoff_max)
    _, due = schedule.next_tick(schedule.start)  # tick 0 fires at once, not an interval late
    summarise = not echoes_each_price(source.symbols)
    while not wait_tending(sink, due, stop, clock):
        try:
            started = clock()
            events = source.poll()
            sink.publish(events)
            if summarise:  # the tick's duration: request, parsing, hand-over to the client
                took_ms = (clock() - started) * 1000
                log.info("Produced: %d prices in %.0f ms", len(events), took_ms)
            backoff.reset()
            _, due = schedule.next_tick(clock())
        except PollFailed as exc:
            _, due = schedule.next_tick(clock() + retry_delay(exc, backoff))
            report_failure(exc, next_poll_in=due - clock())


def wait_tending(sink: KafkaSink, due: float, stop: threading.Event, clock) -> bool:
    """Wait until `due`, tending the sink every second meanwhile (so that a stalled Kafka
    client is replaced within a second, not a poll interval); True if stopped."""
    while True:
        left = due - clock()
        if stop.wait(max(0.0, min(TEND_EVERY_SECONDS, left))):
            return True
        if left <= TEND_EVERY_SECONDS:
            return False
        sink.tend()


def retry_delay(exc: PollFailed, backoff: Backoff) -> float:
    """The least wait before polling again (0: the next tick). The poll itself comes at the
    first tick of the grid after it."""
    return backoff.next_delay() if exc.retry_after is None else exc.retry_after


def report_failure(exc: PollFailed, next_poll_in: float) -> None:
    """Say what went wrong, and when the next poll really comes."""
    log.log(exc.level, "%s", exc.explain(f"next poll in {next_poll_in:.1f} s"))
