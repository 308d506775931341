"""Holding the partitions' positions against their logs, outside rebalance callbacks (a
callback sends no heartbeats, so it asks Kafka nothing).

The consumer checks (core/log_check.py decides) each partition's stored offset after every
assignment, before it reads; and, while reading, a partition whose records do not start where
it stood, whose position lies past the end the broker reports, that has been idle for
IDLE_CHECK_SECONDS, or whose topic changed its id. A replaced log is read from its start, a
log that removed messages unread from its start with the gap counted; either is logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence

from kafka import KafkaConsumer, TopicPartition

from aggregator.core.accumulator import Accumulator, ConsumerRecord
from aggregator.core.log_check import (
    Decision,
    LogRange,
    Verdict,
    check_position,
    vanished_partitions,
)
from aggregator.kafka_reader.client import topic_id
from aggregator.kafka_reader.positions import Positions

log = logging.getLogger("consumer")

IDLE_CHECK_SECONDS = 10.0
LIST_OFFSETS_TIMEOUT_MS = 10_000

Records = Mapping[TopicPartition, Sequence[ConsumerRecord]]


class LogGuard:
    def __init__(self, topic: str, positions: Positions, accumulator: Accumulator) -> None:
        self.topic = topic
        self.positions = positions
        self.accumulator = accumulator
        self.consumer: KafkaConsumer | None = None
        self.reported_vanished: list[int] = []
        self.next_idle_check = time.monotonic() + IDLE_CHECK_SECONDS
        self.read_since_idle_check: set[int] = set()

    def reset(self, consumer: KafkaConsumer) -> None:
        """A new Kafka client: nothing is known of its partitions yet."""
        self.consumer = consumer
        self.next_idle_check = time.monotonic() + IDLE_CHECK_SECONDS
        self.read_since_idle_check.clear()

    # -- after an assignment ---------------------------------------------------------------

    def check_assigned(self, resume: bool) -> None:
        """Hold the stored offsets of the newly assigned partitions against their logs, then
        let them read (unless `resume` is False: consumption is paused)."""
        positions = self.positions
        now_id = self._current_topic_id()
        stored = {
            p: offset
            for p in sorted(positions.unchecked)
            if (offset := positions.stored.get(p)) is not None
        }
        if stored:
            self._act(self._decide(stored, positions.stored_topic_ids, now_id))
        self.positions.topic_id = now_id
        self._report_vanished()
        positions.checked(resume)

    # -- while reading ---------------------------------------------------------------------

    def inspect(self, records: Records) -> Records:
        """The records that may be folded in: those of partitions that stand where they
        should. A partition that does not is checked, moved where its log says, and its
        records dropped unless they start there."""
        read_up_to = self.accumulator.pending.next_offsets
        now_id = self._current_topic_id()
        suspects = self._suspects(records, read_up_to, now_id)
        if not suspects:
            self.read_since_idle_check.update(tp.partition for tp in records)
            return records
        then = dict.fromkeys(suspects, self.positions.topic_id)
        decisions = {d.partition: d for d in self._decide(suspects, then, now_id)}
        self.positions.topic_id = now_id
        self._act(decisions.values())
        if any(d.verdict is Verdict.REPLACED for d in decisions.values()):
            self._report_vanished()
        kept: dict[TopicPartition, Sequence[ConsumerRecord]] = {}
        for tp, batch in records.items():
            decision = decisions.get(tp.partition)
            if decision is None or _starts_right(batch, decision):
                kept[tp] = batch
            else:
                self._seek(tp.partition, decision.start_at)
        self.read_since_idle_check.update(tp.partition for tp in kept)
        return kept

    def _suspects(
        self, records: Records, read_up_to: dict[int, int], now_id: str | None
    ) -> dict[int, int]:
        """Partition -> position of those that may not stand where they should (`now_id`:
        the topic's id in the client's metadata now)."""
        assert self.consumer is not None
        positions = self.positions
        suspects: dict[int, int] = {}
        for tp, batch in records.items():
            expected = positions.expected(tp.partition, read_up_to)
            if batch and expected is not None and batch[0].offset != expected:
                suspects[tp.partition] = expected
        id_changed = (
            None not in (self.positions.topic_id, now_id) and self.positions.topic_id != now_id
        )
        idle_due = time.monotonic() >= self.next_idle_check
        paused = {tp.partition for tp in self.consumer.paused()}
        for tp in self.consumer.assignment():
            p = tp.partition
            expected = positions.expected(p, read_up_to)
            if expected is None or p in suspects or p in positions.unchecked:
                continue
            highwater = self.consumer.highwater(tp)
            past_end = highwater is not None and expected > highwater
            idle = idle_due and p not in paused and p not in self.read_since_idle_check
            if id_changed or past_end or idle:
                suspects[p] = expected
        if idle_due:
            self.next_idle_check = time.monotonic() + IDLE_CHECK_SECONDS
            self.read_since_idle_check.clear()
        return suspects

    # -- the check itself ------------------------------------------------------------------

    def _decide(
        self,
        positions: dict[int, int],
        topic_ids_then: Mapping[int, str | None],
        topic_id_now: str | None,
    ) -> list[Decision]:
        """The log's start comes from ListOffsets; its end from the high watermark of the last
        fetch (None before one), since some brokers (Tansu) answer ListOffsets' latest with
        the last batch's base offset + 1, which would make a position at the end look past
        it."""
        assert self.consumer is not None
        tps = [TopicPartition(self.topic, p) for p in sorted(positions)]
        starts = self.consumer.beginning_offsets(tps, timeout_ms=LIST_OFFSETS_TIMEOUT_MS)
        return [
            check_position(
                tp.partition,
                positions[tp.partition],
                LogRange(starts[tp], self.consumer.highwater(tp)),
                topic_ids_then.get(tp.partition),
                topic_id_now,
            )
            for tp in tps
        ]

    def _act(self, decisions: Iterable[Decision]) -> None:
        for decision in decisions:
            if decision.verdict is Verdict.KEEP:
                continue
            log.warning("%s", decision.describe(self.topic))
            self.accumulator.jump(decision.partition, decision.start_at, decision.skipped)
            self._seek(decision.partition, decision.start_at)

    def _seek(self, partition: int, offset: int) -> None:
        assert self.consumer is not None
        self.consumer.seek(TopicPartition(self.topic, partition), offset)

    def _current_topic_id(self) -> str | None:
        assert self.consumer is not None
        return topic_id(self.consumer, self.topic)

    def _report_vanished(self) -> None:
        """Offsets stored for partitions the topic no longer has: say so, once per set."""
        assert self.consumer is not None
        existing = self.consumer.partitions_for_topic(self.topic)
        if not existing:
            return
        vanished = vanished_partitions(list(self.positions.stored_topic_ids), existing)
        if vanished and vanished != self.reported_vanished:
            log.warning(
                "PostgreSQL keeps offsets for partition(s) %s of %s, which the topic no longer "
                "has (it has %d): whatever they held unread is gone. They are kept, and used "
                "if those partitions come back; see docs/operations.md to remove them",
                vanished,
                self.topic,
                len(existing),
            )
        self.reported_vanished = vanished


def _starts_right(batch: Sequence[ConsumerRecord], decision: Decision) -> bool:
    """Whether a checked partition's batch may be folded in: it starts where the log says to
    read on, or, for a position the log holds, after it (offsets a transaction marker or
    compaction took)."""
    first = batch[0].offset
    if decision.verdict is Verdict.KEEP:
        return first >= decision.start_at
    return first == decision.start_at
