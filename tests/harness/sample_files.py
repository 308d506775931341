"""Generate Binance public-data files (klines, aggTrades) with synthetic prices, in the exact
data.binance.vision layout, for replay demos and tests. The real dumps are not shipped: their
licence is not stated.

    python -m tests.harness.sample_files --out /tmp/replay --days 1
"""

from __future__ import annotations

import argparse
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

MINUTE_MS = 60_000
MICROSECOND_FILES_FROM = datetime(2025, 1, 1, tzinfo=UTC)  # Binance's spot switch to µs


def _price_walk(rng: random.Random, start: Decimal, steps: int) -> list[Decimal]:
    prices, price = [], start
    for _ in range(steps):
        price = max(Decimal("0.01"), price * Decimal(repr(1 + rng.gauss(0, 0.0008))))
        prices.append(price.quantize(Decimal("0.01")))
    return prices


def write_klines(path: Path, day: datetime, rng: random.Random, start_price: Decimal) -> Decimal:
    """One day of 1-minute klines: 12 columns, no header, times in µs from 2025 on.
    Returns the last close, where the next day starts."""
    scale = 1000 if day >= MICROSECOND_FILES_FROM else 1
    first_ms = int(day.timestamp() * 1000)
    closes = _price_walk(rng, start_price, 1440)
    with path.open("w") as out:
        open_price = start_price
        for minute, close in enumerate(closes):
            open_ms = first_ms + minute * MINUTE_MS
            high, low = max(open_price, close), min(open_price, close)
            volume = Decimal(rng.randint(1_000, 90_000)) / 1000
            out.write(
                f"{open_ms * scale},{open_price:.8f},{high:.8f},{low:.8f},{close:.8f},"
                f"{volume:.8f},{(open_ms + MINUTE_MS) * scale - 1},{volume * close:.8f},"
                f"{rng.randint(50, 900)},{volume / 2:.8f},{volume * close / 2:.8f},0\n"
            )
            open_price = close
    return closes[-1]


def write_agg_trades(path: Path, day: datetime, rng: random.Random, start_price: Decimal) -> int:
    """A few thousand aggregate trades of one day's first hour: 8 columns, no header."""
    scale = 1000 if day >= MICROSECOND_FILES_FROM else 1
    time_us = int(day.timestamp() * 1_000_000)
    prices = _price_walk(rng, start_price, 5000)
    with path.open("w") as out:
        for trade, price in enumerate(prices):
            time_us += rng.randint(1, 1_400_000)
            stamp = time_us if scale == 1000 else time_us // 1000
            quantity = Decimal(rng.randint(1, 500_000)) / 100_000_000
            out.write(
                f"{trade + 1},{price:.8f},{quantity:.8f},{trade * 2},{trade * 2 + 1},"
                f"{stamp},{rng.random() < 0.5},True\n"
            )
    return len(prices)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write into")
    parser.add_argument("--symbol", default="BTCUSDT")
    parser.add_argument("--days", type=int, default=1, help="days of 1-minute klines, up to today")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    price = first_price = Decimal("43250.75")
    for back in range(args.days, 0, -1):
        day = today - timedelta(days=back)
        name = args.out / f"{args.symbol}-1m-{day:%Y-%m-%d}.csv"
        price = write_klines(name, day, rng, price)
        print(f"{name}: 1440 klines")
    trades = args.out / f"{args.symbol}-aggTrades-{today - timedelta(days=1):%Y-%m-%d}.csv"
    print(
        f"{trades}: {write_agg_trades(trades, today - timedelta(days=1), rng, first_price)} trades"
    )


if __name__ == "__main__":
    main()
