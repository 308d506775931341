"""FixedRateSchedule: the producer's fixed-rate grid, skipped ticks, bounded jitter."""

from __future__ import annotations

import random

import pytest

from pricefeed.sources.polling import FixedRateSchedule
from tests.producer_parts import Highest, Lowest


def test_schedule_first_tick_is_at_start() -> None:
    schedule = FixedRateSchedule(start=100.0, interval=2.0)
    assert schedule.next_tick(100.0) == (0, 100.0)


def test_schedule_keeps_the_grid_over_many_ticks_whatever_each_tick_costs() -> None:
    start, interval = 1234.567, 0.1
    schedule = FixedRateSchedule(start, interval)
    costs = random.Random(1)
    tick, due = schedule.next_tick(start)
    for expected in range(1, 10_001):
        finished = due + costs.uniform(0, 0.9 * interval)  # any cost below one interval
        tick, due = schedule.next_tick(finished)
        assert tick == expected
        assert due == pytest.approx(start + expected * interval, abs=1e-9)


def test_schedule_skips_ticks_a_slow_request_missed_instead_of_bursting() -> None:
    start, interval = 50.0, 1.0
    schedule = FixedRateSchedule(start, interval)
    assert schedule.next_tick(start) == (0, 50.0)
    # Tick 0 took 2.5 intervals: ticks 1 and 2 are gone, tick 3 is the first still ahead.
    assert schedule.next_tick(52.5) == (3, 53.0)
    assert schedule.next_tick(53.2) == (4, 54.0)
    # A request that took 10.7 intervals: back on the grid, not 10 ticks in a row.
    assert schedule.next_tick(64.7) == (15, 65.0)


def test_schedule_never_gives_the_same_tick_twice() -> None:
    schedule = FixedRateSchedule(start=0.0, interval=1.0)
    ticks = [schedule.next_tick(0.0)[0] for _ in range(5)]
    assert ticks == [0, 1, 2, 3, 4]


def test_schedule_waiting_past_a_retry_delay_lands_on_the_next_grid_point() -> None:
    schedule = FixedRateSchedule(start=10.0, interval=0.5)
    schedule.next_tick(10.0)
    assert schedule.next_tick(10.0 + 2.2) == (5, 12.5)


def test_schedule_jitter_stays_within_bounds_and_does_not_accumulate() -> None:
    start, interval, jitter = 0.0, 1.0, 0.25
    schedule = FixedRateSchedule(start, interval, jitter, random.Random(3))
    offsets = []
    now = start
    for expected in range(2_000):
        tick, due = schedule.next_tick(now)
        assert tick == expected
        offset = due - schedule.due_at(tick)
        assert 0.0 <= offset <= jitter
        offsets.append(offset)
        now = due + 0.01
    assert max(offsets) - min(offsets) > jitter / 2  # jitter is really applied
    assert schedule.due_at(1_999) == start + 1_999 * interval


def test_schedule_jitter_extremes() -> None:
    low = FixedRateSchedule(0.0, 1.0, 0.3, Lowest())
    high = FixedRateSchedule(0.0, 1.0, 0.3, Highest())
    assert low.next_tick(0.0) == (0, 0.0)
    assert high.next_tick(0.0) == (0, pytest.approx(0.3))
