"""Joining REST's pages with the live stream, per symbol: every id once, in id order, held
live trades after the fill, gaps said with their window, refused rows using up their id."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from btcpipe.contract import PriceEvent
from pricefeed.sources.trades.frames import TradeRow
from pricefeed.sources.trades.join import (
    SHORT_PAGES_BEFORE_GAP,
    FromId,
    FromTime,
    Gap,
    LiveOrder,
    SymbolJoin,
    window_start,
)

START = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def row(agg_id: int, bad: bool = False) -> TradeRow:
    time_ms = START + agg_id * 1000
    if bad:
        return TradeRow("BTCUSDT", agg_id, time_ms, None, f"trade {agg_id} is bad")
    event = PriceEvent(
        "BTCUSDT", "1.5", time_ms, "binance", "aggtrades/BTCUSDT", agg_id, "1", agg_id, agg_id
    )
    return TradeRow("BTCUSDT", agg_id, time_ms, event)


def ids(events: list[PriceEvent]) -> list[int]:
    return [event.seq for event in events]


def rows(first: int, last: int) -> list[TradeRow]:
    return [row(i) for i in range(first, last + 1)]


def test_a_first_start_asks_by_time_then_pages_by_id_until_a_short_page() -> None:
    join = SymbolJoin("BTCUSDT", since_ms=START)
    assert join.next_request() == FromTime(START)
    assert ids(join.page(rows(10, 19), full=True).events) == list(range(10, 20))
    assert join.next_request() == FromId(20)
    assert ids(join.page(rows(20, 24), full=False).events) == list(range(20, 25))
    assert join.next_request() is None and not join.filling
    assert ids(join.live(row(25)).events) == [25]


def test_live_trades_wait_while_filling_and_follow_the_fill_without_repeats() -> None:
    join = SymbolJoin("BTCUSDT", last=9)
    for agg_id in (14, 15, 16):
        assert join.live(row(agg_id)).events == []
    step = join.page(rows(10, 15), full=True)  # REST reached the held trades
    assert ids(step.events) == [10, 11, 12, 13, 14, 15, 16]
    assert step.gaps == [] and not join.filling
    assert join.live(row(16)).events == []  # a repeat: dropped
    assert ids(join.live(row(17)).events) == [17]


def test_a_live_id_that_skips_ahead_fills_from_rest_again() -> None:
    join = SymbolJoin("BTCUSDT", last=9, filling=False)
    assert ids(join.live(row(10)).events) == [10]
    assert join.live(row(13)).events == []
    assert join.next_request() == FromId(11)
    assert ids(join.page(rows(11, 13), full=False).events) == [11, 12, 13]


def test_ids_rest_skips_are_a_gap_with_its_window() -> None:
    join = SymbolJoin("BTCUSDT", last=9)
    join.live(row(400))
    step = join.page([*rows(10, 11), *rows(15, 20)], full=False)
    assert ids(step.events) == [10, 11, *range(15, 21)]
    before, after = START + 11_000, START + 15_000
    assert step.gaps == [Gap("BTCUSDT", 12, 14, before, after)]  # REST skipped them: at once
    assert step.gaps[0].describe() == (
        "BTCUSDT: aggregate trade ids 12-14 served neither live nor by REST, in the window "
        "of 2026-01-01T00:00:00Z"
    )
    for _ in range(SHORT_PAGES_BEFORE_GAP - 1):
        step = join.page([], full=False)
    assert ids(step.events) == [400]
    assert step.gaps == [Gap("BTCUSDT", 21, 399, START + 20_000, START + 400_000)]
    assert (
        step.gaps[0]
        .describe()
        .endswith("between the windows of 2026-01-01T00:00:00Z and 2026-01-01T00:05:00Z")
    )
    assert Gap("X", 5, 5, None, None).describe() == (
        "X: aggregate trade id 5 served neither live nor by REST, in an unknown window"
    )


def test_rest_stopping_short_of_the_stream_is_asked_again_before_a_gap_is_said() -> None:
    join = SymbolJoin("BTCUSDT", last=9, filling=False)
    join.live(row(15))  # 10-14 missed
    assert ids(join.page(rows(10, 11), full=False).events) == [10, 11]  # REST lags
    assert join.waits_for_rest and join.next_request() == FromId(12)
    assert ids(join.page(rows(12, 14), full=False).events) == [12, 13, 14, 15]  # it caught up
    assert not join.filling and not join.waits_for_rest
    join.live(row(20))  # 16-19 missed, and REST never serves them
    for _ in range(SHORT_PAGES_BEFORE_GAP - 1):
        step = join.page([], full=False)
        assert step.events == [] and step.gaps == [] and join.waits_for_rest
    step = join.page([], full=False)
    assert ids(step.events) == [20] and step.gaps == [Gap("BTCUSDT", 16, 19, *times(15, 20))]
    assert not join.filling and join.short_pages == 0


def times(before: int, after: int) -> tuple[int, int]:
    return START + before * 1000, START + after * 1000


def test_refused_rows_use_up_their_id_and_are_no_gap() -> None:
    join = SymbolJoin("BTCUSDT", last=9)
    step = join.page([row(10), row(11, bad=True), row(12)], full=False)
    assert ids(step.events) == [10, 12]
    assert [r.agg_id for r in step.refused] == [11]
    assert step.gaps == []


def test_with_no_trade_since_the_time_the_first_live_trade_starts_it() -> None:
    join = SymbolJoin("BTCUSDT", since_ms=START)
    join.live(row(7))
    assert ids(join.page([], full=False).events) == [7]
    assert join.since_ms is None and ids(join.live(row(8)).events) == [8]


def test_a_reconnect_before_any_trade_asks_by_time_again() -> None:
    join = SymbolJoin("BTCUSDT", since_ms=START)
    join.page([], full=False)
    join.reconnected()
    assert join.next_request() == FromTime(START)


def test_a_reconnect_drops_what_was_held_and_fills_from_the_last_id() -> None:
    join = SymbolJoin("BTCUSDT", last=9)
    join.live(row(12))
    join.reconnected()
    assert join.held == {} and join.next_request() == FromId(10)


def test_an_id_going_back_on_one_connection_is_bad_across_connections_not() -> None:
    order = LiveOrder()
    assert not order.went_back(1, row(5))
    assert order.went_back(1, row(5)) and order.went_back(1, row(4))
    assert not order.went_back(2, row(3))  # another connection: its own order
    order.forget(1)
    assert not order.went_back(1, row(1))


def test_window_start_is_the_5_minute_grid() -> None:
    assert window_start(START + 299_999) == START
    assert window_start(START + 300_000) == START + 300_000


@given(
    st.lists(st.integers(min_value=0, max_value=6), min_size=1, max_size=8),
    st.integers(min_value=0, max_value=2**32),
)
def test_any_cuts_and_overlaps_publish_every_id_once_in_order(lags: list[int], seed: int) -> None:
    """Trades happen one by one; each connection misses the first `lag` trades after it
    opens, sometimes gets a recent trade twice (two connections overlapping), and REST pages
    of 7 come at random moments between trades. Whatever the order, once a live trade
    follows the last connection's fill, the ids published are 1..the last trade, each once,
    in order."""
    rng = random.Random(seed)
    join = SymbolJoin("BTCUSDT", since_ms=START)
    published: list[int] = []
    now = 0  # the last trade's id: what REST can serve
    for lag in lags:
        join.reconnected()
        live_from = now + 1 + lag
        for _ in range(rng.randint(1, 30)):
            now += 1
            if now >= live_from:
                published += ids(join.live(row(now)).events)
                if now > 1 and rng.random() < 0.2:
                    published += ids(join.live(row(now - rng.randint(1, min(3, now - 1)))).events)
            if rng.random() < 0.4:
                published += ids(fill_once(join, now))
        while join.next_request() is not None:
            published += ids(fill_once(join, now))
    # A trade missed while the join was live (a stream subscribed late) shows at the next.
    now += 1
    published += ids(join.live(row(now)).events)
    while join.next_request() is not None:
        published += ids(fill_once(join, now))
    assert published == list(range(1, now + 1))


def fill_once(join: SymbolJoin, now: int) -> list[PriceEvent]:
    """One REST page of what has traded by `now`."""
    request = join.next_request()
    if request is None:
        return []
    first = request.agg_id if isinstance(request, FromId) else 1
    page = rows(first, min(first + 6, now))
    return join.page(page, full=len(page) == 7).events
