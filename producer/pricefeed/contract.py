"""The message contract of the `btc_price` topic: pure, no I/O.

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
"""

from __future__ import annotations

import re
from typing import NamedTuple

import orjson

# Binance's own rule for symbol names (rest-api.md, "symbol" parameter).
SYMBOL_PATTERN = re.compile(r"^[A-Z0-9\-_.]{1,20}$")
SOURCES = ("binance", "simulated", "replay")
# Stream ids: letters, digits and . _ : / - (ids are built by live_stream / replay_stream).
STREAM_PATTERN = re.compile(r"[A-Za-z0-9._:/-]{1,128}")
MAX_SEQ = 2**63 - 1  # PostgreSQL bigint
# Plain decimal notation, as Binance writes prices: no exponent, sign or spaces.
PRICE_PATTERN = re.compile(r"[0-9]{1,20}(?:\.[0-9]{1,20})?")


class ContractError(ValueError):
    """A value that must never be published."""


class PriceEvent(NamedTuple):  # immutable; a tuple is the cheapest object per message
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


_valid_symbols: set[str] = set()  # checked once each: a replay checks every line's symbol


def check_symbol(symbol: str) -> str:
    if isinstance(symbol, str) and symbol in _valid_symbols:
        return symbol
    if not isinstance(symbol, str) or not SYMBOL_PATTERN.match(symbol):
        raise ContractError(f"{symbol!r} is not a Binance symbol (like BTCUSDT)")
    if len(_valid_symbols) < 10_000:
        _valid_symbols.add(symbol)
    return symbol


def check_price(price: object) -> str:
    """Return the price string unchanged if it is a finite, positive decimal."""
    if not isinstance(price, str):
        raise ContractError(f"price {price!r} is not a decimal string")
    if not PRICE_PATTERN.fullmatch(price):
        raise ContractError(f"price {price!r} is not a plain decimal number")
    # Digits and at most one dot: zero is the only value that is not positive (cheaper than
    # building a Decimal for every line of a replay).
    if not price.strip("0."):
        raise ContractError(f"price {price!r} is not a finite positive number")
    return price


_valid_streams: set[str] = set()  # checked once each: a replay checks every line's stream


def check_identity(stream: object, seq: object) -> tuple[str, int]:
    if not isinstance(stream, str) or (
        stream not in _valid_streams and not STREAM_PATTERN.fullmatch(stream)
    ):
        raise ContractError(f"stream {stream!r} is not a stream id")
    if len(_valid_streams) < 10_000:
        _valid_streams.add(stream)
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 < seq <= MAX_SEQ:
        raise ContractError(f"seq {seq!r} is not a positive 64-bit integer")
    return stream, seq


def live_stream(source: str, symbol: str, run_id: str) -> str:
    """The stream of one symbol's polls in one producer run: a restart starts a new one."""
    return f"{source}/{symbol}/{run_id}"


def replay_stream(symbol: str, content_digest: str) -> str:
    """The stream of one file: the same content (CSV, or the CSV inside a zip) gives the same
    stream on every run, whatever the file is called or where it lies."""
    return f"replay/{symbol}/{content_digest[:32]}"


def make_event(
    symbol: str, price: object, event_time: int, source: str, stream: str, seq: int
) -> PriceEvent:
    """Build an event, refusing anything the consumer would have to reject."""
    if source not in SOURCES:
        raise ContractError(f"source {source!r} is not one of {', '.join(SOURCES)}")
    if isinstance(event_time, bool) or not isinstance(event_time, int) or event_time <= 0:
        raise ContractError(f"event_time {event_time!r} is not epoch milliseconds")
    stream, seq = check_identity(stream, seq)
    return PriceEvent(check_symbol(symbol), check_price(price), event_time, source, stream, seq)
