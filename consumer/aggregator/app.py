"""The consumer: settings, the tables prepared, then the loop, restarted with a new Kafka
client after every transient failure; the exit code.

Exactly once: the windows, the metrics, the streams' high-water marks and the next offset of
every partition are written in one PostgreSQL transaction; on start and on every assignment
the consumer resumes from the offsets and marks stored there. A crash at any instant loses the
unflushed interval, which is then read again from the stored offsets: nothing lost, nothing
counted twice. The marks skip what a producer sent twice or a replay re-ran.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
from collections.abc import Sequence

from kafka.errors import (
    KafkaConfigurationError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
)

from aggregator.core.migrations import MigrationError
from aggregator.kafka_reader.spin_guard import KafkaUnresponsive
from aggregator.kafka_reader.undecodable import UndecodableBatch
from aggregator.loop import ConsumerLoop
from aggregator.postgres.errors import (
    NotOwner,
    StoreFailed,
    StoreMisconfigured,
    StoreUnavailable,
)
from aggregator.postgres.store import Store
from aggregator.settings import ConfigError, Settings, load_settings
from btcpipe.backoff import Backoff
from btcpipe.process import configure_logging, describe, stop_on_signals

log = logging.getLogger("consumer")

EXIT_CONFIG = 2  # a setting, or a record batch, that no retry can fix
EXIT_FAILED = 1  # stopped with work not written, or the database refused it


def prepare_tables(store: Store, settings: Settings, stop: threading.Event) -> bool:
    """Apply missing migrations, then claim the tables for our group (or take them over),
    waiting for PostgreSQL with backoff. False if stopped first. Raises MigrationError and
    NotOwner (a person must decide), StoreMisconfigured and StoreFailed."""
    backoff = Backoff()
    while not stop.is_set():
        try:
            for name in store.migrate():
                log.info("Applied migration %s", name)
            if settings.take_over:
                take_over(store, settings.group_id)
            store.claim(settings.group_id)
            return True
        except StoreUnavailable as exc:
            delay = backoff.next_delay()
            log.error("PostgreSQL unavailable (%s); retrying in %.1f s", exc, delay)
            stop.wait(delay)
    return False


def take_over(store: Store, group_id: str) -> None:
    previous, moved = store.take_over(group_id)
    if previous == group_id:
        log.info("Group %s owns the tables already: nothing to take over", group_id)
    elif previous is None:
        log.info("The tables had no owning group: group %s owns them now", group_id)
    else:
        log.warning(
            "Took the tables over from group %s: %d stored partition offsets moved to group "
            "%s; consumers of group %s stop at their next flush",
            previous,
            moved,
            group_id,
            previous,
        )


UNREACHABLE = (KafkaConnectionError, KafkaTimeoutError, KafkaUnresponsive)


def root_cause(exc: BaseException) -> BaseException:
    """kafka-python wraps what a rebalance callback raised in a KafkaError: unwrap it."""
    while isinstance(exc, KafkaError) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def tune_garbage_collector() -> None:
    """A poll hands over up to max_poll_records (kafka_reader/client.py) records that live
    until they are folded in, so the collector would run often, and its full passes would walk
    every object of the imported libraries: those are frozen out of it, and young passes come
    less often."""
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def consume(settings: Settings, store: Store, stop: threading.Event) -> int:
    """Run the loop, recreating the Kafka client after transient failures; the exit code."""
    tune_garbage_collector()
    loop = ConsumerLoop(settings, store, stop)
    backoff = Backoff(cap=15.0)  # with the 5 s bootstrap: consuming again within 20 s
    while not stop.is_set():
        try:
            return 0 if loop.run() else EXIT_FAILED
        except KafkaError as exc:
            if loop.was_assigned:
                backoff.reset()  # it worked for a while: a new outage starts with short waits
            cause = root_cause(exc)
            if not isinstance(cause, KafkaError):
                raise cause from None  # e.g. StoreMisconfigured inside a rebalance callback
            if isinstance(cause, KafkaConfigurationError):
                raise
            if stop.is_set():
                break
            delay = backoff.next_delay()
            what = "unreachable" if isinstance(cause, UNREACHABLE) else "client failed"
            log.error(
                "Kafka %s at %s (%s); retrying in %.1f s",
                what,
                settings.bootstrap_servers,
                describe(cause),
                delay,
            )
            loop.reset()
            stop.wait(delay)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        print(f"consumer.py: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_level)
    stop = threading.Event()
    stop_on_signals(stop, log, "final flush, then exit")
    store = Store(settings.dsn(), settings.migrations_dir)
    try:
        if not prepare_tables(store, settings, stop):
            return 0
        code = consume(settings, store, stop)
    except (MigrationError, NotOwner, UndecodableBatch) as exc:
        print(f"consumer.py: error: {exc}", file=sys.stderr)
        log.error("Consumer stopped: %s", exc)
        return EXIT_CONFIG
    except StoreMisconfigured as exc:
        log.error("Cannot use PostgreSQL: %s. Fix the POSTGRES_* settings; stopping.", exc)
        return EXIT_CONFIG
    except KafkaConfigurationError as exc:
        log.error("Kafka refuses the client settings: %s; stopping.", exc)
        return EXIT_CONFIG
    except StoreFailed as exc:
        log.error("PostgreSQL refused the work: %s; stopping (nothing of it was written).", exc)
        return EXIT_FAILED
    finally:
        store.close()
    log.info("Consumer stopped" + ("" if code == 0 else " with unwritten events"))
    return code
