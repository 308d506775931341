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

from pricefeed.shared.backoff import Backoff
from pricefeed.shared.contract import PriceEvent

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
        self.partitions = partitions
        self.echo = echo
        self.delivery_timeout_ms = delivery_timeout_ms
        # A request may not outlive the delivery it belongs to.
        self.request_timeout_ms = min(DEFAULT_REQUEST_TIMEOUT_MS, delivery_timeout_ms - LINGER_MS)
        self.stall_warning = stall_warning  # no acknowledgement this long while messages wait
        self._stop = stop
        self._backoff = backoff
        self._reconnect = Backoff(backoff.base, min(backoff.cap, RECONNECT_MAX_SECONDS))
        self._producer: KafkaProducer | None = None
        self._lock = threading.Lock()
        self._sent = _Outstanding(self)  # of the current client
        self._failure: Exception | None = None  # first failed delivery of this client
        self._waiting: list[PriceEvent] = []  # to send, after everything in self._sent
        self._retry_at = 0.0  # monotonic time before which no new client is tried
        self.delivered = 0
        self._last_ack = time.monotonic()
        self._stall_warned: float | None = None

    # -- connecting -------------------------------------------------------------------------

    def connect(self) -> bool:
        """Connect and make sure the topic exists, retrying until it works or we are stopped.
        A setting the client refuses raises KafkaConfigurationError: retrying cannot help."""
        while not self._stop.is_set():
            try:
                self._producer = self._new_producer()
                self._ensure_topic()
                self._backoff.reset()
                log.info("Connected to Kafka at %s, topic %s", self.bootstrap_servers, self.topic)
                return True
            except KafkaConfigurationError:
                self._close_producer()
                raise
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
        self._sent = _Outstanding(self)  # a new client's acknowledgements start afresh
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

    # -- publishing -------------------------------------------------------------------------

    def publish(self, events: Iterable[PriceEvent]) -> None:
        """Send events after everything still waiting, without waiting for acknowledgements.
        Events that cannot be handed to the client now wait, in order, for the next call."""
        stalled_for = self._warn_if_stalled()
        if stalled_for * 1000 >= self.request_timeout_ms and self._failure is None:
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
        """Hand every waiting event to the client, in order (the hot path of a replay: the
        bookkeeping per event is one deque append and two callbacks without arguments)."""
        waiting, self._waiting = self._waiting, []
        if not waiting:
            return
        assert self._producer is not None, "connect() first"
        send, topic, sent = self._producer.send, self.topic, self._sent
        if not sent.count():
            self._last_ack = time.monotonic()  # a stall is measured from the first wait
        on_delivered, on_failed, remember = sent.on_delivered, sent.on_failed, sent.queue.append
        index = 0
        try:
            for index, event in enumerate(waiting):  # noqa: B007 (index is kept on failure)
                future = send(
                    topic,
                    key=event.key(),
                    value=event.to_json_bytes(),
                    timestamp_ms=event.event_time,
                )
                remember((event, future))
                future.add_callback(on_delivered)
                future.add_errback(on_failed)
        except KafkaError as exc:  # e.g. the client's buffer stayed full for max_block_ms
            self._waiting = waiting[index:]
            log.warning(
                "Kafka is not taking messages (%s); %d events wait to be sent",
                _describe(exc),
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

    def _failed(self, sent: _Outstanding, exc: Exception) -> None:
        """The event stays unacknowledged; the next publish retires this client."""
        with self._lock:
            if sent is self._sent and self._failure is None:
                self._failure = exc

    def _replace_client(self) -> bool:
        """Retire the failed client and queue every unacknowledged event again, in order,
        before what was waiting. False if no new client could be made yet (tried again later)."""
        if self._producer is not None:
            sent = self._sent
            self._close_producer()  # its callbacks are done: nothing is acknowledged any more
            unacked = sent.retire()
            self._waiting[:0] = unacked
            log.warning(
                "Kafka did not acknowledge in time (%s); sending %d unacknowledged events "
                "again, in order, with a new producer session",
                _describe(self._failure),
                len(unacked),
            )
        if time.monotonic() < self._retry_at:
            return False
        try:
            self._producer = self._new_producer()
        except KafkaError as exc:
            delay = self._reconnect.next_delay()
            self._retry_at = time.monotonic() + delay
            log.warning(
                "Kafka not reachable at %s (%s); %d events wait; next attempt in %.1f s or at "
                "the next publish after that",
                self.bootstrap_servers,
                _describe(exc),
                len(self._waiting),
                delay,
            )
            return False
        self._reconnect.reset()
        with self._lock:
            self._failure = None
            self._last_ack = time.monotonic()  # the new client's stall starts now
        return True

    def _warn_if_stalled(self) -> float:
        """Say that Kafka has stopped answering, once a minute. Returns for how long."""
        now = time.monotonic()
        with self._lock:
            unacked = self._sent.count()
            stalled_for = now - self._last_ack if unacked else 0.0
            waiting = unacked + len(self._waiting)
            due = self._stall_warned is None or now - self._stall_warned >= 60
            if stalled_for >= self.stall_warning and due:
                self._stall_warned = now
            else:
                return stalled_for
        log.warning(
            "Kafka at %s has acknowledged nothing for %.0f s (%d messages waiting); "
            "the client keeps retrying",
            self.bootstrap_servers,
            stalled_for,
            waiting,
        )
        return stalled_for

    # -- stopping ---------------------------------------------------------------------------

    def flush(self, timeout: float) -> None:
        if self._producer is not None:
            try:
                self._producer.flush(timeout=timeout)
            except KafkaError as exc:
                log.warning("Kafka flush incomplete: %s", _describe(exc))

    def backlog(self) -> int:
        """Events waiting to be sent, or sent and not yet acknowledged."""
        return self._sent.count() + len(self._waiting)

    def close(self, timeout: float = 10.0) -> int:
        """Deliver what is pending (within `timeout`), then disconnect. Returns how many events
        Kafka did not accept (lost when the process ends: the caller exits non-zero)."""
        deadline = time.monotonic() + timeout
        if self._producer is not None or self._waiting:
            self.publish(())
            self.flush(max(0.0, deadline - time.monotonic()))
        if self._failure is not None and time.monotonic() < deadline:
            self._retry_at = 0.0  # one last new session for what failed
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
        producer, self._producer = self._producer, None
        if producer is None:
            return
        with self._lock:
            self._sent.retired = True  # late callbacks of the old client change nothing
        try:
            producer.close(timeout=0)
        except KafkaError as exc:
            # kafka-python 3.0 flushes inside close() and gives up half-way when records are
            # stuck (broker gone); finish the close so its __del__ does not retry it.
            log.debug("Kafka producer close: %s", exc)
            sender = getattr(producer, "_sender", None)
            if sender is not None:
                sender.force_close()
            producer._closed = True


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
            sink._last_ack = time.monotonic()
            recovered, sink._stall_warned = sink._stall_warned is not None, None
        if acked:
            sink._acknowledged(acked, recovered)

    def on_failed(self, exc: Exception) -> None:
        if not self.retired:
            self.sink._failed(self, exc)

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


def _describe(exc: BaseException | None) -> str:
    text = " ".join(str(exc).split())
    name = exc.__class__.__name__
    return text if text.startswith(name) else f"{name}: {text}" if text else name
