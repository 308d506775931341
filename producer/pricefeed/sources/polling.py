"""Runs a poll source on the fixed-rate clock: poll, publish, and on a failed poll retry as
the failure says, then rejoin the grid. It knows no source: each one says what it polls and
how many events a tick brings."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from btcpipe.backoff import Backoff
from btcpipe.contract import PriceEvent
from pricefeed.sources.base import PollFailed, Sink, StopSignal, retry_delay, wait_tending
from pricefeed.sources.identity import Sequencer

log = logging.getLogger("producer")

ECHO_MAX_EVENTS = 20  # beyond this many a tick, one `Produced:` line per tick, not per event


class PollSource(Protocol):
    """A source asked for the events of one tick at a time (the Binance ticker, the simulated
    walk)."""

    @property
    def sequencer(self) -> Sequencer:
        """The identity of its events; names the source and the run in the start line."""
        ...

    @property
    def polls_for(self) -> str:
        """What each poll asks for, in the start line ("BTCUSDT, ETHUSDT")."""
        ...

    @property
    def events_per_tick(self) -> int | None:
        """How many events a tick brings at most; None: not known before it comes."""
        ...

    def poll(self) -> list[PriceEvent]:
        """This tick's events; raise PollFailed (or a subclass) when there are none."""
        ...


@dataclass(frozen=True)
class PollTiming:
    """The four numbers of the fixed-rate clock."""

    interval: float  # seconds between polls
    jitter: float = 0.0  # random extra delay per tick, seconds
    backoff_base: float = 1.0  # the first retry delay after a failed poll
    backoff_max: float = 60.0  # the longest


def echoes_each_event(events_per_tick: int | None) -> bool:
    return events_per_tick is not None and events_per_tick <= ECHO_MAX_EVENTS


class FixedRatePoller:
    """A poll source as a Source: its polls on the fixed-rate clock."""

    def __init__(self, source: PollSource, timing: PollTiming) -> None:
        self.source = source
        self.timing = timing
        self.echoes_each_event = echoes_each_event(source.events_per_tick)
        self.stall_warning_after = max(5.0, 2 * timing.interval)  # a couple of silent ticks

    def run(self, sink: Sink, stop: StopSignal) -> None:
        sequencer = self.source.sequencer
        log.info(
            "Polling %s every %g s for %s (run %s: each symbol's events numbered from 1)",
            sequencer.source,
            self.timing.interval,
            self.source.polls_for,
            sequencer.run_id,
        )
        run_polling(self.source, sink, self.timing, stop)


def run_polling(
    source: PollSource,
    sink: Sink,
    timing: PollTiming,
    stop: StopSignal,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Poll on the fixed grid; on failure retry with backoff, then rejoin the grid."""
    schedule = FixedRateSchedule(clock(), timing.interval, timing.jitter)
    backoff = Backoff(timing.backoff_base, timing.backoff_max)
    _, due = schedule.next_tick(schedule.start)  # tick 0 fires at once, not an interval late
    summarise = not echoes_each_event(source.events_per_tick)
    while not wait_tending(sink, due, stop, clock):
        try:
            started = clock()
            events = source.poll()
            sink.publish(events)
            if summarise:  # the tick's duration: request, parsing, hand-over to the client
                took_ms = (clock() - started) * 1000
                log.info("Produced: %d prices in %.0f ms", len(events), took_ms)
            backoff.reset()
            _, due = schedule.next_tick(clock())
        except PollFailed as exc:
            _, due = schedule.next_tick(clock() + retry_delay(exc, backoff))
            report_failure(exc, next_poll_in=due - clock())


def report_failure(exc: PollFailed, next_poll_in: float) -> None:
    """Say what went wrong, and when the next poll really comes."""
    log.log(exc.level, "%s", exc.explain(f"next poll in {next_poll_in:.1f} s"))


class FixedRateSchedule:
    """Tick k is due at start + k * interval (+ its own random jitter), whatever the ticks cost.

    A tick that could not run on time is skipped rather than fired late in a burst, so the
    grid never drifts: after a slow request or a long Retry-After the next tick is the first
    grid point still ahead. Pure arithmetic over a clock the caller reads.
    """

    def __init__(
        self, start: float, interval: float, jitter: float = 0.0, rng: random.Random | None = None
    ) -> None:
        self.start = start
        self.interval = interval
        self.jitter = jitter
        self._rng = rng or random.Random()
        self._last_tick = -1

    def due_at(self, tick: int) -> float:
        return self.start + tick * self.interval

    def next_tick(self, now: float) -> tuple[int, float]:
        """The next tick (number, due time with jitter) not before `now` and after the last one."""
        tick = max(self._last_tick + 1, math.ceil((now - self.start) / self.interval))
        self._last_tick = tick
        offset = self._rng.uniform(0, self.jitter) if self.jitter else 0.0
        return tick, self.due_at(tick) + offset
