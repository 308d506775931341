"""Grafana provisioning: file structure, macro expansion, and every query against PostgreSQL.

No Grafana server runs here. Instead every panel and alert query is expanded exactly as Grafana
would (tests/grafana_sql.py) and run, as the read-only grafana_reader role, against a fresh
database built from infra/init_db.sql; the results are checked for the shape Grafana needs and
for values computed independently in Python from the rows that were loaded.
"""

from __future__ import annotations

import itertools
import math
import os
import random
import re
import subprocess
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
import pytest

from tests.grafana_sql import (
    ALERT_RULES_FILE,
    CONTACT_POINTS_FILE,
    DASHBOARD_DIR,
    DATASOURCE_FILE,
    EXPRESSION_DATASOURCE_UID,
    AlertQuery,
    MacroError,
    PanelTarget,
    TimeRange,
    Variable,
    dashboard_files,
    dashboard_variables,
    expand,
    format_interval,
    format_rfc3339,
    interpolate_variables,
    iter_alert_queries,
    iter_panel_targets,
    iter_panels,
    load_alert_rules,
    load_dashboards,
    load_yaml,
    strip_sql_comments,
)
from tests.harness import PostgresServer

ROOT = Path(__file__).resolve().parents[1]
INIT_SQL = ROOT / "infra" / "init_db.sql"
READER_SCRIPT = ROOT / "infra" / "10-reader-password.sh"
PROVIDER_FILE = DASHBOARD_DIR / "dashboard.yml"

READER_ROLE = "grafana_reader"
# Quotes, a dollar sign, a backslash and spaces: proves the password script's quoting.
READER_PASSWORD = "r3ad 'only' $HOME \\ \"pw\""

UID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
PANEL_TYPES = {"timeseries", "stat", "table"}
TARGET_FORMATS = {"time_series", "table"}
NO_DATA_STATES = {"NoData", "Alerting", "OK", "KeepLast"}
EXEC_ERR_STATES = {"Error", "Alerting", "OK", "KeepLast"}
EXPRESSION_TYPES = {"reduce", "threshold", "math"}
EVALUATOR_TYPES = {"gt", "lt", "within_range", "outside_range"}
RECEIVER_TYPES = {"email", "slack", "webhook", "pagerduty", "opsgenie", "teams", "telegram"}
# Macros that restrict a query to the dashboard's time range.
TIME_RANGE_MACROS = (
    "$__timeFilter(",
    "$__timeFrom()",
    "$__timeTo()",
    "$__timeGroup(",
    "$__timeGroupAlias(",
    "$__unixEpochFilter(",
    "$__unixEpochNanoFilter(",
    "$__unixEpochFrom()",
    "$__unixEpochTo()",
    "$__unixEpochGroup(",
    "$__unixEpochGroupAlias(",
)
DASHBOARDS = {"Bitcoin Price": "now-6h", "Pipeline Performance KPIs": "now-1h"}
RULES = {"High processing lag": "warning", "No data received": "critical"}

# PostgreSQL type OIDs as psycopg2 reports them in cursor.description.
TIMESTAMP_OIDS = {1114, 1184}
NUMERIC_OID = 1700
FLOAT8_OID = 701
NUMBER_OIDS = {20, 21, 23, 700, FLOAT8_OID}
STRING_OIDS = {19, 25, 1043}

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# =============================================================================================
# Structure of the provisioning files
# =============================================================================================


def datasource_definitions() -> list[dict[str, Any]]:
    return load_yaml(DATASOURCE_FILE)["datasources"]


def datasource_uids() -> set[str]:
    return {source["uid"] for source in datasource_definitions()}


def iter_datasource_refs(node: Any) -> Iterator[Mapping[str, Any]]:
    """Every `datasource: {type, uid}` object anywhere in a dashboard or rule."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key == "datasource" and isinstance(value, Mapping):
                yield value
            yield from iter_datasource_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from iter_datasource_refs(item)


def test_datasource_is_the_read_only_postgres_role_with_a_fixed_uid() -> None:
    document = load_yaml(DATASOURCE_FILE)
    assert document["apiVersion"] == 1
    (source,) = document["datasources"]
    assert UID_PATTERN.match(source["uid"])
    assert source["type"] == "grafana-postgresql-datasource"
    assert source["url"] == "postgres:5432"
    assert source["user"] == READER_ROLE
    assert source["isDefault"] is True
    # Grafana 12 ignores top-level database/password: they must live under jsonData/secure.
    assert "database" not in source and "password" not in source
    assert source["jsonData"]["database"] == "${POSTGRES_DB}"
    assert source["jsonData"]["sslmode"] in {"disable", "require", "verify-ca", "verify-full"}
    assert source["jsonData"]["postgresVersion"] >= 1000
    assert source["secureJsonData"]["password"] == "${GRAFANA_DB_PASSWORD}"


def test_every_referenced_datasource_exists() -> None:
    known = {source["uid"]: source["type"] for source in datasource_definitions()}
    refs = [ref for dashboard in load_dashboards() for ref in iter_datasource_refs(dashboard)]
    assert refs, "dashboards reference no datasource at all"
    for ref in refs:
        assert ref["uid"] in known, f"unknown datasource uid {ref['uid']!r}"
        assert ref["type"] == known[ref["uid"]]
    for rule in load_alert_rules():
        for query in rule["data"]:
            uid = query["datasourceUid"]
            if uid == EXPRESSION_DATASOURCE_UID:
                assert query["model"]["datasource"]["uid"] == EXPRESSION_DATASOURCE_UID
                continue
            assert uid in known, f"rule {rule['uid']} uses unknown datasource {uid!r}"
            assert query["model"]["datasource"] == {"type": known[uid], "uid": uid}


def test_dashboards_reference_the_datasource_literally() -> None:
    for path in dashboard_files():
        text = path.read_text()
        assert "${DS_" not in text and "__inputs" not in text, path.name


def test_dashboard_provider_loads_the_dashboard_folder() -> None:
    document = load_yaml(PROVIDER_FILE)
    assert document["apiVersion"] == 1
    (provider,) = document["providers"]
    assert provider["type"] == "file"
    assert provider["orgId"] == 1
    assert provider["options"]["path"] == "/etc/grafana/provisioning/dashboards"
    assert dashboard_files(), "no dashboard JSON next to the provider"


def test_dashboards_have_the_required_fields() -> None:
    dashboards = load_dashboards()
    assert {board["title"]: board["time"]["from"] for board in dashboards} == DASHBOARDS
    uids = [board["uid"] for board in dashboards]
    assert len(set(uids)) == len(uids), "dashboard uids must be unique"
    for board in dashboards:
        assert UID_PATTERN.match(board["uid"]), board["uid"]
        assert board["refresh"] == "5s"
        assert board["schemaVersion"] >= 39
        assert board["time"]["to"] == "now"
        assert "__inputs" not in board


def test_panels_are_well_formed_and_do_not_overlap() -> None:
    for board in load_dashboards():
        panels = list(iter_panels(board["panels"]))
        ids = [panel["id"] for panel in panels]
        assert len(set(ids)) == len(ids), f"{board['uid']}: duplicate panel ids"
        occupied: dict[tuple[int, int], str] = {}
        for panel in panels:
            assert panel["type"] in PANEL_TYPES, panel["type"]
            assert panel["title"] and panel["targets"], panel
            grid = panel["gridPos"]
            assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24
            for x in range(grid["x"], grid["x"] + grid["w"]):
                for y in range(grid["y"], grid["y"] + grid["h"]):
                    assert (x, y) not in occupied, f"{panel['title']} overlaps {occupied[x, y]}"
                    occupied[x, y] = panel["title"]


@pytest.mark.parametrize("target", list(iter_panel_targets()), ids=lambda t: t.name)
def test_panel_target_is_raw_sql_over_the_time_range(target: PanelTarget) -> None:
    assert target.format in TARGET_FORMATS
    assert target.target["rawQuery"] is True
    assert target.target["editorMode"] == "code"
    expected_format = "time_series" if target.panel_type == "timeseries" else "table"
    assert target.format == expected_format
    executable = strip_sql_comments(target.raw_sql)  # a macro in a comment does not count
    assert any(macro in executable for macro in TIME_RANGE_MACROS), target.raw_sql
    ref_ids = [item["refId"] for item in target.panel["targets"]]
    assert len(set(ref_ids)) == len(ref_ids)


def test_price_dashboard_filters_every_panel_by_the_symbol_variable() -> None:
    (board,) = [b for b in load_dashboards() if b["title"] == "Bitcoin Price"]
    (variable,) = board["templating"]["list"]
    assert variable["name"] == "symbol" and variable["type"] == "query"
    assert variable["query"] == "SELECT DISTINCT symbol FROM five_min_bitcoin_event ORDER BY 1"
    for target in iter_panel_targets():
        if target.dashboard_uid == board["uid"]:
            assert "$symbol" in strip_sql_comments(target.raw_sql), target.name


def rule_groups() -> list[dict[str, Any]]:
    return load_yaml(ALERT_RULES_FILE)["groups"]


def test_alert_rules_are_well_formed() -> None:
    assert load_yaml(ALERT_RULES_FILE)["apiVersion"] == 1
    for group in rule_groups():
        assert group["orgId"] == 1 and group["name"] and group["folder"]
        assert parse_duration(group["interval"]) >= timedelta(seconds=10)
    rules = load_alert_rules()
    assert {rule["title"]: rule["labels"]["severity"] for rule in rules} == RULES
    uids = [rule["uid"] for rule in rules]
    assert len(set(uids)) == len(uids), "rule uids must be unique"
    for rule in rules:
        assert UID_PATTERN.match(rule["uid"]), rule["uid"]
        ref_ids = [query["refId"] for query in rule["data"]]
        assert len(set(ref_ids)) == len(ref_ids)
        assert rule["condition"] in ref_ids
        assert rule["noDataState"] in NO_DATA_STATES
        assert rule["execErrState"] in EXEC_ERR_STATES
        parse_duration(rule["for"])
        for query in rule["data"]:
            assert query["model"]["refId"] == query["refId"]
            if query["datasourceUid"] == EXPRESSION_DATASOURCE_UID:
                check_expression(query["model"], ref_ids)


def check_expression(model: Mapping[str, Any], ref_ids: Sequence[str]) -> None:
    assert model["type"] in EXPRESSION_TYPES
    if model["type"] == "math":
        return
    assert model["expression"] in ref_ids and model["expression"] != model["refId"]
    if model["type"] == "reduce":
        assert model["reducer"] in {"last", "mean", "max", "min", "sum", "count"}
    else:
        for condition in model["conditions"]:
            assert condition["evaluator"]["type"] in EVALUATOR_TYPES
            assert all(isinstance(p, int | float) for p in condition["evaluator"]["params"])


@pytest.mark.parametrize("query", list(iter_alert_queries()), ids=lambda q: q.name)
def test_alert_query_has_a_time_range_and_table_format(query: AlertQuery) -> None:
    assert query.relative_from > query.relative_to >= 0, "a zero range fails in Grafana"
    assert query.format == "table"
    assert "$symbol" not in query.raw_sql, "alert rules have no dashboard variables"


def test_contact_points_and_policies_fit_together() -> None:
    document = load_yaml(CONTACT_POINTS_FILE)
    assert document["apiVersion"] == 1
    names = {point["name"] for point in document["contactPoints"]}
    receivers = [r for point in document["contactPoints"] for r in point["receivers"]]
    uids = [receiver["uid"] for receiver in receivers]
    assert len(set(uids)) == len(uids)
    for receiver in receivers:
        assert UID_PATTERN.match(receiver["uid"])
        assert receiver["type"] in RECEIVER_TYPES
        if receiver["type"] == "email":
            assert receiver["settings"]["addresses"]
    assert document["policies"]
    for policy in document["policies"]:
        for route in iter_routes(policy):
            assert route.get("receiver", policy["receiver"]) in names, route


def iter_routes(route: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield route
    for child in route.get("routes", []):
        yield from iter_routes(child)


def parse_duration(text: str) -> timedelta:
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    assert parts and text, f"bad duration {text!r}"
    hours, minutes, seconds = (int(part or 0) for part in parts.groups())
    return timedelta(hours=hours, minutes=minutes, seconds=seconds)


# =============================================================================================
# Macro expansion (the examples of shared/grafana-provisioning.md)
# =============================================================================================

DOC_RANGE = TimeRange(
    datetime(2018, 4, 12, 18, 0, tzinfo=UTC), datetime(2018, 4, 12, 18, 5, tzinfo=UTC)
)


@pytest.mark.parametrize(
    ("macro", "expansion"),
    [
        ("$__time(c)", 'c AS "time"'),
        ("$__timeEpoch(c)", 'extract(epoch from c) as "time"'),
        ("$__timeFilter(c)", "c BETWEEN '2018-04-12T18:00:00Z' AND '2018-04-12T18:05:00Z'"),
        ("$__timeFrom()", "'2018-04-12T18:00:00Z'"),
        ("$__timeTo()", "'2018-04-12T18:05:00Z'"),
        ("$__timeGroup(c,'5m')", "floor(extract(epoch from c)/300)*300"),
        ("$__timeGroupAlias(c,'5m')", 'floor(extract(epoch from c)/300)*300 AS "time"'),
        ("$__unixEpochFilter(c)", "c >= 1523556000 AND c <= 1523556300"),
        ("$__unixEpochFrom()", "1523556000"),
        ("$__unixEpochTo()", "1523556300"),
    ],
)
def test_macro_expands_like_the_documentation(macro: str, expansion: str) -> None:
    assert expand(f"SELECT {macro} FROM t", DOC_RANGE) == f"SELECT {expansion} FROM t"


def test_macro_arguments_are_split_on_commas_and_trimmed() -> None:
    assert expand("$__timeGroup( c , '30s' )", DOC_RANGE) == "floor(extract(epoch from c)/30)*30"
    assert expand("$__timeGroup(c, '500ms')", DOC_RANGE) == "floor(extract(epoch from c)/0.5)*0.5"
    assert expand("$__timeGroup(c, '1m30s')", DOC_RANGE) == "floor(extract(epoch from c)/90)*90"
    assert expand("$__timeGroup(c, '1h', NULL)", DOC_RANGE) == (
        "floor(extract(epoch from c)/3600)*3600"
    )


def test_time_group_followed_by_a_comma_gets_the_time_alias() -> None:
    assert expand("SELECT $__timeGroup(c,'5m'), v", DOC_RANGE) == (
        'SELECT floor(extract(epoch from c)/300)*300 AS "time", v'
    )
    assert expand("ORDER BY $__timeGroup(c,'5m')", DOC_RANGE) == (
        "ORDER BY floor(extract(epoch from c)/300)*300"
    )


def test_time_group_alias_rule_looks_at_the_first_occurrence_only() -> None:
    # Grafana checks the character after the first occurrence of the same macro text, so a
    # repeated `$__timeGroup(...)` in GROUP BY also gets the alias (and the query then fails).
    sql = "SELECT $__timeGroup(c,'5m'), v FROM t GROUP BY $__timeGroup(c,'5m')"
    assert expand(sql, DOC_RANGE).endswith(
        'GROUP BY floor(extract(epoch from c)/300)*300 AS "time"'
    )


def test_macro_arguments_cannot_contain_parentheses() -> None:
    # The pattern stops at the first `)`: the argument is `date_trunc('hour', c` and the
    # remaining `)` is left over, as in Grafana.
    assert expand("$__time(date_trunc('hour', c))", DOC_RANGE) == ("date_trunc('hour' AS \"time\")")
    assert expand("$__timeFrom", DOC_RANGE) == "$__timeFrom", "without () it is no macro"


def test_unknown_macro_is_an_error() -> None:
    with pytest.raises(MacroError, match="unknown macro"):
        expand("SELECT $__nope(c)", DOC_RANGE)


def test_comments_are_stripped_before_macros() -> None:
    sql = "SELECT 1 -- $__nope(c)\n/* $__timeFilter(c) */FROM t WHERE $__timeFilter(c)"
    assert expand(sql, DOC_RANGE) == (
        "SELECT 1 \nFROM t WHERE c BETWEEN '2018-04-12T18:00:00Z' AND '2018-04-12T18:05:00Z'"
    )


def test_comment_markers_inside_quotes_are_kept() -> None:
    sql = """SELECT '-- no', 'it''s /* no */', "a--b", $$--x$$, $tag$/*y*/$tag$, $1 -- gone"""
    assert strip_sql_comments(sql) == (
        """SELECT '-- no', 'it''s /* no */', "a--b", $$--x$$, $tag$/*y*/$tag$, $1 """
    )


def test_times_are_rfc3339_utc_with_trailing_fraction_zeros_trimmed() -> None:
    moment = datetime(2018, 4, 12, 18, 0, 0, 500000, tzinfo=UTC)
    assert format_rfc3339(moment) == "2018-04-12T18:00:00.5Z"
    assert format_rfc3339(moment.replace(microsecond=120)) == "2018-04-12T18:00:00.00012Z"
    east = datetime(2018, 4, 12, 22, 0, tzinfo=timezone(timedelta(hours=2)))
    assert format_rfc3339(east) == "2018-04-12T20:00:00Z"
    short = TimeRange(moment, moment + timedelta(seconds=1))
    assert expand("$__timeFrom()", short) == "'2018-04-12T18:00:00.5Z'"


def test_interval_is_substituted_as_text() -> None:
    sql = "SELECT $__interval_ms, '$__interval'"
    assert expand(sql, DOC_RANGE, interval=timedelta(seconds=30)) == "SELECT 30000, '30s'"
    assert format_interval(timedelta(seconds=90)) == "1m"
    assert format_interval(timedelta(milliseconds=1500)) == "1s"
    assert format_interval(timedelta(hours=49)) == "2d"
    assert format_interval(timedelta(0)) == "1ms"


def test_template_variables_are_substituted_before_macros() -> None:
    multi = {"symbol": Variable(("BTCUSDT", "O'X"), multi=True)}
    sql = "WHERE symbol IN ($symbol) OR s = ${symbol} OR [[symbol]] AND $__timeFrom() > $symbols"
    assert expand(sql, DOC_RANGE, multi) == (
        "WHERE symbol IN ('BTCUSDT','O''X') OR s = 'BTCUSDT','O''X' OR 'BTCUSDT','O''X'"
        " AND '2018-04-12T18:00:00Z' > $symbols"
    )
    assert interpolate_variables("'$s'", {"s": Variable("O'X")}) == "'O''X'"
    assert interpolate_variables("$s", {"s": Variable("BTC", multi=True)}) == "'BTC'"
    assert interpolate_variables("ARRAY[$s]", {"s": Variable(())}) == "ARRAY[]"


# =============================================================================================
# Data: realistic pipeline output
# =============================================================================================

SYMBOLS = {
    "BTCUSDT": Decimal("67250.00"),
    "ETHUSDT": Decimal("3480.00"),
    "SOLUSDT": Decimal("152.40"),
}
INSTANCES = {"consumer-a": timedelta(0), "consumer-b": timedelta(seconds=11)}
WINDOW = timedelta(minutes=5)
POLL = timedelta(seconds=10)
FLUSH = timedelta(seconds=30)
PRICE_HISTORY = timedelta(hours=8)
METRIC_HISTORY = timedelta(hours=2)


@dataclass(frozen=True)
class Window:
    symbol: str
    start: datetime
    prices: tuple[Decimal, ...]
    event_times: tuple[datetime, ...]

    @property
    def count(self) -> int:
        return len(self.prices)

    @property
    def price_sum(self) -> Decimal:
        return sum(self.prices, Decimal(0))

    @property
    def low(self) -> Decimal:
        return min(self.prices)

    @property
    def high(self) -> Decimal:
        return max(self.prices)

    @property
    def last_event_at(self) -> datetime:
        return self.event_times[-1]


@dataclass(frozen=True)
class MetricRow:
    timestamp: datetime
    instance_id: str
    events_processed: int
    live_events: int
    lag: float | None
    max_lag: float | None
    data_size_kb: Decimal
    consumer_offset_lag: int | None
    late_events: int
    invalid_events: int

    @property
    def events_per_second(self) -> float:
        return self.events_processed / FLUSH.total_seconds()


@dataclass(frozen=True)
class Scenario:
    silence: timedelta = timedelta(seconds=20)  # age of the newest event
    recent_lag_seconds: float | None = None  # lag of every live flush in the last 5 minutes
    latest_flush_replay_only: bool = False  # each instance's newest flush: replayed events only


@dataclass
class PipelineData:
    windows: list[Window] = field(default_factory=list)
    metrics: list[MetricRow] = field(default_factory=list)


def floor_time(moment: datetime, step: timedelta) -> datetime:
    return EPOCH + (moment - EPOCH) // step * step


def load_pipeline_data(dsn: str, now: datetime, scenario: Scenario | None = None) -> PipelineData:
    """Fill the pipeline's tables as a few hours of the running pipeline would have.

    Three symbols (one with a 30-minute gap, one starting later), an event every 10 s, and two
    consumer instances flushing metrics every 30 s (one replaying history for a while).
    Returns what was written, for the expected values.
    """
    # TODO(lead): replace with a real producer->Kafka->consumer run
    scenario = scenario or Scenario()
    rng = random.Random(20240412)
    last_event = now - scenario.silence
    data = PipelineData(price_windows(rng, last_event), metric_rows(rng, now, last_event, scenario))
    with closing(psycopg2.connect(dsn)) as conn, conn, conn.cursor() as cur:
        insert_rows(cur, "five_min_bitcoin_event", [window_values(w) for w in data.windows])
        insert_rows(cur, "pipeline_metrics", [metric_values(m, rng) for m in data.metrics])
    return data


def insert_rows(cur: Any, table: str, rows: list[dict[str, Any]]) -> None:
    if rows:
        columns = ", ".join(rows[0])
        values = [tuple(row.values()) for row in rows]
        psycopg2.extras.execute_values(cur, f"INSERT INTO {table} ({columns}) VALUES %s", values)


def window_values(window: Window) -> dict[str, Any]:
    return {
        "symbol": window.symbol,
        "five_min_start": window.start,
        "five_min_end": window.start + WINDOW,
        "event_count": window.count,
        "price_sum": window.price_sum,
        "min_value": window.low,
        "max_value": window.high,
        "open_value": window.prices[0],
        "close_value": window.prices[-1],
        "first_event_at": window.event_times[0],
        "last_event_at": window.last_event_at,
    }


def metric_values(row: MetricRow, rng: random.Random) -> dict[str, Any]:
    return {
        "metric_timestamp": row.timestamp,
        "instance_id": row.instance_id,
        "interval_seconds": FLUSH.total_seconds(),
        "events_processed": row.events_processed,
        "live_events": row.live_events,
        "replayed_events": row.events_processed - row.live_events,
        "events_per_second": row.events_per_second,
        "processing_lag_seconds": row.lag,
        "max_processing_lag_seconds": row.max_lag,
        "data_size_kb": row.data_size_kb,
        "consumer_offset_lag": row.consumer_offset_lag,
        "late_events": row.late_events,
        "invalid_events": row.invalid_events,
        "windows_updated": min(row.events_processed, 3),
        "flush_duration_ms": rng.uniform(4.0, 40.0),
    }


def price_windows(rng: random.Random, last_event: datetime) -> list[Window]:
    gap = (last_event - timedelta(hours=3), last_event - timedelta(hours=2, minutes=30))
    windows: list[Window] = []
    for index, (symbol, start_price) in enumerate(SYMBOLS.items()):
        price = start_price
        history = PRICE_HISTORY if symbol != "ETHUSDT" else timedelta(hours=5)
        newest = last_event - timedelta(seconds=3 * index)  # BTCUSDT holds the newest event
        times = [newest - k * POLL for k in range(int(history / POLL))][::-1]
        if symbol == "SOLUSDT":
            times = [t for t in times if not gap[0] <= t < gap[1]]
        by_window: dict[datetime, list[tuple[datetime, Decimal]]] = defaultdict(list)
        for moment in times:
            price = (price * Decimal(1 + rng.gauss(0, 0.0006))).quantize(Decimal("0.01"))
            by_window[floor_time(moment, WINDOW)].append((moment, price))
        for start, events in sorted(by_window.items()):
            windows.append(
                Window(symbol, start, tuple(p for _, p in events), tuple(t for t, _ in events))
            )
    return windows


def metric_rows(
    rng: random.Random, now: datetime, last_event: datetime, scenario: Scenario
) -> list[MetricRow]:
    replay = (now - timedelta(minutes=40), now - timedelta(minutes=30))  # on the 1 h dashboard
    rows: list[MetricRow] = []
    for instance, phase in INSTANCES.items():
        stamps = [now - phase - k * FLUSH for k in range(int(METRIC_HISTORY / FLUSH))][::-1]
        for number, stamp in enumerate(stamps):
            has_events = stamp - FLUSH < last_event
            events = rng.randint(12, 20) if has_events else 0
            replay_only = (instance == "consumer-a" and replay[0] <= stamp <= replay[1]) or (
                scenario.latest_flush_replay_only and stamp == stamps[-1]
            )
            live = 0 if replay_only else events
            lag = round(rng.uniform(0.4, 3.0), 3) if live else None
            if live and scenario.recent_lag_seconds is not None and stamp > now - WINDOW:
                lag = scenario.recent_lag_seconds
            rows.append(
                MetricRow(
                    timestamp=stamp,
                    instance_id=instance,
                    events_processed=events,
                    live_events=live,
                    lag=lag,
                    max_lag=None if lag is None else round(lag + rng.uniform(0.0, 4.0), 3),
                    data_size_kb=(Decimal("0.231") * events).quantize(Decimal("0.001")),
                    consumer_offset_lag=None if number % 40 == 0 else rng.randint(0, 6),
                    late_events=int(rng.random() < 0.05),
                    invalid_events=int(rng.random() < 0.03),
                )
            )
    return rows


# =============================================================================================
# Running queries as grafana_reader
# =============================================================================================


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    type_oids: list[int]
    rows: list[tuple[Any, ...]]


@pytest.fixture
def schema_dsn(postgres: PostgresServer, database: str) -> str:
    dsn = postgres.dsn(database)
    with closing(psycopg2.connect(dsn)) as conn, conn, conn.cursor() as cur:
        cur.execute(INIT_SQL.read_text())
    return dsn


def set_reader_password(postgres: PostgresServer, database: str, password: str | None) -> None:
    """Run infra/10-reader-password.sh as the postgres image's entrypoint would."""
    env = {
        "PATH": f"{postgres.bindir}:{os.environ['PATH']}",
        "PGHOST": postgres.host,
        "PGPORT": str(postgres.port),
        "PGPASSWORD": "postgres",
        "POSTGRES_USER": "postgres",
        "POSTGRES_DB": database,
    }
    if password is not None:
        env["GRAFANA_DB_PASSWORD"] = password
    subprocess.run(
        ["bash", str(READER_SCRIPT)], env=env, check=True, capture_output=True, text=True
    )


@pytest.fixture
def reader(
    postgres: PostgresServer, database: str, schema_dsn: str
) -> Iterator[psycopg2.extensions.connection]:
    """A connection as grafana_reader, with the password set by the deployment's script."""
    set_reader_password(postgres, database, READER_PASSWORD)
    conn = psycopg2.connect(
        host=postgres.host,
        port=postgres.port,
        dbname=database,
        user=READER_ROLE,
        password=READER_PASSWORD,
        connect_timeout=5,
    )
    conn.autocommit = True  # like Grafana: one statement, no surrounding transaction
    with closing(conn):
        yield conn


def run_query(conn: psycopg2.extensions.connection, sql: str) -> QueryResult:
    with conn.cursor() as cur:
        cur.execute(sql)
        description = cur.description
        rows = cur.fetchall()
    return QueryResult([c.name for c in description], [c.type_code for c in description], rows)


@contextmanager
def refused() -> Iterator[None]:
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        yield


def test_reader_password_script_requires_a_password(
    postgres: PostgresServer, database: str, schema_dsn: str
) -> None:
    with pytest.raises(subprocess.CalledProcessError) as failure:
        set_reader_password(postgres, database, None)
    assert "GRAFANA_DB_PASSWORD must be set" in failure.value.stderr


def test_reader_can_select_but_not_write(reader: psycopg2.extensions.connection) -> None:
    assert run_query(reader, "SELECT count(*) FROM rolling_avg_30min").rows == [(0,)]
    with refused():
        run_query(reader, "INSERT INTO pipeline_metrics (metric_timestamp) VALUES (now())")
    with refused():
        run_query(reader, "UPDATE five_min_bitcoin_event SET event_count = 1")
    with refused():
        run_query(reader, "DELETE FROM pipeline_metrics")
    with refused():
        run_query(reader, "SELECT * FROM consumer_offsets")
    with refused():
        run_query(reader, "SELECT * FROM dead_letter_events")
    with refused():
        run_query(reader, "CREATE TABLE grafana_scratch (x int)")


def check_time_series(result: QueryResult) -> None:
    """What Grafana's time_series format needs: `time`, ascending, numbers (and label strings)."""
    assert "time" in result.columns, result.columns
    time_index = result.columns.index("time")
    times = [row[time_index] for row in result.rows]
    assert times == sorted(times), "time_series rows must be sorted by time"
    for name, oid in zip(result.columns, result.type_oids, strict=True):
        if name == "time":
            assert oid in TIMESTAMP_OIDS | NUMBER_OIDS | {NUMERIC_OID}
        else:
            assert oid in NUMBER_OIDS | STRING_OIDS, f"{name}: type {oid} (cast to float8)"


def check_table(result: QueryResult) -> None:
    for name, oid in zip(result.columns, result.type_oids, strict=True):
        assert oid != NUMERIC_OID, f"{name} is NUMERIC: cast it to float8"


def check_alert_frame(result: QueryResult) -> None:
    """One numeric column, otherwise strings: each row becomes one alert instance."""
    kinds = ["number" if oid in NUMBER_OIDS else oid for oid in result.type_oids]
    assert kinds.count("number") == 1, f"need exactly one numeric column: {result.columns}"
    assert result.type_oids[kinds.index("number")] == FLOAT8_OID
    assert all(oid in STRING_OIDS for oid in result.type_oids if oid not in NUMBER_OIDS)


# =============================================================================================
# Expected panel values, computed from the loaded rows
# =============================================================================================

Row = tuple[Any, ...]
Expectation = Callable[[PipelineData, TimeRange, tuple[str, ...]], list[Row]]


def windows_in(data: PipelineData, span: TimeRange, symbols: Sequence[str]) -> list[Window]:
    selected = [
        w for w in data.windows if span.start <= w.start <= span.end and w.symbol in symbols
    ]
    return sorted(selected, key=lambda w: (w.start, w.symbol))


def rolling_average(data: PipelineData, window: Window) -> Decimal:
    """Event-weighted mean of the windows of the 30 minutes ending at `window`'s end."""
    members = [
        other
        for other in data.windows
        if other.symbol == window.symbol
        and window.start - timedelta(minutes=25) <= other.start <= window.start
    ]
    assert 1 <= len(members) <= 6
    return sum((m.price_sum for m in members), Decimal(0)) / sum(m.count for m in members)


def metrics_in(data: PipelineData, span: TimeRange) -> list[MetricRow]:
    return [m for m in data.metrics if span.start <= m.timestamp <= span.end]


def by_bucket(rows: Sequence[MetricRow]) -> dict[int, list[MetricRow]]:
    buckets: dict[int, list[MetricRow]] = defaultdict(list)
    for row in rows:
        buckets[(row.timestamp - EPOCH) // FLUSH * int(FLUSH.total_seconds())].append(row)
    return dict(sorted(buckets.items()))


def weighted_lag(rows: Sequence[MetricRow]) -> float | None:
    measured = [r for r in rows if r.lag is not None]
    live = sum(r.live_events for r in measured)
    return sum((r.lag or 0.0) * r.live_events for r in measured) / live if live else None


def max_or_none(values: Sequence[float | int | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(max(present)) if present else None


def current_rate(data: PipelineData, span: TimeRange) -> float:
    latest: dict[str, MetricRow] = {}
    for row in sorted(metrics_in(data, span), key=lambda r: r.timestamp):
        latest[row.instance_id] = row
    fresh = [r for r in latest.values() if r.timestamp > span.end - timedelta(seconds=90)]
    return float(sum(r.events_per_second for r in fresh))


def seconds_since_last_event(data: PipelineData, span: TimeRange) -> float:
    times = [w.last_event_at for w in data.windows if w.last_event_at <= span.end]
    return (span.end - max(times)).total_seconds() if times else 1e9


def latest_ranges(data: PipelineData, span: TimeRange, symbols: Sequence[str]) -> list[Row]:
    latest: dict[str, Window] = {}
    for window in windows_in(data, span, symbols):
        latest[window.symbol] = window
    return [
        (w.symbol, w.start, float(w.low), float(w.high), float(w.high - w.low))
        for _, w in sorted(latest.items())
    ]


PRICE = "btc-price"
KPI = "btc-pipeline-kpis"
EXPECTED: dict[tuple[str, str], Expectation] = {
    (PRICE, "Total events processed"): lambda d, s, sym: [
        (float(sum(w.count for w in windows_in(d, s, sym))),)
    ],
    (PRICE, "Latest 5-minute range"): latest_ranges,
    (PRICE, "5-minute average price"): lambda d, s, sym: [
        (w.start, w.symbol, float(w.price_sum / w.count)) for w in windows_in(d, s, sym)
    ],
    (PRICE, "30-minute rolling average"): lambda d, s, sym: [
        (w.start, w.symbol, float(rolling_average(d, w))) for w in windows_in(d, s, sym)
    ],
    (PRICE, "High / low range (5-minute)"): lambda d, s, sym: [
        (w.start, w.symbol, float(w.low), float(w.high)) for w in windows_in(d, s, sym)
    ],
    (PRICE, "Open / close (5-minute)"): lambda d, s, sym: [
        (w.start, w.symbol, float(w.prices[0]), float(w.prices[-1])) for w in windows_in(d, s, sym)
    ],
    (KPI, "Current processing rate"): lambda d, s, _: [(current_rate(d, s),)],
    (KPI, "Seconds since last event"): lambda d, s, _: [(seconds_since_last_event(d, s),)],
    (KPI, "Throughput per 30 s flush"): lambda d, s, _: [
        (t, float(sum(r.events_processed for r in rows)))
        for t, rows in by_bucket(metrics_in(d, s)).items()
    ],
    (KPI, "Processing lag"): lambda d, s, _: [
        (t, weighted_lag(rows), max_or_none([r.max_lag for r in rows]))
        for t, rows in by_bucket(metrics_in(d, s)).items()
    ],
    (KPI, "Data volume"): lambda d, s, _: [
        (t, float(sum(r.data_size_kb for r in rows)))
        for t, rows in by_bucket(metrics_in(d, s)).items()
    ],
    (KPI, "Consumer offset lag"): lambda d, s, _: [
        (
            t,
            instance,
            max_or_none([r.consumer_offset_lag for r in rows if r.instance_id == instance]),
        )
        for t, rows in by_bucket(metrics_in(d, s)).items()
        for instance in sorted({r.instance_id for r in rows})
    ],
    (KPI, "Late and invalid events"): lambda d, s, _: [
        (t, float(sum(r.late_events for r in rows)), float(sum(r.invalid_events for r in rows)))
        for t, rows in by_bucket(metrics_in(d, s)).items()
    ],
}


def normalise(value: Any) -> Any:
    """Numeric epoch times from $__timeGroup come back as Decimal; compare them as integers."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def assert_rows_match(actual: Sequence[Row], expected: Sequence[Row], what: str) -> None:
    assert len(actual) == len(expected), f"{what}: {len(actual)} rows, expected {len(expected)}"
    for number, (got, want) in enumerate(zip(actual, expected, strict=True)):
        got = tuple(normalise(v) for v in got)
        assert len(got) == len(want), f"{what} row {number}: {got} vs {want}"
        for a, b in zip(got, want, strict=True):
            if isinstance(b, float) and a is not None:
                assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6), f"{what} row {number}"
            else:
                assert a == b, f"{what} row {number}: {got} != {want}"


def test_every_panel_has_an_expected_value() -> None:
    panels = {(t.dashboard_uid, t.panel_title) for t in iter_panel_targets()}
    assert panels == set(EXPECTED)


def dashboard_range(target: PanelTarget, now: datetime) -> TimeRange:
    (board,) = [b for b in load_dashboards() if b["uid"] == target.dashboard_uid]
    hours = {"now-6h": 6, "now-1h": 1}[board["time"]["from"]]
    return TimeRange.last(timedelta(hours=hours), now)


def run_panel(
    conn: psycopg2.extensions.connection,
    target: PanelTarget,
    span: TimeRange,
    symbols: Sequence[str],
) -> QueryResult:
    (board,) = [b for b in load_dashboards() if b["uid"] == target.dashboard_uid]
    variables = dashboard_variables(board, {"symbol": list(symbols)})
    result = run_query(conn, expand(target.raw_sql, span, variables, interval=FLUSH))
    (check_time_series if target.format == "time_series" else check_table)(result)
    return result


def all_symbols(conn: psycopg2.extensions.connection) -> tuple[str, ...]:
    """The `symbol` variable's options, from its own query: what "All" expands to."""
    (board,) = [b for b in load_dashboards() if b["uid"] == PRICE]
    (variable,) = board["templating"]["list"]
    return tuple(row[0] for row in run_query(conn, variable["query"]).rows)


def test_every_panel_query_returns_the_expected_values(
    reader: psycopg2.extensions.connection, schema_dsn: str
) -> None:
    now = datetime.now(UTC)
    data = load_pipeline_data(schema_dsn, now)
    symbols = all_symbols(reader)
    assert symbols == tuple(sorted(SYMBOLS))
    for target in iter_panel_targets():
        span = dashboard_range(target, now)
        result = run_panel(reader, target, span, symbols)
        expected = EXPECTED[target.dashboard_uid, target.panel_title](data, span, symbols)
        assert expected, f"{target.name}: the loaded data should show in this panel"
        assert_rows_match(result.rows, expected, target.name)


def test_symbol_selection_filters_the_price_panels(
    reader: psycopg2.extensions.connection, schema_dsn: str
) -> None:
    now = datetime.now(UTC)
    data = load_pipeline_data(schema_dsn, now)
    for target in iter_panel_targets():
        if target.dashboard_uid != PRICE:
            continue
        span = dashboard_range(target, now)
        result = run_panel(reader, target, span, ["ETHUSDT"])
        expected = EXPECTED[PRICE, target.panel_title](data, span, ("ETHUSDT",))
        assert_rows_match(result.rows, expected, target.name)
        assert "BTCUSDT" not in str(result.rows)


def test_panels_work_on_an_empty_database(reader: psycopg2.extensions.connection) -> None:
    now = datetime.now(UTC)
    symbols = all_symbols(reader)
    assert symbols == ()  # "All" of no options: Grafana expands it to nothing
    empty = PipelineData()
    for target in iter_panel_targets():
        span = dashboard_range(target, now)
        result = run_panel(reader, target, span, symbols)
        expected = EXPECTED[target.dashboard_uid, target.panel_title](empty, span, symbols)
        assert_rows_match(result.rows, expected, target.name)
    assert seconds_since_last_event(empty, TimeRange.last(timedelta(hours=1), now)) == 1e9


def test_rolling_average_spans_only_the_last_30_minutes(
    reader: psycopg2.extensions.connection, schema_dsn: str
) -> None:
    """The gap in SOLUSDT: right after it the average restarts instead of reaching back."""
    data = load_pipeline_data(schema_dsn, datetime.now(UTC))
    sol = sorted((w for w in data.windows if w.symbol == "SOLUSDT"), key=lambda w: w.start)
    after_gap = next(b for a, b in itertools.pairwise(sol) if b.start - a.start > WINDOW)
    (value,) = run_query(
        reader,
        "SELECT rolling_avg_price::float8 FROM rolling_avg_30min "
        f"WHERE symbol = 'SOLUSDT' AND five_min_start = '{format_rfc3339(after_gap.start)}'",
    ).rows[0]
    assert math.isclose(value, float(after_gap.price_sum / after_gap.count), rel_tol=1e-12)


# =============================================================================================
# Alert rules: evaluated as Grafana would (SQL -> reduce -> threshold -> state)
# =============================================================================================


@dataclass(frozen=True)
class RuleOutcome:
    state: str  # Normal, Alerting, NoData, KeepLast
    firing: dict[frozenset[tuple[str, str]], float]
    rows: int


Series = dict[frozenset[tuple[str, str]], float | None]


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
    if not condition:  # no rows, or only nulls
        state = {"OK": "Normal", "Alerting": "Alerting"}.get(
            rule["noDataState"], rule["noDataState"]
        )
        return RuleOutcome(state, {}, rows)
    value_ref = next(
        q["model"]["expression"] for q in rule["data"] if q["refId"] == rule["condition"]
    )
    firing = {k: results[value_ref][k] or 0.0 for k, met in condition.items() if met}
    return RuleOutcome("Alerting" if firing else "Normal", firing, rows)


def evaluate_rules(conn: psycopg2.extensions.connection) -> dict[str, RuleOutcome]:
    now = datetime.now(UTC)
    return {rule["title"]: evaluate_rule(rule, conn, now) for rule in load_alert_rules()}


@pytest.mark.parametrize("query", list(iter_alert_queries()), ids=lambda q: q.name)
def test_alert_query_shape_on_a_loaded_database(
    query: AlertQuery, reader: psycopg2.extensions.connection, schema_dsn: str
) -> None:
    load_pipeline_data(schema_dsn, datetime.now(UTC))
    result = run_query(reader, expand(query.raw_sql, query.time_range(datetime.now(UTC))))
    check_alert_frame(result)
    assert result.rows


def instances(*names: str) -> set[frozenset[tuple[str, str]]]:
    return {frozenset({("instance_id", name)}) for name in names}


def test_healthy_pipeline_fires_nothing(
    reader: psycopg2.extensions.connection, schema_dsn: str
) -> None:
    load_pipeline_data(schema_dsn, datetime.now(UTC))
    outcome = evaluate_rules(reader)
    assert outcome["High processing lag"].state == "Normal"
    assert outcome["High processing lag"].rows == len(INSTANCES)  # both measured, both fine
    assert outcome["No data received"].state == "Normal"
    assert outcome["No data received"].rows == 1


def test_processing_lag_of_90_seconds_fires_the_lag_alert(
    reader: psycopg2.extensions.connection, schema_dsn: str
) -> None:
    load_pipeline_data(schema_dsn, datetime.now(UTC), Scenario(recent_lag_seconds=90.0))
    outcome = evaluate_rules(reader)
    lag = outcome["High processing lag"]
    assert lag.state == "Alerting"
    assert set(lag.firing) == instances(*INSTANCES)
    assert set(lag.firing.values()) == {90.0}
    assert outcome["No data received"].state == "Normal"


def test_null_lag_of_replayed_history_does_not_fire(
    reader: psycopg2.extensions.connection, schema_dsn: str
) -> None:
    """High lag before, but the newest flushes carried replayed events only (lag NULL)."""
    scenario = Scenario(recent_lag_seconds=90.0, latest_flush_replay_only=True)
    load_pipeline_data(schema_dsn, datetime.now(UTC), scenario)
    lag = evaluate_rules(reader)["High processing lag"]
    assert lag.rows == 0 and lag.state == "Normal"


def test_no_events_for_4_minutes_fires_no_data(
    reader: psycopg2.extensions.connection, schema_dsn: str
) -> None:
    load_pipeline_data(schema_dsn, datetime.now(UTC), Scenario(silence=timedelta(minutes=4)))
    outcome = evaluate_rules(reader)
    no_data = outcome["No data received"]
    assert no_data.state == "Alerting" and no_data.rows == 1
    (seconds,) = no_data.firing.values()
    assert 240 <= seconds < 250
    # The consumer kept flushing empty intervals: lag is NULL there and must not fire.
    assert outcome["High processing lag"].state == "Normal"


def test_no_events_for_2_and_a_half_minutes_is_still_fine(
    reader: psycopg2.extensions.connection, schema_dsn: str
) -> None:
    scenario = Scenario(silence=timedelta(minutes=2, seconds=30))
    load_pipeline_data(schema_dsn, datetime.now(UTC), scenario)
    assert evaluate_rules(reader)["No data received"].state == "Normal"


def test_empty_tables_fire_no_data(reader: psycopg2.extensions.connection) -> None:
    outcome = evaluate_rules(reader)
    no_data = outcome["No data received"]
    assert no_data.state == "Alerting" and no_data.rows == 1
    assert list(no_data.firing.values()) == [1e9]
    assert outcome["High processing lag"].state == "Normal"  # noDataState OK: nothing to measure
