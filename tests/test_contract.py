"""The message contract holds on both sides: what the producer publishes, the consumer takes;
what the producer refuses to publish, the consumer would dead-letter. The two scripts are
deployed separately, so each keeps its own copy of the rules; this test keeps them equal."""

from __future__ import annotations

import pytest

from aggregator.events import InvalidEvent, decode_event
from pricefeed.contract import ContractError, make_event
from tests.pipeline import BASE_TIME_MS

NOW_MS = BASE_TIME_MS + 86_400_000

PRICES = [
    "43250.75000000", "0.00000001", "1", "99999999999999999999.5",  # valid
    "0", "0.00000000", "-1.5", "+1.5", "NaN", "Infinity", "1e5", "1E-8", " 5", "5 ",
    "1_000", "١٢", "", ".5", "5.", "1.2.3", "123456789012345678901",
]  # fmt: skip
SYMBOLS = ["BTCUSDT", "ETH-USD", "A.B_C", "btcusdt", "BTC/USDT", "", "X" * 21, "BTC USDT"]


def producer_accepts(symbol: str, price: str) -> bool:
    try:
        make_event(symbol, price, BASE_TIME_MS, "binance")
        return True
    except ContractError:
        return False


def consumer_accepts(symbol: str, price: str) -> bool:
    message = f'{{"symbol":"{symbol}","price":"{price}","event_time":{BASE_TIME_MS},'
    message += '"source":"binance"}'
    try:
        decode_event(message.encode(), NOW_MS)
        return True
    except InvalidEvent:
        return False


@pytest.mark.parametrize("price", PRICES)
def test_both_sides_agree_on_prices(price: str) -> None:
    assert producer_accepts("BTCUSDT", price) == consumer_accepts("BTCUSDT", price)


@pytest.mark.parametrize("symbol", SYMBOLS)
def test_both_sides_agree_on_symbols(symbol: str) -> None:
    assert producer_accepts(symbol, "1.5") == consumer_accepts(symbol, "1.5")


def test_a_published_message_decodes_to_the_same_values() -> None:
    event = make_event("BTCUSDT", "43250.75000000", BASE_TIME_MS, "replay")
    decoded = decode_event(event.to_json_bytes(), NOW_MS)
    assert (decoded.symbol, str(decoded.price), decoded.event_time, decoded.source) == (
        "BTCUSDT",
        "43250.75000000",
        BASE_TIME_MS,
        "replay",
    )
    assert decoded.is_replay


def test_the_cases_cover_both_answers() -> None:
    answers = {consumer_accepts("BTCUSDT", p) for p in PRICES}
    answers |= {consumer_accepts(s, "1.5") for s in SYMBOLS}
    assert answers == {True, False}
