"""The producer's main loop: poll on a fixed-rate clock, publish, survive every fault."""

from __future__ import annotations

import logging
import random
import signal
import sys
import threading
import time
from collections.abc import Sequence

from pricefeed.binance import (
    RESTRICTED_FIX,
    BinanceClient,
    BinanceError,
    InvalidResponse,
    RateLimited,
    Rejected,
    Restricted,
)
from pricefeed.config import ConfigError, Settings, load_settings
from pricefeed.replay import open_replay, run_replay
from pricefeed.replay_files import ReplayFileError
from pricefeed.sink import KafkaSink
from pricefeed.sources import BinanceSource, SimulatedSource
from pricefeed.timing import Backoff, FixedRateSchedule

log = logging.getLogger("producer")


def run_polling(
    source: BinanceSource | SimulatedSource,
    sink: KafkaSink,
    settings: Settings,
    stop: threading.Event,
    clock=time.monotonic,
) -> None:
    """Poll on the fixed grid; on failure retry with backoff, then rejoin the grid."""
    schedule = FixedRateSchedule(clock(), settings.poll_interval, settings.poll_jitter)
    backoff = Backoff(settings.backoff_base, settings.backoff_max)
    _, due = schedule.next_tick(schedule.start)  # tick 0 fires at once, not an interval late
    while not stop.wait(max(0.0, due - clock())):
        try:
            sink.publish(source.poll())
            backoff.reset()
            _, due = schedule.next_tick(clock())
        except BinanceError as exc:
            delay = retry_delay(exc, backoff)
            _, due = schedule.next_tick(clock() + delay)


def retry_delay(exc: BinanceError, backoff: Backoff) -> float:
    """Log what went wrong and how long to wait before polling again (0: the next tick)."""
    if isinstance(exc, RateLimited):
        if exc.retry_after is None:
            delay = backoff.next_delay()
            log.warning("Binance rate limit: %s, no Retry-After; waiting %.1f s", exc, delay)
            return delay
        what = "IP banned" if exc.status == 418 else "rate limit"
        log.warning("Binance %s: %s; waiting %g s as Retry-After asks", what, exc, exc.retry_after)
        return exc.retry_after
    if isinstance(exc, InvalidResponse):
        log.warning("Skipped poll: Binance sent an invalid body (%s)", exc)
        return 0.0
    delay = backoff.next_delay()
    if isinstance(exc, Restricted):
        log.error(
            "Binance refuses this location (%s). To fix: %s. Retrying in %.1f s",
            exc,
            RESTRICTED_FIX,
            delay,
        )
    elif isinstance(exc, Rejected):
        log.error("Binance rejected the request: %s; check SYMBOLS. Retrying in %.1f s", exc, delay)
    else:
        log.warning("Binance unavailable: %s; retrying in %.1f s", exc, delay)
    return delay


def build_source(settings: Settings) -> BinanceSource | SimulatedSource:
    if settings.source == "simulated":
        return SimulatedSource(settings.symbols, settings.seed)
    return BinanceSource(
        BinanceClient(settings.binance_base_url, settings.http_timeout), settings.symbols
    )


def install_signal_handlers(stop: threading.Event) -> None:
    def handle(signum: int, _frame: object) -> None:
        log.info(
            "Received %s: stopping after pending messages are flushed", signal.strsignal(signum)
        )
        stop.set()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(message)s",
        stream=sys.stdout,
    )
    # The client logs every failed reconnect; the producer says what matters in its own words.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        print(f"producer.py: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    replay = None
    if settings.source == "replay":
        try:
            replay = open_replay(settings.replay_files)
        except ReplayFileError as exc:
            print(f"producer.py: error: {exc}", file=sys.stderr)
            return 2
    stop = threading.Event()
    install_signal_handlers(stop)
    sink = KafkaSink(
        settings.bootstrap_servers,
        settings.topic,
        settings.topic_partitions,
        stop,
        Backoff(settings.backoff_base, settings.backoff_max, random.Random()),
        stall_warning=max(5.0, 2 * settings.poll_interval),  # a couple of silent ticks
    )
    if not sink.connect():
        return 0  # stopped before Kafka was reachable: nothing to flush
    try:
        if replay is not None:
            run_replay(replay, settings, sink, stop)
        else:
            source = build_source(settings)
            log.info(
                "Polling %s every %g s for %s (run %s: each symbol's events numbered from 1)",
                settings.source,
                settings.poll_interval,
                ", ".join(settings.symbols),
                source.sequencer.run_id,
            )
            run_polling(source, sink, settings, stop)
    except ReplayFileError as exc:
        log.error("Replay stopped: %s", exc)
        return 2
    finally:
        sink.close()
        log.info("Producer stopped: %d messages delivered", sink.delivered)
    return 0
