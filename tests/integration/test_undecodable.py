"""A record batch the consumer cannot decode: consumer.py (a real process) stops with exit 2
and one sentence naming where, having written everything before it; nothing is skipped until
a person moves the stored offset as docs/operations.md says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from kafka import KafkaProducer

from tests.harness.kafka_wire import produce_batch, record_batch
from tests.pipeline import (
    BASE_TIME_MS,
    Event,
    assert_tables_equal_truth,
    consumer_env,
    create_topic,
    execute,
    new_producer,
    query,
    start_consumer,
    wait_for_total,
    with_identity,
)

BAD_PARTITION = 1
PARTITIONS = 3


def events(count: int, start: int) -> list[Event]:
    return [
        Event("BTCUSDT", f"{43000 + i}.{i % 7}", BASE_TIME_MS + start + i * 1000)
        for i in range(count)
    ]


def send(bootstrap: str, topic: str, batch: list[Event], partition: int) -> None:
    producer = new_producer(bootstrap)
    for e in batch:
        producer.send(
            topic,
            key=e.symbol.encode(),
            value=e.message(),
            timestamp_ms=e.event_time,
            partition=partition,
        )
    producer.flush()
    producer.close()


def skip_batch(dsn: str, group: str, topic: str, partition: int, at: int, past: int) -> None:
    """The statement of docs/operations.md (tests/integration/test_docs_sql.py runs it as
    printed), with the values of the consumer's sentence."""
    error = f"skipped by hand: undecodable record batch, offsets {at} to {past - 1}"
    execute(
        dsn,
        "WITH moved AS ("
        " INSERT INTO consumer_offsets (group_id, topic, partition, next_offset)"
        " VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (group_id, topic, partition) DO UPDATE"
        " SET next_offset = excluded.next_offset, updated_at = now()"
        " WHERE consumer_offsets.next_offset = %s"
        " RETURNING topic, partition)"
        ' INSERT INTO dead_letter_events (topic, partition, "offset", raw_size, error, received_at)'
        " SELECT topic, partition, %s, 0, %s, now() FROM moved",
        (group, topic, partition, past, at, at, error),
    )


BAD_BATCHES = {
    "checksum": (record_batch([(b"BTCUSDT", b"{}", BASE_TIME_MS)] * 3, crc_valid=False), "crc"),
    "gzip that is not": (record_batch([(b"BTCUSDT", b"{}", BASE_TIME_MS)] * 3, codec=1), "gzip"),
}


@pytest.mark.parametrize("kind", ["checksum", "gzip that is not"])
def test_an_undecodable_batch_stops_the_consumer_with_exit_2_and_can_be_skipped_by_hand(
    broker, postgres, database, topic, kind
):
    batch, said = BAD_BATCHES[kind]  # (Tansu refuses a batch of an unknown codec)
    create_topic(broker.bootstrap, topic, PARTITIONS)
    env = consumer_env(broker, postgres, database, topic)
    dsn = postgres.dsn(database)
    before = with_identity(events(40, 0), run="before")
    after = with_identity(events(25, 60_000), run="after")
    others = with_identity(events(30, 0), run="others")
    send(broker.bootstrap, topic, before[:20], BAD_PARTITION)
    send(broker.bootstrap, topic, others, 0)
    send(broker.bootstrap, topic, before[20:], BAD_PARTITION)
    produce_batch(broker.bootstrap, topic, BAD_PARTITION, batch)
    send(broker.bootstrap, topic, after, BAD_PARTITION)

    consumer = start_consumer(env)
    assert consumer.wait(90) == 2, consumer.output()[-3000:]
    out = consumer.output()
    sentence = re.search(r"consumer\.py: error: (.*)", out)
    assert sentence, out[-3000:]
    assert sentence.group(1).startswith(
        f"cannot decode the record batch of topic {topic} partition {BAD_PARTITION} at offset "
        f"40 (the batch ends at offset 42): "
    ), sentence.group(1)
    assert said is None or said in sentence.group(1).lower()
    assert "nothing was skipped" in sentence.group(1)
    assert out.count("Kafka client failed") == 0  # never retried as if transient
    # Everything before the batch was written, and the stored offset stands at it; the
    # other partition is written as far as it was read.
    stored = dict(
        query(dsn, "SELECT partition, next_offset FROM consumer_offsets WHERE topic = %s", (topic,))
    )
    assert stored[BAD_PARTITION] == 40
    assert_tables_equal_truth(dsn, before + others[: stored.get(0, 0)])

    # Started again, it stops at the same batch: nothing is skipped by itself.
    again = start_consumer(env)
    assert again.wait(90) == 2
    assert f"partition {BAD_PARTITION} at offset 40" in again.output()

    # A person decides to skip it: the three records of the batch are lost, the rest counted.
    skip_batch(dsn, env["KAFKA_CONSUMER_GROUP"], topic, BAD_PARTITION, 40, 43)
    resumed = start_consumer(env)
    try:
        wait_for_total(dsn, len(before + others + after), 90, [resumed])
        assert_tables_equal_truth(dsn, before + others + after)
        assert query(dsn, 'SELECT partition, "offset", error FROM dead_letter_events') == [
            (BAD_PARTITION, 40, "skipped by hand: undecodable record batch, offsets 40 to 42")
        ]
    finally:
        resumed.stop()


def test_a_codec_without_its_library_is_named_and_stops_with_exit_2(
    broker, postgres, database, topic, tmp_path: Path
):
    """The consumer of an image without zstandard (a shadowing package that fails to import,
    as a missing one does) reading a zstd batch: exit 2, not the endless retry it was."""
    missing = tmp_path / "zstandard"
    missing.mkdir()
    (missing / "__init__.py").write_text("raise ImportError('zstandard is not installed')\n")
    create_topic(broker.bootstrap, topic, 1)
    env = consumer_env(broker, postgres, database, topic)
    events_ = with_identity(events(10, 0))
    zstd = KafkaProducer(bootstrap_servers=broker.bootstrap, compression_type="zstd")
    for e in events_:
        zstd.send(topic, key=e.symbol.encode(), value=e.message(), timestamp_ms=e.event_time)
    zstd.flush()
    zstd.close()
    consumer = start_consumer({**env, "PYTHONPATH": str(tmp_path)})
    assert consumer.wait(90) == 2, consumer.output()[-3000:]
    out = consumer.output()
    assert (
        f"consumer.py: error: cannot decode the record batch of topic {topic} partition 0 at "
        "offset 0 (the batch ends at offset 9): UnsupportedCodecError: Libraries for zstd "
        "compression codec not found; nothing was skipped" in out
    ), out[-3000:]
    assert "retrying" not in out
