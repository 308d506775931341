"""The producer's side of the contract: an event as it is published, built only through the
rules (`make_event`), and the names of the streams events belong to. Pure, no I/O."""

from __future__ import annotations

from typing import NamedTuple

import orjson

from btcpipe.clock import wall_clock_ms
from btcpipe.contract.rules import (
    check_event_time,
    check_identity,
    check_price,
    check_source,
    check_symbol,
)


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
        # fields, at a fraction of the cost (it runs per message in a replay).
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
