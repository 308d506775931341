"""Grafana's PostgreSQL macro expansion as tests/grafana/sql.py reproduces it: the examples of
Grafana's documentation, and the corner cases of Grafana 12.0.2's own code."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from tests.grafana.sql import (
    MacroError,
    TimeRange,
    Variable,
    expand,
    format_interval,
    format_rfc3339,
    interpolate_variables,
    search_filter,
)

# The examples of the macro table in Grafana's documentation of its PostgreSQL data source.
# Each case below is what Grafana 12.0.2's own code does; tests/grafana/sql.py cites the lines of
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
