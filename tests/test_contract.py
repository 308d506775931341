"""The message contract holds on both sides: what the producer publishes, the consumer takes;
what the producer refuses to publish, the consumer would dead-letter. The two scripts are
deployed separately, so each keeps its own copy of the rules; this test keeps them equal,
identity (stream, seq) and the closed set of sources included."""

from __future__ import annotations

import json
from typing import Any

import pytest

from aggregator.events import InvalidEvent, decode_event
from pricefeed.contract import ContractError, make_event, replay_stream
from pricefeed.sources import Sequencer
from tests.pipeline import BASE_TIME_MS

NOW_MS = BASE_TIME_MS + 86_400_000
VALID: dict[str, Any] = {
    "symbol": "BTCUSDT",
    "price": "43250.75000000",
    "event_time": BASE_TIME_MS,
    "source": "binance",
    "stream": "binance/BTCUSDT/20260101T000000Z-1a2b3c4d",
    "seq": 1,
}

PRICES = [
    "43250.75000000", "0.00000001", "1", "99999999999999999999.5",  # valid
    "0", "0.00000000", "-1.5", "+1.5", "NaN", "Infinity", "1e5", "1E-8", " 5", "5 ",
    "1_000", "١٢", "", ".5", "5.", "1.2.3", "123456789012345678901",
]  # fmt: skip
SYMBOLS = ["BTCUSDT", "ETH-USD", "A.B_C", "btcusdt", "BTC/USDT", "", "X" * 21, "BTC USDT"]
SOURCES = ["binance", "simulated", "replay", "Binance", "kraken", "", "replay "]
STREAMS = [
    "binance/BTCUSDT/20260101T000000Z-1a2b3c4d",
    replay_stream("BTCUSDT", "ab" * 32),
    "a",
    "A" * 128,
    "A" * 129,
    "",
    "with space",
    "tab\there",
    "ü/x",
    "a\n",
]
SEQS = [1, 2, 2**63 - 1, 0, -1, 2**63]


def producer_accepts(**changes: Any) -> bool:
    fields = {**VALID, **changes}
    try:
        make_event(**fields)
        return True
    except ContractError:
        return False


def consumer_accepts(**changes: Any) -> bool:
    try:
        decode_event(json.dumps({**VALID, **changes}).encode(), NOW_MS)
        return True
    except InvalidEvent:
        return False


CASES = (
    [("price", p) for p in PRICES]
    + [("symbol", s) for s in SYMBOLS]
    + [("source", s) for s in SOURCES]
    + [("stream", s) for s in STREAMS]
    + [("seq", q) for q in SEQS]
)


@pytest.mark.parametrize(("field", "value"), CASES, ids=[f"{f}={v!r:.30}" for f, v in CASES])
def test_both_sides_agree(field: str, value: object) -> None:
    assert producer_accepts(**{field: value}) == consumer_accepts(**{field: value})


def test_the_cases_cover_both_answers_for_every_field() -> None:
    for field in ("price", "symbol", "source", "stream", "seq"):
        answers = {consumer_accepts(**{field: value}) for f, value in CASES if f == field}
        assert answers == {True, False}, field


def test_a_published_message_decodes_to_the_same_values_and_identity() -> None:
    sequencer = Sequencer("simulated", run_id="20260101T000000Z-00000000")
    sequencer.event("BTCUSDT", "1", BASE_TIME_MS)
    event = sequencer.event("BTCUSDT", "43250.75000000", BASE_TIME_MS)
    decoded = decode_event(event.to_json_bytes(), NOW_MS)
    assert (decoded.symbol, str(decoded.price), decoded.event_time, decoded.source) == (
        "BTCUSDT",
        "43250.75000000",
        BASE_TIME_MS,
        "simulated",
    )
    assert (decoded.stream, decoded.seq) == ("simulated/BTCUSDT/20260101T000000Z-00000000", 2)


def test_a_message_of_the_previous_release_has_no_identity_and_is_still_taken() -> None:
    old = {k: v for k, v in VALID.items() if k not in ("stream", "seq")}
    decoded = decode_event(json.dumps(old).encode(), NOW_MS)
    assert (decoded.stream, decoded.seq) == (None, None)
    assert not consumer_accepts(stream=None) and not consumer_accepts(seq=None)
