"""Grafana provisioning files, read as Grafana 12 reads them: the datasource, the dashboard
provider, both dashboards and their panels, the alert rules, contact points and policies.

What the queries return is tested in test_grafana_panels.py and test_grafana_alerts.py;
the files against Grafana's own published definitions in test_grafana_upstream.py."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any

import pytest

from tests.grafana.database import READER_ROLE
from tests.grafana.panels import PRICE, symbol_variable
from tests.grafana.sql import (
    ALERT_RULES_FILE,
    CONTACT_POINTS_FILE,
    DASHBOARD_DIR,
    DATASOURCE_FILE,
    EXPRESSION_DATASOURCE_UID,
    AlertQuery,
    PanelTarget,
    dashboard_files,
    iter_alert_queries,
    iter_panel_targets,
    iter_panels,
    iter_routes,
    load_alert_rules,
    load_dashboards,
    load_yaml,
)

PROVIDER_FILE = DASHBOARD_DIR / "dashboard.yml"

UID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
PANEL_TYPES = {"timeseries", "stat", "table", "candlestick"}
EXPRESSION_TYPES = {"reduce", "threshold"}  # what tests/grafana/alerts.py evaluates
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


def assert_uids_valid_and_unique(items: Sequence[Mapping[str, Any]]) -> None:
    """Grafana's uid rule (letters, digits, - and _, at most 40), each uid once."""
    uids = [item["uid"] for item in items]
    assert len(set(uids)) == len(uids), f"uids must be unique: {uids}"
    for uid in uids:
        assert UID_PATTERN.match(uid), uid


def datasource_definitions() -> list[dict[str, Any]]:
    return load_yaml(DATASOURCE_FILE)["datasources"]


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
    assert_uids_valid_and_unique(dashboards)
    for board in dashboards:
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
    assert target.target["rawQuery"] is True
    assert target.target["editorMode"] == "code"
    expected_format = "table" if target.panel_type in {"stat", "table"} else "time_series"
    assert target.format == expected_format
    assert any(macro in target.raw_sql for macro in TIME_RANGE_MACROS), target.raw_sql
    ref_ids = [item["refId"] for item in target.panel["targets"]]
    assert len(set(ref_ids)) == len(ref_ids)


def test_price_dashboard_filters_every_panel_by_the_symbol_variable() -> None:
    """Made for thousands of pairs: a query variable (not a list in the JSON) over the pairs
    with windows in the time range, searched in SQL as the user types ($__searchFilter), BTCUSDT
    by default, several selectable but no "All" (every pair on one chart is unreadable)."""
    variable = symbol_variable()
    assert variable["name"] == "symbol" and variable["type"] == "query"
    assert variable["query"] == variable["definition"]
    assert "$__timeFilter(five_min_start)" in variable["query"]
    assert "'$__searchFilter'" in variable["query"]  # inserted unquoted, see tests/grafana/sql.py
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
    """Grafana 12.0.2 expands macros inside SQL comments (see tests/grafana/sql.py); later
    patch releases strip comments first. Without comments both read the same."""
    queries = [t.raw_sql for t in iter_panel_targets()] + [q.raw_sql for q in iter_alert_queries()]
    queries.append(symbol_variable()["query"])
    for sql in queries:
        assert "--" not in sql and "/*" not in sql, sql


def rule_groups() -> list[dict[str, Any]]:
    return load_yaml(ALERT_RULES_FILE)["groups"]


def test_alert_rules_are_well_formed() -> None:
    """What the project's rules must be; the fields and values Grafana accepts (apiVersion,
    noDataState, execErrState, `for`, refIds, reducers, evaluators) are held to Grafana's own
    definitions in test_grafana_upstream.py."""
    for group in rule_groups():
        assert group["orgId"] == 1 and group["name"] and group["folder"]
        assert parse_duration(group["interval"]) >= timedelta(seconds=10)
    rules = load_alert_rules()
    assert {rule["title"]: rule["labels"]["severity"] for rule in rules} == RULES
    assert_uids_valid_and_unique(rules)
    for rule in rules:
        ref_ids = [query["refId"] for query in rule["data"]]
        assert len(set(ref_ids)) == len(ref_ids)
        assert rule["condition"] in ref_ids
        for query in rule["data"]:
            if query["datasourceUid"] == EXPRESSION_DATASOURCE_UID:
                check_expression(query["model"], ref_ids)


def check_expression(model: Mapping[str, Any], ref_ids: Sequence[str]) -> None:
    """Only the expressions tests/grafana/alerts.py evaluates, each on another query's result."""
    assert model["type"] in EXPRESSION_TYPES
    assert model["expression"] in ref_ids and model["expression"] != model["refId"]
    if model["type"] == "threshold":
        for condition in model["conditions"]:
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
    assert_uids_valid_and_unique(receivers)
    for receiver in receivers:
        assert receiver["type"] in RECEIVER_TYPES
    assert document["policies"]
    for policy in document["policies"]:
        for route in iter_routes(policy):
            assert route.get("receiver", policy["receiver"]) in names, route


def parse_duration(text: str) -> timedelta:
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    assert parts and text, f"bad duration {text!r}"
    hours, minutes, seconds = (int(part or 0) for part in parts.groups())
    return timedelta(hours=hours, minutes=minutes, seconds=seconds)


def test_late_events_panel_says_they_are_merged_not_rejected() -> None:
    """The consumer merges a late event into its window and counts it (see the healthy run)."""
    (panel,) = [t.panel for t in iter_panel_targets() if t.panel_title == "Late and invalid events"]
    assert "merged into their window" in panel["description"]
    assert "rejected as too late" not in panel["description"]
