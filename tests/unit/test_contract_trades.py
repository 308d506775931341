"""The contract's trades and candles, fed to both sides: what the producer builds
(`make_event` with a quantity and trade ids, or a kline) the consumer decodes to the same exact
values; what one refuses the other refuses with the same reason."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.core.decoding import decode_event
from btcpipe.contract import (
    EARLIEST_EVENT_MS,
    MAX_FUTURE_MS,
    ContractError,
    DecodedKline,
    PriceEvent,
    agg_trade_stream,
    kline_stream,
    make_event,
    make_trade,
    trade_stream,
)
from tests.pipeline import BASE_TIME_MS

NOW_MS = BASE_TIME_MS + 86_400_000
OPEN = BASE_TIME_MS - BASE_TIME_MS % 60_000  # a minute's start
TRADE: dict[str, Any] = {
    "symbol": "BTCUSDT",
    "price": "87648.21000000",
    "event_time": BASE_TIME_MS,
    "source": "replay",
    "stream": agg_trade_stream("BTCUSDT"),
    "seq": 3_800_397_495,
    "quantity": "0.08185000",
    "first_trade_id": 5_723_703_861,
    "last_trade_id": 5_723_703_863,
}
KLINE_BODY: dict[str, Any] = {
    "interval": "1m",
    "open_time": OPEN,
    "open": "7195.24000000",
    "high": "7196.25000000",
    "low": "7183.14000000",
    "close": "7186.68000000",
    "volume": "51.64281200",
    "quote_volume": "371233.51835535",
    "trade_count": 493,
}
KLINE: dict[str, Any] = {
    "symbol": "BTCUSDT",
    "price": "7186.68000000",
    "event_time": OPEN + 59_999,
    "source": "replay",
    "stream": kline_stream("BTCUSDT", "1m"),
    "seq": OPEN,
    "kline": KLINE_BODY,
}


def producer_verdict(fields: dict[str, Any]) -> str | None:
    body = {
        k: v
        for k, v in fields.items()
        if k not in ("quantity", "first_trade_id", "last_trade_id", "kline")
    }
    extra = {
        k: fields[k]
        for k in ("quantity", "first_trade_id", "last_trade_id", "kline")
        if k in fields
    }
    try:
        make_event(**body, now_ms=NOW_MS, **extra)
    except ContractError as refused:
        return str(refused)
    return None


def consumer_verdict(fields: dict[str, Any]) -> str | None:
    try:
        decode_event(json.dumps(fields).encode(), NOW_MS)
    except ContractError as refused:
        return str(refused)
    return None


def with_kline(**changes: Any) -> dict[str, Any]:
    return {**KLINE, "kline": {**KLINE_BODY, **changes}}


TAKEN = None
CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("a trade", TRADE, TAKEN),
    (
        "one raw trade",
        {**TRADE, "stream": trade_stream("BTCUSDT"), "first_trade_id": 7, "last_trade_id": 7},
        TAKEN,
    ),
    ("trade id 0", {**TRADE, "first_trade_id": 0, "last_trade_id": 0}, TAKEN),
    ("quantity 0", {**TRADE, "quantity": "0.00000000"}, "not a positive"),
    ("quantity negative", {**TRADE, "quantity": "-1"}, "not a positive"),
    ("quantity a number", {**TRADE, "quantity": 0.5}, "not a positive"),
    ("quantity 1e3", {**TRADE, "quantity": "1e3"}, "not a positive"),
    ("ids backwards", {**TRADE, "first_trade_id": 9, "last_trade_id": 8}, "is after"),
    (
        "id -1 (a placeholder row)",
        {**TRADE, "first_trade_id": -1, "last_trade_id": -1},
        "not a trade id",
    ),
    ("id beyond 2^63", {**TRADE, "last_trade_id": 2**63}, "not a trade id"),
    ("id a string", {**TRADE, "first_trade_id": "5"}, "not an integer trade id"),
    ("id true", {**TRADE, "first_trade_id": True}, "not an integer trade id"),
    (
        "quantity without ids",
        {k: v for k, v in TRADE.items() if "trade_id" not in k},
        "missing field 'first_trade_id'",
    ),
    (
        "ids without quantity",
        {k: v for k, v in TRADE.items() if k != "quantity"},
        "missing field 'quantity'",
    ),
    ("a candle", KLINE, TAKEN),
    (
        "a candle without trades",
        with_kline(
            volume="0",
            quote_volume="0.00",
            trade_count=0,
            open="7186.68",
            high="7186.68",
            low="7186.68",
        ),
        TAKEN,
    ),
    (
        "a 5m candle",
        {
            **KLINE,
            "event_time": OPEN - OPEN % 300_000 + 299_999,
            "kline": {**KLINE_BODY, "interval": "5m", "open_time": OPEN - OPEN % 300_000},
        },
        TAKEN,
    ),
    ("an hour's candle", with_kline(interval="1h"), "not one of 1s, 1m, 5m"),
    ("open time inside the minute", with_kline(open_time=OPEN + 1), "does not start a 1m"),
    (
        "close time not the event time",
        {**KLINE, "event_time": OPEN + 60_000},
        "is not the close time",
    ),
    ("high below the close", with_kline(high="7186.00"), "not low <= open, close <= high"),
    ("low above the open", with_kline(low="7195.25"), "not low <= open, close <= high"),
    ("close not the price", {**KLINE, "price": "7186.69"}, "is not the kline's close"),
    ("the close as the price in other digits", {**KLINE, "price": "7186.68"}, TAKEN),
    ("open abc", with_kline(open="abc"), "not a plain decimal"),
    ("volume negative", with_kline(volume="-1"), "kline volume"),
    ("trade count a string", with_kline(trade_count="493"), "not a count of trades"),
    (
        "a field missing",
        {**KLINE, "kline": {k: v for k, v in KLINE_BODY.items() if k != "volume"}},
        "missing volume",
    ),
    ("a field unknown", with_kline(taker="1"), "unknown taker"),
    ("kline not an object", {**KLINE, "kline": [1, 2]}, "not a JSON object"),
    (
        "both a trade and a candle",
        {**KLINE, "quantity": "1", "first_trade_id": 1, "last_trade_id": 1},
        "not both",
    ),
]


@pytest.mark.parametrize(("name", "fields", "reason"), CASES, ids=[c[0] for c in CASES])
def test_both_sides_give_the_same_verdict(
    name: str, fields: dict[str, Any], reason: str | None
) -> None:
    produced, consumed = producer_verdict(fields), consumer_verdict(fields)
    if reason is None:
        assert (produced, consumed) == (None, None)
    else:
        assert produced is not None and reason in produced, produced
        assert consumed == produced


def test_a_published_trade_decodes_to_its_exact_values() -> None:
    event = make_event(
        **{k: TRADE[k] for k in list(TRADE)[:6]},
        now_ms=NOW_MS,
        quantity=TRADE["quantity"],
        first_trade_id=TRADE["first_trade_id"],
        last_trade_id=TRADE["last_trade_id"],
    )
    assert event.feed == "trades"
    decoded = decode_event(event.to_json_bytes(), NOW_MS)
    decoded_again = decode_event(event.to_json_bytes(), NOW_MS)  # by the hot path now
    assert decoded == decoded_again
    assert (decoded.quantity, decoded.first_trade_id, decoded.last_trade_id) == (
        Decimal("0.08185000"),
        5_723_703_861,
        5_723_703_863,
    )
    assert decoded.feed == "trades" and decoded.kline is None


def test_a_published_candle_decodes_to_its_exact_values() -> None:
    event = make_event(**{k: KLINE[k] for k in list(KLINE)[:6]}, now_ms=NOW_MS, kline=KLINE_BODY)
    assert event.feed == "klines"
    assert json.loads(event.to_json_bytes())["kline"] == KLINE_BODY
    decoded = decode_event(event.to_json_bytes(), NOW_MS)
    assert decoded.feed == "klines" and decoded.quantity is None
    assert decoded.kline == DecodedKline(
        "1m",
        OPEN,
        Decimal("7195.24"),
        Decimal("7196.25"),
        Decimal("7183.14"),
        Decimal("7186.68"),
        Decimal("51.642812"),
        Decimal("371233.51835535"),
        493,
    )


# make_trade is make_event's hot path for trades: it must give the same event, or refuse with
# the same reason, whatever it is given (names accepted before or not, every bound, every type).
SOME_VALUES: list[object] = [None, True, False, 0.5, 7, "7", [], {}, ""]
PLAIN_TEXT = st.text(alphabet="0123456789.-e +", max_size=24)
AMOUNTS = st.one_of(
    st.sampled_from(["87648.21000000", "0", "0.000", "00.10", "1.", ".5", "1" * 21, "1e3"]),
    PLAIN_TEXT,
    st.sampled_from(SOME_VALUES),
)
EDGES = [
    EARLIEST_EVENT_MS - 1,
    EARLIEST_EVENT_MS,
    NOW_MS + MAX_FUTURE_MS,
    NOW_MS + MAX_FUTURE_MS + 1,
]
TIMES = st.one_of(st.sampled_from(EDGES), st.integers(), st.sampled_from(SOME_VALUES))
IDS = st.one_of(
    st.sampled_from([-1, 0, 1, 2**63 - 1, 2**63]), st.integers(), st.sampled_from(SOME_VALUES)
)
NAMES = st.one_of(
    st.sampled_from(["BTCUSDT", "ETHUSDT", "btcusdt", "A" * 21, "BTC USDT"]),
    st.text(alphabet="ABCXYZ019-_./:", min_size=1, max_size=30),  # new names, valid or not
    st.sampled_from(SOME_VALUES),
)
STREAMS = st.one_of(
    st.sampled_from([agg_trade_stream("BTCUSDT"), trade_stream("BTCUSDT"), "bad stream!"]),
    NAMES,
)


def verdict(build: Callable[[], object]) -> object:
    try:
        event = build()
    except ContractError as refused:
        return str(refused)
    assert type(event) is PriceEvent
    return event


@settings(max_examples=2000, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "symbol": NAMES,
            "price": AMOUNTS,
            "event_time": TIMES,
            "source": st.sampled_from(["binance", "replay", "simulated", "nasdaq", ""]),
            "stream": STREAMS,
            "seq": IDS,
            "quantity": AMOUNTS,
            "first_trade_id": IDS,
            "last_trade_id": IDS,
        },
    )
)
def test_make_trade_decides_as_make_event(changes: dict[str, Any]) -> None:
    fields = {**TRADE, **changes}
    symbol, price, time, source, stream, seq = (fields[name] for name in list(TRADE)[:6])
    quantity, first, last = fields["quantity"], fields["first_trade_id"], fields["last_trade_id"]
    fast = verdict(
        lambda: make_trade(symbol, price, time, source, stream, seq, NOW_MS, quantity, first, last)
    )
    full = verdict(
        lambda: make_event(
            symbol,
            price,
            time,
            source,
            stream,
            seq,
            NOW_MS,
            quantity=quantity,
            first_trade_id=first,
            last_trade_id=last,
        )
    )
    assert fast == full
    if changes == {}:
        assert fast == PriceEvent(**fields)
