"""The Kafka edge: a group consumer whose offsets live in PostgreSQL."""

from __future__ import annotations

from kafka import KafkaConsumer

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
