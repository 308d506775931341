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
    MAX_MESSAGE_BYTES,
    REPLAY_SOURCE,
    ContractError,
    check_event_time,
    check_identity,
    check_price,
    check_source,
    check_symbol,
)

# orjson parses the bytes as they come (checking UTF-8 itself). It is stricter than json.loads
# where the contract is anyway: no NaN/Infinity literals, no byte-order mark, nesting at most
# 1024 deep; an integer beyond 64 bits becomes a float, and one beyond a double's range makes
# the whole document invalid.
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


# DecodedEvent(...) goes through a Python-level __new__; this builds the same tuple at a
# fraction of the cost, for the hot paths.
new_decoded_event = partial(tuple.__new__, DecodedEvent)


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
    if stream is not None or seq is not None:  # both, or neither (previous release)
        stream, seq = check_identity(stream, seq)
    return new_decoded_event((symbol, decimal, event_time, source, stream, seq))


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
