"""Everything one flush writes, gathered message by message: pure, no I/O.

A `PendingFlush` holds the window deltas, dead letters, metrics and, per partition, the next
offset to read. Written in one transaction they move the tables from one consistent state
to the next: that is the exactly-once unit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aggregator.events import MAX_MESSAGE_BYTES, InvalidEvent, PriceEvent, decode_event
from aggregator.windows import WindowDeltas, window_start


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

    @property
    def lag_avg_seconds(self) -> float | None:
        return self.lag_sum_ms / self.live_events / 1000 if self.live_events else None

    @property
    def lag_max_seconds(self) -> float | None:
        return None if self.lag_max_ms is None else self.lag_max_ms / 1000


@dataclass
class Consumed:
    """One valid event as the log wants it (`Consumed: BTCUSDT = $43250.75`)."""

    event: PriceEvent
    late: bool


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

    def process(
        self,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        received_ms: int,
    ) -> Consumed | None:
        pending = self.pending
        pending.first_offsets.setdefault(partition, offset)
        pending.next_offsets[partition] = offset + 1
        size = (len(key) if key else 0) + (len(value) if value else 0)
        pending.metrics.bytes += size
        try:
            event = decode_event(value, received_ms)
        except InvalidEvent as exc:
            self._dead_letter(partition, offset, key, value, str(exc), received_ms)
            return None
        late = self._count(event, received_ms)
        pending.windows.add(event.symbol, event.price, event.event_time)
        return Consumed(event, late)

    def _count(self, event: PriceEvent, received_ms: int) -> bool:
        metrics = self.pending.metrics
        metrics.events += 1
        if event.is_replay:
            metrics.replayed_events += 1
        else:
            metrics.live_events += 1
            lag = max(0, received_ms - event.event_time)
            metrics.lag_sum_ms += lag
            if metrics.lag_max_ms is None or lag > metrics.lag_max_ms:
                metrics.lag_max_ms = lag
        stream = (event.symbol, event.is_replay)
        start = window_start(event.event_time)
        current = self._current_window.get(stream)
        if current is None or start > current:
            self._current_window[stream] = start
            return False
        if start < current:
            metrics.late_events += 1
            return True
        return False

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
