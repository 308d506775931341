"""Klines computed from a trade tape by Binance's rules (../shared/binance-api.md, "How a candle
relates to trades"): a kline covers trade times [open, open + interval - 1]; open and close are
the first and last trade by trade time (ties in tape order), high and low the extremes, volume
the sum of quantities, quote volume the exact sum of price x quantity, the number of trades the
raw trades (sum of l - f + 1), taker buy volumes the trades whose buyer was not the maker. An
interval without trades still gets a candle: every price the previous close, volumes 0.
Placeholder rows are no trades.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from tests.harness.trade_tape import AggTrade, Tape, plain

SECOND_MS = 1000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
# Binance's fixed-length intervals; 3d, 1w and 1M (calendar-aligned) are not served here.
INTERVALS_MS = {
    "1s": SECOND_MS,
    "1m": MINUTE_MS,
    "3m": 3 * MINUTE_MS,
    "5m": 5 * MINUTE_MS,
    "15m": 15 * MINUTE_MS,
    "30m": 30 * MINUTE_MS,
    "1h": HOUR_MS,
    "2h": 2 * HOUR_MS,
    "4h": 4 * HOUR_MS,
    "6h": 6 * HOUR_MS,
    "8h": 8 * HOUR_MS,
    "12h": 12 * HOUR_MS,
    "1d": 24 * HOUR_MS,
}


@dataclass(frozen=True)
class Kline:
    open_time_ms: int
    length_ms: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    quote_volume: Decimal
    trades: int
    taker_buy_volume: Decimal
    taker_buy_quote_volume: Decimal

    def binance_row(self, microseconds: bool = False) -> list[Any]:
        """The 12-element REST row: times (ms, or µs if asked) and counts as integers,
        decimals as strings."""
        scale = 1000 if microseconds else 1
        return [
            self.open_time_ms * scale,
            plain(self.open),
            plain(self.high),
            plain(self.low),
            plain(self.close),
            plain(self.volume),
            (self.open_time_ms + self.length_ms) * scale - 1,
            plain(self.quote_volume),
            self.trades,
            plain(self.taker_buy_volume),
            plain(self.taker_buy_quote_volume),
            "0",
        ]


def kline_of(
    trades: Sequence[AggTrade], open_time_ms: int, length_ms: int, previous: Decimal
) -> Kline:
    """The candle of `trades` (those of one interval, in tape order); `previous` is the
    close before it, for an interval without trades."""
    real = [trade for trade in trades if not trade.is_placeholder]
    if not real:
        zero = Decimal(0)
        return Kline(
            open_time_ms,
            length_ms,
            previous,
            previous,
            previous,
            previous,
            zero,
            zero,
            0,
            zero,
            zero,
        )
    prices = [Decimal(trade.price) for trade in real]
    quantities = [Decimal(trade.quantity) for trade in real]
    turnovers = [price * quantity for price, quantity in zip(prices, quantities, strict=True)]
    taker_buys = [not trade.buyer_is_maker for trade in real]
    return Kline(
        open_time_ms=open_time_ms,
        length_ms=length_ms,
        open=prices[0],
        high=max(prices),
        low=min(prices),
        close=prices[-1],
        volume=sum(quantities, Decimal(0)),
        quote_volume=sum(turnovers, Decimal(0)),
        trades=sum(trade.raw_trades for trade in real),
        taker_buy_volume=sum(
            (q for q, buy in zip(quantities, taker_buys, strict=True) if buy), Decimal(0)
        ),
        taker_buy_quote_volume=sum(
            (t for t, buy in zip(turnovers, taker_buys, strict=True) if buy), Decimal(0)
        ),
    )


def klines(
    tape: Tape,
    length_ms: int,
    now_ms: int,
    start_ms: int | None,
    end_ms: int | None,
    limit: int,
) -> list[Kline]:
    """The klines Binance would answer: from the interval of the tape's first trade to the one
    open at `now_ms` (or of the last trade, if later); with a start, the oldest `limit` whose
    open time is at or after it; else the newest `limit`; none opening after `end_ms`."""
    first_us = tape.first_real_time_us()
    if first_us is None:
        return []
    first_open = _floor(first_us // 1000, length_ms)
    last_time_us = tape.last_time_us() or first_us
    last_open = _floor(max(now_ms, last_time_us // 1000), length_ms)
    if end_ms is not None:
        last_open = min(last_open, _floor(end_ms, length_ms))
    if start_ms is not None:
        first_open = max(first_open, -(-start_ms // length_ms) * length_ms)
        opens = range(
            first_open, min(last_open, first_open + (limit - 1) * length_ms) + 1, length_ms
        )
    else:
        opens = range(
            max(first_open, last_open - (limit - 1) * length_ms), last_open + 1, length_ms
        )
    return [_kline_at(tape, open_ms, length_ms) for open_ms in opens]


def _kline_at(tape: Tape, open_ms: int, length_ms: int) -> Kline:
    trades = tape.between(open_ms * 1000, (open_ms + length_ms) * 1000 - 1)
    before = tape.last_real_before(open_ms * 1000)
    previous = Decimal(before.price) if before is not None else Decimal(tape.start_price)
    return kline_of(trades, open_ms, length_ms, previous)


def _floor(time_ms: int, length_ms: int) -> int:
    return time_ms - time_ms % length_ms
