"""Windows of trades and candles (core/windows.py): their statistics against the offline
truth (tests/pipeline.py), whatever order trades of one window arrive in, and a poller's
samples beside them in rows of their own."""

from __future__ import annotations

import random
from decimal import Decimal
from typing import NamedTuple

from aggregator.core.accumulator import Accumulator
from aggregator.core.windows import STATISTICS, WINDOW_MS, WindowStats, column_values
from tests.pipeline import (
    BASE_TIME_MS,
    NOW_MS,
    Event,
    expected_windows,
    random_klines,
    random_stream,
    random_trades,
    window_deltas,
)


class Record(NamedTuple):
    """What the Kafka client hands over, as far as the accumulator reads it."""

    offset: int
    key: bytes
    value: bytes


def folded(events: list[Event]) -> dict:
    return {key: column_values(stats) for key, stats in window_deltas(events).items()}


def test_trade_windows_equal_the_truth_in_id_order() -> None:
    for seed in range(20):
        trades = random_trades(random.Random(seed), 400)
        assert folded(trades) == expected_windows(trades), f"seed {seed}"


def test_trades_of_one_millisecond_open_and_close_by_their_ids_in_any_arrival_order() -> None:
    t = BASE_TIME_MS + 1_000
    trades = [
        Event("BTCUSDT", price, t, "binance", "aggtrades/BTCUSDT", n, "1", raw, raw)
        for n, (price, raw) in enumerate([("101", 10), ("102", 11), ("103", 12)], start=1)
    ]
    for order in ([0, 1, 2], [2, 1, 0], [1, 2, 0], [2, 0, 1]):
        arrived = [trades[i] for i in order]
        (window,) = folded(arrived).values()
        assert (window["open_value"], window["close_value"]) == (Decimal(101), Decimal(103))
        assert folded(arrived) == expected_windows(trades)


def test_trade_windows_merge_in_any_split_and_order_of_deltas() -> None:
    rng = random.Random(7)
    trades = random_trades(rng, 300, symbols=("BTCUSDT",))
    truth = expected_windows(trades)
    for _ in range(30):
        shuffled = trades[:]
        rng.shuffle(shuffled)
        cut = rng.randint(1, len(shuffled) - 1)
        early, late = window_deltas(shuffled[:cut]), window_deltas(shuffled[cut:])
        for key, stats in late.items():
            if key in early:
                early[key].merge(stats)
            else:
                early[key] = stats
        assert {k: column_values(s) for k, s in early.items()} == truth


def test_a_trade_window_holds_volume_vwap_inputs_and_its_raw_trade_count() -> None:
    t = BASE_TIME_MS + 5
    stats = WindowStats.of_trade(Decimal("100.5"), Decimal("0.2"), t, 7, 9)
    stats.add_trade(Decimal("99.25"), Decimal("1.0"), t + 1, 10, 10)
    assert stats.volume == Decimal("1.2")
    assert stats.quote_volume == Decimal("100.5") * Decimal("0.2") + Decimal("99.25")
    assert (stats.trade_count, stats.first_trade_id, stats.last_trade_id) == (4, 7, 10)


def test_five_one_minute_candles_make_the_five_minute_candle() -> None:
    candles = random_klines(random.Random(3), 10)
    windows = folded(candles)
    assert len(windows) == 2
    for (symbol, start, feed), w in windows.items():
        mine = [
            c.kline
            for c in candles
            if c.kline and start <= c.kline["open_time"] < start + WINDOW_MS
        ]
        assert (symbol, feed, len(mine)) == ("BTCUSDT", "klines", 5)
        assert w["open_value"] == Decimal(mine[0]["open"])
        assert w["close_value"] == Decimal(mine[-1]["close"])
        assert w["max_value"] == max(Decimal(k["high"]) for k in mine)
        assert w["min_value"] == min(Decimal(k["low"]) for k in mine)
        assert w["volume"] == sum(Decimal(k["volume"]) for k in mine)
        assert w["trade_count"] == sum(k["trade_count"] for k in mine)
        assert (w["first_event_at"], w["last_event_at"]) == (start, start + WINDOW_MS - 1)
        assert (w["first_trade_id"], w["last_trade_id"]) == (None, None)
    assert windows == expected_windows(candles)


def test_samples_trades_and_candles_of_one_window_fill_three_rows() -> None:
    """A poller beside a trade stream: the samples never reach the trades' candle."""
    rng = random.Random(11)
    trades = random_trades(rng, 50, symbols=("BTCUSDT",))
    samples = random_stream(rng, 50, symbols=("BTCUSDT",))
    candles = random_klines(rng, 5)
    # Each stream in its own order (a partition keeps it), the three interleaved at random.
    queues = [trades[:], samples[:], candles[:]]
    mixed = []
    while any(queues):
        queue = rng.choice([q for q in queues if q])
        mixed.append(queue.pop(0))
    acc = Accumulator()
    acc.process_batch(
        0, [Record(n, e.symbol.encode(), e.message()) for n, e in enumerate(mixed)], NOW_MS
    )
    got = {k: column_values(s) for k, s in acc.pending.windows.deltas.items()}
    assert {feed for _, _, feed in got} == {"samples", "trades", "klines"}
    by_feed = [[e for e in mixed if e.feed == feed] for feed in ("samples", "trades", "klines")]
    truth = {k: v for events in by_feed for k, v in expected_windows(events).items()}
    assert got == truth
    for key, row in got.items():
        if key[2] == "samples":
            assert all(row[s.column] is None for s in STATISTICS[8:]), key
