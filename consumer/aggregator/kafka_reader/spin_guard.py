"""Polling Kafka: giving up a client that busy-loops against a hung broker, and naming a
record batch it cannot decode."""

from __future__ import annotations

import time

from kafka import KafkaConsumer
from kafka.errors import KafkaError

from aggregator.kafka_reader.undecodable import undecodable


class KafkaUnresponsive(KafkaError):
    """The broker does not answer and the client busy-loops waiting for it: replace it."""


class SpinGuard:
    """`consumer.poll`, watching for kafka-python 3.0.12's busy loop against a hung broker.

    When the broker stops answering (frozen, not refused), the client spins: first in `poll`,
    which returns nothing while keeping a core busy for its whole timeout, later on its own
    network thread, whatever we do. An empty poll that used the CPU for most of its wait is
    that spin; twice in a row, and the client is given up (KafkaUnresponsive), to be replaced
    once the broker answers again (making a client is the probe: it waits quietly).
    """

    # CPU seconds per second of an empty poll that count as spinning: a quiet poll uses almost
    # none, a spinning one most of a core (less when other processes share it), so the
    # threshold sits well apart from both.
    SPIN_SHARE = 0.2
    SPINS_TO_GIVE_UP = 2
    SHORT_POLL_MS = 50

    def __init__(self, bootstrap_servers: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.spins = 0

    def poll(self, consumer: KafkaConsumer, timeout_ms: int) -> dict:
        if self.spins:
            timeout_ms = min(timeout_ms, self.SHORT_POLL_MS)  # confirm it quickly
        wall, cpu = time.monotonic(), time.process_time()
        try:
            records = consumer.poll(timeout_ms=timeout_ms)
        except Exception as exc:
            batch = undecodable(exc, consumer)
            if batch is None:
                raise
            raise batch from exc  # permanent: the same bytes fail again
        wall, cpu = time.monotonic() - wall, time.process_time() - cpu
        if records or cpu < self.SPIN_SHARE * wall:
            self.spins = 0
        elif wall >= 0.04:
            self.spins += 1
            if self.spins >= self.SPINS_TO_GIVE_UP:
                self.spins = 0
                raise KafkaUnresponsive(
                    f"Kafka at {self.bootstrap_servers} does not answer and the client "
                    "busy-loops waiting"
                )
        return records
