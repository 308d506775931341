"""The provisioned alert rules evaluated as Grafana does: each SQL query expanded and run as
grafana_reader, its table frame turned into one series per row, then the rule's reduce and
threshold expressions, then the state (with the rule's noDataState when nothing is left)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg2
import psycopg2.extensions

from tests.grafana.database import (
    NUMBER_OIDS,
    QueryResult,
    check_alert_frame,
    reader_connection,
    run_query,
)
from tests.grafana.pipeline_runs import MetricRow, Pipeline, PipelineData
from tests.grafana.sql import expand, iter_alert_queries, load_alert_rules
from tests.harness import PostgresServer
from tests.pipeline import query as superuser_query

Series = dict[frozenset[tuple[str, str]], float | None]


@dataclass(frozen=True)
class RuleOutcome:
    state: str  # Normal, Alerting, NoData, KeepLast
    values: Series  # the reduced value of each instance (the threshold's input)
    firing: dict[frozenset[tuple[str, str]], float]
    rows: int


def frame_to_series(result: QueryResult) -> Series:
    """Table data: each row one series, labelled by its string columns."""
    check_alert_frame(result)
    value_index = next(i for i, oid in enumerate(result.type_oids) if oid in NUMBER_OIDS)
    series: Series = {}
    for row in result.rows:
        labels = frozenset(
            (name, row[i]) for i, name in enumerate(result.columns) if i != value_index
        )
        series[labels] = row[value_index]
    return series


def reduce_series(series: Series, model: Mapping[str, Any]) -> Series:
    """On table data every series is one number, so any reducer returns it; dropNN drops nulls."""
    if model.get("settings", {}).get("mode") == "dropNN":
        return {k: v for k, v in series.items() if v is not None and not math.isnan(v)}
    return series


def threshold_met(value: float, model: Mapping[str, Any]) -> bool:
    (condition,) = model["conditions"]
    kind, params = condition["evaluator"]["type"], condition["evaluator"]["params"]
    checks = {
        "gt": lambda: value > params[0],
        "lt": lambda: value < params[0],
        "within_range": lambda: params[0] < value < params[1],
        "outside_range": lambda: value < params[0] or value > params[1],
    }
    return checks[kind]()


def evaluate_rule(
    rule: Mapping[str, Any], conn: psycopg2.extensions.connection, now: datetime
) -> RuleOutcome:
    sql_queries = {q.ref_id: q for q in iter_alert_queries() if q.rule_uid == rule["uid"]}
    results: dict[str, Series] = {}
    rows = 0
    for query in rule["data"]:
        model = query["model"]
        if query["refId"] in sql_queries:
            sql_query = sql_queries[query["refId"]]
            result = run_query(conn, expand(sql_query.raw_sql, sql_query.time_range(now)))
            rows += len(result.rows)
            results[query["refId"]] = frame_to_series(result)
        elif model["type"] == "reduce":
            results[query["refId"]] = reduce_series(results[model["expression"]], model)
        elif model["type"] == "threshold":
            source = results[model["expression"]]
            results[query["refId"]] = {
                k: float(threshold_met(v, model)) for k, v in source.items() if v is not None
            }
        else:
            raise NotImplementedError(model["type"])
    condition = results[rule["condition"]]
    value_ref = next(
        q["model"]["expression"] for q in rule["data"] if q["refId"] == rule["condition"]
    )
    if not condition:  # no rows, or only nulls
        state = {"OK": "Normal", "Alerting": "Alerting"}.get(
            rule["noDataState"], rule["noDataState"]
        )
        return RuleOutcome(state, results[value_ref], {}, rows)
    firing = {k: results[value_ref][k] or 0.0 for k, met in condition.items() if met}
    return RuleOutcome("Alerting" if firing else "Normal", results[value_ref], firing, rows)


@dataclass(frozen=True)
class Evaluation:
    outcomes: dict[str, RuleOutcome]
    started: datetime  # the queries' now() lies between these two
    ended: datetime

    def __getitem__(self, title: str) -> RuleOutcome:
        return self.outcomes[title]


def evaluate_rules(conn: psycopg2.extensions.connection) -> Evaluation:
    started = datetime.now(UTC)
    outcomes = {rule["title"]: evaluate_rule(rule, conn, started) for rule in load_alert_rules()}
    return Evaluation(outcomes, started, datetime.now(UTC))


def evaluate_pipeline_rules(postgres: PostgresServer, pipeline: Pipeline) -> Evaluation:
    with reader_connection(postgres, pipeline.database) as conn:
        return evaluate_rules(conn)


def threshold(title: str) -> float:
    """The threshold of a rule's condition, from alerts.yml."""
    (rule,) = [r for r in load_alert_rules() if r["title"] == title]
    (condition,) = [q["model"] for q in rule["data"] if q["refId"] == rule["condition"]]
    return condition["conditions"][0]["evaluator"]["params"][0]


LAG_RULE, NO_DATA_RULE = "High processing lag", "No data received"


def instance(name: str) -> frozenset[tuple[str, str]]:
    return frozenset({("instance_id", name)})


def latest_lags(data: PipelineData, evaluation: Evaluation) -> Series:
    """Per consumer instance, the lag of its newest flush in the lag rule's range, if measured:
    what the lag rule must see, computed from the rows the consumer wrote."""
    (lag_query,) = [q for q in iter_alert_queries() if q.rule_title == LAG_RULE]
    since = lag_query.time_range(evaluation.started).start
    newest: dict[str, MetricRow] = {}
    for row in data.metrics:  # in metric_timestamp order
        if row.timestamp >= since:
            newest[row.instance_id] = row
    return {instance(name): row.lag for name, row in newest.items() if row.lag is not None}


def assert_no_data_clock(outcome: RuleOutcome, since: datetime, ev: Evaluation) -> None:
    """The no-data rule's value: the seconds from `since` to the query's now()."""
    (value,) = outcome.values.values()
    low, high = ev.started - since, ev.ended - since
    assert value is not None, outcome
    assert low.total_seconds() - 0.001 <= value <= high.total_seconds() + 0.001


def assert_seconds_since_last_event(
    outcome: RuleOutcome, data: PipelineData, ev: Evaluation
) -> None:
    """Once events exist, the no-data clock runs from the newest published event time."""
    assert data.windows
    assert_no_data_clock(outcome, max(w.last_event_at for w in data.windows), ev)


def postmaster_start(dsn: str) -> datetime:
    ((started,),) = superuser_query(dsn, "SELECT pg_postmaster_start_time()")
    return started
