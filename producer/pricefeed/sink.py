"""The Kafka edge: an idempotent producer that retries what it could not deliver."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable

from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.partitioner import DefaultPartitioner

from pricefeed.contract import PriceEvent
from pricefeed.timing import Backoff

log = logging.getLogger("producer")

# Client settings that decide throughput (bench/ gives its bare producer the same ones).
# Bigger, fuller batches: fewer requests for a replay, for both this client and the broker;
# a live tick of a few thousand messages waits at most linger_ms (20 ms) more.
CLIENT_SETTINGS = {"linger_ms": 20, "batch_size": 256 * 1024}


class KeyPartitionCache(DefaultPartitioner):
    """Kafka's default partitioning (murmur2 of the key, as the Java client), remembered per
    key: kafka-python hashes every message's key in pure Python, a large share of a replay's
    cost, while a feed has one key per symbol. Recomputed when the partition count changes."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, bytes], tuple[int, int]] = {}  # -> (partitions, partition)

    def partition(self, topic, key, serialized_key, value, serialized_value, cluster) -> int:
        partitions = cluster.partitions_for_topic(topic)
        if serialized_key is None or not partitions:
            return super().partition(topic, key, serialized_key, value, serialized_value, cluster)
        known = self._known.get((topic, serialized_key))
        if known is None or known[0] != len(partitions):
            chosen = super().partition(topic, key, serialized_key, value, serialized_value, cluster)
            known = self._known[topic, serialized_key] = (len(partitions), chosen)
        return known[1]


class KafkaSink:
    """Publishes events keyed by symbol, with the record timestamp set to the event time.

    A send that fails after the client's own retries (broker gone for longer than
    delivery_timeout_ms) is queued and sent again before newer events, so nothing is lost
    while the producer keeps running.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        partitions: int,
        stop: threading.Event,
        backoff: Backoff,
        echo: bool = True,
        stall_warning: float = 20.0,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.partitions = partitions
        self.echo = echo
        self._stop = stop
        self._backoff = backoff
        self._producer: KafkaProducer | None = None
        self._retry: deque[PriceEvent] = deque()
        self._lock = threading.Lock()
        self.delivered = 0
        self._unacked = 0  # sent, neither acknowledged nor failed yet
        self._last_ack = time.monotonic()
        self._stall_warned: float | None = None
        self.stall_warning = stall_warning  # no acknowledgement this long while messages wait

    def connect(self) -> bool:
        """Connect and make sure the topic exists, retrying until it works or we are stopped."""
        while not self._stop.is_set():
            try:
                self._producer = self._new_producer()
                self._ensure_topic()
                self._backoff.reset()
                log.info("Connected to Kafka at %s, topic %s", self.bootstrap_servers, self.topic)
                return True
            except KafkaError as exc:
                self._close_producer()
                if self._stop.is_set():
                    break
                delay = self._backoff.next_delay()
                log.warning(
                    "Kafka not reachable at %s (%s); retrying in %.1f s",
                    self.bootstrap_servers,
                    exc.__class__.__name__,
                    delay,
                )
                self._stop.wait(delay)
        return False

    def _new_producer(self) -> KafkaProducer:
        # acks=all with explicit idempotence: kafka-python raises instead of silently
        # downgrading when an idempotence requirement cannot be met.
        return KafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            partitioner=KeyPartitionCache(),
            **CLIENT_SETTINGS,
            max_block_ms=10_000,
            bootstrap_timeout_ms=5_000,  # short, so a stop request is never kept waiting long
            client_id="btc-price-producer",
        )

    def _ensure_topic(self) -> None:
        admin = KafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers, bootstrap_timeout_ms=5_000
        )
        try:
            if self.topic in admin.list_topics():
                return
            admin.create_topics([NewTopic(self.topic, self.partitions, 1)])
            log.info("Created topic %s with %d partitions", self.topic, self.partitions)
        except TopicAlreadyExistsError:
            pass  # another producer created it first
        finally:
            admin.close()

    def publish(self, events: Iterable[PriceEvent]) -> None:
        """Send events (after any waiting for a retry), without waiting for acknowledgements."""
        self._warn_if_stalled()
        assert self._producer is not None, "connect() first"
        with self._lock:
            pending = [*self._retry, *events]
            self._retry.clear()
            if pending and not self._unacked:
                self._last_ack = time.monotonic()  # a stall is measured from the first wait
            # Counted up front, once per call: an acknowledgement may come back (on the
            # client's thread) before send() has returned.
            self._unacked += len(pending)
        # A replay's hot path: one send per message, names bound once (bench/ measures it).
        send, topic = self._producer.send, self.topic
        on_delivered, on_failed = self._on_delivered, self._on_failed
        for index, event in enumerate(pending):
            try:
                future = send(
                    topic,
                    key=event.key(),
                    value=event.to_json_bytes(),
                    timestamp_ms=event.event_time,
                )
            except KafkaError as exc:
                with self._lock:
                    self._unacked -= len(pending) - index  # never sent
                self._requeue(pending[index:], exc)
                return
            future.add_callback(on_delivered, event)
            future.add_errback(on_failed, event)

    def _on_delivered(self, event: PriceEvent, _metadata: object) -> None:
        with self._lock:
            self._unacked -= 1
            self._last_ack = time.monotonic()
            recovered, self._stall_warned = self._stall_warned is not None, None
        self.delivered += 1
        if recovered:
            log.info("Kafka is acknowledging messages again")
        if self.echo:
            log.info("Produced: %s", event.to_json_bytes().decode())

    def _on_failed(self, event: PriceEvent, exc: Exception) -> None:
        with self._lock:
            self._unacked -= 1
        self._requeue([event], exc)

    def _warn_if_stalled(self) -> None:
        """The client retries on its own for delivery_timeout_ms (idempotently, so without
        duplicates); meanwhile say that Kafka has stopped answering, once a minute."""
        now = time.monotonic()
        with self._lock:
            stalled_for = now - self._last_ack if self._unacked else 0.0
            waiting = self._unacked
            due = self._stall_warned is None or now - self._stall_warned >= 60
            if stalled_for >= self.stall_warning and due:
                self._stall_warned = now
            else:
                return
        log.warning(
            "Kafka at %s has acknowledged nothing for %.0f s (%d messages waiting); "
            "the client keeps retrying",
            self.bootstrap_servers,
            stalled_for,
            waiting,
        )

    def _requeue(self, events: list[PriceEvent], exc: Exception) -> None:
        with self._lock:
            self._retry.extend(events)
            waiting = len(self._retry)
        log.warning(
            "Kafka delivery failed (%s: %s); %d events will be sent again",
            exc.__class__.__name__,
            exc,
            waiting,
        )

    def flush(self, timeout: float) -> None:
        if self._producer is not None:
            try:
                self._producer.flush(timeout=timeout)
            except KafkaError as exc:
                log.warning("Kafka flush incomplete: %s", exc)

    def undelivered(self) -> int:
        """Events waiting to be sent again, or sent and not yet acknowledged."""
        with self._lock:
            return len(self._retry) + self._unacked

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is pending (within `timeout`), then disconnect."""
        if self._producer is not None:
            self.publish(())  # one more try for events waiting to be sent again
        self.flush(timeout)
        if self.undelivered():
            log.error("Stopping with %d events Kafka did not accept", self.undelivered())
        self._close_producer()

    def _close_producer(self) -> None:
        """Disconnect without waiting: close() has already given delivery its time."""
        if self._producer is not None:
            try:
                self._producer.close(timeout=0)
            except KafkaError as exc:
                # kafka-python 3.0 flushes inside close() and gives up half-way when records
                # are stuck (broker gone); finish the close so its __del__ does not retry it.
                log.debug("Kafka producer close: %s", exc)
                sender = getattr(self._producer, "_sender", None)
                if sender is not None:
                    sender.force_close()
                self._producer._closed = True
            self._producer = None
