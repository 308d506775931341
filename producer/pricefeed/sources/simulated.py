"""`--source simulated`: a seeded random walk in Binance's format and cadence, for demos
without Binance (polled on the fixed-rate clock, as the ticker is)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from decimal import ROUND_HALF_EVEN, Decimal
from typing import ClassVar

from btcpipe.clock import wall_clock_ms
from btcpipe.contract import PriceEvent
from pricefeed.sources.identity import Sequencer

EIGHT_PLACES = Decimal("0.00000001")  # Binance quotes prices with 8 decimals


class SimulatedSource:
    """The prices depend only on the seed and the tick number, so a run can be replayed
    exactly."""

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

    @property
    def polls_for(self) -> str:
        return ", ".join(self.symbols)

    @property
    def events_per_tick(self) -> int:
        return len(self.symbols)

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
