"""The fake Binance's trade tapes and what REST makes of them (tests/harness/trade_tape.py,
klines.py, market_data.py), pure: the tape's id rules, its two faults, the public-data file,
and klines held to a Decimal computation written here from Binance's rules."""

from __future__ import annotations

import itertools
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.harness.market_data import agg_trades, kline_rows
from tests.harness.rest_errors import BinanceError
from tests.harness.trade_generator import RandomWalk, append_steps
from tests.harness.trade_tape import AggTrade, Tape, TapeError, plain, read_agg_trades

T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MINUTE_MS = 60_000


def tape_of(*trades: tuple[str, str, int, bool, int]) -> Tape:
    """A tape of (price, quantity, time ms, buyer is maker, raw trades)."""
    tape = Tape("BTCUSDT", "100")
    for price, quantity, time_ms, maker, raw in trades:
        tape.append(price, quantity, time_ms * 1000, maker, raw)
    return tape


# --- the tape's rules -------------------------------------------------------------------------


def test_ids_grow_by_one_and_raw_ids_continue() -> None:
    tape = tape_of(
        ("1", "1", T0_MS, False, 1), ("2", "1", T0_MS, True, 3), ("3", "1", T0_MS, False, 1)
    )
    first, second, third = tape.trades()
    assert [t.agg_id for t in (first, second, third)] == [1, 2, 3]
    assert [(t.first_id, t.last_id) for t in (first, second, third)] == [(1, 1), (2, 4), (5, 5)]
    assert second.raw_trades == 3


def test_prices_and_quantities_are_exact_8_decimal_strings() -> None:
    trade = tape_of(("43250.5", "0.001", T0_MS, False, 1)).trades()[0]
    assert (trade.price, trade.quantity) == ("43250.50000000", "0.00100000")
    assert plain(Decimal("1.123456789")) == "1.123456789"  # never rounded
    assert plain(Decimal("404873.2938097000000000")) == "404873.29380970"


@pytest.mark.parametrize(
    ("price", "quantity", "words"),
    [
        ("0", "1", "above 0"),
        ("1", "0", "above 0"),
        ("abc", "1", "decimal"),
        ("1", "-1", "at least 0"),
    ],
)
def test_a_trade_without_a_positive_price_and_quantity_is_refused(
    price: str, quantity: str, words: str
) -> None:
    with pytest.raises(TapeError, match=words):
        Tape("BTCUSDT", "1").append(price, quantity, 0)


def test_times_never_go_back() -> None:
    tape = tape_of(("1", "1", T0_MS, False, 1))
    with pytest.raises(TapeError, match="never go back"):
        tape.append("1", "1", (T0_MS - 1) * 1000)
    assert len(tape) == 1


def test_a_hole_is_skipped_by_every_later_id() -> None:
    tape = tape_of(("1", "1", T0_MS, False, 2))
    assert tape.skip_ids(3) == (2, 4)
    after = tape.append("1", "1", T0_MS * 1000)
    assert (after.agg_id, after.first_id) == (5, 6)  # raw ids 3-5 went with the hole
    assert [t.agg_id for t in tape.from_id(2, 10)] == [5]  # fromId inside the hole


def test_a_placeholder_takes_an_id_but_no_raw_trade() -> None:
    tape = tape_of(("7", "1", T0_MS, False, 1))
    placeholder = tape.append_placeholder()
    after = tape.append("8", "1", T0_MS * 1000 + 5)
    assert placeholder.binance_row() == {
        "a": 2, "p": "0.00000000", "q": "0.00000000", "f": -1, "l": -1,
        "T": T0_MS, "m": False, "M": True,
    }  # fmt: skip
    assert placeholder.is_placeholder and placeholder.raw_trades == 0
    assert (after.agg_id, after.first_id) == (3, 2)
    assert tape.last_price() == "8.00000000"


def test_appended_trades_are_announced_in_tape_order_but_placeholders_are_not() -> None:
    tape = Tape("BTCUSDT", "1")
    announced: list[AggTrade] = []
    tape.on_append = announced.append
    tape.append("1", "1", 1)
    tape.append_placeholder()
    tape.skip_ids(2)
    tape.append("2", "1", 2)
    assert [t.agg_id for t in announced] == [1, 5]


def test_a_walk_is_the_same_for_the_same_seed_and_symbol() -> None:
    def prices(seed: int, symbol: str) -> list[str]:
        tape = Tape(symbol, "100")
        append_steps(tape, RandomWalk(seed, symbol, "100"), 50, T0_MS * 1000)
        return [trade.price for trade in tape.trades()]

    assert prices(1, "BTCUSDT") == prices(1, "BTCUSDT")
    assert prices(1, "BTCUSDT") != prices(2, "BTCUSDT") != prices(1, "ETHUSDT")


def test_trades_appended_together_share_a_millisecond_and_keep_the_rules() -> None:
    tape = Tape("BTCUSDT", "100")
    append_steps(tape, RandomWalk(0, "BTCUSDT", "100"), 200, T0_MS * 1000)
    trades = tape.trades()
    assert len({t.time_ms for t in trades}) < len(trades)  # several in one millisecond
    for before, after in itertools.pairwise(trades):
        assert after.agg_id == before.agg_id + 1
        assert after.first_id == before.last_id + 1 and after.last_id >= after.first_id
        assert after.time_us >= before.time_us
    assert any(t.raw_trades > 1 for t in trades)


# --- the public-data file ---------------------------------------------------------------------


def test_reading_an_agg_trades_file_in_either_time_unit(tmp_path: Path) -> None:
    path = tmp_path / "BTCUSDT-aggTrades.csv"
    path.write_text(
        "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,"
        "is_buyer_maker,is_best_match\n"
        "10,87648.21,0.08185000,100,101,1767225600039409,True,True\n"
        "11,0,0,-1,-1,1767225600039409,False,True\n"
        "12,87648.22000000,0.00013000,102,102,1767225600272,False,False\n"
    )
    first, placeholder, third = read_agg_trades(path)
    assert first == AggTrade(10, "87648.21000000", "0.08185000", 100, 101, 1767225600039409, True)
    assert placeholder.is_placeholder
    assert (third.time_us, third.best_match) == (1767225600272000, False)
    tape = Tape("BTCUSDT", "1")
    assert tape.load([first, placeholder, third]) == 3
    with pytest.raises(TapeError, match="not after"):
        tape.load([first])


# --- REST answers -----------------------------------------------------------------------------


def page(tape: Tape, **query: Any) -> list[dict[str, Any]]:
    return agg_trades(tape, {"symbol": "BTCUSDT", **{k: str(v) for k, v in query.items()}}, False)


def test_agg_trades_by_id_by_time_and_most_recent() -> None:
    tape = tape_of(*[("1", "1", T0_MS + i // 3, False, 1) for i in range(30)])  # 3 a ms
    assert [r["a"] for r in page(tape, fromId=5, limit=3)] == [5, 6, 7]
    assert [r["a"] for r in page(tape, startTime=T0_MS + 2, limit=2)] == [7, 8]
    assert [r["a"] for r in page(tape, startTime=T0_MS + 2, endTime=T0_MS + 3)] == [
        7,
        8,
        9,
        10,
        11,
        12,
    ]
    assert [r["a"] for r in page(tape, endTime=T0_MS + 3, limit=2)] == [11, 12]
    assert [r["a"] for r in page(tape, limit=2)] == [29, 30]
    assert len(page(tape)) == 30  # the default limit, 500, holds them all


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ({"fromId": "1", "startTime": "1"}, -1128),
        ({"startTime": str(T0_MS), "endTime": str(T0_MS + 3_600_001)}, -1127),
        ({"limit": "1001"}, -1130),
        ({"limit": "0"}, -1130),
        ({"fromId": "x"}, -1100),
        ({"from": "1"}, -1104),
    ],
)
def test_agg_trades_refuses_what_binance_refuses(query: dict[str, str], code: int) -> None:
    with pytest.raises(BinanceError) as refused:
        agg_trades(Tape("BTCUSDT", "1"), {"symbol": "BTCUSDT", **query}, False)
    assert (refused.value.status, refused.value.code) == (400, code)


def test_exactly_an_hour_apart_is_allowed() -> None:
    tape = tape_of(("1", "1", T0_MS, False, 1), ("1", "1", T0_MS + 3_600_000, False, 1))
    assert len(page(tape, startTime=T0_MS, endTime=T0_MS + 3_600_000)) == 2


@pytest.mark.parametrize(
    ("query", "code"),
    [({}, -1102), ({"interval": "7m"}, -1120), ({"interval": "1m", "limit": "2000"}, -1130)],
)
def test_klines_refuse_what_binance_refuses(query: dict[str, str], code: int) -> None:
    with pytest.raises(BinanceError) as refused:
        kline_rows(Tape("BTCUSDT", "1"), {"symbol": "BTCUSDT", **query}, T0_MS, False)
    assert refused.value.code == code


def offline_klines(
    trades: list[AggTrade], interval_ms: int, first: int, last: int
) -> list[list[Any]]:
    """Binance's candle rules, computed here from the trades with Decimal, independently of
    tests/harness/klines.py: opens `first`..`last` (ms), an empty one at the previous close."""
    buckets: dict[int, list[AggTrade]] = defaultdict(list)
    for trade in trades:
        if trade.price != "0.00000000":  # a placeholder row is no trade
            buckets[trade.time_us // 1000 // interval_ms * interval_ms].append(trade)
    rows, close = [], None
    for open_ms in range(first, last + 1, interval_ms):
        inside = sorted(buckets[open_ms], key=lambda t: (t.time_us, t.agg_id))
        if not inside:
            assert close is not None
            rows.append([open_ms, close, close, close, close, Decimal(0), open_ms + interval_ms - 1,
                         Decimal(0), 0, Decimal(0), Decimal(0), "0"])  # fmt: skip
            continue
        prices = [Decimal(t.price) for t in inside]
        pq = [Decimal(t.price) * Decimal(t.quantity) for t in inside]
        close = prices[-1]
        rows.append([
            open_ms, prices[0], max(prices), min(prices), close,
            sum(Decimal(t.quantity) for t in inside), open_ms + interval_ms - 1, sum(pq),
            sum(t.last_id - t.first_id + 1 for t in inside),
            sum(Decimal(t.quantity) for t in inside if not t.buyer_is_maker),
            sum(v for v, t in zip(pq, inside, strict=True) if not t.buyer_is_maker), "0",
        ])  # fmt: skip
    return rows


def as_decimals(rows: list[list[Any]]) -> list[list[Any]]:
    return [[Decimal(v) if isinstance(v, str) and v != "0" else v for v in row] for row in rows]


def test_klines_follow_binances_candle_rules() -> None:
    tape = Tape("BTCUSDT", "100")
    append_steps(tape, RandomWalk(3, "BTCUSDT", "100"), 40, T0_MS * 1000)  # minute 0
    tape.append_placeholder()
    append_steps(tape, RandomWalk(4, "BTCUSDT", "100"), 25, (T0_MS + 2 * MINUTE_MS + 7) * 1000)
    tape.skip_ids(4)
    append_steps(tape, RandomWalk(5, "BTCUSDT", "100"), 10, (T0_MS + 6 * MINUTE_MS - 1) * 1000)
    now = T0_MS + 7 * MINUTE_MS + 1  # the open candle is served too
    for interval, length in (("1m", MINUTE_MS), ("5m", 5 * MINUTE_MS)):
        served = kline_rows(tape, {"symbol": "BTCUSDT", "interval": interval}, now, False)
        last_open = now // length * length
        expected = offline_klines(tape.trades(), length, T0_MS, last_open)
        assert as_decimals(served) == expected
    minute_one = kline_rows(
        tape, {"symbol": "BTCUSDT", "interval": "1m", "startTime": str(T0_MS + 1)}, now, False
    )[0]
    assert minute_one[0] == T0_MS + MINUTE_MS  # the first to open at or after startTime
    assert minute_one[5] == "0.00000000" and minute_one[1] == minute_one[4]  # no trades


def test_klines_limit_start_and_end() -> None:
    tape = tape_of(*[(str(10 + i), "1", T0_MS + i * MINUTE_MS, False, 1) for i in range(10)])
    now = T0_MS + 9 * MINUTE_MS

    def opens(**query: Any) -> list[int]:
        full = {"symbol": "BTCUSDT", "interval": "1m", **{k: str(v) for k, v in query.items()}}
        return [row[0] for row in kline_rows(tape, full, now, False)]

    minutes = [T0_MS + i * MINUTE_MS for i in range(10)]
    assert opens() == minutes
    assert opens(limit=3) == minutes[-3:]
    assert opens(startTime=minutes[2], limit=3) == minutes[2:5]
    assert opens(endTime=minutes[4], limit=2) == minutes[3:5]
    assert opens(startTime=minutes[2], endTime=minutes[4]) == minutes[2:5]
    micro = kline_rows(tape, {"symbol": "BTCUSDT", "interval": "1m", "limit": "1"}, now, True)
    assert micro[0][0] == minutes[-1] * 1000 and micro[0][6] == (minutes[-1] + MINUTE_MS) * 1000 - 1
