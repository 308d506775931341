"""The bookkeeping of the assigned partitions: their stored offsets, which still wait for
them or for the check against their logs, seeking, pausing, and the lag behind the partition
ends."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

log = logging.getLogger("consumer")


class Positions:
    """Where each assigned partition stands, kept beside the Kafka client that reads it.

    `stored` is what we believe PostgreSQL holds per partition (None: no row yet); a flush
    advances it with compare-and-set, which fences out a consumer that lost a partition.
    Newly assigned partitions are unresolved until their stored offsets have been read, then
    unchecked until those have been held against their logs (kafka_reader/log_guard.py), and
    stay paused until then: reading them from anywhere else could count events twice, or
    skip some.
    """

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.consumer: KafkaConsumer | None = None
        self.stored: dict[int, int | None] = {}
        self.unresolved: set[int] = set()
        self.unchecked: set[int] = set()
        # Every partition with a stored offset (also those of other members, or that the topic
        # no longer has), with the topic id it was stored under: as read at the last resolve.
        self.stored_topic_ids: dict[int, str | None] = {}
        self.topic_id: str | None = None  # Kafka's id of the topic, as of the last check

    def _tps(self, partitions: Iterable[int]) -> list[TopicPartition]:
        return [TopicPartition(self.topic, p) for p in sorted(partitions)]

    def assigned(self, partitions: Iterable[int]) -> None:
        self.unresolved.update(partitions)

    def reread_all(self) -> None:
        """Read every assigned partition's stored offset again (PostgreSQL holds the truth)."""
        assert self.consumer is not None
        self.unresolved.update(tp.partition for tp in self.consumer.assignment())

    def forget(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self.stored.pop(partition, None)
            self.unresolved.discard(partition)
            self.unchecked.discard(partition)

    def clear(self) -> None:
        self.stored.clear()
        self.unresolved.clear()
        self.unchecked.clear()

    def hold_unresolved(self) -> None:
        assert self.consumer is not None
        self.consumer.pause(*self._tps(self.unresolved))

    def start_at(self, stored: dict[int, int]) -> dict[int, int | str]:
        """Seek each unresolved partition to its stored offset (without one: Kafka's committed
        offset, then auto_offset_reset), paused until it is checked against its log; returns
        where each starts, for the log."""
        assert self.consumer is not None
        tps = self._tps(self.unresolved)
        self.consumer.pause(*tps)
        for tp in tps:
            offset = stored.get(tp.partition)
            self.stored[tp.partition] = offset
            if offset is not None:
                self.consumer.seek(tp, offset)
        starts = {p: stored.get(p, "kafka/auto_offset_reset") for p in sorted(self.unresolved)}
        self.unchecked.update(self.unresolved)
        self.unresolved.clear()
        return starts

    def checked(self, resume: bool) -> None:
        """The unchecked partitions stand where they should: let them read (unless told not
        to; resume_all does later)."""
        tps = self._tps(self.unchecked)
        self.unchecked.clear()
        if resume:
            assert self.consumer is not None
            self.consumer.resume(*tps)

    def expected(self, partition: int, read_up_to: dict[int, int]) -> int | None:
        """The next offset the partition should deliver: after what is pending, else what is
        stored (None: unknown, Kafka's own position)."""
        position = read_up_to.get(partition)
        return self.stored.get(partition) if position is None else position

    def advance(self, next_offsets: dict[int, int]) -> None:
        """After a flush: PostgreSQL holds these now; tell Kafka too (for lag tooling only)."""
        assert self.consumer is not None
        self.stored.update(next_offsets)
        if not next_offsets:
            return
        offsets = {
            TopicPartition(self.topic, p): OffsetAndMetadata(n, "", -1)
            for p, n in next_offsets.items()
        }
        try:
            self.consumer.commit_async(offsets)
        except KafkaError as exc:  # advisory only: PostgreSQL holds the real offsets
            log.debug("Kafka offset commit failed: %s", exc)

    def rewind(self, first_offsets: dict[int, int]) -> None:
        """Seek back to where dropped, unflushed state began, so that it is read again."""
        assert self.consumer is not None
        assignment = self.consumer.assignment()
        for partition, offset in first_offsets.items():
            tp = TopicPartition(self.topic, partition)
            if tp in assignment:
                self.consumer.seek(tp, offset)

    def lag(self, read_up_to: dict[int, int]) -> int | None:
        """Messages behind the partition ends, from the high watermarks of recent fetches
        (`read_up_to`: next offsets of what is pending, over what is stored); None until
        every assigned partition has been fetched."""
        lags = self._lags(read_up_to)
        known = [lag for lag in lags if lag is not None]
        return sum(known) if len(known) == len(lags) else None

    def known_lag(self, read_up_to: dict[int, int]) -> int:
        """The same over the partitions fetched so far (a busy partition is known long
        before an idle one)."""
        return sum(lag for lag in self._lags(read_up_to) if lag is not None)

    def _lags(self, read_up_to: dict[int, int]) -> list[int | None]:
        assert self.consumer is not None
        lags: list[int | None] = []
        for tp in self.consumer.assignment():
            highwater = self.consumer.highwater(tp)
            position = self.expected(tp.partition, read_up_to)
            if highwater is None or (position is not None and position > highwater):
                lags.append(None)  # not fetched yet, or past the log's end: not known
            else:
                lags.append(highwater - position if position is not None else highwater)
        return lags

    def pause_all(self) -> None:
        assert self.consumer is not None
        self.consumer.pause(*self.consumer.assignment())

    def resume_all(self) -> None:
        """Resume every assigned partition that stands where it should."""
        assert self.consumer is not None
        waiting = self.unresolved | self.unchecked
        self.consumer.resume(
            *(tp for tp in self.consumer.assignment() if tp.partition not in waiting)
        )
