"""The consumer's side of the contract: a message value decoded by every rule, or refused
with the first rule it breaks (`decode_message`). Pure, no I/O.

The consumer decodes most messages by a faster path of its own (aggregator's `decoding`) and
hands anything that path cannot vouch for to `decode_message`, which says what is wrong.
"""

from __future__ import annotations

from decimal import Decimal
from functools import partial
from typing import NamedTuple

import orjson

from btcpipe.contract.rules import (
    KLINES,
    MAX_MESSAGE_BYTES,
    REPLAY_SOURCE,
    SAMPLES,
    TRADES,
    ContractError,
    KlineText,
    check_event_time,
    check_identity,
    check_kline,
    check_price,
    check_source,
    check_symbol,
    check_trade,
)

# orjson parses the bytes as they come (checking UTF-8 itself). It is stricter than json.loads
# where the contract is anyway: no NaN/Infinity literals, no byte-order mark, nesting at most
# 1024 deep; an integer beyond 64 bits becomes a float, and one beyond a double's range makes
# the whole document invalid.
_decode_json = orjson.loads


class DecodedKline(NamedTuple):
    """A candle as the consumer takes it: exact Decimals."""

    interval: str
    open_time: int  # epoch ms
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    quote_volume: Decimal
    trade_count: int


class DecodedEvent(NamedTuple):  # a tuple: the cheapest immutable object per message
    """An event as the consumer takes it: the price (and a trade's quantity) as exact
    Decimals. A sample has the first six fields; a trade also its quantity and raw trade
    ids; a candle its kline."""

    symbol: str
    price: Decimal
    event_time: int  # epoch milliseconds, UTC
    source: str
    stream: str | None  # identity: None only in messages of release 1
    seq: int | None
    quantity: Decimal | None = None
    first_trade_id: int | None = None
    last_trade_id: int | None = None
    kline: DecodedKline | None = None

    @property
    def is_replay(self) -> bool:
        return self.source == REPLAY_SOURCE

    @property
    def feed(self) -> str:
        """samples, trades or klines: the kind of window row it counts in."""
        return (
            KLINES if self.kline is not None else TRADES if self.quantity is not None else SAMPLES
        )


# DecodedEvent(...) goes through a Python-level __new__; this builds the same tuple more
# cheaply, for the hot paths. It applies no defaults: give it every field (a
# sample ends with NOT_A_TRADE).
new_decoded_event = partial(tuple.__new__, DecodedEvent)
NOT_A_TRADE = (None, None, None, None)  # quantity, first_trade_id, last_trade_id, kline


def decode_message(value: bytes | None, now_ms: int) -> DecodedEvent:
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
    decimal = decimal_price(price)
    event_time = check_event_time(event_time, now_ms)
    source = check_source(source)
    stream, seq = body.get("stream"), body.get("seq")
    if stream is not None or seq is not None:  # both, or neither (release 1)
        stream, seq = check_identity(stream, seq)
    quantity, first, last, kline = (
        body.get("quantity"),
        body.get("first_trade_id"),
        body.get("last_trade_id"),
        body.get("kline"),
    )
    if quantity is None and first is None and last is None and kline is None:
        return new_decoded_event((symbol, decimal, event_time, source, stream, seq, *NOT_A_TRADE))
    if stream is None:
        raise ContractError("a trade or a candle needs its identity (stream and seq)")
    if kline is not None:
        if quantity is not None or first is not None or last is not None:
            raise ContractError("an event is a trade or a candle, not both")
        candle = decoded_kline(check_kline(kline, price, event_time))
        fields = (symbol, decimal, event_time, source, stream, seq, None, None, None, candle)
        return new_decoded_event(fields)
    quantity, first, last = check_trade(quantity, first, last)
    return new_decoded_event(
        (symbol, decimal, event_time, source, stream, seq, Decimal(quantity), first, last, None)
    )


def decoded_kline(kline: KlineText) -> DecodedKline:
    """The candle's text as Decimals (rules.check_kline checked it)."""
    return DecodedKline(
        kline.interval,
        kline.open_time,
        Decimal(kline.open),
        Decimal(kline.high),
        Decimal(kline.low),
        Decimal(kline.close),
        Decimal(kline.volume),
        Decimal(kline.quote_volume),
        kline.trade_count,
    )


# Prices already checked, with their Decimal (immutable, so shared safely); hot paths look a
# price up here and take the message only if it is known. Trades repeat prices, and a few
# thousand distinct prices cover an hour of a busy pair. Emptied when full: bounded memory.
recent_prices: dict[str, Decimal] = {}
RECENT_PRICES = 4096


def decimal_price(price: object) -> Decimal:
    """The price's Decimal, checked once while it is recent."""
    if type(price) is str and (known := recent_prices.get(price)) is not None:
        return known
    text = check_price(price)
    value = Decimal(text)
    if len(recent_prices) >= RECENT_PRICES:
        recent_prices.clear()
    recent_prices[text] = value
    return value
