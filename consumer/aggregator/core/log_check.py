"""Holding a partition's position against its log: pure, no I/O.

PostgreSQL keeps the next offset to read of every partition, but the log those offsets point
into lives in Kafka, which can lose or replace it (a lost volume, a recreated topic, a broker
started without its data) or remove its oldest messages (retention). Kafka's own answers to
such a position are silent: a fetch past the end returns nothing (some brokers) or resets the
client to auto_offset_reset (Apache Kafka), and a position before the log start is reset too.
So the consumer checks, and this module decides what a position means against a log.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Verdict(Enum):
    KEEP = "keep"  # the position lies in the log: read on from it
    REPLACED = "replaced"  # past the log's end, or another topic: a new log, read it whole
    REMOVED = "removed"  # before the log's start: messages were removed unread


@dataclass(frozen=True, slots=True)
class LogRange:
    """The offsets a partition's log holds now: start (inclusive) to end (exclusive; None:
    not known, as before a first fetch on a broker whose ListOffsets cannot be trusted)."""

    start: int
    end: int | None

    def __str__(self) -> str:
        return f"[{self.start}, {'?' if self.end is None else self.end})"


@dataclass(frozen=True, slots=True)
class Decision:
    partition: int
    verdict: Verdict
    position: int  # where the consumer stood: its stored or next offset
    log: LogRange
    start_at: int  # where to read on
    skipped: int  # offsets removed unread (REMOVED only)
    topic_changed: bool = False

    def describe(self, topic: str) -> str:
        """The log line for an operator: which partition, where it stood, what the log holds."""
        where = f"partition {self.partition} of {topic}"
        if self.verdict is Verdict.REPLACED:
            why = (
                "the topic was recreated (its id changed)"
                if self.topic_changed
                else f"its offset {self.position} lies past the log's end"
            )
            return (
                f"The log of {where} was replaced: {why}, the log holds {self.log}; reading "
                f"the new log from offset {self.start_at} (events counted before are "
                "recognised by their identities and counted once)"
            )
        if self.verdict is Verdict.REMOVED:
            return (
                f"Messages of {where} were removed unread: its offset {self.position} lies "
                f"before the log's start, the log holds {self.log}; {self.skipped} offsets "
                f"skipped, reading on from offset {self.start_at}"
            )
        return f"{where} at offset {self.position} lies in its log {self.log}"


def check_position(
    partition: int,
    position: int,
    log: LogRange,
    topic_id_then: str | None = None,
    topic_id_now: str | None = None,
) -> Decision:
    """What `position` (the next offset to read, as stored or as reached) means in `log`.

    The position may equal the end (everything read); with no end known, a position is never
    past it. A topic id that changed means a new
    topic of the same name whatever the offsets say; an unknown id (a broker that gives none,
    a row stored before ids were kept) decides nothing."""
    changed = topic_id_then is not None and topic_id_now is not None
    changed = changed and topic_id_then != topic_id_now
    if changed or (log.end is not None and position > log.end):
        return Decision(partition, Verdict.REPLACED, position, log, log.start, 0, changed)
    if position < log.start:
        skipped = log.start - position
        return Decision(partition, Verdict.REMOVED, position, log, log.start, skipped)
    return Decision(partition, Verdict.KEEP, position, log, position, 0)


def vanished_partitions(stored: list[int], existing: set[int]) -> list[int]:
    """Partitions with a stored offset that the topic no longer has."""
    return sorted(p for p in stored if p not in existing)
