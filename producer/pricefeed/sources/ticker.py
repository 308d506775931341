"""The live poll sources (Binance's ticker, the simulated walk): poll() returns the events of
one tick (source.PollSource), and the identity every live event carries."""

from __future__ import annotations

import logging
import random
import secrets
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import TYPE_CHECKING, ClassVar

from btcpipe.clock import wall_clock_ms
from btcpipe.contract import ContractError, PriceEvent, live_stream, make_event
from pricefeed.binance.rest import ALL_SYMBOLS, BinanceClient

if TYPE_CHECKING:
    from pricefeed.settings import Settings

log = logging.getLogger("producer")

EIGHT_PLACES = Decimal("0.00000001")  # Binance quotes prices with 8 decimals


def new_run_id() -> str:
    """Names one producer run: its start (readable) and 32 random bits (two runs started in
    the same second still differ)."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


class Sequencer:
    """The identity of live events: per symbol, a stream of this producer run, numbered
    1, 2, 3... in the order the events are made (which is the order they are sent)."""

    def __init__(self, source: str, run_id: str | None = None) -> None:
        self.source = source
        self.run_id = run_id or new_run_id()
        self._last: dict[str, int] = {}

    def event(self, symbol: str, price: object, event_time: int) -> PriceEvent:
        """The next event of `symbol`'s stream; raises ContractError (using up no number) for
        a value that must not be published."""
        seq = self._last.get(symbol, 0) + 1
        stream = live_stream(self.source, symbol, self.run_id)
        event = make_event(symbol, price, event_time, self.source, stream, seq)
        self._last[symbol] = seq
        return event


class BinanceSource:
    """Live prices, all symbols in one request; an invalid price is logged and skipped."""

    def __init__(
        self, client: BinanceClient, symbols: Sequence[str], sequencer: Sequencer | None = None
    ) -> None:
        self.client = client
        self.symbols = tuple(symbols)
        self.sequencer = sequencer or Sequencer("binance")

    @classmethod
    def from_settings(cls, settings: Settings) -> BinanceSource:
        client = BinanceClient(settings.binance_base_url, settings.http_timeout)
        return cls(client, settings.symbols)

    def poll(self) -> list[PriceEvent]:
        pairs = self.client.ticker_prices(self.symbols)
        # ticker/price has no timestamp: the event time is when the answer arrived.
        event_time = wall_clock_ms()
        return events_from_pairs(pairs, self.symbols, event_time, self.sequencer)


def events_from_pairs(
    pairs: Sequence[tuple[object, object]],
    wanted: Sequence[str],
    event_time: int,
    sequencer: Sequencer,
) -> list[PriceEvent]:
    # A set: thousands of pairs with SYMBOLS=ALL, where whatever Binance sent was asked for.
    asked = {symbol for symbol, _ in pairs} if tuple(wanted) == ALL_SYMBOLS else set(wanted)
    events = []
    for symbol, price in pairs:
        if symbol not in asked:
            log.warning("Skipped: Binance sent %r, which was not asked for", symbol)
            continue
        try:
            events.append(sequencer.event(symbol, price, event_time))  # type: ignore[arg-type]
        except ContractError as exc:
            log.warning("Skipped invalid price for %s: %s", symbol, exc)
    missing = asked - {symbol for symbol, _ in pairs}
    if missing:
        log.warning("Skipped: no price for %s in Binance's answer", ", ".join(sorted(missing)))
    return events


class SimulatedSource:
    """A seeded random walk in the same format and cadence, for demos without Binance.

    The prices depend only on the seed and the tick number, so a run can be replayed exactly.
    """

    START_PRICES: ClassVar[dict[str, Decimal]] = {
        "BTC": Decimal("43250.75"),
        "ETH": Decimal("2300.10"),
    }

    def __init__(
        self, symbols: Sequence[str], seed: int | None, clock: Callable[[], int] = wall_clock_ms
    ) -> None:
        self.symbols = tuple(symbols)
        self._rng = random.Random(seed)
        self._clock = clock
        self.sequencer = Sequencer("simulated")
        self._prices = {s: self._start_price(s) for s in self.symbols}

    @classmethod
    def from_settings(cls, settings: Settings) -> SimulatedSource:
        return cls(settings.symbols, settings.seed)

    def _start_price(self, symbol: str) -> Decimal:
        return next(
            (p for base, p in self.START_PRICES.items() if symbol.startswith(base)),
            Decimal("100.00"),
        )

    def poll(self) -> list[PriceEvent]:
        event_time = self._clock()
        return [self._step(symbol, event_time) for symbol in self.symbols]

    def _step(self, symbol: str, event_time: int) -> PriceEvent:
        # A relative step of about 0.05 % per tick, kept strictly positive.
        factor = Decimal(repr(1 + self._rng.gauss(0, 0.0005)))
        price = max(self._prices[symbol] * factor, EIGHT_PLACES)
        self._prices[symbol] = price.quantize(EIGHT_PLACES, rounding=ROUND_HALF_EVEN)
        return self.sequencer.event(symbol, format(self._prices[symbol], "f"), event_time)
