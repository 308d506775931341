"""The consumer's main loop: read, window, and flush every FLUSH_INTERVAL_SECONDS.

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
import time
from collections.abc import Sequence

from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.errors import (
    KafkaConfigurationError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
)

from aggregator.core.accumulator import Accumulator
from aggregator.core.migrations import MigrationError
from aggregator.flusher import Flusher
from aggregator.kafka_reader.positions import (
    CatchUpWatch,
    KafkaUnresponsive,
    Positions,
    SpinGuard,
    new_consumer,
)
from aggregator.postgres.store import (
    NotOwner,
    OffsetsMoved,
    Store,
    StoreFailed,
    StoreMisconfigured,
    StoreUnavailable,
)
from aggregator.report import ConsumedLog
from aggregator.settings import ConfigError, Settings, load_settings
from btcpipe.backoff import Backoff
from btcpipe.contract import DecodedEvent
from btcpipe.process import configure_logging, describe, stop_on_signals

log = logging.getLogger("consumer")

EXIT_CONFIG = 2  # a setting no retry can fix
EXIT_FAILED = 1  # stopped with work not written, or the database refused it
CLOSE_TIMEOUT_MS = 5_000


class ConsumerLoop(ConsumerRebalanceListener):
    """Runs the loop: polls Kafka, folds the records into the Accumulator, has the Flusher
    write them when the interval is up, and follows the group's rebalances."""

    def __init__(self, settings: Settings, store: Store, stop: threading.Event) -> None:
        self.settings = settings
        self.store = store
        self.stop = stop
        self.consumer: KafkaConsumer | None = None
        self.poller = SpinGuard(settings.bootstrap_servers)
        self.positions = Positions(settings.topic)
        self.accumulator = Accumulator()
        self.flusher = Flusher(settings, store, self.accumulator, self.positions)
        self.catch_up = CatchUpWatch()
        self.consumed_log = ConsumedLog()
        self.was_assigned = False  # since the last reset: the Kafka client worked
        # Inside a rebalance callback the client sends no heartbeats: PostgreSQL must answer
        # well within the session timeout there, or the member is evicted.
        self.callback_timeout = settings.session_timeout_ms / 1000 / 3

    def run(self) -> bool:
        """Consume until stopped. False if the final flush could not be written."""
        self.consumer = self.positions.consumer = new_consumer(self.settings)
        self.consumer.subscribe([self.settings.topic], listener=self)
        log.info(
            "Consuming %s as group %s; flushing every %g s to PostgreSQL %s/%s",
            self.settings.topic,
            self.settings.group_id,
            self.settings.flush_interval,
            self.settings.postgres_host,
            self.settings.postgres_db,
        )
        try:
            while not self.stop.is_set():
                self.poll_once()
                if time.monotonic() >= self.flusher.next_flush:
                    self.flusher.flush_on_timer()
            return self.flusher.flush_final()
        finally:
            # Revokes partitions (flushing again if anything is pending) and leaves the group;
            # bounded, for a broker that does not answer.
            self.consumer.close(timeout_ms=CLOSE_TIMEOUT_MS)
            self.store.close()

    def poll_once(self) -> None:
        timeout_ms = int(max(0.0, min(1.0, self.flusher.next_flush - time.monotonic())) * 1000)
        if self.flusher.resolve_due():
            self.flusher.resolve_positions()
        records = self.poller.poll(self.consumer, timeout_ms)
        self.consumed_log.summarise_if_due()
        if not records:
            return
        received_ms = time.time_ns() // 1_000_000
        messages = sum(len(batch) for batch in records.values())
        consumed: list[tuple[DecodedEvent, bool]] | None = None
        if self.consumed_log.wants_each(messages):
            consumed = []
        for tp, batch in records.items():
            self.accumulator.process_batch(tp.partition, batch, received_ms, consumed)
        if consumed is None:
            self.consumed_log.count(messages)
        else:
            self.consumed_log.each(consumed)
        lag = self.positions.known_lag(self.accumulator.pending.next_offsets)
        if self.catch_up.caught_up(lag, just_read=messages):
            self.flusher.flush_soon("Caught up with the backlog")

    def reset(self) -> None:
        """After losing the Kafka client: forget everything unflushed and every position."""
        self.accumulator.discard()
        self.positions.clear()
        self.flusher.forget_outage()
        self.was_assigned = False

    # -- rebalancing (runs on kafka-python's IO loop, which also sends heartbeats) ----------

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Flush once before giving partitions up. The flush is one short transaction; if
        PostgreSQL cannot take it now, drop the state instead of blocking heartbeats: the
        next owner reads those events again from the stored offsets."""
        if not self.accumulator.pending.is_empty():
            try:
                self.flusher.flush(self.callback_timeout)
            except (StoreUnavailable, OffsetsMoved) as exc:
                log.warning("Could not flush before rebalance (%s): dropping unflushed state", exc)
                self.flusher.drop_pending()
        self.positions.forget(tp.partition for tp in revoked)

    def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        """Evicted from the group: another member may own these already, so do not write."""
        log.warning(
            "Lost partitions %s: dropping unflushed state", sorted(tp.partition for tp in lost)
        )
        self.flusher.drop_pending()
        self.positions.forget(tp.partition for tp in lost)

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        partitions = sorted(tp.partition for tp in assigned)
        log.info("Assigned partitions %s of %s", partitions, self.settings.topic)
        self.positions.assigned(partitions)
        self.was_assigned = True
        self.flusher.resolve_positions(self.callback_timeout)


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
    """Every poll hands over up to 25,000 records that live until they are folded in, so the
    collector runs often, and its full passes walked every object of the imported libraries:
    those are frozen out of it, and young passes come less often (bench/: a few % of CPU)."""
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
    except (MigrationError, NotOwner) as exc:
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
