"""The Kafka reading edge: the last event of given streams that a topic holds, read from the
end of the partition each symbol's key goes to (where the producer's sink put it). It knows no
source: it is asked for streams by symbol and answers their highest `seq` found.

It looks back from the end in growing steps until each stream is found, the partition's
start is reached, or LOOK_BACK_AT_MOST records were looked at (a stream not found by then is
left out: a long-lived topic full of other events must not hold up every start). Its end is
the high watermark of a fetch, not ListOffsets' answer, which some brokers give short (the
last batch's base offset + 1)."""

from __future__ import annotations

import time
from collections.abc import Mapping

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.partitioner.default import murmur2

from btcpipe.clock import wall_clock_ms
from btcpipe.contract import ContractError, decode_message

FIRST_STEP = 2000  # records looked at first, from the end; each next step back doubles
LOOK_BACK_AT_MOST = 1_000_000  # records of one partition
POLL_MS = 200


class TopicUnreadable(Exception):
    """Kafka did not answer in time, or failed: the outcome may change, so the caller retries."""


def partition_of(key: bytes, partitions: int) -> int:
    """The partition kafka-python's default partitioner gives `key` (murmur2, as Java's)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class TopicTail:
    def __init__(self, bootstrap_servers: str, topic: str, timeout: float = 60.0) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.timeout = timeout

    def last_seqs(self, streams: Mapping[str, str]) -> dict[str, int]:
        """symbol -> the highest seq of its stream (`streams[symbol]`) in the newest stretch
        of its partition that holds any; symbols without one are left out."""
        try:
            consumer = KafkaConsumer(
                bootstrap_servers=self.bootstrap_servers,
                enable_auto_commit=False,
                group_id=None,
                request_timeout_ms=int(self.timeout * 1000),
            )
        except KafkaError as error:
            raise TopicUnreadable(f"{error.__class__.__name__}: {error}") from None
        try:
            if self.topic not in consumer.topics():
                return {}
            count = len(consumer.partitions_for_topic(self.topic) or ())
            by_partition: dict[int, dict[str, str]] = {}
            for symbol, stream in streams.items():
                by_partition.setdefault(partition_of(symbol.encode(), count), {})[stream] = symbol
            found: dict[str, int] = {}
            for partition, wanted in sorted(by_partition.items()):
                tp = TopicPartition(self.topic, partition)
                found.update(_look_back(consumer, tp, wanted, self.timeout))
            return found
        except KafkaError as error:
            raise TopicUnreadable(f"{error.__class__.__name__}: {error}") from None
        finally:
            consumer.close()


def _look_back(
    consumer: KafkaConsumer, tp: TopicPartition, wanted: dict[str, str], timeout: float
) -> dict[str, int]:
    """From the end of one partition back, stretch by stretch, until every stream of `wanted`
    (stream -> symbol) is found; each stretch is read within `timeout` seconds."""
    consumer.assign([tp])
    start_of_log = consumer.beginning_offsets([tp])[tp]
    listed_end = consumer.end_offsets([tp])[tp]
    found: dict[str, int] = {}
    if listed_end <= start_of_log:
        return found  # empty (a short answer is still past the last batch's base offset)
    upper: int | None = None  # None: to the high watermark
    step = FIRST_STEP
    begin = max(start_of_log, listed_end - step)
    keys = {symbol.encode() for symbol in wanted.values()}
    while True:
        stretch = _read(consumer, tp, begin, upper, wanted, keys, time.monotonic() + timeout)
        for stream, seq in stretch.items():
            found.setdefault(wanted[stream], seq)  # the newer stretch wins
        looked_at = listed_end - begin
        if len(found) == len(wanted) or begin <= start_of_log or looked_at >= LOOK_BACK_AT_MOST:
            return found
        upper, step = begin, step * 2
        begin = max(start_of_log, begin - step)


def _read(
    consumer: KafkaConsumer,
    tp: TopicPartition,
    begin: int,
    upper: int | None,
    wanted: dict[str, str],
    keys: set[bytes],
    deadline: float,
) -> dict[str, int]:
    """The highest seq per wanted stream among the records at offsets [begin, upper) (upper
    None: to the high watermark of the first fetch)."""
    consumer.seek(tp, begin)
    seqs: dict[str, int] = {}
    while True:
        if time.monotonic() > deadline:
            raise TopicUnreadable(f"no complete answer for partition {tp.partition} in time")
        batches = consumer.poll(timeout_ms=POLL_MS)
        now_ms = wall_clock_ms()
        for record in batches.get(tp, []):
            if (upper is not None and record.offset >= upper) or record.key not in keys:
                continue
            try:
                event = decode_message(record.value, now_ms)
            except ContractError:
                continue  # not an event of ours (another release's, a marker)
            if event.stream in wanted and event.seq is not None:
                seqs[event.stream] = max(seqs.get(event.stream, 0), event.seq)
        high = consumer.highwater(tp)
        if upper is None and high is not None:
            upper = high
        position = consumer.position(tp)
        if upper is not None and position is not None and position >= upper:
            return seqs
