"""The Kafka edge: a group consumer whose offsets live in PostgreSQL, given up when it spins."""

from __future__ import annotations

import time

from kafka import KafkaConsumer
from kafka.errors import KafkaError

from aggregator.config import Settings

# Larger fetches amortise the per-request cost when catching up on a backlog (bench/ gives its
# bare client the same ones).
FETCH_SETTINGS = {
    "max_poll_records": 2000,
    "fetch_max_bytes": 16 * 1024 * 1024,
    "max_partition_fetch_bytes": 4 * 1024 * 1024,
}


def new_consumer(settings: Settings) -> KafkaConsumer:
    """A group member that never commits on its own: offsets are stored with the windows."""
    return KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=settings.group_id,
        client_id=f"btc-consumer-{settings.instance_id}",
        enable_auto_commit=False,
        auto_offset_reset=settings.auto_offset_reset,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=max(100, min(3000, settings.session_timeout_ms // 3)),
        max_poll_interval_ms=settings.max_poll_interval_ms,
        bootstrap_timeout_ms=5_000,
        **FETCH_SETTINGS,
    )


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

    # CPU seconds per second of an empty poll that count as spinning: a quiet poll uses about
    # 0.01, a spinning one up to 1 (less when other processes share the core).
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
        records = consumer.poll(timeout_ms=timeout_ms)
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
