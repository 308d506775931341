"""The Kafka edge: a group consumer whose offsets live in PostgreSQL, polled without spinning."""

from __future__ import annotations

import logging
import threading
import time

from kafka import KafkaConsumer

from aggregator.config import Settings

log = logging.getLogger("consumer")


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
        # Larger fetches amortise the per-request cost when catching up on a backlog.
        max_poll_records=2000,
        fetch_max_bytes=16 * 1024 * 1024,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        bootstrap_timeout_ms=5_000,
    )


class CalmPoller:
    """`consumer.poll`, minus kafka-python 3.0.12's busy loop against a hung broker.

    When the broker stops answering (frozen, not refused), the client's poll returns nothing
    while keeping a core busy for its whole timeout. An empty poll that used the CPU for most
    of its wait is that spin: then poll only briefly and rest in between, until records come
    or a poll waits quietly again. Resting stays far below max.poll.interval.ms.
    """

    SPIN_SHARE = 0.5  # CPU seconds per second of an empty poll that count as spinning
    SHORT_POLL_MS = 50
    REST_SECONDS = 1.0

    def __init__(self, stop: threading.Event, bootstrap_servers: str) -> None:
        self.stop = stop
        self.bootstrap_servers = bootstrap_servers
        self.spinning_since: float | None = None

    def poll(self, consumer: KafkaConsumer, timeout_ms: int) -> dict:
        if self.spinning_since is not None:
            timeout_ms = min(timeout_ms, self.SHORT_POLL_MS)
        wall, cpu = time.monotonic(), time.process_time()
        records = consumer.poll(timeout_ms=timeout_ms)
        wall, cpu = time.monotonic() - wall, time.process_time() - cpu
        if records or (wall >= 0.04 and cpu < self.SPIN_SHARE * wall):
            self._calm()
        elif wall >= 0.04:
            self._spinning()
        return records

    def _spinning(self) -> None:
        if self.spinning_since is None:
            self.spinning_since = time.monotonic()
            log.warning(
                "Kafka at %s is not answering; polling once a second until it does",
                self.bootstrap_servers,
            )
        self.stop.wait(self.REST_SECONDS)

    def _calm(self) -> None:
        if self.spinning_since is not None:
            log.info(
                "Kafka is answering again after %.0f s", time.monotonic() - self.spinning_since
            )
            self.spinning_since = None
