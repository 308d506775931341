"""The Kafka edge's sink: an idempotent producer that re-sends, in order, what Kafka did not
take. It is the producer's sources.base.Sink (that protocol's docstring is its contract).

kafka-python 3.0.12 cannot be left to ride out a hung broker: once a request times out it
reconnects in a busy loop that keeps a core busy, and once a batch expires after
`delivery_timeout_ms` its idempotent producer resets its producer id but never asks for a new
one, so it sends nothing ever again. So a client that failed a delivery, or has had no
acknowledgement for `request_timeout_ms`, is retired: a new one is made only when the broker
answers again (making one is the probe: it gives up quietly after a few seconds), and it sends
every event not yet acknowledged again, in the order they were first sent, before anything
newer. Per partition the unacknowledged events are always the tail of what was sent
(acknowledgements arrive in order), so a re-send repeats a run of the stream in its original
order; the events' identities let the consumer count each one once.

KafkaSink keeps the events in order (waiting, then sent and unacknowledged: Outstanding, in
outstanding.py); KafkaClients (clients.py) makes, re-makes and closes its client; StallWatch
times Kafka's silences.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from kafka import KafkaProducer
from kafka.errors import KafkaTimeoutError

from btcpipe.backoff import Backoff
from btcpipe.contract import PriceEvent
from btcpipe.process import describe
from pricefeed.kafka_sink.clients import (
    DEFAULT_COMPRESSION,
    DEFAULT_DELIVERY_TIMEOUT_MS,
    KafkaClients,
)
from pricefeed.kafka_sink.outstanding import NotTaken, Outstanding
from pricefeed.sources.base import STALL_WARNING_SECONDS

log = logging.getLogger("producer")


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
        stall_warning: float = STALL_WARNING_SECONDS,
        delivery_timeout_ms: int = DEFAULT_DELIVERY_TIMEOUT_MS,
        compression: str = DEFAULT_COMPRESSION,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.echo = echo
        self._stop = stop
        self._clients = KafkaClients(
            bootstrap_servers, topic, partitions, stop, backoff, delivery_timeout_ms, compression
        )
        self._stall = StallWatch(stall_warning)
        self._sent = Outstanding()  # of the current client
        self._waiting: list[PriceEvent] = []  # to send, after everything in self._sent
        self.delivered = 0

    @property
    def client(self) -> KafkaProducer | None:
        """The current kafka-python client (None before connect, and while Kafka is away)."""
        return self._clients.producer

    def connect(self) -> bool:
        """Connect and make sure the topic exists, retrying until it works or we are stopped
        (False). A setting the client refuses raises KafkaConfigurationError."""
        return self._clients.first()

    # -- publishing -------------------------------------------------------------------------

    def publish(self, events: Iterable[PriceEvent]) -> None:
        """Send events after everything still waiting, without waiting for acknowledgements.
        Events that cannot be handed to the client now wait, in order, for the next call."""
        self._collect()
        stalled_for = self._warn_if_stalled()
        if stalled_for * 1000 >= self._clients.request_timeout_ms and self._sent.failure is None:
            self._sent.fail(KafkaTimeoutError(f"no acknowledgement for {stalled_for:.0f} s"))
        self._waiting.extend(events)
        if self._sent.failure is not None and not self._replace_client():
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
        if not self._sent.queue:
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

    def _collect(self) -> None:
        """Take in what the current client has acknowledged since the last look."""
        events = self._sent.collect()
        if not events:
            return
        self.delivered += len(events)
        if self._stall.acknowledged(time.monotonic()):
            log.info("Kafka is acknowledging messages again")
        if self.echo:
            for event in events:
                log.info("Produced: %s", event.to_json_bytes().decode())

    def _replace_client(self) -> bool:
        """Retire the failed client and queue every unacknowledged event again, in order,
        before what was waiting. False if no new client could be made yet (tried again later)."""
        if self._clients.producer is not None:
            sent = self._sent
            self._close_producer()  # nothing it still holds is acknowledged any more
            unacked = sent.retire()
            self._waiting[:0] = unacked
            log.warning(
                "Kafka did not acknowledge in time (%s); sending %d unacknowledged events "
                "again, in order, with a new producer session",
                describe(sent.failure),
                len(unacked),
            )
        if not self._clients.next(len(self._waiting)):
            return False
        self._sent = Outstanding()
        self._stall.last_ack = time.monotonic()  # the new client's stall starts now
        return True

    def _warn_if_stalled(self) -> float:
        """Say that Kafka has stopped answering, once a minute. Returns for how long. (After
        `_collect` the queue's head, if any, is unacknowledged.)"""
        unacked = len(self._sent.queue)
        stalled_for, warn = self._stall.check(time.monotonic(), unacked)
        if warn:
            self._stall.say(self.bootstrap_servers, stalled_for, unacked + len(self._waiting))
        return stalled_for

    # -- stopping ---------------------------------------------------------------------------

    def flush(self, timeout: float) -> None:
        self._clients.flush(timeout)
        self._collect()

    def backlog(self) -> int:
        """Events waiting to be sent, or sent and not yet acknowledged."""
        self._collect()
        return self._sent.unacknowledged() + len(self._waiting)

    def close(self, timeout: float = 10.0) -> int:
        """Deliver what is pending (within `timeout`), then disconnect. Returns how many events
        Kafka did not accept (lost when the process ends: the caller exits non-zero)."""
        deadline = time.monotonic() + timeout
        if self._clients.producer is not None or self._waiting:
            self.publish(())
            self.flush(max(0.0, deadline - time.monotonic()))
        if self._sent.failure is not None and time.monotonic() < deadline:
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
        self._sent.stop_listening()
        self._clients.close_current()


class StallWatch:
    """How long Kafka has acknowledged nothing while messages wait, and when to say so (once a
    minute)."""

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
