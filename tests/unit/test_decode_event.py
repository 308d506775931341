"""decode_event on whole messages: size, JSON, object, fields present (rules: test_contract),
and its hot path, which must decide as the full rules do."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.core import decoding
from aggregator.core.decoding import decode_event
from btcpipe.contract import MAX_MESSAGE_BYTES, ContractError, decode_message
from tests.pipeline import (
    NOW_MS,
    VALID,
    message,
)


def without(field: str) -> bytes:
    return json.dumps({k: v for k, v in VALID.items() if k != field}).encode()


def test_decode_accepts_a_message_of_exactly_the_size_limit() -> None:
    padded = message().ljust(MAX_MESSAGE_BYTES)  # JSON allows trailing whitespace
    assert len(padded) == MAX_MESSAGE_BYTES
    assert decode_event(padded, NOW_MS).price == Decimal("43250.75000000")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "no value"),
        (b"", "invalid JSON"),
        (b"{not json", "invalid JSON"),
        (b"\xff\xfe\x00garbage", "invalid JSON"),
        (b"[" * 5000, "invalid JSON"),  # deeper than Python's recursion limit
        (message().ljust(MAX_MESSAGE_BYTES + 1), f"exceeds {MAX_MESSAGE_BYTES}"),
        (b"[1, 2]", "not a JSON object"),
        (b'"BTCUSDT"', "not a JSON object"),
        (b"42", "not a JSON object"),
        (b"null", "not a JSON object"),
        (without("symbol"), "missing field 'symbol'"),
        (without("price"), "missing field 'price'"),
        (without("event_time"), "missing field 'event_time'"),
        (without("source"), "missing field 'source'"),
        # The rules of each field: tests/unit/test_contract.py, on both sides.
    ],
    ids=lambda x: f"{len(x)} bytes: {x[:40]!r}" if isinstance(x, bytes) else None,
)
def test_decode_rejects_with_a_reason_naming_the_problem(value: bytes | None, reason: str):
    with pytest.raises(ContractError) as caught:
        decode_event(value, NOW_MS)
    text = str(caught.value)
    assert reason in text, text
    assert "\n" not in text and len(text) < 200, text


# The hot path (msgspec) takes a message whose names and price were accepted before; the full
# rules (orjson, every check) decide the rest. Around an event with known names, each message
# must get the same verdict, and the same event or reason, either way.
STREAM = "binance/BTCUSDT/20260101T000000Z-1a2b3c4d"
KNOWN = message(stream=STREAM, seq=7)
KNOWN_TEXT = KNOWN.decode()


def known(**changes: object) -> bytes:
    return message(**{"stream": STREAM, "seq": 7, **changes})


AROUND_A_KNOWN_EVENT: dict[str, bytes | None] = {
    "the event": KNOWN,
    "without identity": message(),
    "identity null": message(stream=None, seq=None),
    "stream null, seq set": known(stream=None),
    "seq null, stream set": known(seq=None),
    "padded to the limit": KNOWN.ljust(MAX_MESSAGE_BYTES),
    "padded beyond the limit": KNOWN.ljust(MAX_MESSAGE_BYTES + 1),
    "a repeated key, the last one valid": KNOWN_TEXT.replace("{", '{"seq": 0, ', 1).encode(),
    "a repeated key, the last one invalid": KNOWN_TEXT.replace("}", ', "seq": 0}').encode(),
    # orjson refuses the whole message for a number beyond a double's range.
    "a repeated key, the first one beyond a double": (
        KNOWN_TEXT.replace("{", '{"seq": 2' + "0" * 308 + ", ", 1).encode()
    ),
    "a repeated key, the first one a huge time": (
        KNOWN_TEXT.replace("{", '{"event_time": -1' + "0" * 400 + ", ", 1).encode()
    ),
    "an unknown field": known(note="x"),
    "a byte-order mark": b"\xef\xbb\xbf" + KNOWN,
    "text after the object": KNOWN + b" x",
    "escaped name": KNOWN_TEXT.replace("BTCUSDT", "\\u0042TCUSDT", 1).encode(),
    "lone surrogate": KNOWN_TEXT.replace("BTCUSDT", "\\ud800", 1).encode(),
    "a price not seen yet": known(price="43250.75000001"),
    "a price as a number": known(price=43250.75),
    "event_time true": known(event_time=True),
    "event_time as a float": known(event_time=float(NOW_MS)),
    "event_time with an exponent": KNOWN_TEXT.replace(str(NOW_MS), "1.7e12").encode(),
    "event_time before 2009": known(event_time=1_230_767_999_999),
    "event_time beyond now + 5 min": known(event_time=NOW_MS + 5 * 60_000 + 1),
    "event_time at now + 5 min": known(event_time=NOW_MS + 5 * 60_000),
    "seq 0": known(seq=0),
    "seq 2**63": known(seq=2**63),
    "seq 2**64 + 1": known(seq=2**64 + 1),
    "seq 1e3": KNOWN_TEXT.replace('"seq": 7', '"seq": 1e3').encode(),
    "an unknown source": known(source="other"),
    "a symbol not seen yet": known(symbol="NEWPAIR"),
    "an array": b"[" + KNOWN + b"]",
    "no value": None,
    "a trade": known(quantity="0.5", first_trade_id=5, last_trade_id=7),
    "a trade of one raw trade": known(quantity="0.5", first_trade_id=5, last_trade_id=5),
    "a trade without identity": message(quantity="0.5", first_trade_id=5, last_trade_id=7),
    "a trade of quantity 0": known(quantity="0.000", first_trade_id=5, last_trade_id=7),
    "a trade with ids backwards": known(quantity="0.5", first_trade_id=8, last_trade_id=7),
    "a trade without its last id": known(quantity="0.5", first_trade_id=5),
    "trade ids without a quantity": known(first_trade_id=5, last_trade_id=7),
    "a trade id beyond 64 bits": known(quantity="0.5", first_trade_id=5, last_trade_id=2**63),
    "a trade id of -1": known(quantity="0.5", first_trade_id=-1, last_trade_id=-1),
    "a kline": known(kline={"interval": "1m"}),
}


def outcome(decode: Callable[[bytes | None, int], object], value: bytes | None) -> object:
    try:
        return decode(value, NOW_MS)
    except ContractError as refused:
        return f"refused: {refused}"


@pytest.mark.parametrize("value", AROUND_A_KNOWN_EVENT.values(), ids=AROUND_A_KNOWN_EVENT)
def test_the_hot_path_gives_the_verdict_of_the_full_rules(value: bytes | None) -> None:
    decode_event(KNOWN, NOW_MS)  # its names and price are known from here on
    assert outcome(decode_event, value) == outcome(decode_message, value)


def test_a_message_with_known_names_takes_the_hot_path(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = decode_event(KNOWN, NOW_MS)

    def not_expected(value: bytes | None, now_ms: int) -> None:
        raise AssertionError("the full rules were asked")

    monkeypatch.setattr(decoding, "decode_message", not_expected)
    assert decode_event(KNOWN, NOW_MS) == expected
    assert decode_event(message(), NOW_MS) == expected._replace(stream=None, seq=None)


# Property-based: a known sample or trade with any of its fields replaced by another valid or
# invalid value, or removed, or an unknown field added, gets the same verdict and the same
# event or reason from the hot path as from the full rules.
REMOVED = object()
TRADE_STREAM = "aggtrades/BTCUSDT"
BASES = [
    json.loads(KNOWN),
    {**json.loads(KNOWN), "stream": TRADE_STREAM, "quantity": "0.08185",
     "first_trade_id": 5, "last_trade_id": 7},
]  # fmt: skip
VALUES: dict[str, list[object]] = {
    "symbol": ["BTCUSDT", "ETHUSDT", "btcusdt", "", "X" * 21, 7, None],
    "price": ["43250.75000000", "2300.1", "0", "0.0", "1e3", "-1", " 1", "1.", 43250.75, None],
    "event_time": [NOW_MS, NOW_MS + 300_000, NOW_MS + 300_001, 1_230_767_999_999, True,
                   1.5e12, "1767225600000", 2**64, None],
    "source": ["binance", "simulated", "replay", "other", None, 1],
    "stream": [STREAM, TRADE_STREAM, "a b", "", None, 5],
    "seq": [1, 7, 0, -1, 2**63 - 1, 2**63, True, "7", None],
    "quantity": ["0.08185", "1", "0", "00.000", "1e-3", 0.5, "", None],
    "first_trade_id": [0, 5, 7, 8, 2**63 - 1, 2**63, -1, True, "5", None],
    "last_trade_id": [0, 5, 7, 8, 2**63 - 1, 2**63, -1, True, "5", None],
    "kline": [{"interval": "1m"}, None],
    "extra": [1],
}  # fmt: skip
# At most three fields changed at once: near a valid message, where the paths could differ.
CHANGES = st.lists(st.sampled_from(list(VALUES)), max_size=3, unique=True).flatmap(
    lambda fields: st.fixed_dictionaries(
        {field: st.sampled_from([*list(VALUES[field]), REMOVED]) for field in fields}
    )
)


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(BASES), CHANGES)
def test_any_change_to_a_known_message_gets_the_same_verdict_both_ways(
    base: dict[str, object], changes: dict[str, object]
) -> None:
    for known_message in BASES:  # known names and prices: the hot path is open to them
        decode_event(json.dumps(known_message).encode(), NOW_MS)
    body = {**base, **changes}
    value = json.dumps({k: v for k, v in body.items() if v is not REMOVED}).encode()
    assert outcome(decode_event, value) == outcome(decode_message, value)
