"""CatchUpWatch: catching up with a backlog is told once, live traffic never."""

from __future__ import annotations

from aggregator.core.catch_up import CatchUpWatch


def test_catching_up_with_a_backlog_is_told_once_and_live_traffic_never_is():
    watch = CatchUpWatch()
    backlog = CatchUpWatch.BACKLOG_MESSAGES
    # Live: a few messages behind now and then, never a backlog.
    live = [(3, 1), (0, 3), (2999, 1), (0, 2999), (backlog - 1, 0), (0, backlog - 1)]
    assert not any(watch.caught_up(lag, just_read) for lag, just_read in live)
    # A backlog read down to the end, poll by poll: told once, when the lag reaches 0.
    polls = [
        (backlog * 10, 0),
        (backlog, 2000),
        (500, 2000),
        (1, 499),
        (0, 1),
        (0, 0),
        (5, 0),
        (0, 5),
    ]
    verdicts = [watch.caught_up(lag, just_read) for lag, just_read in polls]
    assert verdicts == [False, False, False, False, True, False, False, False]
    # A backlog taken in one poll (a poll holds a partition's whole fetch response).
    assert watch.caught_up(0, just_read=backlog)
    assert not watch.caught_up(0, just_read=0)
