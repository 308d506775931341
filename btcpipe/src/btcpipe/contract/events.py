"""The producer's side of the contract: an event as it is published, built only through the
rules (`make_event`), and the names of the streams events belong to. Pure, no I/O."""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec

from btcpipe.clock import wall_clock_ms
from btcpipe.contract.rules import (
    EARLIEST_EVENT_MS,
    KLINES,
    MAX_FUTURE_MS,
    MAX_SEQ,
    MAX_TRADE_ID,
    PRICE_PATTERN,
    SAMPLES,
    SOURCES,
    TRADES,
    ContractError,
    KlineText,
    accepted_streams,
    accepted_symbols,
    check_event_time,
    check_identity,
    check_kline,
    check_price,
    check_source,
    check_symbol,
    check_trade,
)

_encode = msgspec.json.Encoder().encode


class PriceEvent(NamedTuple):  # immutable; a tuple is the cheapest object per message
    """An event as the producer publishes it: every decimal is the source's exact text.

    A price sample has the first six fields; a trade also its quantity and the raw trade ids
    it covers; a candle its kline (its close is `price`, its close time `event_time`)."""

    symbol: str
    price: str
    event_time: int
    source: str
    stream: str
    seq: int
    quantity: str | None = None
    first_trade_id: int | None = None
    last_trade_id: int | None = None
    kline: KlineText | None = None

    @property
    def feed(self) -> str:
        """samples, trades or klines: the kind of window row it counts in."""
        return (
            KLINES if self.kline is not None else TRADES if self.quantity is not None else SAMPLES
        )

    def key(self) -> bytes:
        return self.symbol.encode("ascii")

    def to_json_bytes(self) -> bytes:
        # Compact UTF-8 bytes, as json.dumps(separators=(",", ":")) writes these ASCII fields.
        # msgspec rather than orjson: it runs per message, and orjson's output costs several
        # times more while kafka-python still holds the bytes of earlier messages.
        body: dict[str, Any] = {
            "symbol": self.symbol,
            "price": self.price,
            "event_time": self.event_time,
            "source": self.source,
            "stream": self.stream,
            "seq": self.seq,
        }
        if self.quantity is not None:
            body["quantity"] = self.quantity
            body["first_trade_id"] = self.first_trade_id
            body["last_trade_id"] = self.last_trade_id
        elif self.kline is not None:
            body["kline"] = self.kline._asdict()
        return _encode(body)


def make_event(
    symbol: str,
    price: object,
    event_time: object,
    source: str,
    stream: str,
    seq: object,
    now_ms: int | None = None,
    *,
    quantity: object = None,
    first_trade_id: object = None,
    last_trade_id: object = None,
    kline: dict[str, object] | None = None,
) -> PriceEvent:
    """Build an event, refusing (ContractError) anything the consumer would have to reject.

    `now_ms`: the producer's clock, which bounds `event_time` as the consumer's will; None
    reads the wall clock (a simulated or replayed time is judged against real time too).
    A trade passes `quantity` and both trade ids; a candle passes `kline` (KLINE_FIELDS)."""
    if now_ms is None:
        now_ms = wall_clock_ms()
    event = PriceEvent(
        check_symbol(symbol),
        check_price(price),
        check_event_time(event_time, now_ms),
        check_source(source),
        *check_identity(stream, seq),
    )
    trade_given = quantity is not None or first_trade_id is not None or last_trade_id is not None
    if trade_given and kline is not None:
        raise ContractError("an event is a trade or a candle, not both")
    if trade_given:
        quantity, first, last = check_trade(quantity, first_trade_id, last_trade_id)
        return event._replace(quantity=quantity, first_trade_id=first, last_trade_id=last)
    if kline is not None:
        return event._replace(kline=check_kline(kline, event.price, event.event_time))
    return event


_plain_decimal = PRICE_PATTERN.fullmatch
_new_tuple = tuple.__new__


def make_trade(
    symbol: str,
    price: object,
    event_time: object,
    source: str,
    stream: str,
    seq: object,
    now_ms: int,
    quantity: object,
    first_trade_id: object,
    last_trade_id: object,
) -> PriceEvent:
    """make_event for a trade, deciding as it does (tests hold the two to the same verdicts)
    at a fraction of its cost: the hot path of the trade source and of trade replays, where
    nearly every trade is plainly valid and of a symbol and stream accepted before. Anything
    else goes through make_event, which says what is wrong."""
    if (
        type(price) is str
        and type(quantity) is str
        and type(event_time) is int
        and type(seq) is int
        and type(first_trade_id) is int
        and type(last_trade_id) is int
        and EARLIEST_EVENT_MS <= event_time <= now_ms + MAX_FUTURE_MS
        and 0 < seq <= MAX_SEQ
        and 0 <= first_trade_id <= last_trade_id <= MAX_TRADE_ID
        and _plain_decimal(price)
        and price.strip("0.")
        and _plain_decimal(quantity)
        and quantity.strip("0.")
        and type(symbol) is str
        and symbol in accepted_symbols
        and type(stream) is str
        and stream in accepted_streams
        and source in SOURCES
    ):
        # The tuple a PriceEvent(...) call makes, without its Python-level __new__.
        return _new_tuple(PriceEvent, (
            symbol, price, event_time, source, stream, seq, quantity, first_trade_id,
            last_trade_id, None,
        ))  # fmt: skip
    return make_event(
        symbol, price, event_time, source, stream, seq, now_ms,
        quantity=quantity, first_trade_id=first_trade_id, last_trade_id=last_trade_id,
    )  # fmt: skip


def live_stream(source: str, symbol: str, run_id: str) -> str:
    """The stream of one symbol's polls in one producer run: a restart starts a new one."""
    return f"{source}/{symbol}/{run_id}"


def agg_trade_stream(symbol: str) -> str:
    """The exchange's aggregate trades of a symbol, numbered by their aggregate id: the same
    stream whether a trade came over WebSocket, from REST or from a public-data file."""
    return f"aggtrades/{symbol}"


def trade_stream(symbol: str) -> str:
    """The exchange's raw trades of a symbol (a trades file), numbered by trade id."""
    return f"trades/{symbol}"


def kline_stream(symbol: str, interval: str) -> str:
    """The exchange's candles of a symbol and interval, numbered by their open time."""
    return f"klines/{symbol}/{interval}"


def replay_stream(symbol: str, content_digest: str) -> str:
    """The stream of one file of another layout: the same content gives the same stream on
    every run, whatever the file is called or where it lies."""
    return f"replay/{symbol}/{content_digest[:32]}"
