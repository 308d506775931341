"""Trades made up as a market would make them: a seeded random walk per symbol, appended to
its tape at a set rate by a thread of the fake Binance, with times from its clock.

A walk is deterministic per (seed, symbol): the prices, quantities and sides come out the same
on every run; only the times follow the clock. Some aggregates hold several raw trades, and
now and then a trade is held back to go out with the next one, in the same millisecond, as
busy pairs trade on Binance.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from tests.harness.trade_tape import Tape, plain

TICK_SECONDS = 0.02  # how often the thread appends what is due: fine enough for any test rate
TICK = Decimal("0.01")  # the walk's price step
BURST_CHANCE = 0.2  # a lone due trade waits for the next, to share its millisecond
SEVERAL_RAW_CHANCE = 0.15  # an aggregate of 2-5 raw trades


@dataclass(frozen=True)
class WalkStep:
    price: str
    quantity: str
    buyer_is_maker: bool
    raw_trades: int


class RandomWalk:
    """The next trade's price, quantity and side for one symbol."""

    def __init__(self, seed: int, symbol: str, start_price: str) -> None:
        self._rng = random.Random(f"{seed}/{symbol}")
        self._price = Decimal(start_price)

    def step(self) -> WalkStep:
        rng = self._rng
        self._price = max(TICK, self._price + TICK * rng.randint(-3, 3))
        quantity = Decimal(rng.randint(1, 200_000)) / Decimal(100_000)
        several = rng.random() < SEVERAL_RAW_CHANCE
        return WalkStep(
            price=plain(self._price),
            quantity=plain(quantity),
            buyer_is_maker=rng.random() < 0.5,
            raw_trades=rng.randint(2, 5) if several else 1,
        )


def append_steps(tape: Tape, walk: RandomWalk, count: int, now_us: int) -> None:
    """`count` trades of the walk at `now_us`, a microsecond apart (never before the tape's
    last trade): trades appended together share a millisecond."""
    for _ in range(count):
        step = walk.step()
        last = tape.last_time_us()
        time_us = now_us if last is None else max(now_us, last + 1)
        tape.append(step.price, step.quantity, time_us, step.buyer_is_maker, step.raw_trades)


class TradeGenerator:
    """A thread appending `rates[symbol]` trades a second to each tape (on average exactly:
    what is due since the rate was set, whole trades a tick)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._rates: dict[str, _Rate] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def set_rate(self, tape: Tape, walk: RandomWalk, per_second: float) -> None:
        with self._lock:
            if per_second <= 0:
                self._rates.pop(tape.symbol, None)
            else:
                burst = random.Random(f"burst/{tape.symbol}")
                self._rates[tape.symbol] = _Rate(tape, walk, per_second, self._clock(), burst)

    def rates(self) -> dict[str, float]:
        with self._lock:
            return {symbol: rate.per_second for symbol, rate in self._rates.items()}

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="fake-binance-trades", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            now = self._clock()
            with self._lock:
                due = [(rate, rate.take_due(now)) for rate in self._rates.values()]
            for rate, count in due:
                if count:
                    append_steps(rate.tape, rate.walk, count, int(now * 1_000_000))


@dataclass
class _Rate:
    tape: Tape
    walk: RandomWalk
    per_second: float
    since: float
    burst: random.Random
    made: int = 0
    holding: bool = False  # a due trade waits to go out with the next one

    def take_due(self, now: float) -> int:
        due = max(0, int((now - self.since) * self.per_second) - self.made)
        if due == 1 and not self.holding:
            self.holding = self.burst.random() < BURST_CHANCE
        if self.holding and due < 2:
            return 0
        self.holding = False
        self.made += due
        return due
