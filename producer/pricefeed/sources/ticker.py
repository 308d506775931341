"""`--source binance`: Binance's ticker, polled on the fixed-rate clock (polling.py runs it),
every symbol in one request; an invalid price is logged and skipped.

Named symbols are held against the pairs Binance lists: the first poll asks for every pair
(ticker/price without parameters) and a symbol not among them stops the producer (exit 2,
naming it). A symbol Binance stops listing later makes every request for the symbols fail
(400, code -1121): the source then asks for every pair again, drops each named symbol that
is gone with a warning naming it and polls the others; with none left it stops (exit 2)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from btcpipe.clock import wall_clock_ms
from btcpipe.contract import ContractError, PriceEvent
from pricefeed.binance.rest import INVALID_SYMBOL, BinanceClient, BinanceError, Rejected
from pricefeed.sources.base import PollFailed, SourceError
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
        self.listing_checked = symbols is None  # every pair listed: nothing to check

    @property
    def polls_for(self) -> str:
        return "every pair Binance lists" if self.symbols is None else ", ".join(self.symbols)

    @property
    def events_per_tick(self) -> int | None:
        return None if self.symbols is None else len(self.symbols)

    def poll(self) -> list[PriceEvent]:
        if not self.listing_checked:
            return self._poll_every_pair()
        try:
            pairs = self.client.ticker_prices(self.symbols)
        except Rejected as error:
            if error.code != INVALID_SYMBOL:
                raise PollFailed.because(error) from error
            return self._poll_every_pair(error)
        except BinanceError as error:
            raise PollFailed.because(error) from error
        # ticker/price has no timestamp: the event time is when the answer arrived.
        event_time = wall_clock_ms()
        return events_from_pairs(pairs, self.symbols, event_time, self.sequencer)

    def _poll_every_pair(self, invalid: Rejected | None = None) -> list[PriceEvent]:
        """This tick's events out of the answer for every pair, after holding the named
        symbols against it (at the first poll, and after an invalid-symbol answer)."""
        assert self.symbols is not None
        try:
            pairs = self.client.ticker_prices(None)
        except BinanceError as error:
            raise PollFailed.because(error) from error
        event_time = wall_clock_ms()
        listed = {symbol for symbol, _ in pairs}
        kept = tuple(symbol for symbol in self.symbols if symbol in listed)
        gone = [symbol for symbol in self.symbols if symbol not in listed]
        if not self.listing_checked and gone:
            raise SourceError(
                f"SYMBOLS names {_pairs(gone)} that Binance does not list: {', '.join(gone)}."
            )
        if not kept:
            raise SourceError(
                f"Binance no longer lists any of SYMBOLS ({', '.join(gone)}): nothing to poll."
            )
        if gone:
            log.warning(
                "Binance no longer lists %s (%s): dropped, polling %s",
                ", ".join(gone),
                invalid,
                ", ".join(kept),
            )
        elif invalid is not None:
            log.warning(
                "Binance answered %s, yet lists every symbol: this tick's prices come from its "
                "answer for every pair",
                invalid,
            )
        self.symbols, self.listing_checked = kept, True
        wanted = set(kept)
        ours = [(symbol, price) for symbol, price in pairs if symbol in wanted]
        return events_from_pairs(ours, kept, event_time, self.sequencer)


def _pairs(symbols: Sequence[str]) -> str:
    return "a pair" if len(symbols) == 1 else f"{len(symbols)} pairs"


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
