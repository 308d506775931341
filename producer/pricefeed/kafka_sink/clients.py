"""The Kafka edge's kafka-python clients: the settings they are made with, the key-to-partition
cache, KafkaClients (the sink's producer, made and re-made), and how one is closed without
waiting, even when kafka-python's own close gives up half-way."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaConfigurationError, KafkaError, TopicAlreadyExistsError
from kafka.partitioner import DefaultPartitioner

from btcpipe.backoff import Backoff
from btcpipe.process import describe

log = logging.getLogger("producer")

DEFAULT_DELIVERY_TIMEOUT_MS = 120_000  # kafka-python's and Java's default
DEFAULT_REQUEST_TIMEOUT_MS = 30_000
# Client settings that decide throughput (bench/ gives its bare producer the same ones).
# Bigger, fuller batches: fewer requests for a replay, for both this client and the broker;
# a live tick of a few thousand messages waits at most LINGER_MS more.
LINGER_MS = 20
CLIENT_SETTINGS = {"linger_ms": LINGER_MS, "batch_size": 256 * 1024}
DEFAULT_COMPRESSION = "zstd"  # the producer's default (pricefeed/settings.py)
RECONNECT_MAX_SECONDS = 20.0  # with the 5 s probe: publishing again within 30 s of recovery


class KeyPartitionCache(DefaultPartitioner):
    """Kafka's default partitioning (murmur2 of the key, as the Java client), remembered per
    key: kafka-python hashes every message's key in pure Python, while a feed has one key per
    symbol, so each key is hashed once. Recomputed when the partition count changes."""

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


class KafkaClients:
    """The sink's kafka-python client (`producer`): the first one (retrying until Kafka
    answers and the topic exists), and after a failure each next one, no more often than the
    reconnect backoff allows (making one is the probe: it gives up quietly after a few
    seconds)."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        partitions: int,
        stop: threading.Event,
        backoff: Backoff,
        delivery_timeout_ms: int,
        compression: str = DEFAULT_COMPRESSION,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.compression = compression
        self.topic = topic
        self.partitions = partitions
        self.delivery_timeout_ms = delivery_timeout_ms
        # A request may not outlive the delivery it belongs to.
        self.request_timeout_ms = min(DEFAULT_REQUEST_TIMEOUT_MS, delivery_timeout_ms - LINGER_MS)
        self._stop = stop
        self._backoff = backoff
        self._reconnect = Backoff(backoff.base, min(backoff.cap, RECONNECT_MAX_SECONDS))
        self._retry_at = 0.0  # monotonic time before which no new client is tried
        self.producer: KafkaProducer | None = None

    def first(self) -> bool:
        """Make a client of a broker that has the topic; False once stopped. A setting the
        client refuses raises KafkaConfigurationError: retrying cannot help."""
        while not self._stop.is_set():
            producer = None
            try:
                producer = self._new_producer()
                self._ensure_topic()
                self._backoff.reset()
                log.info("Connected to Kafka at %s, topic %s", self.bootstrap_servers, self.topic)
                self.producer = producer
                return True
            except KafkaConfigurationError:
                close_client(producer)
                raise
            except KafkaError as exc:
                close_client(producer)
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

    def next(self, waiting: int) -> bool:
        """Make a new client (after `close_current`); False if it is too soon to try or Kafka
        does not answer (said, with the `waiting` events): a later call tries again."""
        if time.monotonic() < self._retry_at:
            return False
        try:
            producer = self._new_producer()
        except KafkaError as exc:
            delay = self._reconnect.next_delay()
            self._retry_at = time.monotonic() + delay
            log.warning(
                "Kafka not reachable at %s (%s); %d events wait; next attempt in %.1f s or at "
                "the next publish after that",
                self.bootstrap_servers,
                describe(exc),
                waiting,
                delay,
            )
            return False
        self._reconnect.reset()
        self.producer = producer
        return True

    def flush(self, timeout: float) -> None:
        if self.producer is not None:
            try:
                self.producer.flush(timeout=timeout)
            except KafkaError as exc:
                log.warning("Kafka flush incomplete: %s", describe(exc))

    def close_current(self) -> None:
        producer, self.producer = self.producer, None
        close_client(producer)

    def allow_now(self) -> None:
        """Let the next call of `next` try at once (one last session before stopping)."""
        self._retry_at = 0.0

    def _new_producer(self) -> KafkaProducer:
        # acks=all with explicit idempotence: kafka-python raises instead of silently
        # downgrading when an idempotence requirement cannot be met.
        return KafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            partitioner=KeyPartitionCache(),
            **CLIENT_SETTINGS,
            compression_type=compression_type(self.compression),
            max_block_ms=10_000,
            delivery_timeout_ms=self.delivery_timeout_ms,
            request_timeout_ms=self.request_timeout_ms,
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


def compression_type(name: str) -> str | None:
    """kafka-python's compression_type for a KAFKA_COMPRESSION value ("none": None)."""
    return None if name == "none" else name


def close_client(producer: KafkaProducer | None) -> None:
    """Disconnect without waiting: callers have already given delivery its time."""
    if producer is None:
        return
    try:
        producer.close(timeout=0)
    except KafkaError as exc:
        log.debug("Kafka producer close: %s", exc)
        force_close(producer)


# --- kafka-python's private parts we rely on, named here and nowhere else ---------------------

# kafka-python 3.0.12's KafkaProducer keeps them in private attributes; no public call reaches
# them. `close_internals` and `has_producer_id` fail loudly (the tests call them) if an
# upgrade renames them.
SENDER = "_sender"  # the network thread (a threading.Thread with force_close())
CLOSED = "_closed"  # True once closed: its __del__ then closes nothing again
TRANSACTION_MANAGER = "_transaction_manager"  # holds the idempotent producer's id and epoch


class KafkaInternalsChanged(RuntimeError):
    """kafka-python lacks a private part this edge relies on: revisit it for that version."""


@dataclass(frozen=True)
class CloseInternals:
    """What force_close acts on: the producer's sender thread and its closed flag."""

    producer: KafkaProducer
    sender: threading.Thread

    @property
    def closed(self) -> bool:
        return bool(getattr(self.producer, CLOSED))


def close_internals(producer: KafkaProducer) -> CloseInternals:
    """The private parts force_close relies on; raises KafkaInternalsChanged naming any this
    kafka-python lacks."""
    sender = getattr(producer, SENDER, None)
    missing = [
        name
        for name, present in [
            (f"KafkaProducer.{SENDER}", isinstance(sender, threading.Thread)),
            (f"KafkaProducer.{SENDER}.force_close", callable(getattr(sender, "force_close", None))),
            (f"KafkaProducer.{CLOSED}", isinstance(getattr(producer, CLOSED, None), bool)),
        ]
        if not present
    ]
    if missing:
        raise KafkaInternalsChanged(f"force_close relies on {', '.join(missing)}: missing")
    assert isinstance(sender, threading.Thread)
    return CloseInternals(producer, sender)


def force_close(producer: KafkaProducer) -> None:
    """Finish a close that kafka-python 3.0.12 gave up half-way.

    Its public `close(timeout)` flushes first, and the flush raises KafkaTimeoutError while any
    record is stuck (broker gone or frozen) -- before the sender thread is stopped and before
    the producer is marked closed, whatever the timeout. No public call does the rest, so this
    does what `close` would have done next: stop the sender thread at once (dropping what it
    holds: the sink re-sends every unacknowledged event itself) and mark the producer closed,
    so that its `__del__` does not start the same close again. Never raises: a part that is
    missing is skipped (`close_internals` is the loud check)."""
    sender = getattr(producer, SENDER, None)
    if sender is not None:
        sender.force_close()
    setattr(producer, CLOSED, True)


def has_producer_id(producer: KafkaProducer) -> bool:
    """Whether the broker gave this idempotent producer its id (idempotence granted, not
    dropped); raises KafkaInternalsChanged if kafka-python keeps it elsewhere now."""
    manager = getattr(producer, TRANSACTION_MANAGER, None)
    id_and_epoch = getattr(manager, "producer_id_and_epoch", None)
    if id_and_epoch is None or not hasattr(id_and_epoch, "is_valid"):
        raise KafkaInternalsChanged(
            f"has_producer_id relies on KafkaProducer.{TRANSACTION_MANAGER}"
            ".producer_id_and_epoch.is_valid: missing"
        )
    return bool(id_and_epoch.is_valid)
