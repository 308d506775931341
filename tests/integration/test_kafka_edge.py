"""The consumer's Kafka edge: the fetch settings read a one-partition backlog without waiting
on the idle partitions (a real broker)."""

from __future__ import annotations

import time

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.record.default_records import DefaultRecordBatchBuilder

from aggregator.core.decoding import decode_event
from aggregator.kafka_reader.client import FETCH_SETTINGS, MAX_PARTITION_FETCH_BYTES
from btcpipe.contract import EARLIEST_EVENT_MS, PriceEvent, replay_stream
from pricefeed.kafka_sink.clients import CLIENT_SETTINGS
from tests.harness import TansuBroker


def test_a_poll_can_take_a_whole_partition_response_of_the_smallest_valid_events():
    # The smallest message the contract admits: a one-letter symbol, price "1", the shortest
    # source, no identity (the previous release's messages).
    value = b'{"symbol":"A","price":"1","event_time":%d,"source":"replay"}' % EARLIEST_EVENT_MS
    assert decode_event(value, now_ms=EARLIEST_EVENT_MS).symbol == "A"
    record_bytes = DefaultRecordBatchBuilder.size_in_bytes(
        offset_delta=1, timestamp_delta=0, key=b"A", value=value, headers=[]
    )
    # A broker may return one whole batch beyond the partition's limit (Tansu does).
    response_bytes = MAX_PARTITION_FETCH_BYTES + CLIENT_SETTINGS["batch_size"]
    assert FETCH_SETTINGS["max_poll_records"] * record_bytes >= response_bytes


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_a_backlog_in_one_partition_is_read_without_waiting_on_the_idle_ones(
    broker: TansuBroker, topic: str, compression: str | None
):
    """A fetch that asks only for idle partitions is held for fetch_max_wait_ms. Here that is
    a minute, far beyond the deadline: reading the backlog in time proves that every fetch
    while it lasted also asked for the partition holding it. Also in producer.py's default
    codec, whose batches hold about twelve times the records per byte."""
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([NewTopic(topic, 3, 1)])
    admin.close()
    stream = replay_stream("BTCUSDT", "0" * 64)
    producer = KafkaProducer(
        bootstrap_servers=broker.bootstrap, compression_type=compression, **CLIENT_SETTINGS
    )
    events = 60_000  # about 10 MiB: ten responses of the partition's limit
    for seq in range(1, events + 1):
        event_time = 1_767_225_600_000 + seq
        event = PriceEvent("BTCUSDT", f"{40000 + seq % 997}.25", event_time, "replay", stream, seq)
        producer.send(topic, value=event.to_json_bytes(), key=b"BTCUSDT", partition=1)
    producer.flush()
    producer.close()

    consumer = KafkaConsumer(
        bootstrap_servers=broker.bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=60_000,
        request_timeout_ms=90_000,
        **FETCH_SETTINGS,
    )
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(3)])
        consumer.seek_to_beginning()
        read, deadline = 0, time.monotonic() + 30
        while read < events and time.monotonic() < deadline:
            read += sum(len(batch) for batch in consumer.poll(timeout_ms=1000).values())
        assert read == events, f"{read} of {events} read before the deadline"
    finally:
        consumer.close()
