"""The consumer's hot path of the contract: a message decoded by msgspec straight into the
contract's typed fields, for messages whose names and price the full rules have accepted
before. Pure, no I/O.

Anything this path cannot vouch for goes to `btcpipe.contract.decode_message`, which applies
every rule and names the first one broken; both give the same verdict and the same event for
every message (tests hold them to it, property-based too). The bounds below are the rules' own
constants, never copies.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

import msgspec

from btcpipe.contract.decoding import (
    NOT_A_TRADE,
    DecodedEvent,
    decode_message,
    new_decoded_event,
    recent_prices,
)
from btcpipe.contract.rules import (
    EARLIEST_EVENT_MS,
    MAX_FUTURE_MS,
    MAX_MESSAGE_BYTES,
    MAX_SEQ,
    MAX_TRADE_ID,
    SOURCES,
    accepted_streams,
    accepted_symbols,
    is_positive_plain_decimal,
)

_SOURCE_SET = frozenset(SOURCES)


class _ContractFields(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """The contract's fields with their JSON types, and nothing else (a candle's `kline` is
    not among them: candles are rare, and the full rules decode them). The integers are bounded
    to 64 bits: orjson refuses a document with an integer beyond a double's range even where a
    repeated key's later value replaces it, and msgspec would keep the later value."""

    symbol: str
    price: str
    event_time: Annotated[int, msgspec.Meta(ge=EARLIEST_EVENT_MS, le=MAX_SEQ)]
    source: str
    stream: str | None = None
    seq: Annotated[int, msgspec.Meta(gt=0, le=MAX_SEQ)] | None = None
    quantity: str | None = None
    first_trade_id: Annotated[int, msgspec.Meta(ge=0, le=MAX_TRADE_ID)] | None = None
    last_trade_id: Annotated[int, msgspec.Meta(ge=0, le=MAX_TRADE_ID)] | None = None


# A message msgspec cannot take so (bad JSON, a field missing, unknown or of another JSON
# type) goes the general way, which says what is wrong. Both keep a repeated key's last value
# and refuse a byte-order mark and lone surrogates.
_decode_fields = msgspec.json.Decoder(_ContractFields).decode


def decode_event(value: bytes | None, now_ms: int) -> DecodedEvent:
    """Parse one message value or raise ContractError with the reason.

    The hot path takes a message whose names (symbol, source, stream) and price the full rules
    have accepted before, and whose numbers are in range: the same verdict and event, without
    checking again what the rules accepted before. Anything else is decided by
    `decode_message`."""
    if value is None or len(value) > MAX_MESSAGE_BYTES:
        return decode_message(value, now_ms)
    try:
        fields = _decode_fields(value)
    except msgspec.DecodeError:
        return decode_message(value, now_ms)
    symbol, price, event_time, source, stream, seq = (
        fields.symbol,
        fields.price,
        fields.event_time,
        fields.source,
        fields.stream,
        fields.seq,
    )
    if not (
        symbol in accepted_symbols
        and (decimal := recent_prices.get(price)) is not None
        and event_time <= now_ms + MAX_FUTURE_MS  # msgspec holds the lower bound
        and source in _SOURCE_SET
        # msgspec's bounds above already hold seq to the rules' range.
        and ((stream is None and seq is None) or (stream in accepted_streams and seq is not None))
    ):
        return decode_message(value, now_ms)
    quantity, first, last = fields.quantity, fields.first_trade_id, fields.last_trade_id
    if quantity is None and first is None and last is None:
        return new_decoded_event((symbol, decimal, event_time, source, stream, seq, *NOT_A_TRADE))
    if (
        quantity is not None
        and first is not None
        and last is not None
        and first <= last
        and stream is not None
        and is_positive_plain_decimal(quantity)
    ):
        trade = (symbol, decimal, event_time, source, stream, seq, Decimal(quantity), first, last)
        return new_decoded_event((*trade, None))
    return decode_message(value, now_ms)
