"""A record batch the client cannot decode (a codec without its library, an unknown codec, a
failed checksum, corrupt compressed bytes): a permanent error at that position.

Retrying reads the same bytes again and fails the same way, and skipping them loses events,
so the consumer stops and names the batch; a person decides (docs/operations.md).
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import CorruptRecordError, KafkaError, UnsupportedCodecError

from btcpipe.process import describe

# kafka-python 3.0.12 decodes a fetched partition's batches in this generator of its fetcher
# (kafka/consumer/fetcher.py), whose locals name the partition (`tp`) and the batch being
# decoded (`batch`); tests/integration/test_undecodable.py fails if an upgrade moves them.
# Whatever escapes it (also the codec libraries' own errors, such as
# gzip's BadGzipFile or zstandard's ZstdError) comes from the bytes of that batch.
DECODING_FRAME = "_unpack_records"
DECODING_ERRORS = (UnsupportedCodecError, CorruptRecordError)


class UndecodableBatch(Exception):
    """The batch at `offset` of `partition` cannot be decoded by this client."""

    def __init__(
        self,
        topic: str,
        partition: int | None,
        offset: int | None,
        batch_end: int | None,
        cause: BaseException,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.batch_end = batch_end  # the batch's next offset (after its last record)
        self.cause = cause
        super().__init__(self.sentence())

    def sentence(self) -> str:
        where = (
            f"partition {self.partition}"
            if self.partition is not None
            else "(in a partition the client does not name)"
        )
        if self.offset is not None:
            where += f" at offset {self.offset}"
        if self.batch_end is not None:
            where += f" (the batch ends at offset {self.batch_end - 1})"
        return (
            f"cannot decode the record batch of topic {self.topic} {where}: "
            f"{describe(self.cause)}; nothing was skipped: install the codec libraries of "
            "consumer/requirements.txt (or upgrade kafka-python) and start again, or decide to "
            'skip the batch as "An undecodable record batch" in docs/operations.md says'
        )


def undecodable(exc: BaseException, consumer: KafkaConsumer) -> UndecodableBatch | None:
    """The batch `exc` (raised by `consumer.poll`) failed on, or None for other errors."""
    frame_locals = _decoding_frame_locals(exc.__traceback__)
    if frame_locals is None:
        if not isinstance(exc, DECODING_ERRORS):
            return None
        return _without_frame(exc, consumer)
    tp: TopicPartition = frame_locals["tp"]
    batch = frame_locals.get("batch")
    offset = _position(consumer, tp)
    if offset is None and batch is not None:
        offset = batch.base_offset
    batch_end = getattr(batch, "next_offset", None) if batch is not None else None
    return UndecodableBatch(tp.topic, tp.partition, offset, batch_end, exc)


def _decoding_frame_locals(tb: TracebackType | None) -> dict[str, Any] | None:
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == DECODING_FRAME and "kafka" in code.co_filename:
            frame_locals = tb.tb_frame.f_locals
            if isinstance(frame_locals.get("tp"), TopicPartition):
                return dict(frame_locals)
        tb = tb.tb_next
    return None


def _without_frame(exc: BaseException, consumer: KafkaConsumer) -> UndecodableBatch:
    """A decoding error raised elsewhere: the one assigned partition not yet at its end is
    where it stands; with several, which one is unknown (the sentence says so)."""
    behind = []
    for tp in sorted(consumer.assignment()):
        position, highwater = _position(consumer, tp), consumer.highwater(tp)
        if position is None or highwater is None or position < highwater:
            behind.append((tp, position))
    topic = next(iter(consumer.subscription() or ()), "?")
    if len(behind) == 1:
        tp, position = behind[0]
        return UndecodableBatch(tp.topic, tp.partition, position, None, exc)
    return UndecodableBatch(topic, None, None, None, exc)


def _position(consumer: KafkaConsumer, tp: TopicPartition) -> int | None:
    """Where the consumer stands in `tp`: the first offset it has not handed over."""
    try:
        return int(consumer.position(tp, timeout_ms=1_000))
    except (KafkaError, TypeError, ValueError, AssertionError):
        return None
