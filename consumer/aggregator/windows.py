"""5-minute tumbling windows on event time: the heart of the exactness. Pure, no I/O.

A window's statistics are a mergeable value (count, sum, min, max, first, last). Events merge
into a delta in memory (`WindowStats.merge`); at a flush the delta merges into its row in
PostgreSQL (`MERGE_INTO_ROW_SQL`) by the same rules, written side by side below:

    count, sum   add
    min, max     take the extreme
    open         the price of the earliest event time; on a tie the one already held wins
    close        the price of the latest event time; on a tie the newcomer wins

"Already held" is always earlier in the stream: the row holds flushed events, the delta the
ones read after them, and within a delta events merge in offset order. So open/close on equal
event times follow the order of the partition, which a replay after a crash repeats exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Context, Decimal

WINDOW_MS = 5 * 60 * 1000
# Sums must stay exact: the default context (28 digits) would round them, and the contract
# admits prices of up to 20 + 20 digits. 100 digits hold any sum of 2**63 such prices.
EXACT = Context(prec=100)


def window_start(event_time_ms: int) -> int:
    """Start of the UTC-aligned 5-minute window holding this instant (epoch ms)."""
    return event_time_ms - event_time_ms % WINDOW_MS


@dataclass(slots=True)
class WindowStats:
    count: int
    price_sum: Decimal
    min: Decimal
    max: Decimal
    open: Decimal
    open_time: int  # epoch ms of the first event
    close: Decimal
    close_time: int  # epoch ms of the last event

    @classmethod
    def of(cls, price: Decimal, event_time: int) -> WindowStats:
        return cls(1, price, price, price, price, event_time, price, event_time)

    def merge(self, later: WindowStats) -> None:
        """Fold in statistics of events that came after ours in the stream."""
        self.count += later.count
        self.price_sum = EXACT.add(self.price_sum, later.price_sum)
        self.min = min(self.min, later.min)
        self.max = max(self.max, later.max)
        if later.open_time < self.open_time:
            self.open, self.open_time = later.open, later.open_time
        if later.close_time >= self.close_time:
            self.close, self.close_time = later.close, later.close_time

    def add(self, price: Decimal, event_time: int) -> None:
        """merge(WindowStats.of(price, event_time)) without building the object (hot path)."""
        self.count += 1
        self.price_sum = EXACT.add(self.price_sum, price)
        if price < self.min:
            self.min = price
        if price > self.max:
            self.max = price
        if event_time < self.open_time:
            self.open, self.open_time = price, event_time
        if event_time >= self.close_time:
            self.close, self.close_time = price, event_time


# The same merge in SQL: `t` is the row (earlier events), EXCLUDED the delta (later events).
# The delta comes in as arrays, one element per window, sorted by key so that concurrent
# flushes lock rows in the same order.
MERGE_INTO_ROW_SQL = """
INSERT INTO five_min_bitcoin_event AS t (
    symbol, five_min_start, five_min_end, event_count, price_sum, min_value, max_value,
    open_value, first_event_at, close_value, last_event_at, updated_at)
SELECT d.symbol,
       to_timestamp(0) + d.start_ms * interval '1 millisecond',
       to_timestamp(0) + (d.start_ms + %(window_ms)s) * interval '1 millisecond',
       d.count, d.price_sum, d.min, d.max,
       d.open, to_timestamp(0) + d.open_ms * interval '1 millisecond',
       d.close, to_timestamp(0) + d.close_ms * interval '1 millisecond',
       now()
FROM unnest(%(symbol)s::text[], %(start_ms)s::bigint[], %(count)s::bigint[],
            %(price_sum)s::numeric[], %(min)s::numeric[], %(max)s::numeric[],
            %(open)s::numeric[], %(open_ms)s::bigint[], %(close)s::numeric[],
            %(close_ms)s::bigint[])
     AS d(symbol, start_ms, count, price_sum, min, max, open, open_ms, close, close_ms)
ON CONFLICT (symbol, five_min_start) DO UPDATE SET
    event_count    = t.event_count + EXCLUDED.event_count,
    price_sum      = t.price_sum + EXCLUDED.price_sum,
    min_value      = LEAST(t.min_value, EXCLUDED.min_value),
    max_value      = GREATEST(t.max_value, EXCLUDED.max_value),
    open_value     = CASE WHEN EXCLUDED.first_event_at < t.first_event_at
                          THEN EXCLUDED.open_value ELSE t.open_value END,
    first_event_at = LEAST(t.first_event_at, EXCLUDED.first_event_at),
    close_value    = CASE WHEN EXCLUDED.last_event_at >= t.last_event_at
                          THEN EXCLUDED.close_value ELSE t.close_value END,
    last_event_at  = GREATEST(t.last_event_at, EXCLUDED.last_event_at),
    updated_at     = now()
"""

WindowKey = tuple[str, int]  # (symbol, window start in epoch ms)


def merge_params(deltas: dict[WindowKey, WindowStats]) -> dict[str, list[object] | int]:
    """The deltas as the column arrays MERGE_INTO_ROW_SQL takes, in key order."""
    keys = sorted(deltas)
    stats = [deltas[key] for key in keys]
    return {
        "window_ms": WINDOW_MS,
        "symbol": [symbol for symbol, _ in keys],
        "start_ms": [start for _, start in keys],
        "count": [s.count for s in stats],
        "price_sum": [s.price_sum for s in stats],
        "min": [s.min for s in stats],
        "max": [s.max for s in stats],
        "open": [s.open for s in stats],
        "open_ms": [s.open_time for s in stats],
        "close": [s.close for s in stats],
        "close_ms": [s.close_time for s in stats],
    }


class WindowDeltas:
    """What changed since the last flush, per (symbol, window). Memory holds only this."""

    def __init__(self) -> None:
        self.deltas: dict[WindowKey, WindowStats] = {}

    def add(self, symbol: str, start: int, price: Decimal, event_time: int) -> None:
        """Fold an event into its window's delta; `start` is window_start(event_time)."""
        key = (symbol, start)
        stats = self.deltas.get(key)
        if stats is None:
            self.deltas[key] = WindowStats.of(price, event_time)
        else:
            stats.add(price, event_time)

    def take(self) -> dict[WindowKey, WindowStats]:
        deltas, self.deltas = self.deltas, {}
        return deltas

    def __len__(self) -> int:
        return len(self.deltas)
