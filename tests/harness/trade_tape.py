"""A symbol's trade tape: the append-only list of aggregate trades the fake Binance serves over
REST (`aggTrades`, `klines`) and pushes over WebSocket (`<symbol>@aggTrade`).

Each trade keeps Binance's rules (../shared/binance-api.md, "Trades"): the aggregate id `a`
grows by one per trade, the first raw trade id `f` is the previous last `l` + 1, `l >= f`,
trade times never go back. Two faults bend them the way Binance's own data is bent:

- a hole (`skip_ids`): ids nobody will ever serve; the next trade continues after it;
- a placeholder row (`append_placeholder`): the invalid rows Binance left in its archive
  (price 0, quantity 0, f = l = -1). REST serves it where it falls; it is no trade.

Times are kept in microseconds (Binance's public files carry them since 2025; REST and
WebSocket answer milliseconds unless asked for microseconds).
"""

from __future__ import annotations

import bisect
import csv
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

PLACEHOLDER_ID = -1
MICROSECOND_TIMES_FROM = 10**14  # a time at or above this is in µs (ms reach it in year 5138)


class TapeError(ValueError):
    """A trade that would break the tape's rules; the message says which."""


def plain(value: Decimal, places: int = 8) -> str:
    """`value` in plain notation with at least `places` decimals, and more where it has more
    (an exact sum of price x quantity has up to 16): never rounded."""
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int), f"not a finite decimal: {value}"
    text = f"{value:.{max(places, -exponent)}f}"
    whole, _, decimals = text.partition(".")
    return f"{whole}.{decimals[:places]}{decimals[places:].rstrip('0')}"


def decimal_text(text: str, what: str) -> str:
    """A price or quantity as Binance writes it: 8 decimals (more only if given more)."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise TapeError(f"{what} must be a decimal number, not {text!r}") from None
    if not value.is_finite() or value < 0:
        raise TapeError(f"{what} must be a finite decimal of at least 0, not {text!r}")
    return plain(value)


def to_microseconds(time_value: int) -> int:
    """A time in ms or µs (told apart by size, as Binance's public files need) in µs."""
    return time_value if time_value >= MICROSECOND_TIMES_FROM else time_value * 1000


@dataclass(frozen=True)
class AggTrade:
    """One aggregate trade; `binance_row` gives it in Binance's field names."""

    agg_id: int  # a
    price: str  # p, 8 decimals
    quantity: str  # q
    first_id: int  # f: first raw trade id, -1 for a placeholder
    last_id: int  # l
    time_us: int  # T, in microseconds here
    buyer_is_maker: bool  # m
    best_match: bool = True  # M

    @property
    def time_ms(self) -> int:
        return self.time_us // 1000

    @property
    def is_placeholder(self) -> bool:
        return self.first_id == PLACEHOLDER_ID

    @property
    def raw_trades(self) -> int:
        """How many raw trades it aggregates (l - f + 1), 0 for a placeholder."""
        return 0 if self.is_placeholder else self.last_id - self.first_id + 1

    def binance_row(self, microseconds: bool = False) -> dict[str, Any]:
        """The REST row `{"a","p","q","f","l","T","m","M"}`, T in ms (or µs if asked)."""
        return {
            "a": self.agg_id,
            "p": self.price,
            "q": self.quantity,
            "f": self.first_id,
            "l": self.last_id,
            "T": self.time_us if microseconds else self.time_ms,
            "m": self.buyer_is_maker,
            "M": self.best_match,
        }


class Tape:
    """One symbol's trades in tape order. Thread-safe: writers append, readers take copies.

    `on_append` (if set) is called with each new trade while the tape is locked, so that
    whoever pushes trades sees them in tape order even when several threads append."""

    def __init__(self, symbol: str, start_price: str, first_agg_id: int = 1) -> None:
        self.symbol = symbol
        self.start_price = decimal_text(start_price, "start price")
        self.on_append: Callable[[AggTrade], None] | None = None
        self._trades: list[AggTrade] = []
        self._next_agg_id = first_agg_id
        self._next_raw_id = first_agg_id
        self._lock = threading.Lock()

    # --- writing ---------------------------------------------------------------------------

    def append(
        self,
        price: str,
        quantity: str,
        time_us: int,
        buyer_is_maker: bool = False,
        raw_trades: int = 1,
    ) -> AggTrade:
        """The next trade, with the next ids; its time must not go back."""
        if raw_trades < 1:
            raise TapeError(f"an aggregate trade holds at least 1 raw trade, not {raw_trades}")
        price, quantity = decimal_text(price, "price"), decimal_text(quantity, "quantity")
        if Decimal(price) == 0 or Decimal(quantity) == 0:
            raise TapeError("a trade's price and quantity must be above 0")
        with self._lock:
            self._check_time(time_us)
            trade = AggTrade(
                agg_id=self._next_agg_id,
                price=price,
                quantity=quantity,
                first_id=self._next_raw_id,
                last_id=self._next_raw_id + raw_trades - 1,
                time_us=time_us,
                buyer_is_maker=buyer_is_maker,
            )
            self._next_raw_id = trade.last_id + 1
            return self._add(trade)

    def append_placeholder(self) -> AggTrade:
        """An invalid archive row at the next id, at the last trade's time; raw ids go on
        after it as if it were not there."""
        with self._lock:
            time_us = self._trades[-1].time_us if self._trades else 0
            trade = AggTrade(
                self._next_agg_id, plain(Decimal(0)), plain(Decimal(0)), -1, -1, time_us, False
            )
            return self._add(trade, push=False)  # an archive artefact: never streamed

    def skip_ids(self, count: int) -> tuple[int, int]:
        """Leave a hole of `count` aggregate ids (and as many raw ids) that no one serves;
        returns the first and last missing id."""
        if count < 1:
            raise TapeError(f"a hole is at least 1 id, not {count}")
        with self._lock:
            first = self._next_agg_id
            self._next_agg_id += count
            self._next_raw_id += count
            return first, first + count - 1

    def load(self, trades: Iterable[AggTrade]) -> int:
        """Append trades read elsewhere (a public-data file), ids and times as they are, each
        after the tape's end; returns how many."""
        loaded = 0
        with self._lock:
            for trade in trades:
                if trade.agg_id < self._next_agg_id:
                    raise TapeError(
                        f"aggregate id {trade.agg_id} is not after the tape's end "
                        f"({self._next_agg_id - 1})"
                    )
                self._check_time(trade.time_us)
                self._next_agg_id = trade.agg_id
                if not trade.is_placeholder:
                    self._next_raw_id = trade.last_id + 1
                self._add(trade, push=False)
                loaded += 1
        return loaded

    def _check_time(self, time_us: int) -> None:
        if self._trades and time_us < self._trades[-1].time_us:
            raise TapeError(
                f"trade time {time_us} µs is before the last trade's "
                f"({self._trades[-1].time_us} µs): a tape's times never go back"
            )

    def _add(self, trade: AggTrade, push: bool = True) -> AggTrade:
        self._trades.append(trade)
        self._next_agg_id = trade.agg_id + 1
        if push and self.on_append is not None:
            self.on_append(trade)
        return trade

    # --- reading ---------------------------------------------------------------------------

    def __len__(self) -> int:
        with self._lock:
            return len(self._trades)

    def trades(self) -> list[AggTrade]:
        with self._lock:
            return list(self._trades)

    def last_price(self) -> str:
        """The last real trade's price, or the start price before any."""
        with self._lock:
            for trade in reversed(self._trades):
                if not trade.is_placeholder:
                    return trade.price
        return self.start_price

    def last_time_us(self) -> int | None:
        with self._lock:
            return self._trades[-1].time_us if self._trades else None

    def from_id(self, first_id: int, limit: int) -> list[AggTrade]:
        """Up to `limit` trades from aggregate id `first_id` on (inclusive)."""
        with self._lock:
            start = bisect.bisect_left(self._trades, first_id, key=_agg_id)
            return self._trades[start : start + limit]

    def between(
        self, start_us: int | None, end_us: int | None, limit: int | None = None
    ) -> list[AggTrade]:
        """Trades with a time in [start_us, end_us] (either end open if None), oldest first;
        with a limit, the oldest `limit` if a start is given, else the newest `limit`."""
        with self._lock:
            low = 0 if start_us is None else bisect.bisect_left(self._trades, start_us, key=_time)
            high = (
                len(self._trades)
                if end_us is None
                else bisect.bisect_right(self._trades, end_us, key=_time)
            )
            if limit is None:
                return self._trades[low:high]
            if start_us is not None:
                return self._trades[low : min(high, low + limit)]
            return self._trades[max(low, high - limit) : high]

    def last_real_before(self, time_us: int) -> AggTrade | None:
        """The last trade (not a placeholder) with a time before `time_us`."""
        with self._lock:
            index = bisect.bisect_left(self._trades, time_us, key=_time)
            for trade in reversed(self._trades[:index]):
                if not trade.is_placeholder:
                    return trade
        return None

    def first_real_time_us(self) -> int | None:
        with self._lock:
            return next((t.time_us for t in self._trades if not t.is_placeholder), None)


def _agg_id(trade: AggTrade) -> int:
    return trade.agg_id


def _time(trade: AggTrade) -> int:
    return trade.time_us


# --- Binance's public aggTrades files ---------------------------------------------------------


def read_agg_trades(path: Path) -> list[AggTrade]:
    """A data.binance.vision aggTrades CSV (id, price, qty, first, last, time in ms or µs,
    maker, best match; a header row is skipped) as trades."""
    trades = []
    with path.open(newline="") as rows:
        for number, row in enumerate(csv.reader(rows), start=1):
            if number == 1 and row and not row[0].strip().lstrip("-").isdigit():
                continue  # a header row
            trades.append(_trade_of_row(row, path, number))
    return trades


def _trade_of_row(row: list[str], path: Path, number: int) -> AggTrade:
    if len(row) != 8:
        raise TapeError(f"{path}:{number}: an aggTrades row has 8 columns, not {len(row)}")
    agg_id, price, quantity, first_id, last_id, time_value, maker, best = row
    try:
        return AggTrade(
            agg_id=int(agg_id),
            price=plain(Decimal(price)),
            quantity=plain(Decimal(quantity)),
            first_id=int(first_id),
            last_id=int(last_id),
            time_us=to_microseconds(int(time_value)),
            buyer_is_maker=_flag(maker),
            best_match=_flag(best),
        )
    except (ValueError, InvalidOperation) as error:
        raise TapeError(f"{path}:{number}: not an aggTrades row ({error})") from None


def _flag(text: str) -> bool:
    if text.strip().lower() not in ("true", "false"):
        raise ValueError(f"{text!r} is not True or False")
    return text.strip().lower() == "true"
