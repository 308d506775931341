"""The Kafka sink without a broker: key-to-partition cache, acknowledgement bookkeeping."""

from __future__ import annotations

import threading

from kafka.errors import KafkaTimeoutError
from kafka.future import Future
from kafka.partitioner import DefaultPartitioner

from btcpipe.backoff import Backoff
from btcpipe.contract import make_event
from pricefeed.kafka_sink import KafkaSink
from pricefeed.kafka_sink.clients import KeyPartitionCache
from pricefeed.kafka_sink.outstanding import Outstanding
from pricefeed.sources.base import Sink
from tests.producer_parts import RUN


class FakeCluster:
    """What a partitioner reads of kafka-python's cluster metadata."""

    def __init__(self, partitions: int) -> None:
        self.count = partitions

    def topics(self) -> set[str]:
        return {"btc_price"}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.count))

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.count))


def test_key_partition_cache_places_every_key_as_kafkas_default_partitioner() -> None:
    cache, default, cluster = KeyPartitionCache(), DefaultPartitioner(), FakeCluster(3)
    keys = [f"S{i}USDT".encode() for i in range(300)]
    for count in (3, 7, 3):  # the topic grows, and (another topic of that name) shrinks
        cluster.count = count
        for key in keys * 2:  # the second time from the cache
            want = default.partition("btc_price", key, key, b"v", b"v", cluster)
            assert cache.partition("btc_price", key, key, b"v", b"v", cluster) == want, key


class UnsentProducer:
    """What Outstanding.send_each calls of a kafka-python producer: `send`, which returns the
    record's future (kafka-python's own), kept here for the test to complete as the client's
    network thread would."""

    def __init__(self) -> None:
        self.futures: list[Future] = []

    def send(self, topic: str, key: bytes, value: bytes, timestamp_ms: int) -> Future:
        self.futures.append(Future())
        return self.futures[-1]


def test_bookkeeping_is_exact_when_partitions_acknowledge_out_of_send_order() -> None:
    """A look at the futures pops the acknowledged prefix of what was sent; one acknowledged
    behind a slower partition's event waits for it (and counts as acknowledged at once), a
    failure is heard when it happens, and a retired client's unacknowledged events come back
    in send order."""
    sent, producer = Outstanding(), UnsentProducer()
    events = [
        make_event("BTCUSDT", "1.5", 1_767_225_600_000 + i, "binance", RUN, i + 1) for i in range(5)
    ]
    sent.send_each(producer, "t", events)
    futures = producer.futures
    assert (sent.collect(), sent.unacknowledged()) == ([], 5)
    futures[1].success("metadata")  # another partition, ahead of event 0's
    assert (sent.collect(), sent.unacknowledged()) == ([], 4)
    futures[0].success("metadata")
    assert (sent.collect(), sent.collect(), sent.unacknowledged()) == (events[:2], [], 3)
    futures[2].failure(KafkaTimeoutError("expired"))
    futures[4].success("metadata")
    assert isinstance(sent.failure, KafkaTimeoutError)  # by the errback, before any look
    assert (sent.collect(), sent.unacknowledged()) == ([], 2)  # a failure stops the popping
    sent.fail(KafkaTimeoutError("a later failure"))
    assert str(sent.failure) == "KafkaTimeoutError: expired"  # the first one is kept
    assert sent.retire() == [events[2], events[3]]
    futures[3].success("metadata")  # late: the retired client's events are sent again anyway
    assert (sent.collect(), sent.unacknowledged()) == ([], 0)


def test_a_future_already_failed_when_sent_is_heard() -> None:
    """kafka-python may fail a record inside send (its errback then runs at once)."""

    class FailingProducer(UnsentProducer):
        def send(self, topic: str, key: bytes, value: bytes, timestamp_ms: int) -> Future:
            return super().send(topic, key, value, timestamp_ms).failure(KafkaTimeoutError("x"))

    sent = Outstanding()
    event = make_event("BTCUSDT", "1.5", 1_767_225_600_000, "binance", RUN, 1)
    sent.send_each(FailingProducer(), "t", [event])
    assert isinstance(sent.failure, KafkaTimeoutError)
    assert sent.retire() == [event]


def test_the_kafka_sink_is_the_sink_of_the_sources_and_has_no_client_before_connect() -> None:
    """The annotation is the check that matters: mypy holds KafkaSink to the Sink protocol."""
    kafka_sink = KafkaSink("127.0.0.1:9", "t", 3, threading.Event(), Backoff(0.2, 2), echo=False)
    sink: Sink = kafka_sink
    assert kafka_sink.client is None
    assert sink.backlog() == 0
