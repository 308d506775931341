"""The fake Binance's trade tapes over real HTTP: aggTrades paging, time lookups, klines
against a Decimal computation from the tape, a real aggTrades file, faults on these paths."""

from __future__ import annotations

import csv
import itertools
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import requests

from tests.harness import FakeBinance, Fault, wait_until
from tests.harness.trade_tape import AggTrade
from tests.pipeline import SHARED_DATA, needs_shared_data

AGG_TRADES = "/api/v3/aggTrades"
KLINES = "/api/v3/klines"
TICKER = "/api/v3/ticker/price"
SAMPLE = SHARED_DATA / "BTCUSDT-aggTrades-2026-01-01.head5000.csv"
T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
FIVE_MINUTES_MS = 300_000


@pytest.fixture
def fake() -> Iterator[FakeBinance]:
    """No fixed prices: BTCUSDT's ticker/price is its tape's last price."""
    with FakeBinance(prices={}) as binance:
        binance.add_tape("BTCUSDT", "43250.75")
        yield binance


def get(
    fake: FakeBinance, path: str, headers: dict[str, str] | None = None, **params: Any
) -> requests.Response:
    return requests.get(fake.base_url + path, params=params, headers=headers, timeout=5)


def rows(trades: list[AggTrade]) -> list[dict[str, Any]]:
    return [trade.binance_row() for trade in trades]


def test_paging_by_from_id_returns_every_trade_once_in_order(fake: FakeBinance) -> None:
    fake.add_trades("BTCUSDT", 1200)
    hole = fake.skip_ids("BTCUSDT", 7)
    fake.add_placeholder("BTCUSDT")
    fake.add_trades("BTCUSDT", 1300)
    served: list[dict[str, Any]] = []
    weights = []
    from_id = 1
    while True:
        page = get(fake, AGG_TRADES, symbol="BTCUSDT", fromId=from_id, limit=1000)
        assert page.status_code == 200, page.text
        weights.append(int(page.headers["X-MBX-USED-WEIGHT-1M"]))
        if not page.json():
            break
        served += page.json()
        from_id = served[-1]["a"] + 1
    assert served == rows(fake.trades("BTCUSDT"))
    assert len(served) == 1200 + 1 + 1300
    assert not {row["a"] for row in served} & set(range(hole[0], hole[1] + 1))
    assert [b - a for a, b in itertools.pairwise(weights)] == [4] * (len(weights) - 1)


def test_start_time_returns_the_first_trade_at_or_after_it(fake: FakeBinance) -> None:
    times = [T0_MS, T0_MS + 5, T0_MS + 5, T0_MS + 9, T0_MS + 9, T0_MS + 20]
    for i, time_ms in enumerate(times):
        fake.add_trade("BTCUSDT", f"43250.{i}", "0.1", time_ms=time_ms)
    first = get(fake, AGG_TRADES, symbol="BTCUSDT", startTime=T0_MS + 6).json()
    assert [row["a"] for row in first] == [4, 5, 6]
    both = get(fake, AGG_TRADES, symbol="BTCUSDT", startTime=T0_MS + 5, endTime=T0_MS + 9)
    assert [row["T"] for row in both.json()] == [T0_MS + 5, T0_MS + 5, T0_MS + 9, T0_MS + 9]
    too_long = get(fake, AGG_TRADES, symbol="BTCUSDT", startTime=T0_MS, endTime=T0_MS + 3_600_001)
    assert (too_long.status_code, too_long.json()["code"]) == (400, -1127)
    combined = get(fake, AGG_TRADES, symbol="BTCUSDT", fromId=1, startTime=T0_MS)
    assert (combined.status_code, combined.json()["code"]) == (400, -1128)


def test_no_parameter_gives_the_most_recent_and_the_default_limit_is_500(fake: FakeBinance) -> None:
    fake.add_trades("BTCUSDT", 620)
    recent = get(fake, AGG_TRADES, symbol="BTCUSDT").json()
    assert recent == rows(fake.trades("BTCUSDT")[-500:])


def test_microseconds_when_asked(fake: FakeBinance) -> None:
    trade = fake.add_trade("BTCUSDT", "1.5", "2", time_ms=T0_MS + 7)
    micro = get(fake, AGG_TRADES, headers={"X-MBX-TIME-UNIT": "MICROSECOND"}, symbol="BTCUSDT")
    assert micro.json()[0]["T"] == trade.time_us == (T0_MS + 7) * 1000


@pytest.mark.parametrize("path", [AGG_TRADES, KLINES])
def test_unknown_symbol_and_missing_symbol(fake: FakeBinance, path: str) -> None:
    unknown = get(fake, path, symbol="DOGEBTC", interval="1m")
    assert (unknown.status_code, unknown.json()) == (400, {"code": -1121, "msg": "Invalid symbol."})
    missing = get(fake, path, interval="1m")
    assert (missing.status_code, missing.json()["code"]) == (400, -1102)


def test_klines_equal_a_decimal_computation_from_the_tape(fake: FakeBinance) -> None:
    # Trades in windows 0, 1 and 3 (2 has none), a placeholder and a hole among them.
    plan = [(0, 17), (1, 9), (3, 12)]
    for window, count in plan:
        for i in range(count):
            time_ms = T0_MS + window * FIVE_MINUTES_MS + i * 997 % FIVE_MINUTES_MS
            price = f"{43000 + (i * 37 + window * 11) % 50}.{i:02d}"
            fake.add_trade("BTCUSDT", price, f"0.{i + 1:05d}", i % 3 == 0, 1 + i % 2, time_ms)
        fake.add_placeholder("BTCUSDT")
        fake.skip_ids("BTCUSDT", 2)
    served = get(
        fake,
        KLINES,
        symbol="BTCUSDT",
        interval="5m",
        startTime=T0_MS,
        endTime=T0_MS + 4 * FIVE_MINUTES_MS - 1,
    )
    assert served.status_code == 200 and served.headers["X-MBX-USED-WEIGHT-1M"] == "2"
    candles = served.json()
    assert [row[0] for row in candles] == [T0_MS + w * FIVE_MINUTES_MS for w in range(4)]
    real = [t for t in fake.trades("BTCUSDT") if not t.is_placeholder]
    for row in candles:
        inside = [t for t in real if row[0] <= t.time_ms <= row[6]]
        previous = [t for t in real if t.time_ms < row[0]]
        close = f"{Decimal(previous[-1].price):.8f}" if previous else ""
        assert row == expected_row(row[0], inside, previous_close=close)


def expected_row(open_ms: int, trades: list[AggTrade], previous_close: str) -> list[Any]:
    """Binance's kline row of one window's trades, in Decimal, compared as numbers."""
    if not trades:
        p = previous_close
        return [open_ms, p, p, p, p, "0.00000000", open_ms + FIVE_MINUTES_MS - 1,
                "0.00000000", 0, "0.00000000", "0.00000000", "0"]  # fmt: skip
    prices = [Decimal(t.price) for t in trades]
    quantities = [Decimal(t.quantity) for t in trades]
    quote = [p * q for p, q in zip(prices, quantities, strict=True)]
    taker = [not t.buyer_is_maker for t in trades]
    numbers = [
        prices[0], max(prices), min(prices), prices[-1], sum(quantities),
    ]  # fmt: skip
    text = [f"{n:.8f}" for n in numbers]
    return [
        open_ms, *text[:4], text[4], open_ms + FIVE_MINUTES_MS - 1,
        _text(sum(quote, Decimal(0))), sum(t.last_id - t.first_id + 1 for t in trades),
        f"{sum((q for q, b in zip(quantities, taker, strict=True) if b), Decimal(0)):.8f}",
        _text(sum((v for v, b in zip(quote, taker, strict=True) if b), Decimal(0))), "0",
    ]  # fmt: skip


def _text(value: Decimal) -> str:
    """At least 8 decimals, exact: the quote volumes' form."""
    whole, _, decimals = f"{value:f}".partition(".")
    return f"{whole}.{(decimals + '0' * 8)[: max(8, len(decimals.rstrip('0')))]}"


@needs_shared_data
def test_the_real_sample_gives_klines_summing_its_rows(fake: FakeBinance) -> None:
    with SAMPLE.open(newline="") as sample:
        lines = list(csv.reader(sample))
    assert fake.load_agg_trades("ETHUSDT", SAMPLE) == len(lines) == 5000
    first_ms, last_ms = int(lines[0][5]) // 1000, int(lines[-1][5]) // 1000
    candles = get(
        fake, KLINES, symbol="ETHUSDT", interval="5m",
        startTime=first_ms // FIVE_MINUTES_MS * FIVE_MINUTES_MS, endTime=last_ms,
    ).json()  # fmt: skip
    real = [line for line in lines if line[3] != "-1"]
    assert sum(Decimal(row[5]) for row in candles) == sum(Decimal(line[2]) for line in real)
    assert sum(row[8] for row in candles) == sum(int(line[4]) - int(line[3]) + 1 for line in real)
    quote = sum(Decimal(line[1]) * Decimal(line[2]) for line in real)
    assert sum(Decimal(row[7]) for row in candles) == quote
    assert (
        candles[0][1] == f"{Decimal(real[0][1]):.8f}"
        and candles[-1][4] == f"{Decimal(real[-1][1]):.8f}"
    )
    # And aggTrades serves the file's rows, T in ms, or µs as the file has them.
    served = get(fake, AGG_TRADES, symbol="ETHUSDT", fromId=lines[0][0], limit=3).json()
    assert [(r["a"], r["f"], r["l"], r["T"]) for r in served] == [
        (int(line[0]), int(line[3]), int(line[4]), int(line[5]) // 1000) for line in lines[:3]
    ]
    micro = get(fake, AGG_TRADES, headers={"X-MBX-TIME-UNIT": "MICROSECOND"},
                symbol="ETHUSDT", fromId=lines[0][0], limit=1).json()  # fmt: skip
    assert micro[0]["T"] == int(lines[0][5])


def test_ticker_price_follows_the_tape_unless_a_price_is_fixed(fake: FakeBinance) -> None:
    assert get(fake, TICKER, symbol="BTCUSDT").json()["price"] == "43250.75000000"
    last = fake.add_trades("BTCUSDT", 3)[-1]
    assert get(fake, TICKER, symbol="BTCUSDT").json() == {"symbol": "BTCUSDT", "price": last.price}
    fake.set_price("BTCUSDT", "1.00000000")
    assert get(fake, TICKER, symbol="BTCUSDT").json()["price"] == "1.00000000"


def test_the_walk_runs_at_its_rate_and_keeps_the_id_rules() -> None:
    with FakeBinance(prices={}, trades_per_second={"BTCUSDT": 400}) as fake:

        def two_hundred() -> list[AggTrade] | None:
            trades = fake.trades("BTCUSDT")
            return trades if len(trades) >= 200 else None

        trades = wait_until(two_hundred, 20, "200 trades")
    for before, after in itertools.pairwise(trades):
        assert (after.agg_id, after.first_id) == (before.agg_id + 1, before.last_id + 1)
        assert after.time_us >= before.time_us
    assert len({t.time_ms for t in trades}) < len(trades)  # several in one millisecond


def fetch(fake: FakeBinance, path: str, params: dict[str, str]) -> requests.Response:
    return requests.get(fake.base_url + path, params={"symbol": "BTCUSDT", **params}, timeout=5)


@pytest.mark.parametrize(
    ("path", "params"),
    [(AGG_TRADES, {}), (KLINES, {"interval": "1m"})],
    ids=["aggTrades", "klines"],
)
def test_faults_can_target_the_trade_paths(
    fake: FakeBinance, path: str, params: dict[str, str]
) -> None:
    fake.fail_next(Fault.rate_limited(retry_after=7), Fault.banned(retry_after=60), path=path)
    assert get(fake, TICKER, symbol="BTCUSDT").status_code == 200  # not its path
    limited = fetch(fake, path, params)
    assert (limited.status_code, limited.headers["Retry-After"]) == (429, "7")
    assert limited.headers["X-MBX-USED-WEIGHT-1M"]
    banned = fetch(fake, path, params)
    assert (banned.status_code, banned.headers["Retry-After"]) == (418, "60")
    assert fetch(fake, path, params).status_code == 200
    assert [r.status for r in fake.requests_to(path)] == [429, 418, 200]
