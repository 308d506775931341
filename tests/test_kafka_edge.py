"""The consumer's Kafka edge without a broker: CatchUpWatch tells of catching up once."""

from __future__ import annotations

from aggregator.kafka_edge import CatchUpWatch


def test_catching_up_with_a_backlog_is_told_once_and_live_traffic_never_is():
    watch = CatchUpWatch()
    backlog = CatchUpWatch.BACKLOG_MESSAGES
    # Live: a few messages behind now and then, never a backlog.
    assert not any(watch.caught_up(lag) for lag in [3, 0, 2999, 0, backlog - 1, 0])
    # A backlog read down to the end: told once, when it reaches 0.
    verdicts = [watch.caught_up(lag) for lag in [backlog * 10, backlog, 500, 1, 0, 0, 5, 0]]
    assert verdicts == [False, False, False, False, True, False, False, False]
