"""`--source binance`: Binance's ticker, polled on the fixed-rate clock (polling.py runs it),
every symbol in one request; an invalid price is logged and skipped."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from btcpipe.clock import wall_clock_ms
from btcpipe.contract import ContractError, PriceEvent
from pricefeed.binance.rest import BinanceClient, BinanceError
from pricefeed.sources.base import PollFailed
from pricefeed.sources.identity import Sequencer

log = logging.getLogger("producer")


class TickerSource:
    """Live prices of `symbols`, or with None of every pair Binance lists (SYMBOLS=ALL)."""

    def __init__(
        self,
        client: BinanceClient,
        symbols: Sequence[str] | None,
        sequencer: Sequencer | None = None,
    ) -> None:
        self.client = client
        self.symbols = None if symbols is None else tuple(symbols)
        self.sequencer = sequencer or Sequencer("binance")

    @property
    def polls_for(self) -> str:
        return "every pair Binance lists" if self.symbols is None else ", ".join(self.symbols)

    @property
    def events_per_tick(self) -> int | None:
        return None if self.symbols is None else len(self.symbols)

    def poll(self) -> list[PriceEvent]:
        try:
            pairs = self.client.ticker_prices(self.symbols)
        except BinanceError as error:
            raise PollFailed.because(error) from error
        # ticker/price has no timestamp: the event time is when the answer arrived.
        event_time = wall_clock_ms()
        return events_from_pairs(pairs, self.symbols, event_time, self.sequencer)


def events_from_pairs(
    pairs: Sequence[tuple[str, object]],
    wanted: Sequence[str] | None,
    event_time: int,
    sequencer: Sequencer,
) -> list[PriceEvent]:
    """The events of one answer's (symbol, price) pairs; `wanted` None: every pair sent."""
    # A set: thousands of pairs with SYMBOLS=ALL, where whatever Binance sent was asked for.
    asked = {symbol for symbol, _ in pairs} if wanted is None else set(wanted)
    events = []
    for symbol, price in pairs:
        if symbol not in asked:
            log.warning("Skipped: Binance sent %r, which was not asked for", symbol)
            continue
        try:
            events.append(sequencer.event(symbol, price, event_time))
        except ContractError as exc:
            log.warning("Skipped invalid price for %s: %s", symbol, exc)
    missing = asked - {symbol for symbol, _ in pairs}
    if missing:
        log.warning("Skipped: no price for %s in Binance's answer", ", ".join(sorted(missing)))
    return events
