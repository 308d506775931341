"""Every panel of both dashboards, expanded as Grafana would (tests/grafana/sql.py) and run as
the read-only grafana_reader role against databases the real pipeline filled (history
replayed by producer.py, live messages through a real Kafka-protocol broker, consumer.py):
each shows exactly the rows computed offline from what was published
(tests/grafana/panels.py), with any selection of pairs, on an empty database and with
thousands of pairs."""

from __future__ import annotations

import itertools
from contextlib import closing
from datetime import UTC, datetime, timedelta

import psycopg2
import psycopg2.extensions

from tests.grafana.database import reader_connection
from tests.grafana.panels import (
    EXPECTED,
    PRICE,
    TRADES_ONLY,
    all_symbols,
    assert_panels_show,
    assert_rows_match,
    dashboard_range,
    panel_selections,
    price_range,
    run_panel,
    seconds_since_last_event,
    symbol_options,
    symbol_variable,
)
from tests.grafana.pipeline_runs import (
    INVALID,
    LIVE,
    REPLAY,
    SYMBOLS,
    WINDOW,
    HealthyRun,
    PipelineData,
    floor_time,
)
from tests.grafana.sql import (
    TimeRange,
    iter_panel_targets,
)
from tests.harness import PostgresServer


def test_the_pipeline_stored_exactly_what_was_published(healthy: HealthyRun) -> None:
    """The premise of every expectation below: the consumer's windows are the offline truth
    of the published events, and its metrics account for every message."""
    pipeline = healthy.pipeline
    pipeline.assert_stored_exactly_what_was_published()
    assert pipeline.late == 1 and pipeline.invalid == len(INVALID)
    assert {row.instance_id for row in healthy.data.metrics} == {"consumer-a", "consumer-b"}
    assert {e.source for e in pipeline.events} == {LIVE, REPLAY}
    # SOLUSDT's history has a gap longer than the rolling average's reach: after it, the
    # "30-minute rolling average" panel must restart instead of reaching back (its expected
    # rows below; the view's arithmetic itself is test_store.py's).
    sol = [w.start for w in healthy.data.windows if w.symbol == "SOLUSDT"]
    (gap,) = [b - a for a, b in itertools.pairwise(sol) if b - a > WINDOW]
    assert gap > timedelta(minutes=25)


def test_every_panel_has_an_expected_value() -> None:
    panels = {(t.dashboard_uid, t.panel_title) for t in iter_panel_targets()}
    assert panels == set(EXPECTED)


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
                    assert "C0001USDT" not in str(result.rows), target.name
                    # Windows of price samples only: the panels of trades show none.
                    assert bool(result.rows) != (target.panel_title in TRADES_ONLY), target.name
