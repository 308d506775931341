"""The message contract of the `btc_price` topic, for both sides: pure, no I/O.

One JSON object per price, keyed by symbol, with the Kafka record timestamp equal to
`event_time`:

    {"symbol": "BTCUSDT", "price": "43250.75000000", "event_time": 1767225600039,
     "source": "binance", "stream": "binance/BTCUSDT/20260101T000000Z-1a2b3c4d", "seq": 42}

- `symbol`: a Binance pair, as Binance spells it.
- `price`: the exact decimal string the source gave; never a float.
- `event_time`: UTC epoch milliseconds when the price was observed.
- `source`: where it came from (`binance`, `simulated`, `replay`). Replayed history is
  marked so the consumer can keep it out of processing lag.
- `stream`, `seq`: the event's identity. A stream is one ordered run of events of one symbol
  (so it travels in one partition): one producer run's polls of a symbol, or one replayed
  file. `seq` grows along the stream: 1, 2, 3... per symbol and run for live sources, the
  line number for a file. The same event always carries the same (stream, seq), however often
  it is sent, so the consumer counts each once (seq <= the stream's high-water mark: a repeat).
  Messages of the previous release carry neither and are counted once per Kafka offset.

The rules are written once (the `check_*` functions); the producer builds with them
(`make_event`), the consumer decodes with them (`decode_event`), so what the producer publishes
the consumer takes, and what it refuses the consumer would dead-letter (tests/test_contract.py).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from decimal import Decimal
from functools import partial
from typing import Annotated, NamedTuple

import msgspec
import orjson

# Binance's own rule for symbol names (rest-api.md, "symbol" parameter); always fullmatch.
SYMBOL_PATTERN = re.compile(r"[A-Z0-9\-_.]{1,20}")
# Plain decimal notation only, as Binance writes prices: no exponent (1e999999 would overflow
# NUMERIC), no sign, no spaces, so every price that fits is finite.
PRICE_PATTERN = re.compile(r"[0-9]{1,20}(?:\.[0-9]{1,20})?")
EARLIEST_EVENT_MS = 1_230_768_000_000  # 2009-01-01T00:00:00Z: nothing older is a real price
MAX_FUTURE_MS = 5 * 60 * 1000  # clocks drift; an event further ahead than this is wrong
MAX_MESSAGE_BYTES = 16 * 1024  # a price message is ~100 bytes, at most ~300 (see the test)
REPLAY_SOURCE = "replay"  # history loaded later: in its windows, but not processing lag
SOURCES = ("binance", "simulated", REPLAY_SOURCE)  # a closed set: anything else is refused
_SOURCE_SET = frozenset(SOURCES)
# Stream ids: letters, digits and . _ : / - (ids are built by live_stream / replay_stream).
STREAM_PATTERN = re.compile(r"[A-Za-z0-9._:/-]{1,128}")
MAX_SEQ = 2**63 - 1  # PostgreSQL bigint


class ContractError(ValueError):
    """A value that breaks the contract: the producer does not publish it, the consumer sends
    the message to the dead-letter table. The text says why, in one line."""


# --- the rules: one check per field, for both sides ------------------------------------------


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
            raise ContractError(f"{field} {name!r:.40} is not {meaning}")
        if len(valid) < 10_000:
            valid.add(name)
        return name

    return valid, check


_valid_symbols, check_symbol = _name_check("symbol", SYMBOL_PATTERN, "a Binance symbol")
_valid_streams, check_stream = _name_check("stream", STREAM_PATTERN, "a stream id")


def check_price(price: object) -> str:
    """The price string unchanged, if it is a positive plain decimal (finite by its form)."""
    # A string only: a JSON number would already have passed through a binary float.
    if not isinstance(price, str):
        raise ContractError(f"price {price!r:.40} is not a decimal string")
    if not PRICE_PATTERN.fullmatch(price):
        raise ContractError(f"price {price!r:.40} is not a plain decimal number")
    # Digits and at most one dot: zero is the only value that is not positive (cheaper than
    # building a Decimal for every line of a replay).
    if not price.strip("0."):
        raise ContractError(f"price {price!r:.40} is not a positive number")
    return price


def check_event_time(event_time: object, now_ms: int) -> int:
    """Epoch milliseconds from 2009 up to MAX_FUTURE_MS ahead of `now_ms` (the clock of the
    side that checks: the producer's when it publishes, the consumer's when it receives)."""
    if isinstance(event_time, bool) or not isinstance(event_time, int):
        raise ContractError(f"event_time {event_time!r:.40} is not integer epoch milliseconds")
    if event_time < EARLIEST_EVENT_MS:
        raise ContractError(f"event_time {event_time} is before 2009: not epoch milliseconds")
    if event_time > now_ms + MAX_FUTURE_MS:
        raise ContractError(f"event_time {event_time} is more than 5 minutes in the future")
    return event_time


def check_source(source: object) -> str:
    if source not in SOURCES:  # a tuple: `in` compares, so unhashable values are refused too
        raise ContractError(f"source {source!r:.40} is not one of {', '.join(SOURCES)}")
    return source  # type: ignore[return-value]


def check_seq(seq: object) -> int:
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 < seq <= MAX_SEQ:
        raise ContractError(f"seq {seq!r:.40} is not a positive 64-bit integer")
    return seq


def check_identity(stream: object, seq: object) -> tuple[str, int]:
    """Both parts of an identity, valid; one without the other is refused."""
    if (stream is None) != (seq is None):
        missing, given = ("stream", "seq") if stream is None else ("seq", "stream")
        raise ContractError(f"missing field {missing!r} ({given} without {missing})")
    return check_stream(stream), check_seq(seq)


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


# --- the producer's side: building a message -------------------------------------------------


class PriceEvent(NamedTuple):  # immutable; a tuple is the cheapest object per message
    """An event as the producer publishes it: the price is the source's exact text."""

    symbol: str
    price: str
    event_time: int
    source: str
    stream: str
    seq: int

    def key(self) -> bytes:
        return self.symbol.encode("ascii")

    def to_json_bytes(self) -> bytes:
        # orjson: compact UTF-8 bytes, as json.dumps(separators=(",", ":")) writes these ASCII
        # fields, at a tenth of the cost (measured in bench/: it is per message in a replay).
        return orjson.dumps(
            {
                "symbol": self.symbol,
                "price": self.price,
                "event_time": self.event_time,
                "source": self.source,
                "stream": self.stream,
                "seq": self.seq,
            }
        )


def make_event(
    symbol: str,
    price: object,
    event_time: int,
    source: str,
    stream: str,
    seq: int,
    now_ms: int | None = None,
) -> PriceEvent:
    """Build an event, refusing (ContractError) anything the consumer would have to reject.

    `now_ms`: the producer's clock, which bounds `event_time` as the consumer's will; None
    reads the wall clock (a simulated or replayed time is judged against real time too)."""
    if now_ms is None:
        now_ms = wall_clock_ms()
    return PriceEvent(
        check_symbol(symbol),
        check_price(price),
        check_event_time(event_time, now_ms),
        check_source(source),
        *check_identity(stream, seq),
    )


def live_stream(source: str, symbol: str, run_id: str) -> str:
    """The stream of one symbol's polls in one producer run: a restart starts a new one."""
    return f"{source}/{symbol}/{run_id}"


def replay_stream(symbol: str, content_digest: str) -> str:
    """The stream of one file: the same content (CSV, or the CSV inside a zip) gives the same
    stream on every run, whatever the file is called or where it lies."""
    return f"replay/{symbol}/{content_digest[:32]}"


# --- the consumer's side: decoding a message -------------------------------------------------

# orjson parses the bytes as they come (checking UTF-8 itself) at about a quarter of the cost of
# json.loads, measured in bench/: decoding is the largest share of the consumer's own work.
# It is stricter than json.loads where the contract is anyway: no NaN/Infinity literals, no
# byte-order mark, nesting at most 1024 deep, integers beyond 64 bits become floats.
_decode_json = orjson.loads


class DecodedEvent(NamedTuple):  # a tuple: the cheapest immutable object per message
    """An event as the consumer takes it: the price as an exact Decimal."""

    symbol: str
    price: Decimal
    event_time: int  # epoch milliseconds, UTC
    source: str
    stream: str | None  # identity: None only in messages of the previous release
    seq: int | None

    @property
    def is_replay(self) -> bool:
        return self.source == REPLAY_SOURCE


class _ContractFields(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """The contract's fields with their JSON types, and nothing else. The integers are bounded
    to 64 bits: orjson refuses a document with an integer beyond a double's range even where a
    repeated key's later value replaces it, and msgspec would keep the later value."""

    symbol: str
    price: str
    event_time: Annotated[int, msgspec.Meta(ge=EARLIEST_EVENT_MS, le=MAX_SEQ)]
    source: str
    stream: str | None = None
    seq: Annotated[int, msgspec.Meta(gt=0, le=MAX_SEQ)] | None = None


# msgspec decodes straight into these typed fields, at about half of what orjson spends
# building a dict (bench/): the hot path. A message it cannot take so (bad JSON, a field
# missing, unknown or of another JSON type) goes the general way, which says what is wrong.
# Both keep a repeated key's last value and refuse a byte-order mark and lone surrogates.
_decode_fields = msgspec.json.Decoder(_ContractFields).decode


def decode_event(value: bytes | None, now_ms: int) -> DecodedEvent:
    """Parse one message value or raise ContractError with the reason.

    The hot path takes a message whose names (symbol, source, stream) and price the general
    way has accepted before, and whose numbers are in range: the same verdict and event, at a
    fraction of the cost. Anything else is decided by `_decode_in_full`."""
    if value is None or len(value) > MAX_MESSAGE_BYTES:
        return _decode_in_full(value, now_ms)
    try:
        fields = _decode_fields(value)
    except msgspec.DecodeError:
        return _decode_in_full(value, now_ms)
    symbol, price, event_time, source, stream, seq = (
        fields.symbol,
        fields.price,
        fields.event_time,
        fields.source,
        fields.stream,
        fields.seq,
    )
    if (
        symbol in _valid_symbols
        and (decimal := _recent_prices.get(price)) is not None
        and EARLIEST_EVENT_MS <= event_time <= now_ms + MAX_FUTURE_MS
        and source in _SOURCE_SET
        and (
            (stream is None and seq is None)
            or (stream in _valid_streams and seq is not None and 0 < seq <= MAX_SEQ)
        )
    ):
        return _new_event((symbol, decimal, event_time, source, stream, seq))
    return _decode_in_full(value, now_ms)


def _decode_in_full(value: bytes | None, now_ms: int) -> DecodedEvent:
    """Every rule of the contract, naming the first one broken (ContractError)."""
    if value is None:
        raise ContractError("message has no value")
    if len(value) > MAX_MESSAGE_BYTES:
        raise ContractError(f"message of {len(value)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        body = _decode_json(value)
    except orjson.JSONDecodeError as exc:  # also bad UTF-8 and "[[[[..." too deep to parse
        raise ContractError(f"invalid JSON: {exc}") from None
    if type(body) is not dict:  # orjson builds exact dicts; `type` is cheaper than isinstance
        raise ContractError("message is not a JSON object")
    try:
        symbol, price, event_time, source = (
            body["symbol"],
            body["price"],
            body["event_time"],
            body["source"],
        )
    except KeyError as exc:
        raise ContractError(f"missing field {exc.args[0]!r}") from None
    symbol = check_symbol(symbol)
    decimal = _decimal_price(price)
    event_time = check_event_time(event_time, now_ms)
    source = check_source(source)
    stream, seq = body.get("stream"), body.get("seq")
    if stream is not None or seq is not None:  # both, or neither (previous release)
        stream, seq = check_identity(stream, seq)
    return _new_event((symbol, decimal, event_time, source, stream, seq))


# DecodedEvent(...) goes through a Python-level __new__; this builds the same tuple at half the
# cost, which counts at a million messages.
_new_event = partial(tuple.__new__, DecodedEvent)

# Prices already checked, with their Decimal (immutable, so shared safely). Trades repeat
# prices: in Binance's aggTrades about 40 % are at the previous trade's price, and a few
# thousand distinct prices cover a day's hour. Emptied when full: bounded memory.
_recent_prices: dict[str, Decimal] = {}
RECENT_PRICES = 4096


def _decimal_price(price: object) -> Decimal:
    """The price's Decimal, checked once while it is recent."""
    if type(price) is str and (known := _recent_prices.get(price)) is not None:
        return known
    value = Decimal(check_price(price))
    if len(_recent_prices) >= RECENT_PRICES:
        _recent_prices.clear()
    _recent_prices[price] = value  # type: ignore[index]
    return value
