"""The trade source's REST pages (pricefeed/sources/trades/pages.py) against the fake
Binance over HTTP: a page fetched ahead is the page taken, asked for once; a request waits
for the one before it to be answered; what the page ahead met is raised when it is taken."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pricefeed.binance.rest import BinanceClient, RateLimited
from pricefeed.sources.trades.join import FromId, FromTime
from pricefeed.sources.trades.pages import PageFetcher
from tests.harness import FakeBinance, Fault
from tests.harness.market_data import AGG_TRADES_PATH


@pytest.fixture
def binance() -> Iterator[FakeBinance]:
    with FakeBinance(prices={}) as fake:
        fake.add_trades("BTCUSDT", 1500)
        fake.add_trades("ETHUSDT", 10)
        yield fake


def ids(page: object) -> list[int]:
    assert isinstance(page, list)
    return [row["a"] for row in page]


def test_a_page_fetched_ahead_is_the_page_taken_and_asked_for_once(binance: FakeBinance):
    first = binance.trades("BTCUSDT")[0].agg_id
    pages = PageFetcher(BinanceClient(binance.base_url, 5.0))
    now = pages.page("BTCUSDT", FromId(first))
    pages.fetch_ahead("BTCUSDT", FromId(first + 1000))
    ahead = pages.page("BTCUSDT", FromId(first + 1000))
    asked = [r.query["fromId"] for r in binance.requests_to(AGG_TRADES_PATH)]
    assert ids(now) == list(range(first, first + 1000))
    assert ids(ahead) == list(range(first + 1000, first + 1500))
    assert asked == [str(first), str(first + 1000)]


def test_a_page_not_wanted_is_dropped_and_the_next_request_waits_for_its_answer(
    binance: FakeBinance,
) -> None:
    pages = PageFetcher(BinanceClient(binance.base_url, 5.0))
    eth = binance.trades("ETHUSDT")
    binance.fail_next(Fault.slow(0.5), path=AGG_TRADES_PATH)
    pages.fetch_ahead("BTCUSDT", FromId(binance.trades("BTCUSDT")[0].agg_id))
    taken = pages.page("ETHUSDT", FromTime(eth[0].time_ms))
    ahead, asked = binance.requests_to(AGG_TRADES_PATH)
    assert ids(taken) == [trade.agg_id for trade in eth]
    assert (ahead.query["symbol"], asked.query["symbol"]) == ("BTCUSDT", "ETHUSDT")
    assert asked.monotonic - ahead.monotonic >= 0.5  # the slow answer came first


def test_what_the_page_ahead_met_is_raised_when_it_is_taken(binance: FakeBinance) -> None:
    first = binance.trades("BTCUSDT")[0].agg_id
    pages = PageFetcher(BinanceClient(binance.base_url, 5.0))
    binance.fail_next(Fault.rate_limited(retry_after=3), path=AGG_TRADES_PATH)
    pages.fetch_ahead("BTCUSDT", FromId(first))
    with pytest.raises(RateLimited) as caught:
        pages.page("BTCUSDT", FromId(first))
    assert caught.value.retry_after == 3
    assert ids(pages.page("BTCUSDT", FromId(first)))[0] == first  # asked again: answered
