"""5-minute tumbling windows on event time: the heart of the exactness. Pure, no I/O.

A window's statistics are a mergeable value. Events merge into a delta in memory
(`WindowStats`); at a flush the delta merges into its row of five_min_bitcoin_event
(`MERGE_INTO_ROW_SQL`). Each statistic is declared once, in STATISTICS: its field, its column
and its merge, in Python and in SQL one line apart, over the same two operands: `t` the row
(earlier events) and `d` the delta (later events; EXCLUDED in SQL). The rules:

    count, sum   add (a trade's volume, quote volume and raw trade count too)
    min, max     take the extreme (and the first and last raw trade ids)
    open         the price of the earliest event time; on a tie the lower first trade id,
                 else the one already held, wins
    close        the price of the latest event time; on a tie the higher last trade id,
                 else the newcomer, wins

"Already held" is always earlier in the stream: the row holds flushed events, the delta the
ones read after them, and within a delta events merge in offset order. So open/close on equal
event times follow the order of the partition, which a replay after a crash repeats exactly;
between trades of the same millisecond, the exchange's own order (its trade ids) decides,
whatever order they arrived in.

A window is one row per symbol, start and feed (btcpipe.contract's FEEDS): price samples,
trades, candles. The trade statistics (volume, quote volume, trade count, first and last
trade id) are None for samples, and a candle has no trade ids: within one feed they are
always all set or all None, so the rules need not mix the two (they mirror SQL where they
could: + gives NULL with a NULL, LEAST and GREATEST pass over it).

The SQL statement and its parameters are derived from STATISTICS. A new statistic is its
field in WindowStats (with `of` and `add`), its line in STATISTICS, a migration adding its
column, and its offline truth in tests/pipeline.py: README, "Adding a statistic or a column".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from decimal import Context, Decimal
from operator import attrgetter
from typing import Any

from btcpipe.contract.decoding import DecodedKline
from btcpipe.contract.rules import KLINE_INTERVALS_MS, SAMPLES

WINDOW_MS = 5 * 60 * 1000
# Sums must stay exact: the default context (28 digits) would round them, and the contract
# admits prices of up to 20 + 20 digits. 100 digits hold any sum of 2**63 such prices.
EXACT = Context(prec=100)


def window_start(event_time_ms: int) -> int:
    """Start of the UTC-aligned 5-minute window holding this instant (epoch ms)."""
    return event_time_ms - event_time_ms % WINDOW_MS


@dataclass(slots=True)
class WindowStats:
    """One window's statistics: a field per line of STATISTICS, in the same order."""

    count: int
    price_sum: Decimal
    min: Decimal
    max: Decimal
    open: Decimal
    open_time: int  # epoch ms of the first event
    close: Decimal
    close_time: int  # epoch ms of the last event
    volume: Decimal | None = None  # sum of the quantities traded
    quote_volume: Decimal | None = None  # sum of price x quantity
    trade_count: int | None = None  # raw trades
    first_trade_id: int | None = None
    last_trade_id: int | None = None

    @classmethod
    def of(cls, price: Decimal, event_time: int) -> WindowStats:
        """A price sample."""
        return cls(1, price, price, price, price, event_time, price, event_time)

    @classmethod
    def of_trade(
        cls, price: Decimal, quantity: Decimal, event_time: int, first_id: int, last_id: int
    ) -> WindowStats:
        """An aggregate trade: raw trades first_id to last_id at one price."""
        quote = EXACT.multiply(price, quantity)
        count = last_id - first_id + 1
        return cls(
            1, price, price, price, price, event_time, price, event_time,
            quantity, quote, count, first_id, last_id,
        )  # fmt: skip

    @classmethod
    def of_kline(cls, kline: DecodedKline) -> WindowStats:
        """A candle: one event at its close, with the candle's own open, high, low and close
        from its open time to its close time, its volumes and trade count."""
        close_time = kline.open_time + KLINE_INTERVALS_MS[kline.interval] - 1
        return cls(
            1, kline.close, kline.low, kline.high, kline.open, kline.open_time,
            kline.close, close_time, kline.volume, kline.quote_volume, kline.trade_count,
        )  # fmt: skip

    def add(self, price: Decimal, event_time: int) -> None:
        """merge(WindowStats.of(price, event_time)), written out: it runs for every message
        (tests hold it to `merge`)."""
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

    def add_trade(
        self, price: Decimal, quantity: Decimal, event_time: int, first_id: int, last_id: int
    ) -> None:
        """merge(WindowStats.of_trade(...)), written out for the hot path (tests hold it to
        `merge`). A trades window has its trade statistics set, from its first trade on."""
        volume, quote, count = self.volume, self.quote_volume, self.trade_count
        first, last = self.first_trade_id, self.last_trade_id
        assert volume is not None and quote is not None and count is not None
        assert first is not None and last is not None
        self.count += 1
        self.price_sum = EXACT.add(self.price_sum, price)
        if price < self.min:
            self.min = price
        if price > self.max:
            self.max = price
        if event_time < self.open_time or (event_time == self.open_time and first_id < first):
            self.open, self.open_time = price, event_time
        if event_time > self.close_time or (event_time == self.close_time and last_id >= last):
            self.close, self.close_time = price, event_time
        self.volume = EXACT.add(volume, quantity)
        self.quote_volume = EXACT.add(quote, EXACT.multiply(price, quantity))
        self.trade_count = count + last_id - first_id + 1
        if first_id < first:
            self.first_trade_id = first_id
        if last_id > last:
            self.last_trade_id = last_id

    def merge(self, later: WindowStats) -> None:
        """Fold in statistics of events that came after ours in the stream: each statistic's
        Python merge, all from the values before it (as SQL's SET reads the old row)."""
        merged = [statistic.merge(self, later) for statistic in STATISTICS]
        for statistic, value in zip(STATISTICS, merged, strict=True):
            setattr(self, statistic.field, value)


def _opens_earlier(t: WindowStats, d: WindowStats) -> bool:
    """Whether the delta's first event opens the window: earlier, or at the same time with a
    lower first trade id (SQL: a comparison with NULL is not true)."""
    if d.open_time != t.open_time:
        return d.open_time < t.open_time
    first_d, first_t = d.first_trade_id, t.first_trade_id
    return first_d is not None and first_t is not None and first_d < first_t


def _closes_later(t: WindowStats, d: WindowStats) -> bool:
    """Whether the delta's last event closes the window: later, or at the same time unless
    its last trade id is lower (without ids, the newcomer: later in the stream)."""
    if d.close_time != t.close_time:
        return d.close_time > t.close_time
    last_d, last_t = d.last_trade_id, t.last_trade_id
    return last_d is None or last_t is None or last_d >= last_t


def _sum_or_none(a: Any, b: Any) -> Any:
    """SQL's +: NULL with a NULL; exact for Decimals."""
    if a is None or b is None:
        return None
    return EXACT.add(a, b) if isinstance(a, Decimal) else a + b


def _least(a: int | None, b: int | None) -> int | None:
    """SQL's LEAST, which passes over NULLs."""
    return b if a is None else a if b is None else min(a, b)


def _greatest(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


@dataclass(frozen=True, slots=True)
class Statistic:
    field: str  # of WindowStats
    column: str  # of five_min_bitcoin_event
    sql_type: str  # of the column: bigint, numeric, or timestamptz (epoch ms in WindowStats)
    merge: Callable[[Any, Any], Any]  # (t, d) -> the merged value
    sql_merge: str  # the same rule over the row t and the delta EXCLUDED


# fmt: off
STATISTICS = (
    # field, column, SQL type
    #     the Python merge: t the row (earlier events), d the delta (later events)
    #     the SQL merge, the same rule: t the row, EXCLUDED the delta
    Statistic("count", "event_count", "bigint",
        lambda t, d: t.count + d.count,
        "t.event_count + EXCLUDED.event_count"),
    Statistic("price_sum", "price_sum", "numeric",
        lambda t, d: EXACT.add(t.price_sum, d.price_sum),
        "t.price_sum + EXCLUDED.price_sum"),  # numeric: exact in SQL
    Statistic("min", "min_value", "numeric",
        lambda t, d: min(t.min, d.min),
        "LEAST(t.min_value, EXCLUDED.min_value)"),
    Statistic("max", "max_value", "numeric",
        lambda t, d: max(t.max, d.max),
        "GREATEST(t.max_value, EXCLUDED.max_value)"),
    Statistic("open", "open_value", "numeric",
        lambda t, d: d.open if _opens_earlier(t, d) else t.open,
        "CASE WHEN EXCLUDED.first_event_at < t.first_event_at"
        " OR (EXCLUDED.first_event_at = t.first_event_at"
        " AND EXCLUDED.first_trade_id < t.first_trade_id)"
        " THEN EXCLUDED.open_value ELSE t.open_value END"),
    Statistic("open_time", "first_event_at", "timestamptz",
        lambda t, d: min(t.open_time, d.open_time),
        "LEAST(t.first_event_at, EXCLUDED.first_event_at)"),
    Statistic("close", "close_value", "numeric",
        lambda t, d: d.close if _closes_later(t, d) else t.close,
        "CASE WHEN EXCLUDED.last_event_at > t.last_event_at"
        " OR (EXCLUDED.last_event_at = t.last_event_at"
        " AND COALESCE(EXCLUDED.last_trade_id >= t.last_trade_id, true))"
        " THEN EXCLUDED.close_value ELSE t.close_value END"),
    Statistic("close_time", "last_event_at", "timestamptz",
        lambda t, d: max(t.close_time, d.close_time),
        "GREATEST(t.last_event_at, EXCLUDED.last_event_at)"),
    Statistic("volume", "volume", "numeric",
        lambda t, d: _sum_or_none(t.volume, d.volume),
        "t.volume + EXCLUDED.volume"),
    Statistic("quote_volume", "quote_volume", "numeric",
        lambda t, d: _sum_or_none(t.quote_volume, d.quote_volume),
        "t.quote_volume + EXCLUDED.quote_volume"),
    Statistic("trade_count", "trade_count", "bigint",
        lambda t, d: _sum_or_none(t.trade_count, d.trade_count),
        "t.trade_count + EXCLUDED.trade_count"),
    Statistic("first_trade_id", "first_trade_id", "bigint",
        lambda t, d: _least(t.first_trade_id, d.first_trade_id),
        "LEAST(t.first_trade_id, EXCLUDED.first_trade_id)"),
    Statistic("last_trade_id", "last_trade_id", "bigint",
        lambda t, d: _greatest(t.last_trade_id, d.last_trade_id),
        "GREATEST(t.last_trade_id, EXCLUDED.last_trade_id)"),
)
# fmt: on

if [f.name for f in fields(WindowStats)] != [s.field for s in STATISTICS]:  # pragma: no cover
    raise TypeError("WindowStats' fields and STATISTICS must list the same statistics in order")

COLUMNS = tuple(s.column for s in STATISTICS)


def _from_epoch_ms(ms: str) -> str:
    return f"to_timestamp(0) + {ms} * interval '1 millisecond'"


def _delta_value(statistic: Statistic) -> str:
    """The delta's value of a statistic as its column takes it (times travel as epoch ms)."""
    value = f"d.{statistic.field}"
    return _from_epoch_ms(value) if statistic.sql_type == "timestamptz" else value


def _array_type(statistic: Statistic) -> str:
    return "bigint" if statistic.sql_type == "timestamptz" else statistic.sql_type


def _merge_into_row_sql() -> str:
    columns = ", ".join(COLUMNS)
    values = ",\n       ".join(_delta_value(s) for s in STATISTICS)
    arrays = ", ".join(f"%({s.field})s::{_array_type(s)}[]" for s in STATISTICS)
    names = ", ".join(s.field for s in STATISTICS)
    merges = "".join(f"    {s.column} = {s.sql_merge},\n" for s in STATISTICS)
    return (
        f"INSERT INTO five_min_bitcoin_event AS t (\n"
        f"    symbol, five_min_start, feed, five_min_end, {columns}, updated_at)\n"
        f"SELECT d.symbol, {_from_epoch_ms('d.start_ms')}, d.feed,\n"
        f"       {_from_epoch_ms('(d.start_ms + %(window_ms)s)')},\n"
        f"       {values},\n"
        f"       now()\n"
        f"FROM unnest(%(symbol)s::text[], %(start_ms)s::bigint[], %(feed)s::text[], {arrays})\n"
        f"     AS d(symbol, start_ms, feed, {names})\n"
        f"ON CONFLICT (symbol, five_min_start, feed) DO UPDATE SET\n"
        f"{merges}"
        f"    updated_at = now()\n"
    )


# The SQL merge of STATISTICS. The delta comes in as arrays, one element per window, sorted
# by key so that concurrent flushes lock rows in the same order. In SET every expression reads
# the row as it was before the statement, like `merge` above.
MERGE_INTO_ROW_SQL = _merge_into_row_sql()

WindowKey = tuple[str, int, str]  # (symbol, window start in epoch ms, feed)

_FIELD_VALUES = tuple((s.field, attrgetter(s.field)) for s in STATISTICS)


def merge_params(deltas: dict[WindowKey, WindowStats]) -> dict[str, list[object] | int]:
    """The deltas as the column arrays MERGE_INTO_ROW_SQL takes, in key order."""
    keys = sorted(deltas)
    stats = [deltas[key] for key in keys]
    params: dict[str, list[object] | int] = {
        "window_ms": WINDOW_MS,
        "symbol": [symbol for symbol, _, _ in keys],
        "start_ms": [start for _, start, _ in keys],
        "feed": [feed for _, _, feed in keys],
    }
    for field, value_of in _FIELD_VALUES:
        params[field] = list(map(value_of, stats))
    return params


def column_values(stats: WindowStats) -> dict[str, Any]:
    """The statistics under their column names (times as epoch ms)."""
    return {s.column: getattr(stats, s.field) for s in STATISTICS}


class WindowDeltas:
    """What changed since the last flush, per (symbol, window). Memory holds only this."""

    def __init__(self) -> None:
        self.deltas: dict[WindowKey, WindowStats] = {}

    def add(self, symbol: str, start: int, price: Decimal, event_time: int) -> None:
        """Fold a price sample into its window's delta; `start` is window_start(event_time)."""
        key = (symbol, start, SAMPLES)
        stats = self.deltas.get(key)
        if stats is None:
            self.deltas[key] = WindowStats.of(price, event_time)
        else:
            stats.add(price, event_time)

    def merge(self, symbol: str, feed: str, stats: WindowStats) -> None:
        """Fold the statistics of later events (a trade, a candle) into their window's delta."""
        key = (symbol, window_start(stats.close_time), feed)
        found = self.deltas.get(key)
        if found is None:
            self.deltas[key] = stats
        else:
            found.merge(stats)

    def take(self) -> dict[WindowKey, WindowStats]:
        deltas, self.deltas = self.deltas, {}
        return deltas

    def __len__(self) -> int:
        return len(self.deltas)
