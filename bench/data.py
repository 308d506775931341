"""The benchmark's data and its ground truth, independent of the pipeline's code.

- `write_agg_trades`: a Binance aggTrades file (data.binance.vision layout, µs timestamps as
  in spot files since 2025) of N trades, a random walk in cents.
- `file_windows`: the exact 5-minute windows of such a file, computed offline with Decimal
  straight from its lines (streamed: 2,000,000 lines take little memory).
- `check_tables`: every row and column of five_min_bitcoin_event against those windows.
- `trade_messages`, `file_trade_totals`, `check_trade_totals`: the same file as the
  exchange's aggregate trades (contract trades), and the volume and raw trade count of each
  window, against the trades rows.
- `tape_windows`, `tape_trade_totals`: the same truths of trades given as fields (a fake
  exchange's tapes: aggregate id, price, quantity, raw trade ids, time in ms), per symbol.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Context, Decimal, localcontext
from pathlib import Path

import orjson
import psycopg2

WINDOW_MS = 300_000
START_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z, in the µs of recent spot files


def write_agg_trades(path: Path, count: int, seed: int = 7) -> None:
    """`count` aggregate trades, about 30 per second, prices around 43,000.00 USDT moving in
    cents. Like Binance's own BTCUSDT aggTrades files (data.binance.vision), about 40 % of trades
    are at the previous trade's price."""
    rng = random.Random(seed)
    cents, time_us = 4_300_000, START_US
    with path.open("w") as out:
        for trade in range(1, count + 1):
            if rng.random() >= 0.4:
                cents = max(1, cents + rng.choice((-1, 1)) * rng.randint(1, 10))
            time_us += rng.randint(1, 60_000)
            out.write(
                f"{trade},{cents // 100}.{cents % 100:02d}000000,0.00{rng.randint(1000, 99999)},"
                f"{2 * trade},{2 * trade + 1},{time_us},{'True' if trade % 3 else 'False'},True\n"
            )


def agg_trades(path: Path) -> Iterator[tuple[str, int]]:
    """(price, event time in ms) of each line: price column 1, µs timestamp column 5."""
    with path.open() as lines:
        for line in lines:
            fields = line.split(",")
            yield fields[1], int(fields[5]) // 1000


@dataclass
class Window:
    count: int
    total: Decimal
    low: Decimal
    high: Decimal
    open: Decimal
    open_ms: int
    close: Decimal
    close_ms: int


def windows_of(symbol: str, events: Iterable[tuple[str, int]]) -> dict[tuple[str, int], Window]:
    """Events in stream order: on equal times the first opens and the last closes."""
    windows: dict[tuple[str, int], Window] = {}
    with localcontext(Context(prec=100)):  # exact sums, whatever the caller's context
        for text, event_ms in events:
            price = Decimal(text)
            key = (symbol, event_ms - event_ms % WINDOW_MS)
            w = windows.get(key)
            if w is None:
                windows[key] = Window(1, price, price, price, price, event_ms, price, event_ms)
                continue
            w.count += 1
            w.total += price
            w.low, w.high = min(w.low, price), max(w.high, price)
            if event_ms < w.open_ms:
                w.open, w.open_ms = price, event_ms
            if event_ms >= w.close_ms:
                w.close, w.close_ms = price, event_ms
    return windows


def file_windows(path: Path, symbol: str, extra: Iterable[tuple[str, int]] = ()):
    """The windows of a file's trades, then of `extra` events (same symbol) read after them."""

    def events() -> Iterator[tuple[str, int]]:
        yield from agg_trades(path)
        yield from extra

    return windows_of(symbol, events())


def check_tables(dsn: str, truth: dict[tuple[str, int], Window]) -> None:
    """Raise AssertionError naming the first difference between the tables and the truth."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT symbol, (extract(epoch FROM five_min_start) * 1000)::bigint, event_count, "
            "price_sum, min_value, max_value, open_value, "
            "(extract(epoch FROM first_event_at) * 1000)::bigint, close_value, "
            "(extract(epoch FROM last_event_at) * 1000)::bigint FROM five_min_bitcoin_event "
            "WHERE feed = 'trades'"
        )
        stored = {(row[0], row[1]): Window(*row[2:]) for row in cur.fetchall()}
    conn.close()
    missing, unexpected = truth.keys() - stored.keys(), stored.keys() - truth.keys()
    assert not missing and not unexpected, (
        f"windows differ: missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}"
    )
    for key, want in truth.items():
        assert stored[key] == want, f"window {key}: stored {stored[key]}, truth {want}"


def trade_messages(path: Path) -> list[tuple[bytes, bytes, int]]:
    """(key, value, timestamp) of every line as producer.py replays it: a trade under the
    exchange's identity (aggtrades/<SYMBOL>, the aggregate id), the quantity and raw trade
    ids."""
    messages = []
    with path.open() as lines:
        for line in lines:
            agg_id, price, quantity, first, last, time_us = line.split(",")[:6]
            symbol = path.name.split("-")[0]
            event_ms = int(time_us) // 1000
            body = {
                "symbol": symbol,
                "price": price,
                "event_time": event_ms,
                "source": "replay",
                "stream": f"aggtrades/{symbol}",
                "seq": int(agg_id),
                "quantity": quantity,
                "first_trade_id": int(first),
                "last_trade_id": int(last),
            }
            messages.append((symbol.encode(), orjson.dumps(body), event_ms))
    return messages


def file_trade_totals(path: Path, symbol: str) -> dict[tuple[str, int], tuple[Decimal, int]]:
    """Per window: the sum of the quantities and of the raw trades (last - first + 1)."""
    totals: dict[tuple[str, int], list] = defaultdict(lambda: [Decimal(0), 0])
    with localcontext(Context(prec=100)), path.open() as lines:
        for line in lines:
            _, _, quantity, first, last, time_us = line.split(",")[:6]
            event_ms = int(time_us) // 1000
            total = totals[(symbol, event_ms - event_ms % WINDOW_MS)]
            total[0] += Decimal(quantity)
            total[1] += int(last) - int(first) + 1
    return {key: (volume, count) for key, (volume, count) in totals.items()}


def check_trade_totals(dsn: str, truth: dict[tuple[str, int], tuple[Decimal, int]]) -> None:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT symbol, (extract(epoch FROM five_min_start) * 1000)::bigint, volume, "
            "trade_count, complete FROM five_min_bitcoin_event WHERE feed = 'trades'"
        )
        stored = {(row[0], row[1]): (row[2], row[3]) for row in cur.fetchall()}
        cur.execute("SELECT bool_and(complete) FROM five_min_bitcoin_event")
        (complete,) = cur.fetchone()
    conn.close()
    assert stored == truth, "trade windows differ from the file's volumes and trade counts"
    assert complete, "a window of the file's contiguous trade ids is marked incomplete"


# aggregate id, price, quantity, first and last raw trade id, time in ms
TapeRow = tuple[int, str, str, int, int, int]


def tape_windows(tapes: Mapping[str, Sequence[TapeRow]]) -> dict[tuple[str, int], Window]:
    """The windows of every symbol's trades, in id order (the tape's order)."""
    windows: dict[tuple[str, int], Window] = {}
    for symbol, rows in tapes.items():
        windows.update(windows_of(symbol, ((row[1], row[5]) for row in rows)))
    return windows


def tape_trade_totals(
    tapes: Mapping[str, Sequence[TapeRow]],
) -> dict[tuple[str, int], tuple[Decimal, int]]:
    """Per symbol and window: the sum of the quantities and of the raw trades."""
    totals: dict[tuple[str, int], list] = defaultdict(lambda: [Decimal(0), 0])
    with localcontext(Context(prec=100)):
        for symbol, rows in tapes.items():
            for _, _, quantity, first, last, event_ms in rows:
                total = totals[(symbol, event_ms - event_ms % WINDOW_MS)]
                total[0] += Decimal(quantity)
                total[1] += last - first + 1
    return {key: (volume, count) for key, (volume, count) in totals.items()}
