"""The producer's main loop: poll on a fixed-rate clock, publish, survive every fault."""

from __future__ import annotations

import logging
import random
import signal
import sys
import threading
import time
from collections.abc import Sequence

from kafka.errors import KafkaConfigurationError

from pricefeed.binance import (
    ALL_SYMBOLS,
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
from pricefeed.shared.backoff import Backoff
from pricefeed.sink import KafkaSink
from pricefeed.sources import BinanceSource, SimulatedSource
from pricefeed.timing import FixedRateSchedule

log = logging.getLogger("producer")

EXIT_UNDELIVERED = 1  # stopped with events Kafka never acknowledged: a supervisor should know
ECHO_MAX_SYMBOLS = 20  # beyond this, one `Produced:` line per tick instead of one per price


def echoes_each_price(settings: Settings) -> bool:
    return settings.symbols != ALL_SYMBOLS and len(settings.symbols) <= ECHO_MAX_SYMBOLS


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
    summarise = not echoes_each_price(settings)
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
        except BinanceError as exc:
            _, due = schedule.next_tick(clock() + retry_delay(exc, backoff))
            report_failure(exc, next_poll_in=due - clock())


TEND_EVERY_SECONDS = 1.0


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


def retry_delay(exc: BinanceError, backoff: Backoff) -> float:
    """The least wait before polling again (0: the next tick). The poll itself comes at the
    first tick of the grid after it."""
    if isinstance(exc, RateLimited):
        return backoff.next_delay() if exc.retry_after is None else exc.retry_after
    if isinstance(exc, InvalidResponse):
        return 0.0
    return backoff.next_delay()


def report_failure(exc: BinanceError, next_poll_in: float) -> None:
    """Say what went wrong, and when the next poll really comes."""
    then = f"next poll in {next_poll_in:.1f} s"
    Then = then[0].upper() + then[1:]  # the same words, starting a sentence
    if isinstance(exc, RateLimited):
        if exc.retry_after is None:
            log.warning("Binance rate limit: %s, no Retry-After; %s", exc, then)
        else:
            what = "IP banned" if exc.status == 418 else "rate limit"
            log.warning("Binance %s: %s; Retry-After %g s, %s", what, exc, exc.retry_after, then)
    elif isinstance(exc, InvalidResponse):
        log.warning("Skipped poll: Binance sent an invalid body (%s); %s", exc, then)
    elif isinstance(exc, Restricted):
        log.error("Binance refuses this location (%s). To fix: %s. %s", exc, RESTRICTED_FIX, Then)
    elif isinstance(exc, Rejected):
        log.error("Binance rejected the request: %s; check SYMBOLS. %s", exc, Then)
    else:
        log.warning("Binance unavailable: %s; %s", exc, then)


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
            replay = open_replay(settings.replay_files, settings.replay_symbol)
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
        echo=echoes_each_price(settings),
        delivery_timeout_ms=settings.delivery_timeout_ms,
    )
    try:
        if not sink.connect():
            return 0  # stopped before Kafka was reachable: nothing to flush
    except KafkaConfigurationError as exc:
        print(f"producer.py: error: Kafka refuses the client settings: {exc}", file=sys.stderr)
        return 2
    lost = 0
    try:
        if replay is not None:
            run_replay(replay, settings, sink, stop)
        else:
            source = build_source(settings)
            log.info(
                "Polling %s every %g s for %s (run %s: each symbol's events numbered from 1)",
                settings.source,
                settings.poll_interval,
                "every pair Binance lists"
                if settings.symbols == ALL_SYMBOLS
                else ", ".join(settings.symbols),
                source.sequencer.run_id,
            )
            run_polling(source, sink, settings, stop)
    except ReplayFileError as exc:
        log.error("Replay stopped: %s", exc)
        return 2
    finally:
        lost = sink.close()
        log.info("Producer stopped: %d messages delivered", sink.delivered)
    return EXIT_UNDELIVERED if lost else 0
