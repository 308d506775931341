"""The Kafka edge: an idempotent producer that retries what it could not deliver."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterable

from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from pricefeed.contract import PriceEvent
from pricefeed.timing import Backoff

log = logging.getLogger("producer")


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
            linger_ms=5,
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
        with self._lock:
            pending = [*self._retry, *events]
            self._retry.clear()
        for index, event in enumerate(pending):
            try:
                self._send(event)
            except KafkaError as exc:
                self._requeue(pending[index:], exc)
                return

    def _send(self, event: PriceEvent) -> None:
        assert self._producer is not None, "connect() first"
        future = self._producer.send(
            self.topic, key=event.key(), value=event.to_json_bytes(), timestamp_ms=event.event_time
        )
        future.add_callback(self._on_delivered, event)
        future.add_errback(self._on_failed, event)

    def _on_delivered(self, event: PriceEvent, _metadata: object) -> None:
        self.delivered += 1
        if self.echo:
            log.info("Produced: %s", event.to_json_bytes().decode())

    def _on_failed(self, event: PriceEvent, exc: Exception) -> None:
        self._requeue([event], exc)

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

    def waiting(self) -> int:
        with self._lock:
            return len(self._retry)

    def flush(self, timeout: float) -> None:
        if self._producer is not None:
            try:
                self._producer.flush(timeout=timeout)
            except KafkaError as exc:
                log.warning("Kafka flush incomplete: %s", exc)

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is pending (within `timeout`), then disconnect."""
        if self._producer is not None:
            self.publish(())  # one more try for events waiting to be sent again
        self.flush(timeout)
        if self.waiting():
            log.error("Stopping with %d events Kafka did not accept", self.waiting())
        self._close_producer(timeout)

    def _close_producer(self, timeout: float = 0.0) -> None:
        if self._producer is not None:
            self._producer.close(timeout=timeout)
            self._producer = None
