"""Everything one flush writes, gathered message by message: pure, no I/O.

A `PendingFlush` holds the window deltas, dead letters, metrics, the seqs each stream counted
and, per partition, the next offset to read. Written in one transaction they move the tables
from one consistent state to the next: that is the exactly-once unit.

Identity: an event of stream S whose seq S has counted already (core/coverage.py: the ranges
of seqs counted) is a repeat (a producer re-send, a re-run replay, an overlapping file, a
trade that came over WebSocket and from a file) and is skipped, in whatever order the
stream's events arrive. Each stream's high-water mark (the highest seq counted) stays the
fast path: an event above it is new.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol

from aggregator.core.coverage import Coverage
from aggregator.core.decoding import decode_event
from aggregator.core.windows import WINDOW_MS, WindowDeltas, WindowStats
from btcpipe.contract import MAX_MESSAGE_BYTES, REPLAY_SOURCE, ContractError, DecodedEvent
from btcpipe.contract.rules import KLINES, SAMPLES, TRADES


class ConsumerRecord(Protocol):
    """What the Kafka client hands us, as far as we read it (read-only)."""

    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


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
    duplicate_events: int = 0  # repeats of counted identities, skipped
    skipped_offsets: int = 0  # removed by Kafka before they were read (core/log_check.py)

    def add(
        self, size: int, events: int, live: int, lag_sum: int, lag_max: int, late: int, dups: int
    ) -> None:
        """Counters of a batch of messages; lag_max -1 when it had no live event."""
        self.duplicate_events += dups
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
    # Streams that counted in this interval: stream -> (mark before it, source, partition).
    marks_before: dict[str, tuple[int | None, str, int]] = field(default_factory=dict)
    marks: dict[str, int] = field(default_factory=dict)  # the accumulator's, shared
    counted: dict[str, Coverage] = field(default_factory=dict)  # seqs counted in the interval

    def is_empty(self) -> bool:
        return not self.next_offsets

    def counted_ranges(self) -> list[tuple[str, int, int]]:
        """(stream, first seq, last seq) of every range counted, sorted."""
        return [
            (stream, first, last)
            for stream, coverage in sorted(self.counted.items())
            for first, last in coverage
        ]

    def advanced_marks(self) -> list[tuple[str, int, str, int]]:
        """(stream, new mark, source, partition) of the streams advanced, sorted by stream
        (concurrent flushes then lock rows in the same order)."""
        return [
            (stream, self.marks[stream], source, partition)
            for stream, (_, source, partition) in sorted(self.marks_before.items())
        ]


class Accumulator:
    """Turns messages into the pending flush. Holds what every stream has counted (stored,
    loaded with `load_marks`, and pending) with its high-water mark, and, per stream, the
    newest window seen, so that an event for an older window of its own stream is counted as
    late."""

    def __init__(self) -> None:
        self.marks: dict[str, int] = {}  # stream -> highest seq counted (stored + pending)
        self.stored: dict[str, Coverage] = {}  # stream -> seqs the tables hold
        self.pending = PendingFlush(marks=self.marks)
        # Late is judged per stream: a backfill of January after May is not late. Messages
        # without identity (previous release) fall back to (symbol, source).
        self._current_window: dict[str | tuple[str, str], int] = {}

    def load_marks(self, stored: dict[str, Coverage]) -> None:
        """Take what PostgreSQL holds as counted as the truth (an operator may have reset a
        stream), keeping what this interval counted besides."""
        self.stored = stored
        self.marks.clear()  # the same dict: the pending flush refers to it
        self.marks.update((stream, coverage.top) for stream, coverage in stored.items())
        for stream, coverage in self.pending.counted.items():
            if coverage.top > self.marks.get(stream, 0):
                self.marks[stream] = coverage.top

    def process_batch(
        self,
        partition: int,
        records: Sequence[ConsumerRecord],
        received_ms: int,
        consumed: list[tuple[DecodedEvent, bool]] | None = None,
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
        of_trade, of_kline = WindowStats.of_trade, WindowStats.of_kline
        samples, trades, klines = SAMPLES, TRADES, KLINES
        newest = self._current_window
        marks, marks_before = self.marks, pending.marks_before
        stored, counted, coverage_of = self.stored, pending.counted, Coverage.of
        decode, invalid, replay_source, window_ms = (
            decode_event,
            ContractError,
            REPLAY_SOURCE,
            WINDOW_MS,
        )
        size = events = live = lag_sum = late_count = dups = 0
        lag_max = -1
        first_id: int
        last_id: int
        # The window of the event before: a partition mostly holds runs of one stream's events
        # in one window, which then need neither the late check nor the window lookup.
        last_key: object = None
        last_start = -1  # no window starts there: the first event looks its window up
        last_late, stats = (
            False,
            new_stats(Decimal(0), 0),
        )  # a stand-in, never added to (see last_start)
        for record in records:
            key, value = record.key, record.value
            size += (len(key) if key else 0) + (len(value) if value else 0)
            try:
                event = decode(value, received_ms)
            except invalid as exc:
                self._dead_letter(partition, record.offset, key, value, str(exc), received_ms)
                continue
            symbol, price, event_time, source, stream, seq = event[:6]
            if stream is None or seq is None:  # previous release: late per symbol and source
                late_key: str | tuple[str, str] = (symbol, source)
            else:
                mark = marks.get(stream)
                now = counted.get(stream)
                if mark is None or seq > mark:  # beyond all counted: new (a stream in order)
                    marks[stream] = seq
                    if now is None:
                        counted[stream] = coverage_of(seq)
                    else:
                        now.append_above(seq)
                else:
                    held = stored.get(stream)
                    if (held is not None and held.covers(seq)) or (
                        now is not None and now.covers(seq)
                    ):
                        dups += 1  # counted already: a re-send, a re-run, an overlap
                        continue
                    if now is None:
                        counted[stream] = coverage_of(seq)
                    else:
                        now.add(seq)
                if stream not in marks_before:
                    marks_before[stream] = (mark, source, partition)
                late_key = stream
            events += 1
            if source != replay_source:  # replayed history is not processing lag
                live += 1
                lag = received_ms - event_time if received_ms > event_time else 0
                lag_sum += lag
                if lag > lag_max:
                    lag_max = lag
            start = event_time - event_time % window_ms
            quantity = event[6]
            if start == last_start and late_key == last_key:
                # Same stream and window as the event before (a stream has one symbol and one
                # feed): late exactly when it was (the newest window only moves on for an
                # event that is not late), same delta.
                late = last_late
                if quantity is None:
                    kline = event[9]
                    if kline is None:
                        stats.add(price, event_time)
                    else:
                        stats.merge(of_kline(kline))
                else:
                    # A trade has both raw trade ids (the contract checks it).
                    first_id, last_id = event[7], event[8]  # type: ignore[assignment]
                    stats.add_trade(price, quantity, event_time, first_id, last_id)
            else:
                # Late: older than the newest window seen in this event's own stream.
                current = newest.get(late_key)
                late = current is not None and start < current
                if not late and (current is None or start > current):
                    newest[late_key] = start
                # WindowDeltas.add, inlined: one call less per message.
                kline = event[9]
                if quantity is not None:
                    first_id, last_id = event[7], event[8]  # type: ignore[assignment]
                    found = deltas.get((symbol, start, trades))
                    if found is None:
                        stats = deltas[symbol, start, trades] = of_trade(
                            price, quantity, event_time, first_id, last_id
                        )
                    else:
                        found.add_trade(price, quantity, event_time, first_id, last_id)
                        stats = found
                elif kline is None:
                    found = deltas.get((symbol, start, samples))
                    if found is None:
                        stats = deltas[symbol, start, samples] = new_stats(price, event_time)
                    else:
                        found.add(price, event_time)
                        stats = found
                else:
                    found = deltas.get((symbol, start, klines))
                    if found is None:
                        stats = deltas[symbol, start, klines] = of_kline(kline)
                    else:
                        found.merge(of_kline(kline))
                        stats = found
                last_key, last_start, last_late = late_key, start, late
            if late:
                late_count += 1
            if consumed is not None:
                consumed.append((event, late))
        pending.metrics.add(size, events, live, lag_sum, lag_max, late_count, dups)

    def jump(self, partition: int, offset: int, skipped: int) -> None:
        """Read `partition` on from `offset` (a replaced log's start, or the start of a log that
        removed messages unread), so that the next flush stores it; `skipped` offsets are
        counted as removed unread."""
        self.pending.first_offsets.setdefault(partition, offset)
        self.pending.next_offsets[partition] = offset
        self.pending.metrics.skipped_offsets += skipped

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
        """Hand over what is pending (after it was written: what it counted is stored now)
        and start a new interval."""
        pending, self.pending = self.pending, PendingFlush(marks=self.marks)
        for stream, coverage in pending.counted.items():
            held = self.stored.get(stream)
            if held is None:
                self.stored[stream] = coverage
            else:
                held.merge(coverage)
        return pending

    def discard(self) -> PendingFlush:
        """Drop everything unflushed: it will be read again from the stored offsets, so the
        marks go back to what is stored."""
        self._current_window.clear()
        for stream, (before, _, _) in self.pending.marks_before.items():
            if before is None:
                del self.marks[stream]
            else:
                self.marks[stream] = before
        dropped, self.pending = self.pending, PendingFlush(marks=self.marks)
        return dropped
