"""A Kafka that lost or replaced its log while PostgreSQL kept the offsets: the consumer notices,
says so, reads the new log from its start, and the tables still equal the Decimal truth.

The broker is replaced by a new, empty one on the same address (a lost volume, a broker
started without its data): Tansu keeps its log in memory, so a restart is exactly that.
Messages removed below a stored offset (retention, delete-records) cannot be made here: Tansu
has neither, and its logs always start at offset 0, so that verdict is proven on the pure
check (tests/unit/test_log_check.py) and on the flush that records it (test_store.py)."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError, TopicAlreadyExistsError

from aggregator.kafka_reader.positions import Positions
from tests.harness import PostgresServer, TansuBroker
from tests.harness.net import wait_until
from tests.pipeline import (
    assert_tables_equal_truth,
    consumer_env,
    create_topic,
    message,
    messages_in,
    produce,
    produce_raw,
    query,
    random_stream,
    start_consumer,
    wait_for_total,
    wait_until_all_read,
)

# Enough for every partition of the first log to stand well past the end of the second: a
# position inside the new log would be told apart only by the topic's id.
FIRST_LOG, RESENT, SECOND_LOG = 300, 50, 100


@pytest.fixture
def own_broker() -> Iterator[TansuBroker]:
    """A broker of this test's own: replacing it must not touch the session's."""
    with TansuBroker() as server:
        yield server


def create_again(bootstrap: str, topic: str, partitions: int) -> None:
    """The topic as the producer creates it on a new broker; a consumer's metadata request may
    have created it first on Tansu, which auto-creates on a named request whatever the
    client asks (Apache Kafka honours the consumer's allow_auto_create_topics=False)."""
    with contextlib.suppress(TopicAlreadyExistsError):
        create_topic(bootstrap, topic, partitions)


def stored_sum(dsn: str, topic: str, partitions: int) -> int:
    rows = query(
        dsn,
        "SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets "
        "WHERE topic = %s AND partition < %s",
        (topic, partitions),
    )
    return int(rows[0][0])


def test_a_broker_replaced_under_a_running_consumer_is_read_from_its_new_start(
    own_broker: TansuBroker, postgres: PostgresServer, database: str, topic: str
) -> None:
    """The consumer keeps running while its broker is swapped for an empty one, to which the
    producer re-sends its last events and goes on. Every stored offset lies past the new log's
    end: the consumer says the log was replaced, reads it from offset 0, and counts the re-sent
    events once (their identities are counted already) and the new ones once."""
    events = random_stream(random.Random(19), FIRST_LOG + SECOND_LOG)
    create_topic(own_broker.bootstrap, topic, 4)
    produce(own_broker.bootstrap, topic, events[:FIRST_LOG])
    dsn = postgres.dsn(database)
    with start_consumer(consumer_env(own_broker, postgres, database, topic)) as consumer:
        wait_until_all_read(dsn, own_broker.bootstrap, topic, 60)
        own_broker.restart_empty()
        create_again(own_broker.bootstrap, topic, 4)
        produce(own_broker.bootstrap, topic, events[FIRST_LOG - RESENT :])
        wait_for_total(dsn, len(events), 90, [consumer])
        wait_until_all_read(dsn, own_broker.bootstrap, topic, 60)
        output = consumer.output()
    assert "was replaced: " in output, output[-3000:]
    assert "reading the new log from offset 0" in output
    assert_tables_equal_truth(dsn, events, "after the broker was replaced")
    duplicates = query(dsn, "SELECT sum(duplicate_events) FROM pipeline_metrics")[0][0]
    assert duplicates == RESENT


def test_a_broker_replaced_while_the_consumer_was_stopped_and_a_partition_it_lost(
    own_broker: TansuBroker, postgres: PostgresServer, database: str, topic: str
) -> None:
    """The consumer stops; the broker comes back empty and the topic is created again with one
    partition fewer. At start the consumer holds every stored offset against the new logs,
    reads them from their start, and reports the offset kept for the partition that is gone."""
    events = random_stream(random.Random(20), FIRST_LOG + SECOND_LOG)
    create_topic(own_broker.bootstrap, topic, 4)
    produce(own_broker.bootstrap, topic, events[:FIRST_LOG])
    dsn = postgres.dsn(database)
    env = consumer_env(own_broker, postgres, database, topic)
    with start_consumer(env) as consumer:
        wait_until_all_read(dsn, own_broker.bootstrap, topic, 60)
        assert consumer.stop() == 0
    own_broker.restart_empty()
    create_topic(own_broker.bootstrap, topic, 3)
    produce(own_broker.bootstrap, topic, events[FIRST_LOG - RESENT :])
    end = messages_in(own_broker.bootstrap, topic)
    with start_consumer(env, "c2") as consumer:
        wait_for_total(dsn, len(events), 90, [consumer])
        consumer.wait_until(lambda: stored_sum(dsn, topic, 3) == end, 60, "the new ends stored")
        output = consumer.output()
    assert "was replaced: the topic was recreated (its id changed)" in output, output[-3000:]
    assert "keeps offsets for partition(s) [3] of" in output
    assert "which the topic no longer has (it has 3)" in output
    assert_tables_equal_truth(dsn, events, "after the broker was replaced")


def test_the_consumer_waits_for_the_topic_and_never_creates_it(
    broker: TansuBroker, postgres: PostgresServer, database: str, topic: str
) -> None:
    """Started before anything made the topic, the consumer says it waits, and the topic does
    not appear until the producer's side creates it, with the partitions it asks for."""
    events = random_stream(random.Random(21), 60)
    dsn = postgres.dsn(database)
    with start_consumer(consumer_env(broker, postgres, database, topic)) as consumer:
        consumer.wait_for_output(f"Waiting for topic {topic}", 30)
        # Once more after it said so: still only waiting, and still no topic.
        consumer.wait_for_output(f"Waiting for topic {topic}", 30, count=2)
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        try:
            assert topic not in admin.list_topics()
            create_topic(broker.bootstrap, topic, 2)
            wait_until(lambda: topic in admin.list_topics(), 10, f"topic {topic}")
            (described,) = admin.describe_topics([topic])
        finally:
            admin.close()
        assert len(described["partitions"]) == 2
        produce(broker.bootstrap, topic, events)
        wait_for_total(dsn, len(events), 60, [consumer])
    assert_tables_equal_truth(dsn, events)


def test_the_offset_lag_is_unknown_not_zero_while_a_position_lies_past_the_end(
    broker: TansuBroker, topic: str
) -> None:
    """Positions past the high watermark (a replaced log not yet noticed) give no lag at all,
    rather than the 0 that would look like a consumer keeping up."""
    create_topic(broker.bootstrap, topic, 1)
    produce_raw(broker.bootstrap, topic, [message(seq=n) for n in range(5)], b"BTCUSDT")
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek(tp, 0)
        wait_until(
            lambda: consumer.poll(timeout_ms=100) is not None and consumer.highwater(tp),
            15,
            "a fetch's high watermark",
            interval=0,
        )
        positions = Positions(topic)
        positions.consumer = consumer
        positions.stored = {0: 3}
        assert (positions.lag({}), positions.known_lag({})) == (2, 2)
        positions.stored = {0: 66}
        assert (positions.lag({}), positions.known_lag({})) == (None, 0)
        assert positions.lag({0: 5}) == 0
    finally:
        consumer.close()


def test_the_harness_broker_cannot_remove_messages(own_broker: TansuBroker, topic: str) -> None:
    """Why messages removed unread are proven without a broker: Tansu drops the connection on
    DeleteRecords and keeps every log from offset 0. Should it learn to, this fails, and the
    path deserves a test with the real scripts."""
    create_topic(own_broker.bootstrap, topic, 1)
    produce_raw(own_broker.bootstrap, topic, [message(seq=n) for n in range(5)], b"BTCUSDT")
    tp = TopicPartition(topic, 0)
    admin = KafkaAdminClient(bootstrap_servers=own_broker.bootstrap)
    try:
        with pytest.raises(KafkaError):
            admin.delete_records({tp: 3})
    finally:
        admin.close()
    consumer = KafkaConsumer(bootstrap_servers=own_broker.bootstrap)
    try:
        assert consumer.beginning_offsets([tp]) == {tp: 0}
    finally:
        consumer.close()
