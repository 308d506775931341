"""Both alert rules evaluated as Grafana does (tests/grafana/alerts.py) on databases the real
pipeline filled: quiet while healthy and on a new stack, the lag alert for a live feed
falling behind (never for a backfill), the no-data alert after 3 minutes without events."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import psycopg2
import psycopg2.extensions
import pytest

from btcpipe.clock import wall_clock_ms
from tests.deploy import run_init
from tests.grafana.alerts import (
    LAG_RULE,
    NO_DATA_RULE,
    assert_no_data_clock,
    assert_seconds_since_last_event,
    evaluate_pipeline_rules,
    evaluate_rules,
    instance,
    latest_lags,
    postmaster_start,
    threshold,
)
from tests.grafana.database import check_alert_frame, reader_connection, run_query
from tests.grafana.panels import all_symbols, assert_panels_show
from tests.grafana.pipeline_runs import (
    IDLE_FLUSHES,
    LAG,
    LIVE,
    MINUTE,
    SYMBOLS,
    HealthyRun,
    MetricRow,
    Pipeline,
    fresh,
    klines,
    live_feed,
    minutes,
    stored_metrics,
)
from tests.grafana.sql import (
    AlertQuery,
    expand,
    iter_alert_queries,
)
from tests.harness import PostgresServer
from tests.pipeline import Event
from tests.pipeline import query as superuser_query


@pytest.mark.parametrize("query", list(iter_alert_queries()), ids=lambda q: q.name)
def test_alert_query_shape_on_a_loaded_database(
    query: AlertQuery, healthy_reader: psycopg2.extensions.connection
) -> None:
    result = run_query(healthy_reader, expand(query.raw_sql, query.time_range(datetime.now(UTC))))
    check_alert_frame(result)
    assert result.rows


def test_healthy_pipeline_fires_nothing(
    healthy: HealthyRun, healthy_reader: psycopg2.extensions.connection
) -> None:
    evaluation = evaluate_rules(healthy_reader)
    lag = evaluation[LAG_RULE]
    assert lag.state == "Normal"
    # consumer-a's newest flush read nothing (NULL lag); consumer-b measured its live poll.
    assert lag.values == latest_lags(healthy.data, evaluation)
    assert lag.values == {instance("consumer-b"): healthy.fresh.lag}
    assert 0 <= healthy.fresh.lags()[0] <= healthy.fresh_bound < threshold(LAG_RULE)
    no_data = evaluation[NO_DATA_RULE]
    assert no_data.state == "Normal" and no_data.rows == 1
    assert_seconds_since_last_event(no_data, healthy.data, evaluation)


def test_a_new_stack_is_quiet_until_the_pipeline_had_3_minutes() -> None:
    """A PostgreSQL just started with the deployment's init files and no consumer flush yet:
    what Grafana's first evaluations of a new compose stack see. The no-data clock runs from
    PostgreSQL's start, so nothing fires (and nothing is mailed) for 3 minutes."""
    with PostgresServer() as fresh:
        database = fresh.create_database("new_stack")
        run_init(fresh, database)
        with reader_connection(fresh, database) as conn:
            evaluation = evaluate_rules(conn)
        started = postmaster_start(fresh.dsn(database))
    no_data = evaluation[NO_DATA_RULE]
    assert no_data.state == "Normal" and no_data.rows == 1
    assert_no_data_clock(no_data, started, evaluation)
    lag = evaluation[LAG_RULE]  # noDataState OK: nothing to measure
    assert lag.state == "Normal" and lag.rows == 0


def test_a_consumer_that_never_reads_an_event_fires_no_data_3_minutes_after_its_first_flush(
    pipeline: Pipeline, postgres: PostgresServer
) -> None:
    """consumer.py creates the schema and keeps flushing empty intervals: no window at all.
    Quiet at first; the same rows 4 minutes older (as if it had been running that long) fire."""
    pipeline.run_until_idle("consumer-a")
    rows = stored_metrics(pipeline.dsn)
    assert len(rows) > IDLE_FLUSHES and not any(row.events_processed for row in rows)
    assert superuser_query(pipeline.dsn, "SELECT count(*) FROM five_min_bitcoin_event") == [(0,)]
    evaluation = evaluate_pipeline_rules(postgres, pipeline)
    assert evaluation[NO_DATA_RULE].state == "Normal"
    assert_no_data_clock(evaluation[NO_DATA_RULE], rows[0].timestamp, evaluation)

    aged = timedelta(minutes=4)
    superuser_query(
        pipeline.dsn,
        "UPDATE pipeline_metrics SET metric_timestamp = metric_timestamp - %s RETURNING 1",
        (aged,),
    )
    evaluation = evaluate_pipeline_rules(postgres, pipeline)
    no_data = evaluation[NO_DATA_RULE]
    assert no_data.state == "Alerting" and no_data.rows == 1
    assert_no_data_clock(no_data, rows[0].timestamp - aged, evaluation)
    lag = evaluation[LAG_RULE]  # every flush was idle: NULL lag, nothing to measure
    assert lag.state == "Normal" and lag.rows == 0


def test_processing_lag_of_90_seconds_fires_the_lag_alert(
    pipeline: Pipeline, postgres: PostgresServer
) -> None:
    rng = random.Random(90)
    started = wall_clock_ms()
    flush = pipeline.run_held("consumer-a", lambda: pipeline.publish(fresh(rng, LAG)))
    bound = LAG.total_seconds() + (wall_clock_ms() - started) / 1000
    assert LAG.total_seconds() <= flush.lags()[0] <= flush.lags()[1] <= bound
    evaluation = evaluate_pipeline_rules(postgres, pipeline)
    lag = evaluation[LAG_RULE]
    assert lag.state == "Alerting"
    assert (
        lag.firing
        == {instance("consumer-a"): flush.lag}
        == latest_lags(pipeline.data(), evaluation)
    )
    assert evaluation[NO_DATA_RULE].state == "Normal"


def test_backfill_is_not_lag_but_a_live_feed_falling_behind_fires(
    pipeline: Pipeline, postgres: PostgresServer
) -> None:
    """A restarting consumer-a reads, one flush each: history together with the live feed;
    history alone; history together with a live feed 90 s behind."""
    rng = random.Random(7)
    now = datetime.now(UTC)

    def history(hours_ago: int, symbols: Sequence[str], count: int) -> list[Event]:
        start = now - timedelta(hours=hours_ago)
        return [
            event
            for symbol in symbols
            for event in klines(rng, symbol, minutes(start, start + (count - 1) * MINUTE))
        ]

    def run(replayed: list[Event], live: Callable[[], list[Event]]) -> tuple[MetricRow, float]:
        started = wall_clock_ms()

        def publish() -> None:
            pipeline.replay(replayed)
            if events := live():
                pipeline.publish(events)

        flush = pipeline.run_held("consumer-a", publish)
        assert flush.replayed_events == len(replayed)
        return flush, (wall_clock_ms() - started) / 1000

    # 1. History loads while the live feed is current: the lag is that of the live events.
    flush, elapsed = run(history(3, ["BTCUSDT", "ETHUSDT"], 3), lambda: fresh(rng))
    assert flush.live_events == len(SYMBOLS)
    assert 0 <= flush.lags()[0] <= flush.lags()[1] <= elapsed < threshold(LAG_RULE)
    evaluation = evaluate_pipeline_rules(postgres, pipeline)
    assert evaluation[LAG_RULE].state == "Normal"
    assert evaluation[LAG_RULE].values == {instance("consumer-a"): flush.lag}
    assert evaluation[NO_DATA_RULE].state == "Normal"

    # 2. A flush of history only: nothing to measure, not an outage either.
    flush, _ = run(history(4, ["SOLUSDT"], 8), list)
    assert (flush.live_events, flush.lag, flush.max_lag) == (0, None, None)
    evaluation = evaluate_pipeline_rules(postgres, pipeline)
    assert evaluation[LAG_RULE].state == "Normal" and evaluation[LAG_RULE].rows == 0
    assert evaluation[NO_DATA_RULE].state == "Normal"
    assert_seconds_since_last_event(evaluation[NO_DATA_RULE], pipeline.data(), evaluation)

    # 3. History still loading, and the live feed falls behind: the lag alert fires, at the
    #    lag of the live events alone.
    flush, elapsed = run(history(2, ["BTCUSDT", "SOLUSDT"], 3), lambda: fresh(rng, LAG))
    assert (
        LAG.total_seconds() <= flush.lags()[0] <= flush.lags()[1] <= LAG.total_seconds() + elapsed
    )
    evaluation = evaluate_pipeline_rules(postgres, pipeline)
    assert evaluation[LAG_RULE].state == "Alerting"
    assert evaluation[LAG_RULE].firing == {instance("consumer-a"): flush.lag}
    assert evaluation[NO_DATA_RULE].state == "Normal"

    # Replayed events landed in their windows and count in throughput.
    pipeline.assert_stored_exactly_what_was_published()
    with reader_connection(postgres, pipeline.database) as conn:
        results = assert_panels_show(conn, pipeline.data(), all_symbols(conn))
    throughput = results["Throughput per 30 s flush"].rows
    live = sum(event.source == LIVE for event in pipeline.events)
    assert sum(value for _, value in throughput) == len(pipeline.events) > live


@pytest.mark.parametrize(
    ("silence", "state"),
    [(timedelta(minutes=4), "Alerting"), (timedelta(minutes=2, seconds=30), "Normal")],
    ids=["4min", "2.5min"],
)
def test_minutes_without_events_fire_no_data_after_3(
    pipeline: Pipeline, postgres: PostgresServer, silence: timedelta, state: str
) -> None:
    """Two minutes of the live feed, the newest event `silence` ago; the consumer keeps
    flushing empty intervals after it."""
    rng = random.Random(4)
    feed = live_feed(rng, datetime.now(UTC) - silence, timedelta(minutes=2))
    pipeline.run_until_idle("consumer-a", lambda: pipeline.publish(feed))
    data = pipeline.data()
    evaluation = evaluate_pipeline_rules(postgres, pipeline)
    no_data = evaluation[NO_DATA_RULE]
    assert no_data.state == state and no_data.rows == 1
    assert_seconds_since_last_event(no_data, data, evaluation)
    # Reading minutes-old events measured a lag far above the threshold, but the newest
    # flushes read nothing: NULL lag, which must not fire.
    assert max(row.lag for row in data.metrics if row.lag is not None) > threshold(LAG_RULE)
    assert evaluation[LAG_RULE].state == "Normal" and evaluation[LAG_RULE].rows == 0
