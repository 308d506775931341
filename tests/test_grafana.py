"""Grafana provisioning: file structure, macro expansion, and every query against PostgreSQL.

No Grafana server runs here. Instead every panel and alert query is expanded exactly as Grafana
would (tests/grafana_sql.py) and run, as the read-only grafana_reader role, against databases
filled by the real pipeline: history replayed by producer.py and live messages in the message
contract, published to a real Kafka-protocol broker and aggregated by consumer.py. Expected
values are computed independently in Python: windows from the published events
(tests.pipeline.expected_windows), metrics from the pipeline_metrics rows the consumer wrote.
"""

from __future__ import annotations

import itertools
import math
import random
import re
import subprocess
import time
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
import pytest

from aggregator.report import PER_MESSAGE_LIMIT  # consumer/ is on sys.path (conftest.py)
from tests.deploy import (
    PASSWORDS,
    READER_PASSWORD,
    entrypoint_env,
    role_connection,
    run_init,
    run_init_file,
)
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
    iter_routes,
    load_alert_rules,
    load_dashboards,
    load_yaml,
    search_filter,
)
from tests.harness import PostgresServer, TansuBroker
from tests.harness.net import wait_until
from tests.harness.scripts import Script, run_script
from tests.pipeline import (
    WINDOW_MS,
    Event,
    assert_tables_equal_truth,
    consumer_env,
    create_topic,
    expected_windows,
    produce,
    produce_raw,
    start_consumer,
    wait_for_total,
)
from tests.pipeline import (
    query as superuser_query,
)

ROOT = Path(__file__).resolve().parents[1]
PASSWORD_SCRIPT = ROOT / "infra" / "10-role-passwords.sh"
PROVIDER_FILE = DASHBOARD_DIR / "dashboard.yml"

READER_ROLE = "grafana_reader"

UID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
PANEL_TYPES = {"timeseries", "stat", "table", "candlestick"}
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
    expected_format = "table" if target.panel_type in {"stat", "table"} else "time_series"
    assert target.format == expected_format
    assert any(macro in target.raw_sql for macro in TIME_RANGE_MACROS), target.raw_sql
    ref_ids = [item["refId"] for item in target.panel["targets"]]
    assert len(set(ref_ids)) == len(ref_ids)


def symbol_variable() -> dict[str, Any]:
    (board,) = [b for b in load_dashboards() if b["title"] == "Bitcoin Price"]
    (variable,) = board["templating"]["list"]
    return variable


def test_price_dashboard_filters_every_panel_by_the_symbol_variable() -> None:
    """Made for thousands of pairs: a query variable (not a list in the JSON) over the pairs
    with windows in the time range, searched in SQL as the user types ($__searchFilter), BTCUSDT
    by default, several selectable but no "All" (every pair on one chart is unreadable)."""
    variable = symbol_variable()
    assert variable["name"] == "symbol" and variable["type"] == "query"
    assert variable["query"] == variable["definition"]
    assert "$__timeFilter(five_min_start)" in variable["query"]
    assert "'$__searchFilter'" in variable["query"]  # inserted unquoted, see grafana_sql.py
    assert variable["refresh"] == 2  # onTimeRangeChanged: its range is the dashboard's
    assert variable["multi"] is True and variable["includeAll"] is False
    assert variable["current"]["value"] == ["BTCUSDT"]
    assert variable["options"] == [] and variable["regex"] == ""
    for target in iter_panel_targets():
        if target.dashboard_uid == PRICE:
            assert "ARRAY[$symbol]::text[]" in target.raw_sql, target.name


def test_candlestick_panel_repeats_per_symbol_and_maps_its_columns() -> None:
    (target,) = [t for t in iter_panel_targets() if t.panel_type == "candlestick"]
    assert target.dashboard_uid == PRICE and target.format == "time_series"
    assert target.panel["repeat"] == "symbol"  # one pair per candlestick chart
    assert "$symbol" in target.panel["title"]
    options = target.panel["options"]
    assert options["mode"] == "candles+volume"
    # Every field the panel maps is a column of its query (the run below checks the query).
    assert options["fields"] == {c: c for c in ("open", "high", "low", "close", "volume")}
    for column in options["fields"].values():
        assert f" AS {column}\n" in target.raw_sql or f" AS {column}," in target.raw_sql


def test_provisioned_sql_has_no_comments() -> None:
    """Grafana 12.0.2 expands macros inside SQL comments (see tests/grafana_sql.py); later
    patch releases strip comments first. Without comments both read the same."""
    queries = [t.raw_sql for t in iter_panel_targets()] + [q.raw_sql for q in iter_alert_queries()]
    queries.append(symbol_variable()["query"])
    for sql in queries:
        assert "--" not in sql and "/*" not in sql, sql


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


def parse_duration(text: str) -> timedelta:
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    assert parts and text, f"bad duration {text!r}"
    hours, minutes, seconds = (int(part or 0) for part in parts.groups())
    return timedelta(hours=hours, minutes=minutes, seconds=seconds)


# =============================================================================================
# Macro expansion (the examples of shared/grafana-provisioning.md)
# =============================================================================================
# Each case below is what Grafana 12.0.2's own code does; tests/grafana_sql.py cites the lines of
# pkg/tsdb/grafana-postgresql-datasource/macros.go (evaluateMacro L70-160: __time L72-76,
# __timeEpoch L77-81, __timeFilter L82-87, __timeFrom/__timeTo L88-91, __timeGroup L92-115,
# __timeGroupAlias L116-121, __unixEpochFilter L122-126, unknown macro L157-158) and of
# sqleng/sql_engine.go (Interpolate) that each expansion follows.

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


def test_macros_in_comments_are_expanded_as_in_grafana_12_0() -> None:
    sql = "SELECT 1 -- $__timeFrom()\nFROM t"
    assert expand(sql, DOC_RANGE) == "SELECT 1 -- '2018-04-12T18:00:00Z'\nFROM t"
    with pytest.raises(MacroError, match="unknown macro"):
        expand("SELECT 1 /* $__nope(c) */", DOC_RANGE)


def test_search_filter_is_the_typed_text_and_a_wildcard() -> None:
    sql = "WHERE symbol LIKE ('%' || upper('$__searchFilter'))"
    assert expand(sql, DOC_RANGE, search_filter()) == "WHERE symbol LIKE ('%' || upper('%'))"
    assert expand(sql, DOC_RANGE, search_filter("o'x")) == (
        "WHERE symbol LIKE ('%' || upper('o''x%'))"
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
# Running queries as grafana_reader
# =============================================================================================


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    type_oids: list[int]
    rows: list[tuple[Any, ...]]


@pytest.fixture
def schema_dsn(postgres: PostgresServer, database: str) -> str:
    """A database as PostgreSQL's entrypoint leaves a new compose volume (tests/deploy.py)."""
    run_init(postgres, database)
    return postgres.dsn(database)


@contextmanager
def reader_connection(
    postgres: PostgresServer, database: str
) -> Iterator[psycopg2.extensions.connection]:
    """A connection as grafana_reader, its password set by the deployment's own init files."""
    run_init(postgres, database)
    with role_connection(postgres, database, READER_ROLE, READER_PASSWORD) as conn:
        yield conn


@pytest.fixture
def reader(
    postgres: PostgresServer, database: str, schema_dsn: str
) -> Iterator[psycopg2.extensions.connection]:
    """grafana_reader on a database with the schema only."""
    with reader_connection(postgres, database) as conn:
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


@pytest.mark.parametrize("missing", sorted(PASSWORDS))
def test_password_script_requires_each_password(
    postgres: PostgresServer, database: str, schema_dsn: str, missing: str
) -> None:
    env = entrypoint_env(postgres, database, {k: v for k, v in PASSWORDS.items() if k != missing})
    with pytest.raises(subprocess.CalledProcessError) as failure:
        run_init_file(PASSWORD_SCRIPT, env)
    assert f"{missing} must be set" in failure.value.stderr


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
# Data: what the real pipeline writes (producer.py / Kafka / consumer.py)
# =============================================================================================

SYMBOLS = {
    "BTCUSDT": Decimal("67250.00"),
    "ETHUSDT": Decimal("3480.00"),
    "SOLUSDT": Decimal("152.40"),
}
LIVE = "binance"  # the producer's source for live prices
REPLAY = "replay"  # replayed history: in its windows and in throughput, never processing lag
WINDOW = timedelta(minutes=5)
MINUTE = timedelta(minutes=1)
MILLISECOND = timedelta(milliseconds=1)
POLL = timedelta(seconds=10)  # the producer's poll interval: one live event per symbol
BUCKET = timedelta(seconds=30)  # the KPI panels group pipeline_metrics rows by 30 s
FAST_FLUSH = 0.5  # seconds: many metrics rows in little time
# No timer flush: everything a consumer reads is written by its final flush on SIGTERM, as ONE
# pipeline_metrics row, which is then that instance's latest flush.
HELD_FLUSH = 3600.0
HELD_LIMIT = PER_MESSAGE_LIMIT  # the consumer logs one `Consumed:` line per message up to this
IDLE_FLUSHES = 2


@dataclass(frozen=True)
class Window:
    """One row of five_min_bitcoin_event, as computed offline from the published events."""

    symbol: str
    start: datetime
    count: int
    price_sum: Decimal
    low: Decimal
    high: Decimal
    open: Decimal
    close: Decimal
    last_event_at: datetime


@dataclass(frozen=True)
class MetricRow:
    """One row of pipeline_metrics, read back as written by consumer.py."""

    timestamp: datetime
    instance_id: str
    events_processed: int
    live_events: int
    replayed_events: int
    events_per_second: float
    lag: float | None
    max_lag: float | None
    data_size_kb: Decimal
    consumer_offset_lag: int | None
    late_events: int
    invalid_events: int


METRIC_COLUMNS = (
    "metric_timestamp, instance_id, events_processed, live_events, replayed_events, "
    "events_per_second, processing_lag_seconds, max_processing_lag_seconds, data_size_kb, "
    "consumer_offset_lag, late_events, invalid_events"
)


@dataclass
class PipelineData:
    windows: list[Window] = field(default_factory=list)
    metrics: list[MetricRow] = field(default_factory=list)


def from_ms(epoch_ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=epoch_ms)


def to_ms(moment: datetime) -> int:
    return (moment - EPOCH) // MILLISECOND


def floor_time(moment: datetime, step: timedelta) -> datetime:
    return EPOCH + (moment - EPOCH) // step * step


def truth_windows(events: Sequence[Event]) -> list[Window]:
    """The windows of `events` from tests.pipeline.expected_windows (independent of the
    consumer's code)."""
    return [
        Window(
            symbol=symbol,
            start=from_ms(start),
            count=w["event_count"],
            price_sum=w["price_sum"],
            low=w["min_value"],
            high=w["max_value"],
            open=w["open_value"],
            close=w["close_value"],
            last_event_at=from_ms(w["last_event_at"]),
        )
        for (symbol, start), w in sorted(expected_windows(events).items())
    ]


def stored_metrics(dsn: str) -> list[MetricRow]:
    """pipeline_metrics as the consumer wrote it, read as the superuser."""
    rows = superuser_query(dsn, f"SELECT {METRIC_COLUMNS} FROM pipeline_metrics ORDER BY 1, 2")
    return [MetricRow(*row) for row in rows]


def count_late(events: Sequence[Event]) -> int:
    """Events one consumer process must count as late: older than the newest window it has
    already read for the same symbol and kind of source (live or replayed)."""
    newest: dict[tuple[str, bool], int] = {}
    late = 0
    for event in events:
        stream = (event.symbol, event.source == REPLAY)
        start = event.event_time - event.event_time % WINDOW_MS
        if stream in newest and start < newest[stream]:
            late += 1
        else:
            newest[stream] = start
    return late


def price_walk(rng: random.Random, start: Decimal, steps: int, places: int) -> list[str]:
    prices, price, quantum = [], start, Decimal(1).scaleb(-places)
    for _ in range(steps):
        price = (price * Decimal(repr(1 + rng.gauss(0, 0.0006)))).quantize(quantum)
        prices.append(format(price, "f"))
    return prices


def klines(rng: random.Random, symbol: str, opens: Sequence[datetime]) -> list[Event]:
    """Replayed 1-minute klines: one event per kline at its close time with its close price,
    as producer.py --source replay reads them (8 decimals, like Binance's files)."""
    prices = price_walk(rng, SYMBOLS[symbol], len(opens), 8)
    return [
        Event(symbol, price, to_ms(start + MINUTE) - 1, REPLAY)
        for start, price in zip(opens, prices, strict=True)
    ]


def minutes(first: datetime, last: datetime) -> list[datetime]:
    """Kline open times from `first` to `last` (both floored to the minute)."""
    first, last = floor_time(first, MINUTE), floor_time(last, MINUTE)
    return [first + k * MINUTE for k in range((last - first) // MINUTE + 1)]


def live_events(rng: random.Random, times: Mapping[str, Sequence[int]]) -> list[Event]:
    """Live prices (2 decimals, like Binance's ticker) at the given event times per symbol,
    in event-time order across symbols, as the producer publishes them poll by poll."""
    events = []
    for symbol, stamps in times.items():
        prices = price_walk(rng, SYMBOLS[symbol], len(stamps), 2)
        events += [Event(symbol, p, t, LIVE) for t, p in zip(stamps, prices, strict=True)]
    return sorted(events, key=lambda e: e.event_time)


def polls(last: datetime, span: timedelta, offset: timedelta = timedelta(0)) -> list[int]:
    """Event times of polls every POLL up to `last` - `offset`, over `span`. Live times end
    in .500 s, kline close times in .999 s: no two events share an event time."""
    newest = to_ms(floor_time(last - offset, timedelta(seconds=1))) + 500
    return [newest - k * (POLL // MILLISECOND) for k in range(span // POLL + 1)][::-1]


def write_klines_file(folder: Path, events: Sequence[Event]) -> Path:
    """A Binance spot 1-minute klines CSV of one symbol (12 columns, no header, times in µs as
    since 2025): close price in column 4, close time in column 6."""
    symbol = events[0].symbol
    path = folder / f"{symbol}-1m-{from_ms(events[0].event_time):%Y-%m-%d}.csv"
    with path.open("w") as out:
        for e in events:
            open_us, close_us = (e.event_time - 59_999) * 1000, e.event_time * 1000 + 999
            out.write(
                f"{open_us},{e.price},{e.price},{e.price},{e.price},1.50000000,{close_us},"
                f"{Decimal(e.price) * Decimal('1.5')},42,0.75000000,0.75,0\n"
            )
    return path


@dataclass
class Pipeline:
    """One deployment of the pipeline for a test: its own topic and database, the real
    producer.py (for replays) and consumer.py. Remembers what it published, for expectations."""

    broker: TansuBroker
    postgres: PostgresServer
    database: str
    topic: str
    workdir: Path
    events: list[Event] = field(default_factory=list)  # valid events published, in order
    invalid: int = 0  # messages published that fail validation
    late: int = 0  # events the consumers must have counted as late
    unread: list[Event] = field(default_factory=list)  # published, not yet read by a consumer
    replays: int = 0

    @classmethod
    def create(
        cls, broker: TansuBroker, postgres: PostgresServer, database: str, topic: str, workdir: Path
    ) -> Pipeline:
        create_topic(broker.bootstrap, topic)
        return cls(broker, postgres, database, topic, workdir)

    @property
    def dsn(self) -> str:
        return self.postgres.dsn(self.database)

    def _published(self, events: Sequence[Event]) -> None:
        self.events += events
        self.unread += events

    def publish(self, events: Sequence[Event]) -> None:
        """Live messages in the contract, keyed by symbol, as the producer sends them."""
        produce(self.broker.bootstrap, self.topic, events)
        self._published(events)

    def publish_invalid(self, values: Sequence[bytes], symbol: str) -> None:
        produce_raw(self.broker.bootstrap, self.topic, values, key=symbol.encode())
        self.invalid += len(values)

    def replay(self, events: Sequence[Event]) -> None:
        """Write `events` as Binance klines files (one per symbol) and publish them with
        `producer.py --source replay`, which sends them in file order."""
        self.replays += 1
        folder = self.workdir / f"replay-{self.replays}"
        folder.mkdir()
        by_symbol: dict[str, list[Event]] = defaultdict(list)
        for event in events:
            by_symbol[event.symbol].append(event)
        files = [write_klines_file(folder, batch) for batch in by_symbol.values()]
        result = run_script(
            "producer",
            [
                *("--source", REPLAY, "--bootstrap-servers", self.broker.bootstrap),
                *("--topic", self.topic, *map(str, files)),
            ],
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"Replay done: {len(events)} events" in result.stdout, result.stdout
        self._published([event for batch in by_symbol.values() for event in batch])

    def consumer(self, instance: str, flush_interval: float) -> Script:
        env = consumer_env(
            self.broker, self.postgres, self.database, self.topic, flush_interval=flush_interval
        )
        return start_consumer(env, instance)

    def _read(self) -> None:
        self.late += count_late(self.unread)
        self.unread = []

    def metrics_of(self, instance: str) -> list[MetricRow]:
        return [row for row in stored_metrics(self.dsn) if row.instance_id == instance]

    def run_until_idle(self, instance: str, publish: Callable[[], None] = lambda: None) -> None:
        """consumer.py flushing every FAST_FLUSH s; `publish` runs while it joins the group.
        Once every published message is accounted for in pipeline_metrics and IDLE_FLUSHES
        more flushes found nothing, SIGTERM: the consumer must exit with 0."""
        with self.consumer(instance, FAST_FLUSH) as consumer:
            publish()
            wait_for_total(self.dsn, len(self.events), 60, [consumer])

            def accounted() -> list[MetricRow] | None:
                if consumer.process.poll() is not None:
                    raise AssertionError(f"consumer exited:\n{consumer.output()[-3000:]}")
                try:
                    rows = stored_metrics(self.dsn)
                except psycopg2.Error:  # the consumer has not created the schema yet
                    return None
                processed = sum(row.events_processed for row in rows)
                invalid = sum(row.invalid_events for row in rows)
                return rows if (processed, invalid) == (len(self.events), self.invalid) else None

            busy = len(wait_until(accounted, 30, "every message in pipeline_metrics"))
            wait_until(
                lambda: len(stored_metrics(self.dsn)) >= busy + IDLE_FLUSHES,
                30,
                f"{IDLE_FLUSHES} idle flushes of {instance}",
            )
            assert consumer.stop() == 0, consumer.output()[-3000:]
        self._read()
        newest = self.metrics_of(instance)[-1]
        assert newest.events_processed == 0 and newest.lag is None, newest

    def run_held(self, instance: str, publish: Callable[[], None]) -> MetricRow:
        """consumer.py without timer flushes: `publish` runs once it owns the partitions;
        when it has read every message, SIGTERM makes its final flush write them all as ONE
        pipeline_metrics row (returned), which is then that instance's latest flush."""
        before = len(self.events)
        with self.consumer(instance, HELD_FLUSH) as consumer:
            consumer.wait_for_output("Resuming from stored offsets")
            publish()
            sent = len(self.events) - before
            assert 0 < sent <= HELD_LIMIT
            consumer.wait_for_output("Consumed: ", count=sent)
            assert consumer.stop() == 0, consumer.output()[-3000:]
        self._read()
        flush = self.metrics_of(instance)[-1]
        assert flush.events_processed == sent, (flush, consumer.output()[-3000:])
        return flush

    def data(self) -> PipelineData:
        return PipelineData(truth_windows(self.events), stored_metrics(self.dsn))

    def assert_stored_exactly_what_was_published(self) -> None:
        assert not self.unread
        assert_tables_equal_truth(self.dsn, self.events)
        rows = stored_metrics(self.dsn)
        replayed = sum(event.source == REPLAY for event in self.events)
        assert (
            sum(r.events_processed for r in rows),
            sum(r.live_events for r in rows),
            sum(r.replayed_events for r in rows),
            sum(r.invalid_events for r in rows),
            sum(r.late_events for r in rows),
        ) == (len(self.events), len(self.events) - replayed, replayed, self.invalid, self.late)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def fresh(rng: random.Random, age: timedelta = timedelta(0)) -> list[Event]:
    """One live event per symbol, `age` old right now."""
    stamp = now_ms() - age // MILLISECOND
    return live_events(rng, {symbol: [stamp] for symbol in SYMBOLS})


# =============================================================================================
# Pipeline runs
# =============================================================================================

HISTORY = {  # how far back each symbol's replayed history starts
    "BTCUSDT": timedelta(hours=7),  # before the price dashboard's 6 h range
    "ETHUSDT": timedelta(hours=3),  # starts later
    "SOLUSDT": timedelta(hours=6),  # with a gap, see GAP
}
GAP = timedelta(minutes=30)  # SOLUSDT's history has no klines for 30 minutes, 3 h ago
LIVE_SPAN = timedelta(minutes=4)  # minutes of the live feed after the history ...
NEWEST_AGE = timedelta(seconds=20)  # ... up to this long ago
LATE_AGE = timedelta(minutes=9)  # a live ETHUSDT price that arrives after newer ones
INVALID = [b"not json", b'{"symbol": "BTCUSDT", "price": "67250.00"}']  # no event_time
LAG = timedelta(seconds=90)


def history_events(rng: random.Random, now: datetime) -> list[Event]:
    """Hours of 1-minute klines per symbol, up to 5 minutes ago."""
    last = now - WINDOW
    gap = floor_time(now - timedelta(hours=3), WINDOW)
    events = []
    for symbol, span in HISTORY.items():
        opens = minutes(last - span, last)
        if symbol == "SOLUSDT":
            opens = [start for start in opens if not gap <= start < gap + GAP]
        events += klines(rng, symbol, opens)
    return events


def live_feed(rng: random.Random, newest: datetime, span: timedelta) -> list[Event]:
    """A poll of every symbol every POLL over `span` up to `newest`; BTCUSDT polled last."""
    offsets = {symbol: k * timedelta(seconds=3) for k, symbol in enumerate(SYMBOLS)}
    return live_events(rng, {s: polls(newest, span, offset) for s, offset in offsets.items()})


@dataclass(frozen=True)
class HealthyRun:
    pipeline: Pipeline
    data: PipelineData
    fresh: MetricRow  # consumer-b's one flush: a poll of every symbol, read at once
    fresh_bound: float  # seconds from before that poll was published to after it was flushed


@pytest.fixture(scope="module")
def healthy(broker: TansuBroker, postgres: PostgresServer, tmp_path_factory) -> HealthyRun:
    """A healthy pipeline: hours of history replayed by producer.py, then minutes of the live
    feed (with a late event and invalid messages), read by consumer-a, which flushes every
    FAST_FLUSH s until it idles and stops; then consumer-b reads a fresh poll of every
    symbol the moment it is published (its only flush)."""
    rng = random.Random(20240412)
    now = datetime.now(UTC)
    pipeline = Pipeline.create(
        broker,
        postgres,
        postgres.create_database("grafana_healthy"),
        "btc_price_grafana_healthy",
        tmp_path_factory.mktemp("healthy"),
    )
    late_price = price_walk(rng, SYMBOLS["ETHUSDT"], 1, 2)[0]
    late = Event("ETHUSDT", late_price, to_ms(floor_time(now - LATE_AGE, MINUTE)) + 250, LIVE)

    def publish() -> None:
        pipeline.replay(history_events(rng, now))
        pipeline.publish_invalid(INVALID, "BTCUSDT")
        pipeline.publish(live_feed(rng, now - NEWEST_AGE, LIVE_SPAN - NEWEST_AGE))
        pipeline.publish([late])

    pipeline.run_until_idle("consumer-a", publish)
    started = now_ms()
    flush = pipeline.run_held("consumer-b", lambda: pipeline.publish(fresh(rng)))
    return HealthyRun(pipeline, pipeline.data(), flush, (now_ms() - started) / 1000)


@pytest.fixture(scope="module")
def healthy_reader(
    healthy: HealthyRun, postgres: PostgresServer
) -> Iterator[psycopg2.extensions.connection]:
    with reader_connection(postgres, healthy.pipeline.database) as conn:
        yield conn


@pytest.fixture
def pipeline(
    broker: TansuBroker, postgres: PostgresServer, database: str, topic: str, tmp_path: Path
) -> Pipeline:
    """A pipeline of its own for one scenario; consumer.py creates the schema."""
    return Pipeline.create(broker, postgres, database, topic, tmp_path)


def test_late_events_panel_says_they_are_merged_not_rejected() -> None:
    """The consumer merges a late event into its window and counts it (see the healthy run)."""
    (panel,) = [t.panel for t in iter_panel_targets() if t.panel_title == "Late and invalid events"]
    assert "merged into their window" in panel["description"]
    assert "rejected as too late" not in panel["description"]


def test_the_pipeline_stored_exactly_what_was_published(healthy: HealthyRun) -> None:
    """The premise of every expectation below: the consumer's windows are the offline truth
    of the published events, and its metrics account for every message."""
    pipeline = healthy.pipeline
    pipeline.assert_stored_exactly_what_was_published()
    assert pipeline.late == 1 and pipeline.invalid == len(INVALID)
    assert {row.instance_id for row in healthy.data.metrics} == {"consumer-a", "consumer-b"}
    assert {e.source for e in pipeline.events} == {LIVE, REPLAY}


# =============================================================================================
# Expected panel values, computed from the published events and the consumer's metrics rows
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
        buckets[(row.timestamp - EPOCH) // BUCKET * int(BUCKET.total_seconds())].append(row)
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
        (w.start, w.symbol, float(w.open), float(w.close)) for w in windows_in(d, s, sym)
    ],
    (PRICE, "$symbol 5-minute candles (volume = events)"): lambda d, s, sym: [
        (w.start, float(w.open), float(w.high), float(w.low), float(w.close), float(w.count))
        for w in windows_in(d, s, sym)
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


def panel_selections(target: PanelTarget, symbols: Sequence[str]) -> list[tuple[str, ...]]:
    """The symbols each shown copy of a panel gets: a panel repeated by `symbol` is one copy per
    selected pair, each with that pair alone; any other panel gets the whole selection."""
    if target.panel.get("repeat") == "symbol":
        return [(symbol,) for symbol in symbols]
    return [tuple(symbols)]


def run_panel(
    conn: psycopg2.extensions.connection,
    target: PanelTarget,
    span: TimeRange,
    symbols: Sequence[str],
) -> QueryResult:
    """One copy of a panel; a repeated copy gets its pair as the variable's single value."""
    (board,) = [b for b in load_dashboards() if b["uid"] == target.dashboard_uid]
    repeated = target.panel.get("repeat") == "symbol"
    value = symbols[0] if repeated and len(symbols) == 1 else list(symbols)
    variables = dashboard_variables(board, {"symbol": value})
    result = run_query(conn, expand(target.raw_sql, span, variables, interval=BUCKET))
    (check_time_series if target.format == "time_series" else check_table)(result)
    return result


def symbol_options(
    conn: psycopg2.extensions.connection, span: TimeRange, typed: str = ""
) -> tuple[str, ...]:
    """The `symbol` variable's options over `span`, from its own query, while `typed` is in its
    search box (Grafana sends variable queries in table format, with the dashboard's range)."""
    sql = expand(symbol_variable()["query"], span, search_filter(typed))
    result = run_query(conn, sql)
    assert result.columns == ["symbol"] and set(result.type_oids) <= STRING_OIDS
    return tuple(row[0] for row in result.rows)


def price_range(now: datetime) -> TimeRange:
    (board,) = [b for b in load_dashboards() if b["uid"] == PRICE]
    assert board["time"]["from"] == "now-6h"
    return TimeRange.last(timedelta(hours=6), now)


def all_symbols(conn: psycopg2.extensions.connection) -> tuple[str, ...]:
    """Every option of the `symbol` variable over the price dashboard's default range."""
    return symbol_options(conn, price_range(datetime.now(UTC)))


def assert_panels_show(
    conn: psycopg2.extensions.connection, data: PipelineData, symbols: Sequence[str]
) -> dict[str, QueryResult]:
    """Every copy of every panel over its dashboard's default range ending now: the expected
    rows. Returns the rows of all copies of each panel, by title."""
    now = datetime.now(UTC)
    results = {}
    for target in iter_panel_targets():
        span = dashboard_range(target, now)
        shown: list[Row] = []
        for selection in panel_selections(target, symbols):
            result = run_panel(conn, target, span, selection)
            expected = EXPECTED[target.dashboard_uid, target.panel_title](data, span, selection)
            assert_rows_match(result.rows, expected, f"{target.name} {selection}")
            shown += result.rows
        results[target.panel_title] = QueryResult(result.columns, result.type_oids, shown)
    return results


def test_every_panel_query_returns_the_expected_values(
    healthy: HealthyRun, healthy_reader: psycopg2.extensions.connection
) -> None:
    symbols = all_symbols(healthy_reader)
    assert symbols == tuple(sorted(SYMBOLS))
    results = assert_panels_show(healthy_reader, healthy.data, symbols)
    for target in iter_panel_targets():
        assert results[target.panel_title].rows, f"{target.name}: the run should show here"
    # The history reaches back beyond the 6 h range: the time filter is what keeps it out.
    assert min(w.start for w in healthy.data.windows) < datetime.now(UTC) - timedelta(hours=6)


def test_symbol_selection_filters_the_price_panels(
    healthy: HealthyRun, healthy_reader: psycopg2.extensions.connection
) -> None:
    now = datetime.now(UTC)
    for target in iter_panel_targets():
        if target.dashboard_uid != PRICE:
            continue
        span = dashboard_range(target, now)
        (selection,) = panel_selections(target, ["ETHUSDT"])
        result = run_panel(healthy_reader, target, span, selection)
        expected = EXPECTED[PRICE, target.panel_title](healthy.data, span, selection)
        assert expected, target.name
        assert_rows_match(result.rows, expected, target.name)
        assert "BTCUSDT" not in str(result.rows)


def test_panels_work_on_an_empty_database(reader: psycopg2.extensions.connection) -> None:
    """A new stack: no pair to offer yet, and every panel, with the default selection, shows
    nothing instead of failing."""
    now = datetime.now(UTC)
    assert all_symbols(reader) == ()
    default = tuple(symbol_variable()["current"]["value"])
    assert default == ("BTCUSDT",)
    assert_panels_show(reader, PipelineData(), default)
    assert seconds_since_last_event(PipelineData(), TimeRange.last(timedelta(hours=1), now)) == 1e9


THOUSANDS = 3000  # pairs Binance lists: the symbol variable must stay usable with all of them


def test_symbol_variable_lists_thousands_of_pairs_and_searches_them_in_sql(
    postgres: PostgresServer, database: str, schema_dsn: str
) -> None:
    """Windows of 3,000 pairs in the range (and of one pair only before it): the variable
    offers exactly the pairs in the range, sorted; typing narrows the list in PostgreSQL, any
    case, anywhere in the name; a quote typed in the box is data, not SQL."""
    now = datetime.now(UTC)
    names = [f"C{n:04d}USDT" for n in range(THOUSANDS - 2)] + ["BTCUSDT", "WBTCBTC"]
    recent = floor_time(now - timedelta(minutes=30), WINDOW)
    with closing(psycopg2.connect(schema_dsn)) as conn, conn, conn.cursor() as cur:
        rows = [(name, recent - k * WINDOW) for name in names for k in range(3)]
        rows.append(("OLDONLYUSDT", now - timedelta(hours=7)))
        cur.executemany(
            "INSERT INTO five_min_bitcoin_event (symbol, five_min_start, five_min_end, "
            "event_count, price_sum, min_value, max_value, open_value, close_value, "
            "first_event_at, last_event_at) VALUES "
            "(%s, %s, %s + interval '5 minutes', 1, 1, 1, 1, 1, 1, %s, %s)",
            [(name, start, start, start, start) for name, start in rows],
        )
    with reader_connection(postgres, database) as reader:
        span = price_range(now)
        assert symbol_options(reader, span) == tuple(sorted(names))
        assert symbol_options(reader, span, "btc") == ("BTCUSDT", "WBTCBTC")
        assert symbol_options(reader, span, "C0042") == ("C0042USDT",)
        assert symbol_options(reader, span, "o'x") == ()
        # The default selection shows that pair alone, in every price panel.
        for target in iter_panel_targets():
            if target.dashboard_uid == PRICE:
                for selection in panel_selections(target, ["BTCUSDT"]):
                    result = run_panel(reader, target, span, selection)
                    assert result.rows and "C0001USDT" not in str(result.rows), target.name


def test_rolling_average_spans_only_the_last_30_minutes(
    healthy: HealthyRun, healthy_reader: psycopg2.extensions.connection
) -> None:
    """The gap in SOLUSDT: right after it the average restarts instead of reaching back."""
    sol = [w for w in healthy.data.windows if w.symbol == "SOLUSDT"]
    ((before_gap, after_gap),) = [
        (a, b) for a, b in itertools.pairwise(sol) if b.start - a.start > WINDOW
    ]
    assert after_gap.start - before_gap.start > timedelta(minutes=25)  # the average's reach
    (value,) = run_query(
        healthy_reader,
        "SELECT rolling_avg_price::float8 FROM rolling_avg_30min "
        f"WHERE symbol = 'SOLUSDT' AND five_min_start = '{format_rfc3339(after_gap.start)}'",
    ).rows[0]
    assert math.isclose(value, float(after_gap.price_sum / after_gap.count), rel_tol=1e-12)


# =============================================================================================
# Alert rules: evaluated as Grafana would (SQL -> reduce -> threshold -> state)
# =============================================================================================

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
    assert low.total_seconds() - 0.001 <= value <= high.total_seconds() + 0.001


def assert_seconds_since_last_event(
    outcome: RuleOutcome, data: PipelineData, ev: Evaluation
) -> None:
    """Once events exist, the no-data clock runs from the newest published event time."""
    assert data.windows
    assert_no_data_clock(outcome, max(w.last_event_at for w in data.windows), ev)


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
    assert 0 <= healthy.fresh.lag <= healthy.fresh_bound < threshold(LAG_RULE)
    no_data = evaluation[NO_DATA_RULE]
    assert no_data.state == "Normal" and no_data.rows == 1
    assert_seconds_since_last_event(no_data, healthy.data, evaluation)


def postmaster_start(dsn: str) -> datetime:
    ((started,),) = superuser_query(dsn, "SELECT pg_postmaster_start_time()")
    return started


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
    started = now_ms()
    flush = pipeline.run_held("consumer-a", lambda: pipeline.publish(fresh(rng, LAG)))
    bound = LAG.total_seconds() + (now_ms() - started) / 1000
    assert LAG.total_seconds() <= flush.lag <= flush.max_lag <= bound
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
        started = now_ms()

        def publish() -> None:
            pipeline.replay(replayed)
            if events := live():
                pipeline.publish(events)

        flush = pipeline.run_held("consumer-a", publish)
        assert flush.replayed_events == len(replayed)
        return flush, (now_ms() - started) / 1000

    # 1. History loads while the live feed is current: the lag is that of the live events.
    flush, elapsed = run(history(3, ["BTCUSDT", "ETHUSDT"], 3), lambda: fresh(rng))
    assert flush.live_events == len(SYMBOLS)
    assert 0 <= flush.lag <= flush.max_lag <= elapsed < threshold(LAG_RULE)
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
    assert LAG.total_seconds() <= flush.lag <= flush.max_lag <= LAG.total_seconds() + elapsed
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
