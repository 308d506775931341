"""The Binance edge's pure parts: ticker-price request parameters, parsing the answers."""

from __future__ import annotations

import json
import re

import pytest

from pricefeed.binance.rest import (
    InvalidResponse,
    parse_ticker_prices,
    readable_times,
    ticker_price_params,
)
from tests.harness.fake_binance import SYMBOLS_PATTERN

FIFTY_SYMBOLS = [f"C{i:02d}USDT" for i in range(50)]


def test_one_symbol_uses_the_symbol_parameter() -> None:
    assert ticker_price_params(["BTCUSDT"]) == {"symbol": "BTCUSDT"}


def test_several_symbols_are_one_compact_json_symbols_parameter() -> None:
    params = ticker_price_params(["BTCUSDT", "ETHUSDT"])
    assert params == {"symbols": '["BTCUSDT","ETHUSDT"]'}


def test_fifty_symbols_stay_one_parameter_binance_accepts() -> None:
    params = ticker_price_params(FIFTY_SYMBOLS)
    assert list(params) == ["symbols"]
    assert json.loads(params["symbols"]) == FIFTY_SYMBOLS
    assert " " not in params["symbols"]
    assert re.fullmatch(SYMBOLS_PATTERN, params["symbols"])


def test_every_pair_is_the_request_without_parameters() -> None:
    assert ticker_price_params(None) == {}


def test_parse_one_object_and_a_list() -> None:
    one = {"symbol": "BTCUSDT", "price": "43250.75000000"}
    two = [one, {"symbol": "ETHUSDT", "price": "2300.10000000"}]
    assert parse_ticker_prices(one) == [("BTCUSDT", "43250.75000000")]
    assert parse_ticker_prices(two) == [
        ("BTCUSDT", "43250.75000000"),
        ("ETHUSDT", "2300.10000000"),
    ]
    assert parse_ticker_prices([]) == []


def test_parse_keeps_bad_prices_for_the_contract_to_judge() -> None:
    payload = [{"symbol": "BTCUSDT", "price": 5.0}, {"symbol": "ETHUSDT"}]
    assert parse_ticker_prices(payload) == [("BTCUSDT", 5.0), ("ETHUSDT", None)]


@pytest.mark.parametrize(
    "payload",
    [
        None,
        "BTCUSDT",
        {"code": -1121, "msg": "Invalid symbol."},
        [{"price": "1.0"}],
        [{"symbol": "BTCUSDT", "price": "1.0"}, 42],
        [{"symbol": ["BTCUSDT"], "price": "1.0"}],
        [{"symbol": None, "price": "1.0"}],
    ],
    ids=[
        "null",
        "string",
        "error-body",
        "no-symbol",
        "not-an-object",
        "list-symbol",
        "null-symbol",
    ],
)
def test_parse_rejects_bodies_that_are_not_ticker_prices(payload: object) -> None:
    with pytest.raises(InvalidResponse):
        parse_ticker_prices(payload)


def test_a_ban_end_in_epoch_milliseconds_reads_as_an_iso_utc_time() -> None:
    msg = (
        "Way too much request weight used; IP banned until 1767225600000. "
        "Please use the websocket for live updates to avoid bans."
    )
    assert readable_times(msg) == (
        "Way too much request weight used; IP banned until 2026-01-01T00:00:00Z "
        "(1767225600000). Please use the websocket for live updates to avoid bans."
    )


@pytest.mark.parametrize(
    "msg",
    ["Invalid symbol.", "IP banned until later.", "banned until 99999999999999999"],
    ids=["no-ban", "no-number", "out-of-range"],
)
def test_other_messages_are_kept_as_sent(msg: str) -> None:
    assert readable_times(msg) == msg
