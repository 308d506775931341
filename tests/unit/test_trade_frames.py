"""Reading what Binance sends for the trade source: WebSocket frames and REST aggTrades rows,
as trades (the contract's trade events, Binance's exact text) or refused with a reason."""

from __future__ import annotations

import json
from typing import Any

import pytest

from btcpipe.contract import PriceEvent
from pricefeed.binance.rest import agg_trades_params, weight_pause
from pricefeed.binance.ws import combined_url, in_url, stream_groups
from pricefeed.sources.trades.frames import (
    LiveTrade,
    Refused,
    Reply,
    Shutdown,
    TradeRow,
    parse_frame,
    parse_rest_rows,
)
from pricefeed.sources.trades.source import stream_name

NOW = 1_767_225_900_000  # 2026-01-01T00:05:00Z
T = NOW - 60_000
SYMBOLS = frozenset({"BTCUSDT", "ETHUSDT"})


def agg_trade(**changes: Any) -> dict[str, Any]:
    event = {
        "e": "aggTrade", "E": T + 5, "s": "BTCUSDT", "a": 26129, "p": "43250.10000000",
        "q": "0.00120000", "f": 27781, "l": 27783, "T": T, "m": True, "M": True,
    }  # fmt: skip
    event.update(changes)
    return event


def frame(body: object) -> str:
    return json.dumps(body)


def test_an_agg_trade_becomes_a_trade_event_of_the_exact_text() -> None:
    parsed = parse_frame(frame(agg_trade()), SYMBOLS, NOW)
    assert parsed == LiveTrade(
        TradeRow(
            "BTCUSDT",
            26129,
            T,
            PriceEvent(
                "BTCUSDT",
                "43250.10000000",
                T,
                "binance",
                "aggtrades/BTCUSDT",
                26129,
                "0.00120000",
                27781,
                27783,
            ),
        )
    )


def test_a_combined_streams_wrapper_is_taken_off() -> None:
    wrapped = {"stream": "btcusdt@aggTrade", "data": agg_trade()}
    assert parse_frame(frame(wrapped), SYMBOLS, NOW) == parse_frame(
        frame(agg_trade()), SYMBOLS, NOW
    )


def test_shutdown_notices_and_replies_are_no_trades() -> None:
    notice = {"e": "serverShutdown", "E": NOW}
    assert parse_frame(frame(notice), SYMBOLS, NOW) == Shutdown()
    assert parse_frame(frame({"stream": "!serverShutdown", "data": notice}), SYMBOLS, NOW) == (
        Shutdown()
    )
    assert parse_frame(b'{"result":null,"id":1}', SYMBOLS, NOW) == Reply()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"e":"aggTrade","s":"BTC', "a frame that is not JSON: "),
        (b"\xff\xfe", "a frame that is not JSON"),
        ("[1, 2]", "a frame that is not a JSON object"),
        (frame({"e": "kline", "s": "BTCUSDT"}), "an event of unknown type 'kline'"),
        (frame({"s": "BTCUSDT"}), "an event of unknown type None"),
        (frame(agg_trade(s="SOLUSDT")), "a trade of 'SOLUSDT', which was not asked for"),
        (frame(agg_trade(a="26129")), "BTCUSDT: aggregate id '26129' is not an integer"),
        (frame(agg_trade(a=True)), "BTCUSDT: aggregate id True is not an integer"),
        (frame({"error": {"code": 2, "msg": "Invalid request"}, "id": 1}), "with an error"),
    ],
)
def test_frames_that_cannot_be_placed_are_refused_with_the_reason(
    text: str | bytes, reason: str
) -> None:
    parsed = parse_frame(text, SYMBOLS, NOW)
    assert isinstance(parsed, Refused)
    assert reason in parsed.reason


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"p": "0.00000000"}, "price '0.00000000' is not a positive number"),
        ({"p": "-1.5"}, "price '-1.5' is not a plain decimal number"),
        ({"p": "1e5"}, "price '1e5' is not a plain decimal number"),
        ({"p": 43250.1}, "price 43250.1 is not a decimal string"),
        ({"q": "0"}, "quantity '0' is not a positive plain decimal string"),
        ({"q": " 1.0"}, "quantity ' 1.0' is not a positive plain decimal string"),
        ({"q": None}, "missing field 'quantity'"),
        ({"f": 9, "l": 3}, "first_trade_id 9 is after last_trade_id 3"),
        ({"T": "soon"}, "trade time 'soon' is not an integer"),
        ({"T": NOW + 3_600_000}, "more than 5 minutes in the future"),
        ({"p": "0.00000000", "q": "0.00000000", "f": -1, "l": -1}, "invalid placeholder"),
    ],
)
def test_a_placed_trade_that_breaks_the_contract_keeps_its_id_and_says_why(
    changes: dict[str, Any], reason: str
) -> None:
    parsed = parse_frame(frame(agg_trade(**changes)), SYMBOLS, NOW)
    assert isinstance(parsed, LiveTrade)
    assert parsed.row.agg_id == 26129 and parsed.row.event is None
    assert parsed.row.reason is not None and reason in parsed.row.reason, parsed.row.reason
    assert parsed.row.reason.startswith("BTCUSDT aggregate trade 26129")


def test_rest_rows_are_read_in_order_and_unplaceable_ones_reported() -> None:
    rows = [
        {"a": 7, "p": "1.5", "q": "2", "f": 10, "l": 10, "T": T, "m": False, "M": True},
        {"a": "x", "p": "1.5", "q": "2", "f": 11, "l": 11, "T": T},
        {"a": 8, "p": "0.00000000", "q": "0.00000000", "f": -1, "l": -1, "T": T},
    ]
    parsed = parse_rest_rows("ETHUSDT", rows, NOW)
    assert parsed is not None
    placed, refused = parsed
    assert [(r.agg_id, r.event is not None) for r in placed] == [(7, True), (8, False)]
    assert placed[0].event == PriceEvent(
        "ETHUSDT", "1.5", T, "binance", "aggtrades/ETHUSDT", 7, "2", 10, 10
    )
    assert refused == ["ETHUSDT: aggregate id 'x' is not an integer"]
    assert parse_rest_rows("ETHUSDT", {"code": -1121}, NOW) is None
    assert parse_rest_rows("ETHUSDT", [1, 2], NOW) is None
    assert parse_rest_rows("ETHUSDT", [], NOW) == ([], [])


def test_agg_trades_pages_ask_by_id_or_by_time_never_both() -> None:
    assert agg_trades_params("BTCUSDT", 41, None) == {
        "symbol": "BTCUSDT", "limit": "1000", "fromId": "41"
    }  # fmt: skip
    assert agg_trades_params("BTCUSDT", None, T) == {
        "symbol": "BTCUSDT", "limit": "1000", "startTime": str(T)
    }  # fmt: skip
    assert agg_trades_params("BTCUSDT", 41, T)["fromId"] == "41"
    assert "startTime" not in agg_trades_params("BTCUSDT", 41, T)


def test_past_the_weight_budget_the_next_page_waits_for_the_next_minute() -> None:
    assert weight_pause(None, 125.0) == 0.0
    assert weight_pause(4799, 125.0) == 0.0
    assert weight_pause(4800, 125.0) == 55.0
    assert weight_pause(6000, 179.5) == 0.5


def test_streams_are_split_evenly_over_connections_of_at_most_1024() -> None:
    every_pair = [stream_name(f"P{i}USDT") for i in range(3000)]
    groups = stream_groups(every_pair)
    assert [len(g) for g in groups] == [1000, 1000, 1000]
    assert [stream for group in groups for stream in group] == every_pair
    assert [len(g) for g in stream_groups(every_pair[:1025])] == [513, 512]
    assert stream_groups(["btcusdt@aggTrade"]) == [["btcusdt@aggTrade"]]


def test_the_url_holds_the_streams_that_fit_the_rest_are_subscribed() -> None:
    assert stream_name("BTCUSDT") == "btcusdt@aggTrade"
    streams = [stream_name(f"P{i:04d}USDT") for i in range(1000)]  # 18 characters each
    fits = in_url(streams)
    assert fits == 6000 // 19
    assert len("/".join(streams[:fits])) <= 6000 < len("/".join(streams[: fits + 1]))
    assert in_url(streams[:3]) == 3
    assert in_url(["x" * 7000]) == 1  # one stream always goes in the URL
    assert combined_url("wss://stream.binance.com:9443/", ["a@aggTrade", "b@aggTrade"]) == (
        "wss://stream.binance.com:9443/stream?streams=a@aggTrade/b@aggTrade"
    )
