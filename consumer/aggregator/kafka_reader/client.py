"""The Kafka client: a group member that never commits on its own, since the offsets that
count are stored in PostgreSQL with the windows, and the fetch settings that keep a backlog
flowing."""

from __future__ import annotations

from kafka import KafkaConsumer

from aggregator.settings import Settings

# A poll takes every record a fetch brought for a partition. kafka-python 3.0.12 sends its next
# fetch as soon as no fetched response is queued, and leaves out the partition whose records a
# poll is still handing over. When the other partitions have nothing new (one symbol is one
# partition: every backfill), that fetch asks only for them, and the broker holds it for
# fetch_max_wait_ms while the backlog waits behind it. So a poll must hold a partition's whole
# response: MAX_PARTITION_FETCH_BYTES, plus the one producer batch (at most producer.py's
# batch_size) a broker may return beyond it, of the smallest valid events
# (tests/integration/test_kafka_edge.py).
MAX_PARTITION_FETCH_BYTES = 1024 * 1024
METADATA_MAX_AGE_MS = 30_000
FETCH_SETTINGS = {
    "max_poll_records": 25_000,
    "max_partition_fetch_bytes": MAX_PARTITION_FETCH_BYTES,
    "fetch_max_bytes": 16 * 1024 * 1024,
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
        # Only the producer creates the topic, with KAFKA_TOPIC_PARTITIONS: a consumer that
        # reached the broker first would create it with the broker's default.
        allow_auto_create_topics=False,
        # A recreated topic shows in the metadata as a new topic id (kafka_reader/log_guard.py).
        metadata_max_age_ms=METADATA_MAX_AGE_MS,
        **FETCH_SETTINGS,
    )


def topic_id(consumer: KafkaConsumer, topic: str) -> str | None:
    """Kafka's id of the topic as the client's metadata has it (None: the broker gives none).
    kafka-python keeps it in its cluster metadata, which has no public accessor."""
    found = consumer._cluster.topic_id(topic)
    return None if found is None or found.int == 0 else str(found)  # 0: "no id" in Kafka
