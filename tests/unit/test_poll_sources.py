"""The live poll sources: the ticker's prices to events with identities, the seeded simulated
walk, and what each tells the poller."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import pytest

from btcpipe.contract import PriceEvent, check_price
from pricefeed.binance.rest import INVALID_SYMBOL, BinanceClient, RateLimited, Rejected
from pricefeed.sources.base import PollFailed, SourceError
from pricefeed.sources.identity import Sequencer, new_run_id
from pricefeed.sources.simulated import SimulatedSource
from pricefeed.sources.ticker import TickerSource, events_from_pairs
from tests.producer_parts import T0

EIGHT_DECIMALS = re.compile(r"[0-9]+\.[0-9]{8}")


def test_events_from_pairs_with_all_symbols_takes_every_valid_pair(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pairs = [(f"C{i}USDT", f"{i + 1}.5") for i in range(3000)] + [("BADUSDT", "-1")]
    sequencer = Sequencer("binance", run_id="r")
    events = events_from_pairs(pairs, None, 1_767_225_600_000, sequencer)
    assert [(e.symbol, e.price) for e in events] == pairs[:-1]
    assert {(e.stream, e.seq) for e in events[:2]} == {
        ("binance/C0USDT/r", 1),
        ("binance/C1USDT/r", 1),
    }
    assert "Skipped invalid price for BADUSDT" in caplog.text
    assert "not asked for" not in caplog.text and "no price for" not in caplog.text


def test_events_from_pairs_skips_only_the_bad_symbol(caplog: pytest.LogCaptureFixture) -> None:
    pairs = [("BTCUSDT", "43250.75000000"), ("ETHUSDT", "NaN"), ("XRPUSDT", "0.5")]
    sequencer = Sequencer("binance", run_id="run-1")
    with caplog.at_level(logging.WARNING, logger="producer"):
        events = events_from_pairs(pairs, ["BTCUSDT", "ETHUSDT", "SOLUSDT"], T0, sequencer)
    stream = "binance/BTCUSDT/run-1"
    assert events == [PriceEvent("BTCUSDT", "43250.75000000", T0, "binance", stream, 1)]
    assert "Skipped invalid price for ETHUSDT" in caplog.text
    assert "'XRPUSDT', which was not asked for" in caplog.text
    assert "no price for SOLUSDT" in caplog.text


def test_live_identity_numbers_each_symbol_from_1_and_skips_no_number() -> None:
    """Every event made is sent in that order, so seq follows the order of the stream; an
    invalid price uses no number (no gap a reader could mistake for a loss)."""
    sequencer = Sequencer("binance", run_id="r")
    made = [
        events_from_pairs(
            [("BTCUSDT", "1.5"), ("ETHUSDT", "2")], ["BTCUSDT", "ETHUSDT"], T0, sequencer
        ),
        events_from_pairs(
            [("BTCUSDT", "-1"), ("ETHUSDT", "3")], ["BTCUSDT", "ETHUSDT"], T0, sequencer
        ),
        events_from_pairs(
            [("BTCUSDT", "1.6"), ("ETHUSDT", "4")], ["BTCUSDT", "ETHUSDT"], T0, sequencer
        ),
    ]
    identities = [(e.stream, e.seq) for events in made for e in events]
    assert identities == [
        ("binance/BTCUSDT/r", 1),
        ("binance/ETHUSDT/r", 1),
        ("binance/ETHUSDT/r", 2),
        ("binance/BTCUSDT/r", 2),
        ("binance/ETHUSDT/r", 3),
    ]


def test_a_producer_restart_starts_new_streams() -> None:
    runs = {new_run_id() for _ in range(100)}
    assert len(runs) == 100  # the same second, still 100 different runs
    one, other = SimulatedSource(["BTCUSDT"], 1), SimulatedSource(["BTCUSDT"], 1)
    first, second = one.poll()[0], other.poll()[0]
    assert first.price == second.price and first.seq == second.seq == 1
    assert first.stream != second.stream
    assert first.stream.startswith("simulated/BTCUSDT/")


def simulated_prices(seed: int, ticks: int, symbols: Sequence[str]) -> list[list[str]]:
    source = SimulatedSource(symbols, seed, clock=lambda: 1_767_225_600_000)
    return [[event.price for event in source.poll()] for _ in range(ticks)]


def test_simulated_source_is_deterministic_for_a_seed() -> None:
    symbols = ["BTCUSDT", "ETHUSDT", "DOGEUSDT"]
    assert simulated_prices(42, 200, symbols) == simulated_prices(42, 200, symbols)
    assert simulated_prices(42, 200, symbols) != simulated_prices(43, 200, symbols)


def test_simulated_source_prices_are_positive_eight_decimal_contract_events() -> None:
    times = iter(range(T0, T0 + 10_000))
    source = SimulatedSource(["BTCUSDT", "ETHUSDT", "DOGEUSDT"], 9, clock=lambda: next(times))
    btc = []
    for tick in range(500):
        events = source.poll()
        assert [e.symbol for e in events] == ["BTCUSDT", "ETHUSDT", "DOGEUSDT"]
        assert {e.event_time for e in events} == {T0 + tick}  # one time per tick
        for event in events:
            assert event.source == "simulated"
            assert EIGHT_DECIMALS.fullmatch(event.price), event.price
            assert check_price(event.price) == event.price
        btc.append(float(events[0].price))
    assert min(btc) > 30_000 and max(btc) < 60_000  # a walk near the start price
    assert len(set(btc)) > 400  # that really moves


class LimitedClient(BinanceClient):
    """A client whose every request Binance answers with 429 (no network)."""

    def __init__(self) -> None:
        super().__init__("http://127.0.0.1:1", 1.0)

    def ticker_prices(self, symbols: Sequence[str] | None) -> list[tuple[str, object]]:
        raise RateLimited(429, 3.0, "HTTP 429: slow down")


def test_a_ticker_failure_is_a_poll_failure_said_and_timed_as_binance_says() -> None:
    source = TickerSource(LimitedClient(), ["BTCUSDT"])
    with pytest.raises(PollFailed) as failure:
        source.poll()
    assert isinstance(failure.value.__cause__, RateLimited)
    assert failure.value.retry_after == 3.0
    assert failure.value.level == logging.WARNING
    assert failure.value.explain("next poll in 3.0 s") == (
        "Binance rate limit: HTTP 429: slow down; Retry-After 3 s, next poll in 3.0 s"
    )


def test_each_poll_source_says_what_it_polls_and_how_many_events_a_tick_brings() -> None:
    client = BinanceClient("http://127.0.0.1:1", 1.0)
    some, every = TickerSource(client, ["BTCUSDT", "ETHUSDT"]), TickerSource(client, None)
    assert (some.polls_for, some.events_per_tick) == ("BTCUSDT, ETHUSDT", 2)
    assert (every.polls_for, every.events_per_tick) == ("every pair Binance lists", None)
    simulated = SimulatedSource(["BTCUSDT", "ETHUSDT", "SOLUSDT"], 1)
    assert (simulated.polls_for, simulated.events_per_tick) == ("BTCUSDT, ETHUSDT, SOLUSDT", 3)


class ListingClient(BinanceClient):
    """Binance listing `listed` (symbol -> price), answering as it does (no network): a
    request naming a symbol it does not list is refused with 400, code -1121."""

    def __init__(self, listed: dict[str, str]) -> None:
        super().__init__("http://127.0.0.1:1", 1.0)
        self.listed = listed
        self.asked: list[tuple[str, ...] | None] = []

    def ticker_prices(self, symbols: Sequence[str] | None) -> list[tuple[str, object]]:
        self.asked.append(None if symbols is None else tuple(symbols))
        if symbols is None:
            return list(self.listed.items())
        if any(symbol not in self.listed for symbol in symbols):
            raise Rejected("HTTP 400: Invalid symbol. (code -1121)", INVALID_SYMBOL)
        return [(symbol, self.listed[symbol]) for symbol in symbols]


LISTED = {"BTCUSDT": "43250.75000000", "ETHUSDT": "2300.10000000", "SOLUSDT": "150.00000000"}


def test_the_first_poll_asks_for_every_pair_and_keeps_the_named_ones() -> None:
    client = ListingClient(dict(LISTED))
    source = TickerSource(client, ["ETHUSDT", "BTCUSDT"])
    first, second = source.poll(), source.poll()
    assert client.asked == [None, ("ETHUSDT", "BTCUSDT")]
    for events in (first, second):
        assert sorted((e.symbol, e.price) for e in events) == [
            ("BTCUSDT", LISTED["BTCUSDT"]),
            ("ETHUSDT", LISTED["ETHUSDT"]),
        ]
    assert [e.seq for e in first + second if e.symbol == "BTCUSDT"] == [1, 2]


def test_a_symbol_binance_does_not_list_at_start_stops_the_source_naming_it() -> None:
    source = TickerSource(ListingClient(dict(LISTED)), ["BTCUSDT", "NOTAPAIR", "ZZZUSDT"])
    with pytest.raises(SourceError) as stopped:
        source.poll()
    assert str(stopped.value) == (
        "SYMBOLS names 2 pairs that Binance does not list: NOTAPAIR, ZZZUSDT."
    )


def test_a_failed_first_poll_is_retried_and_the_listing_checked_on_the_next() -> None:
    source = TickerSource(LimitedClient(), ["NOTAPAIR"])
    with pytest.raises(PollFailed):
        source.poll()
    source.client = ListingClient(dict(LISTED))
    with pytest.raises(SourceError, match="does not list: NOTAPAIR"):
        source.poll()


def test_a_symbol_delisted_later_is_dropped_with_a_warning_and_the_others_polled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = ListingClient(dict(LISTED))
    source = TickerSource(client, ["BTCUSDT", "SOLUSDT", "ETHUSDT"])
    source.poll()
    del client.listed["SOLUSDT"]
    with caplog.at_level(logging.WARNING, "producer"):
        delisted_tick = source.poll()
    assert sorted(e.symbol for e in delisted_tick) == ["BTCUSDT", "ETHUSDT"]
    assert caplog.messages == [
        "Binance no longer lists SOLUSDT (HTTP 400: Invalid symbol. (code -1121)): dropped, "
        "polling BTCUSDT, ETHUSDT"
    ]
    assert (source.polls_for, source.events_per_tick) == ("BTCUSDT, ETHUSDT", 2)
    assert sorted(e.symbol for e in source.poll()) == ["BTCUSDT", "ETHUSDT"]
    assert client.asked[-3:] == [("BTCUSDT", "SOLUSDT", "ETHUSDT"), None, ("BTCUSDT", "ETHUSDT")]


def test_with_every_named_symbol_delisted_the_source_stops() -> None:
    client = ListingClient(dict(LISTED))
    source = TickerSource(client, ["SOLUSDT"])
    source.poll()
    client.listed.pop("SOLUSDT")
    with pytest.raises(SourceError) as stopped:
        source.poll()
    assert (
        str(stopped.value) == "Binance no longer lists any of SYMBOLS (SOLUSDT): nothing to poll."
    )


def test_another_rejection_is_a_poll_failure_not_a_listing_check() -> None:
    class Refusing(ListingClient):
        def ticker_prices(self, symbols: Sequence[str] | None) -> list[tuple[str, object]]:
            if symbols is not None:
                raise Rejected(
                    "HTTP 400: Illegal characters found in parameter. (code -1100)", -1100
                )
            return super().ticker_prices(symbols)

    client = Refusing(dict(LISTED))
    source = TickerSource(client, ["BTCUSDT"])
    source.poll()
    with pytest.raises(PollFailed, match="code -1100"):
        source.poll()
    assert client.asked == [None]


def test_every_pair_with_all_symbols_needs_no_listing_check() -> None:
    client = ListingClient(dict(LISTED))
    assert len(TickerSource(client, None).poll()) == 3
    assert client.asked == [None]
