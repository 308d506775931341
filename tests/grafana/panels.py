"""Every panel as a dashboard shows it, and the rows it must show.

The expectations are computed offline, in Python, from the published events (their windows)
and the pipeline_metrics rows the consumer wrote; they share no code with the SQL."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg2
import psycopg2.extensions

from tests.grafana.database import (
    STRING_OIDS,
    QueryResult,
    check_table,
    check_time_series,
    run_query,
)
from tests.grafana.pipeline_runs import BUCKET, EPOCH, MetricRow, PipelineData, Window
from tests.grafana.sql import (
    PanelTarget,
    TimeRange,
    dashboard_variables,
    expand,
    iter_panel_targets,
    load_dashboards,
    search_filter,
)


def symbol_variable() -> dict[str, Any]:
    (board,) = [b for b in load_dashboards() if b["title"] == "Bitcoin Price"]
    (variable,) = board["templating"]["list"]
    return variable


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
# Price panels that show only windows of trades: empty where a pair has price samples only.
TRADES_ONLY = {"Trades per second (5-minute)", "Incomplete trade windows"}
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
    (PRICE, "$symbol 5-minute candles"): lambda d, s, sym: [
        (
            w.start,
            float(w.open),
            float(w.high),
            float(w.low),
            float(w.close),
            float(w.count if w.volume is None else w.volume),
            None if not w.volume or w.quote_volume is None else float(w.quote_volume / w.volume),
        )
        for w in windows_in(d, s, sym)
    ],
    (PRICE, "Trades per second (5-minute)"): lambda d, s, sym: [
        (w.start, w.symbol, w.trade_count / 300)
        for w in windows_in(d, s, sym)
        if w.trade_count is not None and w.first_trade_id is not None
    ],
    (PRICE, "Incomplete trade windows"): lambda d, s, sym: [
        (w.symbol, w.start, float(w.trade_count), float(missing))
        for w in sorted(windows_in(d, s, sym), key=lambda w: (-w.start.timestamp(), w.symbol))
        if w.trade_count is not None
        and w.first_trade_id is not None
        and w.last_trade_id is not None
        and (missing := w.last_trade_id - w.first_trade_id + 1 - w.trade_count)
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
    (KPI, "Messages removed unread"): lambda d, s, _: [
        (t, float(sum(r.skipped_offsets for r in rows)))
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
