"""The Kafka sink without a broker: key-to-partition cache, acknowledgement bookkeeping."""

from __future__ import annotations

import threading

from kafka.errors import KafkaTimeoutError
from kafka.future import Future
from kafka.partitioner import DefaultPartitioner

from btcpipe.backoff import Backoff
from btcpipe.contract import PriceEvent, make_event
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


class Acknowledgements:
    """What the bookkeeping tells the sink: each acknowledgement heard, each acknowledged run."""

    def __init__(self) -> None:
        self.heard = 0
        self.runs: list[list[PriceEvent]] = []

    def hear(self, now: float) -> bool:
        self.heard += 1
        return False

    def acknowledged(self, events: list[PriceEvent], recovered: bool) -> None:
        self.runs.append(events)


def test_bookkeeping_is_exact_when_partitions_acknowledge_out_of_send_order() -> None:
    """Acknowledgements pop the acknowledged prefix of what was sent; one that arrives behind
    a slower partition's event counts at once, and a retired client's unacknowledged events
    come back in send order."""
    told = Acknowledgements()
    sent = Outstanding(threading.Lock(), told.hear, told.acknowledged)
    producer = UnsentProducer()
    events = [
        make_event("BTCUSDT", "1.5", 1_767_225_600_000 + i, "binance", RUN, i + 1) for i in range(5)
    ]
    sent.send_each(producer, "t", events)
    futures = producer.futures
    assert sent.count() == 5
    futures[1].success("metadata")  # another partition, ahead of event 0's
    assert (sent.count(), told.runs, told.heard) == (4, [], 1)
    futures[0].success("metadata")
    assert (sent.count(), told.runs) == (3, [events[:2]])
    futures[2].failure(KafkaTimeoutError("expired"))
    futures[4].success("metadata")
    assert (sent.count(), told.runs) == (2, [events[:2]])
    assert isinstance(sent.failure, KafkaTimeoutError)
    sent.fail(KafkaTimeoutError("a later failure"))
    assert str(sent.failure) == "KafkaTimeoutError: expired"  # the first one is kept
    assert sent.retire() == [events[2], events[3]]
    futures[3].success("metadata")  # late: the retired client's events are sent again anyway
    assert (sent.count(), told.runs, told.heard) == (0, [events[:2]], 3)


def test_the_kafka_sink_is_the_sink_of_the_sources_and_has_no_client_before_connect() -> None:
    """The annotation is the check that matters: mypy holds KafkaSink to the Sink protocol."""
    kafka_sink = KafkaSink("127.0.0.1:9", "t", 3, threading.Event(), Backoff(0.2, 2), echo=False)
    sink: Sink = kafka_sink
    assert kafka_sink.client is None
    assert sink.backlog() == 0
