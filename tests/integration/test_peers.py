"""Another Kafka client on each side of the topic: librdkafka (confluent-kafka), as other
producers and consumers use it.

- librdkafka's idempotent producer writes contract events in every codec, mixed in one
  partition, with and without keys and headers, and tombstones: consumer.py (a real process)
  counts each event exactly once against the Decimal ground truth, and sends each tombstone
  to the dead letters with its reason.
- librdkafka's consumer reads what producer.py writes with each --compression: the
  documented messages (key = symbol, record timestamp = event time, the contract's JSON), in
  batches of that codec.

One broker run and one consumer run for each side, shared by every codec.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition

from tests.harness.kafka_wire import stored_batches
from tests.harness.net import wait_until
from tests.harness.sample_files import write_agg_trades
from tests.harness.scripts import run_script
from tests.pipeline import (
    Event,
    assert_tables_equal_truth,
    consumer_env,
    create_topic,
    query,
    random_stream,
    start_consumer,
    truth_from_csv,
    wait_for_total,
)

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
PARTITIONS = 3
TOMBSTONES = 3


def peer_producer(bootstrap: str, codec: str) -> Producer:
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "compression.type": codec,
            "linger.ms": 5,
        }
    )


def publish(producer: Producer, topic: str, events: list[Event], keyed: bool) -> None:
    for i, e in enumerate(events):
        producer.produce(
            topic,
            value=e.message(),
            key=e.symbol.encode() if keyed else None,
            timestamp=e.event_time,
            # One partition for every stream, keyed or not: the contract's seq grows along
            # a stream, in one partition (keyless, librdkafka would scatter it).
            partition=0,
            headers=[("trace-id", f"{i}".encode()), ("origin", b"librdkafka")] if i % 2 else None,
        )
    assert producer.flush(30) == 0, "librdkafka did not deliver everything"


def test_consumer_counts_what_librdkafka_writes_in_every_codec_exactly_once(
    broker, postgres, database, topic
):
    create_topic(broker.bootstrap, topic, PARTITIONS)
    rng = random.Random(18)
    events = random_stream(rng, 1500)
    producers = {codec: peer_producer(broker.bootstrap, codec) for codec in CODECS}
    try:
        # Rounds of every codec in turn: partition 0 holds batches of all five, interleaved.
        chunks = [events[i : i + 60] for i in range(0, len(events), 60)]
        for n, (chunk, codec) in enumerate(zip(chunks, itertools.cycle(CODECS), strict=False)):
            publish(producers[codec], topic, chunk, keyed=n % 4 != 3)  # every fourth keyless
        for n in range(TOMBSTONES):
            producers[CODECS[n]].produce(topic, value=None, key=b"BTCUSDT", partition=0)
            assert producers[CODECS[n]].flush(30) == 0
    finally:
        for producer in producers.values():
            producer.close()
    mixed = {b.codec for b in stored_batches(broker.bootstrap, topic, 0)}
    assert mixed == set(CODECS), f"partition 0 holds batches of {mixed}"

    env = consumer_env(broker, postgres, database, topic)
    dsn = postgres.dsn(database)
    consumer = start_consumer(env)
    try:
        wait_for_total(dsn, len(events), 90, [consumer])
        wait_until(
            lambda: query(dsn, "SELECT count(*) FROM dead_letter_events")[0][0] == TOMBSTONES,
            30,
            "the tombstones among the dead letters",
        )
        assert_tables_equal_truth(dsn, events)
        dead = query(dsn, "SELECT partition, error, raw_value FROM dead_letter_events")
        assert dead == [(0, "message has no value", None)] * TOMBSTONES
    finally:
        consumer.stop()
    out = consumer.output()
    assert "Kafka client failed" not in out and "Traceback" not in out, out[-3000:]


@pytest.fixture(scope="module")
def replay_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("peers") / "BTCUSDT-aggTrades-2026-01-01.csv"
    write_agg_trades(path, datetime(2026, 1, 1, tzinfo=UTC), random.Random(5), Decimal(43000))
    lines = path.read_text().splitlines(keepends=True)[:300]
    path.write_text("".join(lines))
    return path


def peer_read(bootstrap: str, topics: list[str], expected: int) -> Iterator[Message]:
    """Every message of the topics, read by librdkafka's consumer from the start."""
    reader = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "peer-reader",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    reader.assign([TopicPartition(t, p, 0) for t in topics for p in range(PARTITIONS)])
    seen: list[Message] = []

    def read() -> bool:
        for message in reader.consume(num_messages=1000, timeout=0.5):
            assert message.error() is None, message.error()
            seen.append(message)
        return len(seen) >= expected

    try:
        wait_until(read, 60, f"{expected} messages read by librdkafka", interval=0)
    finally:
        reader.close()
    return iter(seen)


def test_librdkafka_reads_what_producer_py_writes_with_each_compression(
    broker, topic, replay_file: Path
):
    truth = {(e.stream, e.seq): e for e in truth_from_csv(replay_file)}
    topics = {codec: f"{topic}_{codec}" for codec in CODECS}
    for codec, name in topics.items():
        create_topic(broker.bootstrap, name, PARTITIONS)
        args = ["--bootstrap-servers", broker.bootstrap, "--topic", name]
        result = run_script(
            "producer", [*args, "--source", "replay", "--compression", codec, str(replay_file)]
        )
        assert result.returncode == 0, result.stderr[-3000:]
    read: dict[str, list[tuple[str, int]]] = {topic: [] for topic in topics.values()}
    for message in peer_read(broker.bootstrap, list(topics.values()), len(truth) * len(CODECS)):
        value, read_from = message.value(), message.topic()
        assert value is not None and read_from is not None
        body = json.loads(value)
        event = truth[body["stream"], body["seq"]]
        assert body == json.loads(event.message())  # the contract's JSON, trade fields too
        assert message.key() == b"BTCUSDT"
        assert message.timestamp() == (1, event.event_time)  # CreateTime
        read[read_from].append((body["stream"], body["seq"]))
    for codec, name in topics.items():
        assert sorted(read[name]) == sorted(truth), f"{codec}: not every line exactly once"
        codecs = {
            b.codec for p in range(PARTITIONS) for b in stored_batches(broker.bootstrap, name, p)
        }
        # kafka-python sends a batch uncompressed when the codec would not make it smaller
        assert codec in codecs and codecs <= {codec, "none"}, f"{codec}: batches of {codecs}"
