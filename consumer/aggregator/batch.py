"""Everything one flush writes, gathered message by message: pure, no I/O.

A `PendingFlush` holds the window deltas, dead letters, metrics and, per partition, the next
offset to read. Written in one transaction they move the tables from one consistent state
to the next: that is the exactly-once unit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from aggregator.events import (
    MAX_MESSAGE_BYTES,
    REPLAY_SOURCE,
    InvalidEvent,
    PriceEvent,
    decode_event,
)
from aggregator.windows import WINDOW_MS, WindowDeltas, WindowStats


class ConsumerRecord(Protocol):  # what the Kafka client hands us, as far as we use it
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None  # cut to MAX_MESSAGE_BYTES
    size: int
    error: str
    received_ms: int


@dataclass(slots=True)
class IntervalMetrics:
    """Counters of one flush interval, for the pipeline_metrics row."""

    events: int = 0
    live_events: int = 0
    replayed_events: int = 0
    lag_sum_ms: int = 0  # over live events: processing time - event time
    lag_max_ms: int | None = None
    bytes: int = 0  # key + value bytes of every message, valid or not
    late_events: int = 0
    invalid_events: int = 0

    def add(self, size: int, events: int, live: int, lag_sum: int, lag_max: int, late: int) -> None:
        """Counters of a batch of messages; lag_max -1 when it had no live event."""
        self.bytes += size
        self.events += events
        self.live_events += live
        self.replayed_events += events - live
        self.lag_sum_ms += lag_sum
        if lag_max >= 0 and (self.lag_max_ms is None or lag_max > self.lag_max_ms):
            self.lag_max_ms = lag_max
        self.late_events += late

    @property
    def lag_avg_seconds(self) -> float | None:
        return self.lag_sum_ms / self.live_events / 1000 if self.live_events else None

    @property
    def lag_max_seconds(self) -> float | None:
        return None if self.lag_max_ms is None else self.lag_max_ms / 1000


@dataclass
class PendingFlush:
    windows: WindowDeltas = field(default_factory=WindowDeltas)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    metrics: IntervalMetrics = field(default_factory=IntervalMetrics)
    next_offsets: dict[int, int] = field(default_factory=dict)  # partition -> next to read
    first_offsets: dict[int, int] = field(default_factory=dict)  # partition -> first unflushed

    def is_empty(self) -> bool:
        return not self.next_offsets


class Accumulator:
    """Turns messages into the pending flush. Remembers, per symbol and kind of source, the
    newest window seen, so that an event for an older window is counted as late."""

    def __init__(self) -> None:
        self.pending = PendingFlush()
        self._current_window: dict[tuple[str, bool], int] = {}

    def process_batch(
        self,
        partition: int,
        records: Sequence[ConsumerRecord],
        received_ms: int,
        consumed: list[tuple[PriceEvent, bool]] | None = None,
    ) -> None:
        """Fold one partition's records (in offset order) into the pending flush. With
        `consumed`, also list each valid event and whether it was late, for the log.

        The hot path of the consumer: counters live in locals until the batch is done."""
        if not records:
            return
        pending = self.pending
        pending.first_offsets.setdefault(partition, records[0].offset)
        pending.next_offsets[partition] = records[-1].offset + 1
        # Names bound once per batch: global and attribute lookups add up per message.
        deltas, new_stats = pending.windows.deltas, WindowStats.of
        newest = self._current_window
        decode, invalid, replay_source, window_ms = (
            decode_event,
            InvalidEvent,
            REPLAY_SOURCE,
            WINDOW_MS,
        )
        size = events = live = lag_sum = late_count = 0
        lag_max = -1
        # The window of the event before: a partition mostly holds runs of one symbol's events
        # in one window, which then need neither the late check nor the window lookup.
        last: tuple[str, bool, int] | None = None
        last_late, stats = False, None
        for record in records:
            key, value = record.key, record.value
            size += (len(key) if key else 0) + (len(value) if value else 0)
            try:
                event = decode(value, received_ms)
            except invalid as exc:
                self._dead_letter(partition, record.offset, key, value, str(exc), received_ms)
                continue
            symbol, price, event_time, source = event
            events += 1
            replay = source == replay_source
            if not replay:  # replayed history is not processing lag
                live += 1
                lag = received_ms - event_time if received_ms > event_time else 0
                lag_sum += lag
                if lag > lag_max:
                    lag_max = lag
            start = event_time - event_time % window_ms
            if (symbol, replay, start) == last:
                # Same stream and window as the event before: late exactly when it was (the
                # newest window only moves on for an event that is not late), same delta.
                late = last_late
                stats.add(price, event_time)
            else:
                # Late: older than the newest window seen for this symbol and kind of source.
                stream = (symbol, replay)
                current = newest.get(stream)
                late = current is not None and start < current
                if not late and (current is None or start > current):
                    newest[stream] = start
                # WindowDeltas.add, inlined: one call less per message.
                stats = deltas.get((symbol, start))
                if stats is None:
                    stats = deltas[symbol, start] = new_stats(price, event_time)
                else:
                    stats.add(price, event_time)
                last, last_late = (symbol, replay, start), late
            if late:
                late_count += 1
            if consumed is not None:
                consumed.append((event, late))
        pending.metrics.add(size, events, live, lag_sum, lag_max, late_count)

    def _dead_letter(
        self,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        error: str,
        received_ms: int,
    ) -> None:
        self.pending.metrics.invalid_events += 1
        size = len(value) if value is not None else 0
        kept = value[:MAX_MESSAGE_BYTES] if value is not None else None
        self.pending.dead_letters.append(
            DeadLetter(partition, offset, key, kept, size, error, received_ms)
        )

    def take(self) -> PendingFlush:
        """Hand over what is pending (after it was written) and start a new interval."""
        pending, self.pending = self.pending, PendingFlush()
        return pending

    def discard(self) -> PendingFlush:
        """Drop everything unflushed: it will be read again from the stored offsets."""
        self._current_window.clear()
        return self.take()
