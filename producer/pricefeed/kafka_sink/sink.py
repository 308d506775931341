"""The Kafka edge: an idempotent producer that re-sends, in order, what Kafka did not take.

kafka-python 3.0.12 cannot be left to ride out a hung broker: once a request times out it
reconnects in a busy loop (a core at 100 %), and once a batch expires after
`delivery_timeout_ms` its idempotent producer resets its producer id but never asks for a new
one, so it sends nothing ever again. So a client that failed a delivery, or has had no
acknowledgement for `request_timeout_ms`, is retired: a new one is made only when the broker
answers again (making one is the probe: it gives up quietly after a few seconds), and it sends
every event not yet acknowledged again, in the order they were first sent, before anything
newer. Per partition the unacknowledged events are always the tail of
what was sent (acknowledgements arrive in order), so a re-send repeats a run of the stream in
its original order; the events' identities let the consumer count each one once.

KafkaSink keeps the events in order (waiting, then sent and unacknowledged: _Outstanding);
KafkaClients makes, re-makes and closes its client; StallWatch times Kafka's silences.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable

from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import (
    KafkaConfigurationError,
    KafkaError,
    KafkaTimeoutError,
    TopicAlreadyExistsError,
)
from kafka.partitioner import DefaultPartitioner

from btcpipe.backoff import Backoff
from btcpipe.contract import PriceEvent
from btcpipe.process import describe

log = logging.getLogger("producer")

DEFAULT_DELIVERY_TIMEOUT_MS = 120_000  # kafka-python's and Java's default
DEFAULT_REQUEST_TIMEOUT_MS = 30_000
# Client settings that decide throughput (bench/ gives its bare producer the same ones).
# Bigger, fuller batches: fewer requests for a replay, for both this client and the broker;
# a live tick of a few thousand messages waits at most LINGER_MS more.
LINGER_MS = 20
CLIENT_SETTINGS = {"linger_ms": LINGER_MS, "batch_size": 256 * 1024}
RECONNECT_MAX_SECONDS = 20.0  # with the 5 s probe: publishing again within 30 s of recovery


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
    """Publishes events keyed by symbol, with the record timestamp set to the event time."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        partitions: int,
        stop: threading.Event,
        backoff: Backoff,
        echo: bool = True,
        stall_warning: float = 20.0,
        delivery_timeout_ms: int = DEFAULT_DELIVERY_TIMEOUT_MS,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.echo = echo
        self._stop = stop
        self._clients = KafkaClients(
            bootstrap_servers, topic, partitions, stop, backoff, delivery_timeout_ms
        )
        self._lock = threading.Lock()  # acknowledgements arrive on the client's network thread
        self._sent = _Outstanding(self)  # of the current client
        self._failure: Exception | None = None  # first failed delivery of this client
        self._waiting: list[PriceEvent] = []  # to send, after everything in self._sent
        self._stall = StallWatch(stall_warning)  # under self._lock
        self.delivered = 0

    def connect(self) -> bool:
        """Connect and make sure the topic exists, retrying until it works or we are stopped
        (False). A setting the client refuses raises KafkaConfigurationError."""
        return self._clients.first()

    # -- publishing -------------------------------------------------------------------------

    def publish(self, events: Iterable[PriceEvent]) -> None:
        """Send events after everything still waiting, without waiting for acknowledgements.
        Events that cannot be handed to the client now wait, in order, for the next call."""
        stalled_for = self._warn_if_stalled()
        if stalled_for * 1000 >= self._clients.request_timeout_ms and self._failure is None:
            self._failure = KafkaTimeoutError(f"no acknowledgement for {stalled_for:.0f} s")
        self._waiting.extend(events)
        if self._failure is not None and not self._replace_client():
            return
        self._send_waiting()

    def wait_for_room(self, limit: int = 10_000) -> None:
        """Block, tending, while more than `limit` events wait to be handed to the client: a
        replay then reads no faster than Kafka takes it, and memory stays bounded through an
        outage. (The client's own buffer is bounded: a full one makes `send` wait.)"""
        while len(self._waiting) > limit and not self._stop.wait(0.2):
            self.tend()

    def tend(self) -> None:
        """Upkeep between publishes: warn about a stall, retire a stalled client, and send
        what waits once Kafka answers again."""
        self.publish(())

    def _send_waiting(self) -> None:
        """Hand every waiting event to the client, in order; what it refuses waits."""
        waiting, self._waiting = self._waiting, []
        if not waiting:
            return
        producer = self._clients.producer
        assert producer is not None, "connect() first"
        if not self._sent.count():
            self._stall.last_ack = time.monotonic()  # a stall is measured from the first wait
        try:
            self._sent.send_each(producer, self.topic, waiting)
        except NotTaken as exc:  # e.g. the client's buffer stayed full for max_block_ms
            self._waiting = waiting[exc.index :]
            log.warning(
                "Kafka is not taking messages (%s); %d events wait to be sent",
                describe(exc.__cause__),
                len(self._waiting),
            )

    def _acknowledged(self, events: list[PriceEvent], recovered: bool) -> None:
        """Called by the current client's callbacks with the events just acknowledged."""
        self.delivered += len(events)
        if recovered:
            log.info("Kafka is acknowledging messages again")
        if self.echo:
            for event in events:
                log.info("Produced: %s", event.to_json_bytes().decode())

    def _replace_client(self) -> bool:
        """Retire the failed client and queue every unacknowledged event again, in order,
        before what was waiting. False if no new client could be made yet (tried again later)."""
        if self._clients.producer is not None:
            sent = self._sent
            self._close_producer()  # its callbacks are done: nothing is acknowledged any more
            unacked = sent.retire()
            self._waiting[:0] = unacked
            log.warning(
                "Kafka did not acknowledge in time (%s); sending %d unacknowledged events "
                "again, in order, with a new producer session",
                describe(self._failure),
                len(unacked),
            )
        if not self._clients.next(len(self._waiting)):
            return False
        self._sent = _Outstanding(self)
        with self._lock:
            self._failure = None
            self._stall.last_ack = time.monotonic()  # the new client's stall starts now
        return True

    def _warn_if_stalled(self) -> float:
        """Say that Kafka has stopped answering, once a minute. Returns for how long."""
        with self._lock:
            unacked = self._sent.count()
            stalled_for, warn = self._stall.check(time.monotonic(), unacked)
        if warn:
            self._stall.say(self.bootstrap_servers, stalled_for, unacked + len(self._waiting))
        return stalled_for

    # -- stopping ---------------------------------------------------------------------------

    def flush(self, timeout: float) -> None:
        self._clients.flush(timeout)

    def backlog(self) -> int:
        """Events waiting to be sent, or sent and not yet acknowledged."""
        return self._sent.count() + len(self._waiting)

    def close(self, timeout: float = 10.0) -> int:
        """Deliver what is pending (within `timeout`), then disconnect. Returns how many events
        Kafka did not accept (lost when the process ends: the caller exits non-zero)."""
        deadline = time.monotonic() + timeout
        if self._clients.producer is not None or self._waiting:
            self.publish(())
            self.flush(max(0.0, deadline - time.monotonic()))
        if self._failure is not None and time.monotonic() < deadline:
            self._clients.allow_now()  # one last new session for what failed
            self.publish(())
            self.flush(max(0.0, deadline - time.monotonic()))
        lost = self.backlog()
        if lost:
            log.error(
                "Stopping with %d events Kafka did not acknowledge: they were not delivered", lost
            )
        self._close_producer()
        return lost

    def _close_producer(self) -> None:
        """Disconnect without waiting: callers have already given delivery its time."""
        if self._clients.producer is None:
            return
        with self._lock:
            self._sent.retired = True  # late callbacks of the old client change nothing
        self._clients.close_current()


class NotTaken(Exception):
    """The client refused events[index] (its KafkaError is the cause)."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


class _Outstanding:
    """One client's sent and not yet acknowledged events, in send order, with their futures.

    kafka-python completes a partition's records in the order they were sent, so the events
    acknowledged so far are almost always a prefix of the queue: each acknowledgement pops the
    acknowledged prefix (an event acknowledged behind a slower partition's waits for it, and is
    counted as acknowledged meanwhile). A failed event stops the popping: it and everything
    behind it that is not acknowledged are what `retire` returns, to be sent again."""

    def __init__(self, sink: KafkaSink) -> None:
        self.sink = sink
        self.queue: deque[tuple[PriceEvent, object]] = deque()
        self.acked_in_queue = 0  # acknowledged but still queued behind an earlier event
        self.retired = False

    def count(self) -> int:
        """Sent and not acknowledged."""
        return len(self.queue) - self.acked_in_queue

    def send_each(self, producer: KafkaProducer, topic: str, events: list[PriceEvent]) -> None:
        """Hand the events to the client in order, remembering each (the hot path of a replay:
        per event one deque append and two callbacks without arguments). Raises NotTaken
        (from the client's KafkaError) with the index of the first event not handed over."""
        send, remember = producer.send, self.queue.append
        on_delivered, on_failed = self.on_delivered, self.on_failed
        index = 0
        try:
            for index, event in enumerate(events):  # noqa: B007 (index is kept on failure)
                future = send(
                    topic,
                    key=event.key(),
                    value=event.to_json_bytes(),
                    timestamp_ms=event.event_time,
                )
                remember((event, future))
                future.add_callback(on_delivered)
                future.add_errback(on_failed)
        except KafkaError as exc:
            raise NotTaken(index) from exc

    def on_delivered(self, _metadata: object) -> None:
        """A callback of kafka-python's network thread (or of `add_callback` in the sending
        thread, for a record acknowledged before it was registered): one per record."""
        sink, queue, acked = self.sink, self.queue, []
        with sink._lock:
            if self.retired:
                return
            self.acked_in_queue += 1
            while queue:
                future = queue[0][1]
                if not (future.is_done and future.exception is None):  # type: ignore[attr-defined]
                    break
                acked.append(queue.popleft()[0])
            self.acked_in_queue -= len(acked)
            recovered = sink._stall.acknowledged(time.monotonic())
        if acked:
            sink._acknowledged(acked, recovered)

    def on_failed(self, exc: Exception) -> None:
        """The event stays unacknowledged; the sink's next publish retires this client."""
        sink = self.sink
        with sink._lock:
            if not self.retired and self is sink._sent and sink._failure is None:
                sink._failure = exc

    def retire(self) -> list[PriceEvent]:
        """Stop listening to this client; its unacknowledged events, in send order."""
        with self.sink._lock:
            self.retired = True
            sent, self.queue = self.queue, deque()
            self.acked_in_queue = 0
        return [
            event
            for event, future in sent
            if not (future.is_done and future.exception is None)  # type: ignore[attr-defined]
        ]


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
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
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


def close_client(producer: KafkaProducer | None) -> None:
    """Disconnect without waiting: callers have already given delivery its time."""
    if producer is None:
        return
    try:
        producer.close(timeout=0)
    except KafkaError as exc:
        log.debug("Kafka producer close: %s", exc)
        force_close(producer)


def force_close(producer: KafkaProducer) -> None:
    """Finish a close that kafka-python 3.0.12 gave up half-way.

    Its public `close(timeout)` flushes first, and the flush raises KafkaTimeoutError while any
    record is stuck (broker gone or frozen) -- before the sender thread is stopped and before
    the producer is marked closed, whatever the timeout. No public call does the rest, so this
    does what `close` would have done next: stop the sender thread at once (dropping what it
    holds: the sink re-sends every unacknowledged event itself) and mark the producer closed,
    so that its `__del__` does not start the same close again. Private attributes of that
    version: tests/integration/test_producer.py fails if they disappear."""
    sender = getattr(producer, "_sender", None)
    if sender is not None:
        sender.force_close()
    producer._closed = True


class StallWatch:
    """How long Kafka has acknowledged nothing while messages wait, and when to say so (once a
    minute). Its callers hold the sink's lock."""

    def __init__(self, warn_after: float) -> None:
        self.warn_after = warn_after
        self.last_ack = time.monotonic()
        self.warned: float | None = None

    def acknowledged(self, now: float) -> bool:
        """Note an acknowledgement; True if a stall had been reported (it is over now)."""
        recovered, self.warned = self.warned is not None, None
        self.last_ack = now
        return recovered

    def check(self, now: float, unacked: int) -> tuple[float, bool]:
        """For how long Kafka has been stalled, and whether to warn now (noted if so): stalled
        long enough, and no warning in the last minute."""
        stalled_for = now - self.last_ack if unacked else 0.0
        due = self.warned is None or now - self.warned >= 60
        warn = stalled_for >= self.warn_after and due
        if warn:
            self.warned = now
        return stalled_for, warn

    @staticmethod
    def say(bootstrap_servers: str, stalled_for: float, waiting: int) -> None:
        log.warning(
            "Kafka at %s has acknowledged nothing for %.0f s (%d messages waiting); "
            "the client keeps retrying",
            bootstrap_servers,
            stalled_for,
            waiting,
        )
