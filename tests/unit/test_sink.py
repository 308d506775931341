"""The Kafka sink without a broker: key-to-partition cache, acknowledgement bookkeeping."""

from __future__ import annotations

import threading

from kafka.errors import KafkaTimeoutError
from kafka.future import Future
from kafka.partitioner import DefaultPartitioner

from btcpipe.backoff import Backoff
from btcpipe.contract import make_event
from pricefeed.kafka_sink.sink import KafkaSink, KeyPartitionCache
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


def test_sink_bookkeeping_is_exact_when_partitions_acknowledge_out_of_send_order() -> None:
    """Acknowledgements pop the acknowledged prefix of what was sent; one that arrives behind
    a slower partition's event counts at once, and a retired client's unacknowledged events
    come back in send order (kafka-python's own futures, completed as its network thread
    would)."""
    sink = KafkaSink("127.0.0.1:9", "t", 3, threading.Event(), Backoff(0.2, 2), echo=False)
    sent = sink._sent
    events = [
        make_event("BTCUSDT", "1.5", 1_767_225_600_000 + i, "binance", RUN, i + 1) for i in range(5)
    ]
    futures = [Future() for _ in events]
    for event, future in zip(events, futures, strict=True):  # as KafkaSink._send_waiting does
        sent.queue.append((event, future))
        future.add_callback(sent.on_delivered)
        future.add_errback(sent.on_failed)
    assert sink.backlog() == 5
    futures[1].success("metadata")  # another partition, ahead of event 0's
    assert (sink.backlog(), sink.delivered) == (4, 0)
    futures[0].success("metadata")
    assert (sink.backlog(), sink.delivered) == (3, 2)
    futures[2].failure(KafkaTimeoutError("expired"))
    futures[4].success("metadata")
    assert (sink.backlog(), sink.delivered) == (2, 2)
    assert isinstance(sink._failure, KafkaTimeoutError)
    assert sent.retire() == [events[2], events[3]]
    futures[3].success("metadata")  # late: the retired client's events are sent again anyway
    assert (sink._sent.count(), sink.delivered) == (0, 2)
