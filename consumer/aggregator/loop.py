"""The consumer's loop: poll Kafka, fold the records into the Accumulator, have the Flusher
write them when the interval is up, and follow the group's rebalances."""

from __future__ import annotations

import logging
import threading
import time

from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition

from aggregator.core.accumulator import Accumulator
from aggregator.core.catch_up import CatchUpWatch
from aggregator.flusher import Flusher
from aggregator.kafka_reader.client import new_consumer
from aggregator.kafka_reader.log_guard import LogGuard
from aggregator.kafka_reader.positions import Positions
from aggregator.kafka_reader.spin_guard import SpinGuard
from aggregator.kafka_reader.undecodable import UndecodableBatch
from aggregator.postgres.errors import OffsetsMoved, StoreUnavailable
from aggregator.postgres.store import Store
from aggregator.report import ConsumedLog
from aggregator.settings import Settings
from btcpipe.contract import DecodedEvent

log = logging.getLogger("consumer")

CLOSE_TIMEOUT_MS = 5_000
TOPIC_POLL_SECONDS = 1.0
TOPIC_WAIT_LOG_SECONDS = 10.0


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
        self.guard = LogGuard(settings.topic, self.positions, self.accumulator)
        self.catch_up = CatchUpWatch()
        self.consumed_log = ConsumedLog()
        self.was_assigned = False  # since the last reset: the Kafka client worked
        # Inside a rebalance callback the client sends no heartbeats: PostgreSQL must answer
        # well within the session timeout there, or the member is evicted.
        self.callback_timeout = settings.session_timeout_ms / 1000 / 3

    def run(self) -> bool:
        """Consume until stopped. False if the final flush could not be written."""
        self.consumer = self.positions.consumer = new_consumer(self.settings)
        self.guard.reset(self.consumer)
        try:
            if not self.wait_for_topic():
                return True  # stopped before there was anything to read
            self.consumer.subscribe([self.settings.topic], listener=self)
            log.info(
                "Consuming %s as group %s; flushing every %g s to PostgreSQL %s/%s",
                self.settings.topic,
                self.settings.group_id,
                self.settings.flush_interval,
                self.settings.postgres_host,
                self.settings.postgres_db,
            )
            while not self.stop.is_set():
                self.poll_once()
                if time.monotonic() >= self.flusher.next_flush:
                    self.flusher.flush_on_timer()
            return self.flusher.flush_final()
        except UndecodableBatch:
            # Write what was read before it: the offsets stored then stand at the batch, where
            # a person who decides to skip it moves them (docs/operations.md).
            self.flusher.flush_final()
            raise
        finally:
            # Revokes partitions (flushing again if anything is pending) and leaves the group;
            # bounded, for a broker that does not answer.
            self.consumer.close(timeout_ms=CLOSE_TIMEOUT_MS)
            self.store.close()

    def wait_for_topic(self) -> bool:
        """Wait until the topic exists (only the producer creates it); False if stopped first."""
        assert self.consumer is not None
        topic, next_word = self.settings.topic, 0.0
        while not self.stop.is_set():
            if topic in self.consumer.topics():
                return True
            if time.monotonic() >= next_word:
                log.info(
                    "Waiting for topic %s at %s: producer.py creates it (KAFKA_TOPIC_PARTITIONS)",
                    topic,
                    self.settings.bootstrap_servers,
                )
                next_word = time.monotonic() + TOPIC_WAIT_LOG_SECONDS
            self.stop.wait(TOPIC_POLL_SECONDS)
        return False

    def poll_once(self) -> None:
        timeout_ms = int(max(0.0, min(1.0, self.flusher.next_flush - time.monotonic())) * 1000)
        if self.flusher.resolve_due():
            self.flusher.resolve_positions()
        if self.positions.unchecked:
            self.guard.check_assigned(resume=self.flusher.consuming)
        records = self.guard.inspect(self.poller.poll(self.consumer, timeout_ms))
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
