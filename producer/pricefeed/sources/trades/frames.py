"""What Binance sends, read into trades or refused with a reason: a WebSocket frame (an
`aggTrade` event, plain or wrapped by a combined stream; a `serverShutdown` notice; the answer
to a request) and a REST aggTrades row. Pure, no I/O.

Each trade becomes the contract's trade event: price and quantity as the exact decimal
strings Binance sent, event_time = T (the trade time: windows go by it), stream
agg_trade_stream(symbol), seq = the aggregate id `a`, first/last raw trade ids `f`/`l`.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from typing import NamedTuple

import orjson

from btcpipe.contract import ContractError, PriceEvent, agg_trade_stream, make_trade

SOURCE = "binance"  # the contract's source value: the exchange's own trades
PLACEHOLDER_ID = -1  # f = l = -1: the invalid rows a 2022 repair left in Binance's archive


class TradeRow(NamedTuple):
    """One aggregate trade as placed in its symbol's stream: its id always, its event only
    when it may be published (else `reason` says why not)."""

    symbol: str
    agg_id: int
    time_ms: int | None  # T, when it is an integer (to name a gap's window)
    event: PriceEvent | None
    reason: str | None = None


class LiveTrade(NamedTuple):
    row: TradeRow


class Shutdown(NamedTuple):
    """`serverShutdown`: Binance closes this connection in about 10 minutes."""


class Reply(NamedTuple):
    """The answer to a request (SUBSCRIBE): no market data."""


class Refused(NamedTuple):
    """A frame that is not usable, and why (logged and counted, never published)."""

    reason: str


Frame = LiveTrade | Shutdown | Reply | Refused


_new_tuple = tuple.__new__


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def trade_row(
    symbol: str, stream: str, fields: Mapping[str, object], now_ms: int
) -> TradeRow | Refused:
    """An aggregate trade's fields (`a p q f l T`, as REST rows and aggTrade events both
    carry them) as a row of `symbol`'s stream (agg_trade_stream(symbol), which callers make
    once a page); Refused without an integer id to place it by."""
    agg_id, time_ms = fields.get("a"), fields.get("T")
    if not _is_int(agg_id):
        return Refused(f"{symbol}: aggregate id {agg_id!r:.40} is not an integer")
    assert isinstance(agg_id, int)
    when = time_ms if isinstance(time_ms, int) and not isinstance(time_ms, bool) else None
    first, last = fields.get("f"), fields.get("l")
    if first == PLACEHOLDER_ID and last == PLACEHOLDER_ID:
        reason = f"{symbol} aggregate trade {agg_id} is an invalid placeholder (f = l = -1)"
        return TradeRow(symbol, agg_id, when, None, reason)
    if when is None:
        reason = f"{symbol} aggregate trade {agg_id}: trade time {time_ms!r:.40} is not an integer"
        return TradeRow(symbol, agg_id, None, None, reason)
    try:
        event = make_trade(
            symbol, fields.get("p"), when, SOURCE, stream, agg_id, now_ms, fields.get("q"),
            first, last,
        )  # fmt: skip
    except ContractError as error:
        return TradeRow(symbol, agg_id, when, None, f"{symbol} aggregate trade {agg_id}: {error}")
    return _new_tuple(TradeRow, (symbol, agg_id, when, event, None))  # TradeRow(...), cheaper


def parse_frame(text: str | bytes, symbols: Container[str], now_ms: int) -> Frame:
    """One WebSocket message: a trade of one of `symbols`, a shutdown notice, a reply, or
    Refused saying what is wrong with it."""
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError:
        return Refused(f"a frame that is not JSON: {_excerpt(text)}")
    if isinstance(body, dict) and "data" in body and "stream" in body:
        body = body["data"]  # a combined stream's wrapper
    if not isinstance(body, dict):
        return Refused(f"a frame that is not a JSON object: {_excerpt(text)}")
    if "result" in body and "id" in body:
        return Reply()
    kind = body.get("e")
    if kind == "serverShutdown":
        return Shutdown()
    if kind != "aggTrade":
        if "error" in body:
            return Refused(f"Binance answered a request with an error: {_excerpt(text)}")
        return Refused(f"an event of unknown type {kind!r:.40}")
    symbol = body.get("s")
    if not isinstance(symbol, str) or symbol not in symbols:
        return Refused(f"a trade of {symbol!r:.40}, which was not asked for")
    row = trade_row(symbol, agg_trade_stream(symbol), body, now_ms)
    return row if isinstance(row, Refused) else LiveTrade(row)


def parse_rest_rows(
    symbol: str, payload: object, now_ms: int
) -> tuple[list[TradeRow], list[str]] | None:
    """An aggTrades answer as rows in the order sent, and the reasons of the rows that could
    not be placed; None when it is not a list of objects (not the documented answer)."""
    if not isinstance(payload, list) or not all(isinstance(item, dict) for item in payload):
        return None
    rows, refused, stream = [], [], agg_trade_stream(symbol)
    for item in payload:
        row = trade_row(symbol, stream, item, now_ms)
        if isinstance(row, Refused):
            refused.append(row.reason)
        else:
            rows.append(row)
    return rows, refused


def _excerpt(text: str | bytes) -> str:
    shown = text.decode(errors="replace") if isinstance(text, bytes) else text
    return repr(shown[:80])
