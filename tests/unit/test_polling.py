"""The polling loop on a simulated clock: the grid, retry delays, failure lines, next poll
(with the Binance ticker's failures, as the ticker source raises them on)."""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pytest

from btcpipe.backoff import Backoff
from btcpipe.contract import PriceEvent, make_event
from pricefeed.binance.rest import (
    BinanceError,
    InvalidResponse,
    RateLimited,
    Rejected,
    Restricted,
    Unavailable,
)
from pricefeed.sources.base import PollFailed, retry_delay
from pricefeed.sources.identity import Sequencer
from pricefeed.sources.polling import PollTiming, report_failure, run_polling
from tests.producer_parts import RUN, T0, Highest


def failed(error: BinanceError) -> PollFailed:
    """The poll failure the ticker source raises for a Binance error."""
    return PollFailed.because(error)


@dataclass
class Step:
    """One poll: how long it takes (simulated seconds) and what it raises, if anything."""

    cost: float = 0.0
    error: BinanceError | None = None


class LoopRig:
    """Clock, stop event, source and sink for run_polling: waiting advances the simulated
    clock, and the loop is stopped once every scripted step has been polled. Like a real clock,
    every reading is a little later than the one before (1 µs)."""

    polls_for = "BTCUSDT"
    events_per_tick = 1
    sequencer = Sequencer("binance", run_id="r")

    def __init__(self, steps: Sequence[Step], start: float = 1_000.0) -> None:
        self.now = start
        self.start = start
        self._steps = list(steps)
        self.poll_times: list[float] = []
        self.published: list[list[PriceEvent]] = []

    def clock(self) -> float:
        self.now += 1e-6
        return self.now

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None
        assert timeout >= 0
        self.now += timeout
        return not self._steps

    def poll(self) -> list[PriceEvent]:
        self.poll_times.append(self.now)
        step = self._steps.pop(0)
        self.now += step.cost
        if step.error is not None:
            raise failed(step.error)
        return [make_event("BTCUSDT", "43250.75000000", T0, "binance", RUN, len(self.poll_times))]

    def is_set(self) -> bool:
        return not self._steps

    def publish(self, events: Iterable[PriceEvent]) -> None:
        self.published.append(list(events))

    def tend(self) -> None:
        """The sink's upkeep between polls: nothing to do here."""

    def wait_for_room(self) -> None:
        """Never full."""

    def flush(self, timeout: float) -> None:
        """Nothing is held back."""

    def backlog(self) -> int:
        return 0

    def offsets(self) -> list[float]:
        """Poll times since the start, to the millisecond."""
        return [round(t - self.start, 3) for t in self.poll_times]


def run_loop(steps: Sequence[Step], interval: float = 1.0, jitter: float = 0.0) -> LoopRig:
    """The loop run over `steps` with a rig as source, sink, stop signal and clock."""
    rig = LoopRig(steps)
    run_polling(rig, rig, PollTiming(interval, jitter, 1.0, 60.0), rig, clock=rig.clock)
    return rig


def test_loop_polls_at_once_then_on_the_grid() -> None:
    rig = run_loop([Step(cost=0.05)] * 10)
    assert rig.offsets() == list(range(10))
    assert len(rig.published) == 10


def test_loop_stays_on_the_grid_after_slow_polls_and_skips_missed_ticks() -> None:
    steps = [Step(), Step(cost=0.9), Step(), Step(cost=2.5), Step(), Step()]
    rig = run_loop(steps)
    # The 0.9 s poll still ends before tick 2; the 2.5 s poll at tick 3 misses ticks 4 and 5.
    assert rig.offsets() == [0, 1, 2, 3, 6, 7]


def test_loop_with_jitter_polls_within_jitter_after_each_grid_point() -> None:
    rig = run_loop([Step(cost=0.01)] * 200, jitter=0.3)
    for tick, offset in enumerate(rig.offsets()):
        assert tick <= offset <= tick + 0.3


def test_loop_waits_for_retry_after_then_rejoins_the_grid() -> None:
    limited = RateLimited(429, 2.5, "HTTP 429: Too many requests")
    banned = RateLimited(418, 2.5, "HTTP 418: banned")
    rig = run_loop([Step(), Step(error=limited), Step(error=banned), Step(), Step()])
    # 429 at 1 s: not before 3.5 s, so 4 s; 418 at 4 s: not before 6.5 s, so 7 s.
    assert rig.offsets() == [0, 1, 4, 7, 8]


def test_loop_skips_an_invalid_body_until_the_next_tick() -> None:
    rig = run_loop([Step(), Step(error=InvalidResponse("body is not JSON")), Step()])
    assert rig.offsets() == [0, 1, 2]
    assert len(rig.published) == 2


def test_loop_backs_off_exponentially_then_resets() -> None:
    down = Unavailable("HTTP 503: overloaded")
    steps = [Step(error=down)] * 5 + [Step()] * 3 + [Step(error=down), Step()]
    rig = run_loop(steps, interval=0.25)
    times = rig.offsets()
    gaps = [b - a for a, b in itertools.pairwise(times)]
    for attempt in range(5):  # delay in [2**n / 2, 2**n], rounded up to the 0.25 s grid
        assert 2**attempt / 2 <= gaps[attempt] <= 2**attempt + 0.25
    assert gaps[5:8] == [0.25, 0.25, 0.25]  # healthy again: every tick
    assert 0.5 <= gaps[8] <= 1.25  # the next failure starts from the base delay again
    assert all((t * 4).is_integer() for t in times)  # every poll on the grid


def test_retry_delay_is_retry_after_or_the_backoff() -> None:
    backoff = Backoff(1.0, 60.0, Highest())
    assert retry_delay(failed(RateLimited(429, 4.0, "HTTP 429: slow down")), backoff) == 4.0
    assert retry_delay(failed(RateLimited(418, 120.0, "HTTP 418: banned")), backoff) == 120.0
    assert retry_delay(failed(RateLimited(429, None, "HTTP 429")), backoff) == 1.0
    assert retry_delay(failed(InvalidResponse("body is not JSON")), backoff) == 0.0
    assert retry_delay(failed(Restricted("HTTP 451: restricted location")), backoff) == 2.0
    assert retry_delay(failed(Rejected("HTTP 400: Invalid symbol.")), backoff) == 4.0
    assert retry_delay(failed(Unavailable("no answer within 5 s")), backoff) == 8.0


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (RateLimited(429, 4.0, "HTTP 429: slow down"), "rate limit: HTTP 429: slow down; "),
        (RateLimited(418, 120.0, "HTTP 418: banned"), "IP banned: HTTP 418: banned; "),
        (RateLimited(429, None, "HTTP 429"), "rate limit: HTTP 429, no Retry-After; "),
        (InvalidResponse("body is not JSON"), "invalid body (body is not JSON); "),
        (Restricted("HTTP 451: restricted location"), "data-api.binance.vision"),
        (Rejected("HTTP 400: Invalid symbol."), "check SYMBOLS. Next poll in 7.5 s"),
        (Unavailable("no answer within 5 s"), "Binance unavailable: no answer within 5 s; "),
    ],
)
def test_report_failure_says_what_happened_and_when_the_next_poll_comes(
    caplog: pytest.LogCaptureFixture, error: BinanceError, words: str
) -> None:
    with caplog.at_level(logging.INFO, logger="producer"):
        report_failure(failed(error), next_poll_in=7.46)
    [record] = caplog.records
    assert record.levelno == error.level
    assert words in record.message
    assert record.message.lower().endswith("next poll in 7.5 s")
    assert "retrying in" not in record.message.lower()


# (the failure, the poll interval, the gap to the next poll it must announce)
ANNOUNCED = [
    # 0.4-0.8 s backoff on a 10 s grid: the next tick, not the backoff, decides.
    (Unavailable("HTTP 503: overloaded"), 10.0, 10.0),
    (Restricted("HTTP 451: restricted location"), 10.0, 10.0),
    (RateLimited(429, 2.5, "HTTP 429"), 1.0, 3.0),  # Retry-After, then the next grid point
    (RateLimited(418, 25.0, "HTTP 418"), 10.0, 30.0),
    (InvalidResponse("body is not JSON"), 10.0, 10.0),
]


@pytest.mark.parametrize(("error", "interval", "gap"), ANNOUNCED)
def test_the_announced_next_poll_is_when_the_loop_polls_again(
    caplog: pytest.LogCaptureFixture, error: BinanceError, interval: float, gap: float
) -> None:
    with caplog.at_level(logging.INFO, logger="producer"):
        rig = run_loop([Step(), Step(error=error), Step()], interval=interval)
    failed_at, next_poll = rig.poll_times[1:]
    assert next_poll - failed_at == pytest.approx(gap, abs=0.001)
    [announced] = re.findall(r"next poll in ([0-9.]+) s", caplog.text, re.IGNORECASE)
    assert float(announced) == pytest.approx(next_poll - failed_at, abs=0.05)
