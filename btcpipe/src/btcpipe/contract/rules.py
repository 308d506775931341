"""The contract's rules, written once: one check per field, the bounds they enforce, and the
closed set of sources. Pure, no I/O.

The producer builds messages with these checks (`events.make_event`), the consumer decodes
with them (`decoding.decode_message`). Three kinds of event share the fields of a price
sample; a trade adds its quantity and raw trade ids, a candle its `kline`
(docs/contract.md). Hot paths that cannot afford a call per field (the consumer's msgspec
decoder, the replay reader) take their bounds from the constants here, and tests hold them
to the checks.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from typing import NamedTuple

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
# Stream ids: letters, digits and . _ : / - (ids are built by events.live_stream and
# events.replay_stream).
STREAM_PATTERN = re.compile(r"[A-Za-z0-9._:/-]{1,128}")
MAX_SEQ = 2**63 - 1  # PostgreSQL bigint
MAX_TRADE_ID = MAX_SEQ  # raw trade ids are bigint columns too
# Candles that tile 5-minute windows travel as candles (a mergeable delta); a coarser one
# cannot be split, and is sent as a sample of its close (docs/contract.md).
KLINE_INTERVALS_MS = {"1s": 1000, "1m": 60_000, "5m": 300_000}
KLINE_FIELDS = frozenset(
    ("interval", "open_time", "open", "high", "low", "close", "volume", "quote_volume",
     "trade_count")
)  # fmt: skip
# What kind of market data an event is, and so which row of its window it counts in: a
# poller's samples, the exchange's trades and the exchange's candles never mix in one row.
SAMPLES, TRADES, KLINES = "samples", "trades", "klines"
FEEDS = (SAMPLES, TRADES, KLINES)
MAX_ACCEPTED_NAMES = 10_000  # names remembered as accepted (symbols, streams): bounded memory


class ContractError(ValueError):
    """A value that breaks the contract: the producer does not publish it, the consumer sends
    the message to the dead-letter table. The text says why, in one line."""


def _name_check(
    field: str, pattern: re.Pattern[str], meaning: str
) -> tuple[frozenset[str] | set[str], Callable[[object], str]]:
    """The check of names that fit `pattern` (symbols, streams), and the set of names it has
    accepted: they are few, and nearly every message repeats one, so each is matched once."""
    valid: set[str] = set()

    def check(name: object) -> str:
        # A list or object is unhashable: `in` on the set would raise TypeError, not reject it.
        if isinstance(name, str) and name in valid:
            return name
        if not isinstance(name, str) or not pattern.fullmatch(name):
            raise ContractError(f"{field} {name!r:.40} is not {meaning}")
        if len(valid) < MAX_ACCEPTED_NAMES:
            valid.add(name)
        return name

    return valid, check


# The sets are the checks' memory: a name in them has passed its check (hot paths look there).
accepted_symbols, check_symbol = _name_check("symbol", SYMBOL_PATTERN, "a Binance symbol")
accepted_streams, check_stream = _name_check("stream", STREAM_PATTERN, "a stream id")


def is_positive_plain_decimal(text: str) -> bool:
    """Whether a string is a price: plain decimal notation (PRICE_PATTERN), not zero."""
    # Digits and at most one dot: zero is the only value that is not positive (cheaper than
    # building a Decimal for every line of a replay).
    return PRICE_PATTERN.fullmatch(text) is not None and bool(text.strip("0."))


def check_price(price: object) -> str:
    """The price string unchanged, if it is a positive plain decimal (finite by its form)."""
    # A string only: a JSON number would already have passed through a binary float.
    if not isinstance(price, str):
        raise ContractError(f"price {price!r:.40} is not a decimal string")
    if not PRICE_PATTERN.fullmatch(price):
        raise ContractError(f"price {price!r:.40} is not a plain decimal number")
    if not is_positive_plain_decimal(price):
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
    # A tuple: `in` compares, so unhashable values are refused too.
    if not isinstance(source, str) or source not in SOURCES:
        raise ContractError(f"source {source!r:.40} is not one of {', '.join(SOURCES)}")
    return source


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


def is_plain_decimal(text: str) -> bool:
    """Whether a string is an amount: plain decimal notation (PRICE_PATTERN), zero allowed."""
    return PRICE_PATTERN.fullmatch(text) is not None


def check_quantity(quantity: object, field: str = "quantity") -> str:
    """A traded quantity: a positive plain decimal string, like a price."""
    if not isinstance(quantity, str) or not is_positive_plain_decimal(quantity):
        raise ContractError(f"{field} {quantity!r:.40} is not a positive plain decimal string")
    return quantity


def check_amount(amount: object, field: str) -> str:
    """A sum over trades (a candle's volumes): a plain decimal string, zero allowed."""
    if not isinstance(amount, str) or not is_plain_decimal(amount):
        raise ContractError(f"{field} {amount!r:.40} is not a plain decimal string")
    return amount


def check_trade_id(trade_id: object, field: str) -> int:
    if isinstance(trade_id, bool) or not isinstance(trade_id, int):
        raise ContractError(f"{field} {trade_id!r:.40} is not an integer trade id")
    if not 0 <= trade_id <= MAX_TRADE_ID:
        raise ContractError(f"{field} {trade_id} is not a trade id from 0 to 2^63-1")
    return trade_id


def check_trade(
    quantity: object, first_trade_id: object, last_trade_id: object
) -> tuple[str, int, int]:
    """A trade's quantity and the raw trade ids it covers (one, or an aggregate's run):
    all three, or none of them (a sample or a candle)."""
    given = {
        "quantity": quantity, "first_trade_id": first_trade_id, "last_trade_id": last_trade_id
    }  # fmt: skip
    missing = [name for name, value in given.items() if value is None]
    if missing:
        present = [name for name in given if name not in missing]
        raise ContractError(f"missing field {missing[0]!r} (a trade has {', '.join(given)}; "
                            f"this message has only {', '.join(present)})")  # fmt: skip
    first = check_trade_id(first_trade_id, "first_trade_id")
    last = check_trade_id(last_trade_id, "last_trade_id")
    if first > last:
        raise ContractError(f"first_trade_id {first} is after last_trade_id {last}")
    return check_quantity(quantity), first, last


class KlineText(NamedTuple):
    """A candle as the producer publishes it: its decimals as the exchange's exact text."""

    interval: str
    open_time: int  # epoch ms; the close time is open_time + interval - 1
    open: str
    high: str
    low: str
    close: str
    volume: str  # sum of the quantities traded in it
    quote_volume: str  # sum of price x quantity
    trade_count: int  # raw trades in it


def check_kline(kline: object, price: str, event_time: int) -> KlineText:
    """A candle that travels as one: an object of exactly KLINE_FIELDS, of an interval that
    tiles 5-minute windows, closing at the message's event time at the message's price, with
    low <= open, close <= high."""
    if not isinstance(kline, dict):
        raise ContractError("kline is not a JSON object")
    if set(kline) != KLINE_FIELDS:
        missing, unknown = sorted(KLINE_FIELDS - set(kline)), sorted(set(kline) - KLINE_FIELDS)
        what = f"missing {', '.join(missing)}" if missing else f"unknown {', '.join(unknown)}"
        raise ContractError(f"kline fields are wrong: {what}"[:120])
    interval, open_time = kline["interval"], kline["open_time"]
    if not isinstance(interval, str) or interval not in KLINE_INTERVALS_MS:
        raise ContractError(
            f"kline interval {interval!r:.20} is not one of {', '.join(KLINE_INTERVALS_MS)}"
        )
    length = KLINE_INTERVALS_MS[interval]
    if isinstance(open_time, bool) or not isinstance(open_time, int) or open_time % length:
        raise ContractError(f"kline open_time {open_time!r:.40} does not start a {interval} kline")
    if open_time + length - 1 != event_time:
        raise ContractError(
            f"event_time {event_time} is not the close time of the kline opened at {open_time}"
        )
    prices = [check_price(kline[name]) for name in ("open", "high", "low", "close")]
    o, h, lo, c = (Decimal(text) for text in prices)
    if not (lo <= o <= h and lo <= c <= h):
        raise ContractError(f"kline prices are not low <= open, close <= high ({o} {h} {lo} {c})")
    if Decimal(price) != c:
        raise ContractError(f"price {price} is not the kline's close {prices[3]}")
    volume = check_amount(kline["volume"], "kline volume")
    quote_volume = check_amount(kline["quote_volume"], "kline quote_volume")
    count = kline["trade_count"]
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_TRADE_ID:
        raise ContractError(f"kline trade_count {count!r:.40} is not a count of trades")
    opened, high, low, close = prices
    return KlineText(interval, open_time, opened, high, low, close, volume, quote_volume, count)
