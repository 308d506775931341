"""Decoding and validating `btc_price` messages: pure, no I/O.

The contract (producer/pricefeed/contract.py, README "Message contract"):
{"symbol": "BTCUSDT", "price": "43250.75000000", "event_time": <epoch ms>, "source": "binance",
 "stream": "binance/BTCUSDT/20260101T000000Z-1a2b3c4d", "seq": 42}

(stream, seq) is the event's identity; messages of the previous release carry neither and are
counted once per Kafka offset, as they were then.
"""

from __future__ import annotations

import re
from collections.abc import Callable
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
SOURCES = ("binance", "simulated", REPLAY_SOURCE)  # a closed set: anything else is refused
_SOURCE_SET = frozenset(SOURCES)
STREAM_PATTERN = re.compile(r"[A-Za-z0-9._:/-]{1,128}")
MAX_SEQ = 2**63 - 1  # PostgreSQL bigint


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
    stream: str | None  # identity: None only in messages of the previous release
    seq: int | None

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
    if type(source) is not str or source not in _SOURCE_SET:
        source = _source(source)
    stream, seq = body.get("stream"), body.get("seq")
    if stream is not None or seq is not None:  # both, or neither (previous release)
        if type(stream) is not str or stream not in _valid_streams or type(seq) is not int:
            stream, seq = _identity(stream, seq)
        elif not 0 < seq <= MAX_SEQ:
            seq = _seq(seq)
    return _new_event((symbol, decimal, event_time, source, stream, seq))


# PriceEvent(...) goes through a Python-level __new__; this builds the same tuple at half the
# cost, which counts at a million messages.
_new_event = partial(tuple.__new__, PriceEvent)


def _name_check(
    field: str, pattern: re.Pattern[str], meaning: str
) -> tuple[set[str], Callable[[object], str]]:
    """The check of names that fit `pattern` (symbols, streams), and the set of names it has
    accepted: they are few, and nearly every message repeats one, so each is matched once."""
    valid: set[str] = set()

    def check(name: object) -> str:
        # A list or object is unhashable: `in` on the set would raise TypeError, not reject it.
        if isinstance(name, str) and name in valid:
            return name
        if not isinstance(name, str) or not pattern.fullmatch(name):
            raise InvalidEvent(f"{field} {name!r:.40} is not {meaning}")
        if len(valid) < 10_000:
            valid.add(name)
        return name

    return valid, check


_valid_symbols, _symbol = _name_check("symbol", SYMBOL_PATTERN, "a Binance symbol")
_valid_streams, _stream = _name_check("stream", STREAM_PATTERN, "a stream id")
# Prices already checked, with their Decimal (immutable, so shared safely). Trades repeat
# prices: in Binance's aggTrades about 40 % are at the previous trade's price, and a few
# thousand distinct prices cover a day's hour. Emptied when full: bounded memory.
_recent_prices: dict[str, Decimal] = {}
RECENT_PRICES = 4096


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
    if source not in SOURCES:  # a tuple: `in` compares, so unhashable values are refused too
        raise InvalidEvent(f"source {source!r:.40} is not one of {', '.join(SOURCES)}")
    return source  # type: ignore[return-value]


def _identity(stream: object, seq: object) -> tuple[str, int]:
    if stream is None or seq is None:
        missing, given = ("stream", "seq") if stream is None else ("seq", "stream")
        raise InvalidEvent(f"missing field {missing!r} ({given} without {missing})")
    return _stream(stream), _seq(seq)


def _seq(seq: object) -> int:
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 < seq <= MAX_SEQ:
        raise InvalidEvent(f"seq {seq!r:.40} is not a positive 64-bit integer")
    return seq
