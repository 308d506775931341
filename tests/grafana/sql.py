r"""Grafana's PostgreSQL query expansion, reproduced for tests; loaders for the provisioned files.

Grafana never runs here, so the tests run the provisioned SQL themselves. The expansion follows
the pinned Grafana (12.0.2, docker-compose.yml) step by step, in its order. Sources, in
grafana/grafana (re-check them when the image tag changes):

1. dashboard template variables, in the browser: `templateSrv.replace(rawSql, scopedVars,
   interpolateVariable)` (public/app/features/plugins/sql/datasource/SqlDatasource.ts,
   applyTemplateVariables, interpolateVariable): `$name`, `${name}`, `[[name]]`; an array value
   becomes quoted literals joined by commas; a string value is quoted when the variable is
   multi-value or include-All, else inserted with `'` doubled. Variable queries
   (metricFindQuery) also get `$__searchFilter` = the typed search text + `%`, or `%`
   (public/app/features/variables/utils.ts, getSearchFilterScopedVar);
2. global substitutions (pkg/tsdb/grafana-postgresql-datasource/sqleng/sql_engine.go,
   `Interpolate`, called first by `executeQuery`): `$__interval_ms`, `$__interval`,
   `$__unixEpochFrom()`, `$__unixEpochTo()`;
3. macros (pkg/tsdb/grafana-postgresql-datasource/macros.go, blob 0577088: the pattern `sExpr`
   at L15-16, `Interpolate` L30-67, `evaluateMacro` L70-160): every match of
   `\$([_a-zA-Z0-9]+)\(([^\)]*)\)`, arguments split on commas and trimmed of spaces (L50-53);
   `$__timeGroup(...)` whose FIRST occurrence is directly followed by `,` gets the `AS "time"`
   alias (L40-48); an unknown macro fails the query (L157-158).

12.0.2 sends SQL comments to PostgreSQL as they are and expands macros inside them too: the
quote-aware comment stripping in macros.go came with grafana/grafana#121772, backported to
11.6.15, 12.1.11, 12.2.9, 12.3.7 and 12.4.3, not to 12.0.x. The provisioned queries therefore
hold no comments at all (tests/unit/test_grafana_provisioning.py), which reads the same on either
side of that change.

Times are RFC 3339 in UTC with trailing zeros of the fraction trimmed (Go's RFC3339Nano,
macros.go L87-91).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
GRAFANA_DIR = ROOT / "grafana"
DASHBOARD_DIR = GRAFANA_DIR / "dashboards"
DATASOURCE_FILE = GRAFANA_DIR / "datasources" / "datasource.yml"
ALERTING_DIR = GRAFANA_DIR / "provisioning" / "alerting"
ALERT_RULES_FILE = ALERTING_DIR / "alerts.yml"
CONTACT_POINTS_FILE = ALERTING_DIR / "contact-points.yml"

EXPRESSION_DATASOURCE_UID = "__expr__"

# Grafana's (JavaScript) template variable pattern; `\w` there is ASCII only.
_VARIABLE_PATTERN = re.compile(
    r"\$([A-Za-z0-9_]+)"
    r"|\[\[([A-Za-z0-9_]+?)(?::([A-Za-z0-9_]+))?\]\]"
    r"|\$\{([A-Za-z0-9_]+)(?:\.([^:^\}]+))?(?::([^\}]+))?\}"
)
_MACRO_PATTERN = re.compile(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)")
# Go's time.ParseDuration units in seconds; d/w are calendar units in gtime.ParseInterval.
_DURATION_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_CALENDAR_INTERVAL = re.compile(r"^(\d+)([dwMy])$")


class MacroError(ValueError):
    """Grafana rejects the query ("interpolation failed") instead of running it."""


@dataclass(frozen=True)
class TimeRange:
    start: datetime
    end: datetime

    @classmethod
    def last(cls, span: timedelta, now: datetime) -> TimeRange:
        return cls(now - span, now)


@dataclass(frozen=True)
class Variable:
    """A dashboard variable's current value. `multi` covers multi-value and include-All."""

    value: str | tuple[str, ...]
    multi: bool = False


# --- formatting helpers (Go semantics) ------------------------------------------------------


def format_rfc3339(moment: datetime) -> str:
    """Go's `t.UTC().Format(time.RFC3339Nano)`: no fraction when zero, trailing zeros trimmed."""
    if moment.tzinfo is None:
        raise ValueError("naive datetimes are ambiguous; pass an aware datetime")
    utc = moment.astimezone(UTC)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.microsecond:
        text += "." + f"{utc.microsecond:06d}".rstrip("0")
    return text + "Z"


def format_go_float(value: float) -> str:
    """Go's `%v` for a float64 of ordinary size: shortest representation, no `.0`."""
    if value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    return repr(value)


def parse_interval(text: str) -> timedelta:
    """gtime.ParseInterval: `5m`, `30s`, `1h30m`, `500ms`, `1d`, `1w` (months/years unsupported)."""
    calendar = _CALENDAR_INTERVAL.match(text)
    if calendar:
        number, unit = int(calendar.group(1)), calendar.group(2)
        if unit in "My":
            raise NotImplementedError("month/year intervals depend on the calendar")
        return timedelta(days=number * (7 if unit == "w" else 1))
    position, seconds = 0, 0.0
    for part in _DURATION_PART.finditer(text):
        if part.start() != position:
            break
        seconds += _DURATION_SECONDS[part.group(2)] * float(part.group(1))
        position = part.end()
    if position != len(text) or not text:
        raise MacroError(f"error parsing interval {text}")
    return timedelta(seconds=seconds)


def format_interval(interval: timedelta) -> str:
    """gtime.FormatInterval: the largest whole unit (y, d, h, m, s, ms), at least `1ms`."""
    milliseconds = int(interval / timedelta(milliseconds=1))
    for unit, size in (("y", 365 * 86_400_000), ("d", 86_400_000), ("h", 3_600_000)):
        if milliseconds >= size:
            return f"{milliseconds // size}{unit}"
    for unit, size in (("m", 60_000), ("s", 1000), ("ms", 1)):
        if milliseconds >= size:
            return f"{milliseconds // size}{unit}"
    return "1ms"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _epoch_seconds(moment: datetime) -> int:
    """Go's `t.Unix()`: whole seconds, rounded down."""
    return (moment - _EPOCH) // timedelta(seconds=1)


def _epoch_nanos(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


# --- step 1: template variables ----------------------------------------------------------------


def quote_literal(value: str) -> str:
    """The PostgreSQL datasource's quoteLiteral: `'...'` with `'` doubled."""
    return "'" + value.replace("'", "''") + "'"


def format_variable(variable: Variable) -> str:
    """The PostgreSQL datasource's interpolateVariable."""
    if isinstance(variable.value, tuple):
        return ",".join(quote_literal(item) for item in variable.value)
    if variable.multi:
        return quote_literal(variable.value)
    return variable.value.replace("'", "''")


def interpolate_variables(sql: str, variables: Mapping[str, Variable]) -> str:
    """Replace known dashboard variables; unknown `$names` (e.g. `$__timeFilter`) stay as is."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(4)
        if name not in variables:
            return match.group(0)
        if match.group(3) or match.group(5) or match.group(6):
            raise NotImplementedError(f"variable formats are not modelled: {match.group(0)}")
        return format_variable(variables[name])

    return _VARIABLE_PATTERN.sub(replace, sql)


SEARCH_FILTER = "__searchFilter"


def search_filter(typed: str = "") -> dict[str, Variable]:
    """getSearchFilterScopedVar: what a variable query's `$__searchFilter` becomes while the
    user types `typed` in the variable's box (`%` when nothing is typed). A scoped variable that
    is neither multi nor include-All: inserted with `'` doubled, unquoted."""
    return {SEARCH_FILTER: Variable(f"{typed}%" if typed else "%")}


# --- step 2: global substitutions --------------------------------------------------------------


def interpolate_globals(sql: str, time_range: TimeRange, interval: timedelta) -> str:
    milliseconds = int(interval / timedelta(milliseconds=1))
    sql = sql.replace("$__interval_ms", str(milliseconds))
    sql = sql.replace("$__interval", format_interval(interval))
    sql = sql.replace("$__unixEpochFrom()", str(_epoch_seconds(time_range.start)))
    return sql.replace("$__unixEpochTo()", str(_epoch_seconds(time_range.end)))


# --- step 3: macros ----------------------------------------------------------------------------


def _time_group(column: str, interval_arg: str) -> str:
    seconds = parse_interval(interval_arg.strip("'")).total_seconds()
    step = format_go_float(seconds)
    return f"floor(extract(epoch from {column})/{step})*{step}"


def evaluate_macro(name: str, args: Sequence[str], time_range: TimeRange) -> str:
    # No "missing column" error: Go's strings.Split("", ",") gives one empty argument, so
    # `$__timeFilter()` expands with an empty column, exactly as below.
    start, end = time_range.start, time_range.end
    # A third argument of the group macros (fill mode) changes Grafana's post-processing only.
    grouping = ("__timeGroup", "__timeGroupAlias", "__unixEpochGroup", "__unixEpochGroupAlias")
    if name in grouping and len(args) < 2:
        raise MacroError(f"macro {name} needs time column and interval")
    match name:
        case "__time":
            return f'{args[0]} AS "time"'
        case "__timeEpoch":
            return f'extract(epoch from {args[0]}) as "time"'
        case "__timeFilter":
            return f"{args[0]} BETWEEN '{format_rfc3339(start)}' AND '{format_rfc3339(end)}'"
        case "__timeFrom":
            return f"'{format_rfc3339(start)}'"
        case "__timeTo":
            return f"'{format_rfc3339(end)}'"
        case "__timeGroup":
            return _time_group(args[0], args[1])
        case "__timeGroupAlias":
            return _time_group(args[0], args[1]) + ' AS "time"'
        case "__unixEpochFilter":
            column = args[0]
            return f"{column} >= {_epoch_seconds(start)} AND {column} <= {_epoch_seconds(end)}"
        case "__unixEpochNanoFilter":
            column = args[0]
            return f"{column} >= {_epoch_nanos(start)} AND {column} <= {_epoch_nanos(end)}"
        case "__unixEpochNanoFrom":
            return str(_epoch_nanos(start))
        case "__unixEpochNanoTo":
            return str(_epoch_nanos(end))
        case "__unixEpochGroup" | "__unixEpochGroupAlias":
            seconds = format_go_float(parse_interval(args[1].strip("'")).total_seconds())
            alias = ' AS "time"' if name.endswith("Alias") else ""
            return f"floor(({args[0]})/{seconds})*{seconds}{alias}"
        case _:
            raise MacroError(f'unknown macro "{name}"')


def interpolate_macros(sql: str, time_range: TimeRange) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        # Grafana looks at the character after the FIRST occurrence of the same macro text.
        if name == "__timeGroup":
            index = sql.find(match.group(0))
            after = index + len(match.group(0))
            if index >= 0 and after < len(sql) and sql[after] == ",":
                name = "__timeGroupAlias"
        args = [arg.strip(" ") for arg in match.group(2).split(",")]
        return evaluate_macro(name, args, time_range)

    return _MACRO_PATTERN.sub(replace, sql)


def expand(
    sql: str,
    time_range: TimeRange,
    variables: Mapping[str, Variable] | None = None,
    interval: timedelta = timedelta(seconds=1),
) -> str:
    """The SQL Grafana sends to PostgreSQL for `sql` over `time_range`."""
    sql = interpolate_variables(sql, variables or {})
    sql = interpolate_globals(sql, time_range, interval)
    return interpolate_macros(sql, time_range)


# --- loaders -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PanelTarget:
    dashboard_uid: str
    panel_id: int
    panel_title: str
    panel_type: str
    ref_id: str
    format: str
    raw_sql: str
    target: Mapping[str, Any]
    panel: Mapping[str, Any]

    @property
    def name(self) -> str:
        return f"{self.dashboard_uid}/{self.panel_title}/{self.ref_id}"


@dataclass(frozen=True)
class AlertQuery:
    rule_uid: str
    rule_title: str
    ref_id: str
    datasource_uid: str
    relative_from: int
    relative_to: int
    format: str
    raw_sql: str

    @property
    def name(self) -> str:
        return f"{self.rule_uid}/{self.ref_id}"

    def time_range(self, now: datetime) -> TimeRange:
        return TimeRange(
            now - timedelta(seconds=self.relative_from), now - timedelta(seconds=self.relative_to)
        )


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def dashboard_files(directory: Path = DASHBOARD_DIR) -> list[Path]:
    return sorted(directory.glob("*.json"))


def load_dashboards(directory: Path = DASHBOARD_DIR) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in dashboard_files(directory)]


def iter_panels(panels: Sequence[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    """Every panel, including those nested in (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def iter_panel_targets(directory: Path = DASHBOARD_DIR) -> Iterator[PanelTarget]:
    for dashboard in load_dashboards(directory):
        for panel in iter_panels(dashboard.get("panels", [])):
            for target in panel.get("targets", []):
                yield PanelTarget(
                    dashboard_uid=dashboard["uid"],
                    panel_id=panel["id"],
                    panel_title=panel["title"],
                    panel_type=panel["type"],
                    ref_id=target["refId"],
                    format=target.get("format", "time_series"),
                    raw_sql=target["rawSql"],
                    target=target,
                    panel=panel,
                )


def load_alert_rules(path: Path = ALERT_RULES_FILE) -> list[dict[str, Any]]:
    return [rule for group in load_yaml(path)["groups"] for rule in group["rules"]]


def iter_alert_queries(path: Path = ALERT_RULES_FILE) -> Iterator[AlertQuery]:
    """Every datasource (non-expression) query of every rule."""
    for rule in load_alert_rules(path):
        for query in rule["data"]:
            if query["datasourceUid"] == EXPRESSION_DATASOURCE_UID:
                continue
            time_range = query.get("relativeTimeRange", {})
            yield AlertQuery(
                rule_uid=rule["uid"],
                rule_title=rule["title"],
                ref_id=query["refId"],
                datasource_uid=query["datasourceUid"],
                relative_from=time_range.get("from", 0),
                relative_to=time_range.get("to", 0),
                format=query["model"].get("format", "time_series"),
                raw_sql=query["model"]["rawSql"],
            )


def iter_routes(route: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """A notification policy and its nested routes."""
    yield route
    for child in route.get("routes", []):
        yield from iter_routes(child)


def dashboard_variables(
    dashboard: Mapping[str, Any], values: Mapping[str, str | Sequence[str]]
) -> dict[str, Variable]:
    """Variables with the dashboard's own multi/include-All flags and the given current values."""
    variables: dict[str, Variable] = {}
    for definition in dashboard.get("templating", {}).get("list", []):
        name = definition["name"]
        if name not in values:
            continue
        value = values[name]
        multi = bool(definition.get("multi") or definition.get("includeAll"))
        variables[name] = Variable(value if isinstance(value, str) else tuple(value), multi)
    return variables
