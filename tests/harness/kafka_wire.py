"""Kafka's wire format by hand, for what no client does: append a record batch exactly as
given (a client checks or rebuilds the batches it sends), and read the record batches a
partition holds as bytes (a client hands over records only).

ProduceRequest v3 and FetchRequest v4, to one broker (Tansu: the only one, the leader of
every partition); record batches of format v2.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from kafka.record.default_records import DefaultRecordBase, DefaultRecordBatchBuilder
from kafka.record.util import calc_crc32c

CODEC_NAMES = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}
BATCH_HEADER = struct.Struct(">qiibIhi")  # base offset ... attributes, last offset delta


def record_batch(
    records: Sequence[tuple[bytes | None, bytes | None, int]],
    codec: int = 0,
    crc_valid: bool = True,
) -> bytes:
    """A batch of (key, value, timestamp) records, uncompressed, whose attributes claim
    `codec` (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd; others unknown) and whose CRC is right
    or not: the bytes of a batch a consumer cannot decode."""
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    for offset, (key, value, timestamp) in enumerate(records):
        builder.append(offset, timestamp=timestamp, key=key, value=value, headers=[])
    batch = builder.build()
    at = DefaultRecordBase.ATTRIBUTES_OFFSET
    (attributes,) = struct.unpack_from(">h", batch, at)
    struct.pack_into(">h", batch, at, (attributes & ~DefaultRecordBase.CODEC_MASK) | codec)
    crc = calc_crc32c(memoryview(batch)[at:]) ^ (0 if crc_valid else 1)
    struct.pack_into(">I", batch, DefaultRecordBase.CRC_OFFSET, crc)
    return bytes(batch)


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">h", len(raw)) + raw


class _Connection:
    def __init__(self, bootstrap: str) -> None:
        host, port = bootstrap.rsplit(":", 1)
        self.socket = socket.create_connection((host, int(port)), timeout=30)
        self.answers: BinaryIO = self.socket.makefile("rb")

    def ask(self, api_key: int, version: int, body: bytes) -> bytes:
        """Send one request; its answer after the correlation id."""
        request = struct.pack(">hhi", api_key, version, 1) + _string("kafka-wire") + body
        self.socket.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", self.answers.read(4))
        return self.answers.read(size)[4:]

    def close(self) -> None:
        self.answers.close()
        self.socket.close()


def produce_batch(bootstrap: str, topic: str, partition: int, batch: bytes) -> None:
    """Append one record batch as it is (acks all); raises if the broker refuses it."""
    conn = _Connection(bootstrap)
    try:
        answer = conn.ask(
            0,
            3,
            struct.pack(">hhi", -1, -1, 10_000)  # no transactional id, acks all, timeout
            + struct.pack(">i", 1)
            + _string(topic)
            + struct.pack(">iii", 1, partition, len(batch))
            + batch,
        )
    finally:
        conn.close()
    at = 4 + 2 + len(topic.encode()) + 4 + 4  # topics, the topic, partitions, the index
    (error,) = struct.unpack_from(">h", answer, at)
    if error != 0:
        raise RuntimeError(f"the broker refused the batch with error code {error}")


@dataclass(frozen=True)
class StoredBatch:
    base_offset: int
    next_offset: int
    codec: str  # CODEC_NAMES, or the number of an unknown one
    size: int  # bytes, as the broker stores and returns the batch


def stored_batches(bootstrap: str, topic: str, partition: int) -> Iterator[StoredBatch]:
    """Every record batch of the partition, in order, up to its high watermark."""
    conn = _Connection(bootstrap)
    try:
        offset = 0
        while True:
            records, highwater = _fetch(conn, topic, partition, offset)
            batches = list(_batches(records))
            yield from batches
            if not batches or batches[-1].next_offset >= highwater:
                return
            offset = batches[-1].next_offset
    finally:
        conn.close()


def _fetch(conn: _Connection, topic: str, partition: int, offset: int) -> tuple[bytes, int]:
    answer = conn.ask(
        1,
        4,
        struct.pack(">iiiib", -1, 100, 1, 8 << 20, 0)  # replica, wait, min/max bytes, isolation
        + struct.pack(">i", 1)
        + _string(topic)
        + struct.pack(">iiqi", 1, partition, offset, 8 << 20),
    )
    at = 4 + 4  # throttle time, topics
    (name_length,) = struct.unpack_from(">h", answer, at)
    at += 2 + name_length + 4 + 4  # the name, partitions, the partition index
    error, highwater, _, aborted = struct.unpack_from(">hqqi", answer, at)
    if error != 0:
        raise RuntimeError(f"Fetch of {topic}/{partition} failed with error code {error}")
    at += 2 + 8 + 8 + 4 + max(0, aborted) * 16
    (length,) = struct.unpack_from(">i", answer, at)
    return answer[at + 4 : at + 4 + max(0, length)], highwater


def _batches(records: bytes) -> Iterator[StoredBatch]:
    """The whole batches in `records` (a fetch may end inside one: it is fetched again)."""
    at = 0
    while at + BATCH_HEADER.size <= len(records):
        base, length, _, _, _, attributes, last_delta = BATCH_HEADER.unpack_from(records, at)
        if at + 12 + length > len(records):
            return
        codec = attributes & DefaultRecordBase.CODEC_MASK
        yield StoredBatch(
            base, base + last_delta + 1, CODEC_NAMES.get(codec, str(codec)), 12 + length
        )
        at += 12 + length
