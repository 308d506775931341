"""Decoding and validating `btc_price` messages: pure, no I/O.

The contract (producer/pricefeed/contract.py, README "Message contract"):
{"symbol": "BTCUSDT", "price": "43250.75000000", "event_time": <epoch ms>, "source": "binance"}
"""

from __future__ import annotations

import re
from decimal import Decimal
from functools import partial
from typing import NamedTuple

import orjson

SYMBOL_PATTERN = re.compile(r"[A-Z0-9\-_.]{1,20}")  # Binance's rule for symbol names
# Plain decimal notation only: no exponent (1e999999 would overflow NUMERIC), no sign, no spaces.
PRICE_PATTERN = re.compile(r"[0-9]{1,20}(?:\.[0-9]{1,20})?")
EARLIEST_EVENT_MS = 1_230_768_000_000  # 2009-01-01T00:00:00Z: nothing older is a real price
MAX_FUTURE_MS = 5 * 60 * 1000  # clocks drift; an event further ahead than this is wrong
MAX_MESSAGE_BYTES = 16 * 1024  # a price message is ~100 bytes
REPLAY_SOURCE = "replay"  # history loaded later: in its windows, but not processing lag


# orjson parses the bytes as they come (checking UTF-8 itself) at about a quarter of the cost of
# json.loads, measured in bench/: decoding is the largest share of the consumer's own work.
# It is stricter than json.loads where the contract is anyway: no NaN/Infinity literals, no
# byte-order mark, nesting at most 1024 deep, integers beyond 64 bits become floats.
_decode_json = orjson.loads


class InvalidEvent(ValueError):
    """A message that goes to the dead-letter table; the text says why."""


class PriceEvent(NamedTuple):  # a tuple: the cheapest immutable object per message
    symbol: str
    price: Decimal
    event_time: int  # epoch milliseconds, UTC
    source: str

    @property
    def is_replay(self) -> bool:
        return self.source == REPLAY_SOURCE


def decode_event(value: bytes | None, now_ms: int) -> PriceEvent:
    """Parse one message value or raise InvalidEvent with the reason."""
    if value is None:
        raise InvalidEvent("message has no value")
    if len(value) > MAX_MESSAGE_BYTES:
        raise InvalidEvent(f"message of {len(value)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        body = _decode_json(value)
    except orjson.JSONDecodeError as exc:  # also bad UTF-8 and "[[[[..." too deep to parse
        raise InvalidEvent(f"invalid JSON: {exc}") from None
    if type(body) is not dict:  # orjson builds exact dicts; `type` is cheaper than isinstance
        raise InvalidEvent("message is not a JSON object")
    try:
        symbol, price, event_time, source = (
            body["symbol"],
            body["price"],
            body["event_time"],
            body["source"],
        )
    except KeyError as exc:
        raise InvalidEvent(f"missing field {exc.args[0]!r}") from None
    # Hot path (every message): the common, valid case is checked inline, with the same rules
    # as the _checks below, which run only to accept a new symbol or to name what is wrong.
    if type(symbol) is not str or symbol not in _valid_symbols:
        symbol = _symbol(symbol)
    if type(price) is not str or (decimal := _recent_prices.get(price)) is None:
        decimal = _price(price)
    if type(event_time) is not int or not EARLIEST_EVENT_MS <= event_time <= now_ms + MAX_FUTURE_MS:
        event_time = _event_time(event_time, now_ms)
    if type(source) is not str or not 0 < len(source) <= 32:
        source = _source(source)
    return _new_event((symbol, decimal, event_time, source))


# PriceEvent(...) goes through a Python-level __new__; this builds the same tuple at half the
# cost, which counts at a million messages.
_new_event = partial(tuple.__new__, PriceEvent)

_valid_symbols: set[str] = set()  # a handful of names, each checked once
# Prices already checked, with their Decimal (immutable, so shared safely). Trades repeat
# prices: in Binance's aggTrades about 40 % are at the previous trade's price, and a few
# thousand distinct prices cover a day's hour. Emptied when full: bounded memory.
_recent_prices: dict[str, Decimal] = {}
RECENT_PRICES = 4096


def _symbol(symbol: object) -> str:
    # A list or object is unhashable: `in` on the set would raise TypeError, not reject it.
    if isinstance(symbol, str) and symbol in _valid_symbols:
        return symbol
    if not isinstance(symbol, str) or not SYMBOL_PATTERN.fullmatch(symbol):
        raise InvalidEvent(f"symbol {symbol!r:.40} is not a Binance symbol")
    if len(_valid_symbols) < 10_000:
        _valid_symbols.add(symbol)
    return symbol


def _price(price: object) -> Decimal:
    # A string only: a JSON number would already have passed through a binary float.
    if not isinstance(price, str):
        raise InvalidEvent(f"price {price!r:.40} is not a decimal string")
    if not PRICE_PATTERN.fullmatch(price):
        raise InvalidEvent(f"price {price!r:.40} is not a plain decimal number")
    value = Decimal(price)
    if value <= 0:
        raise InvalidEvent(f"price {price!r:.40} is not a finite positive number")
    if len(_recent_prices) >= RECENT_PRICES:
        _recent_prices.clear()
    _recent_prices[price] = value
    return value


def _event_time(event_time: object, now_ms: int) -> int:
    if isinstance(event_time, bool) or not isinstance(event_time, int):
        raise InvalidEvent(f"event_time {event_time!r:.40} is not integer epoch milliseconds")
    if event_time < EARLIEST_EVENT_MS:
        raise InvalidEvent(f"event_time {event_time} is before 2009: not epoch milliseconds")
    if event_time > now_ms + MAX_FUTURE_MS:
        raise InvalidEvent(f"event_time {event_time} is more than 5 minutes in the future")
    return event_time


def _source(source: object) -> str:
    if not isinstance(source, str) or not 0 < len(source) <= 32:
        raise InvalidEvent(f"source {source!r:.40} is not a short string")
    return source
