"""decode_event on whole messages: size, JSON, object, fields present (rules: test_contract)."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from aggregator.shared.contract import (
    MAX_MESSAGE_BYTES,
    ContractError,
    decode_event,
)
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
        # The rules of each field: tests/test_contract.py, on both sides.
    ],
    ids=lambda x: f"{len(x)} bytes: {x[:40]!r}" if isinstance(x, bytes) else None,
)
def test_decode_rejects_with_a_reason_naming_the_problem(value: bytes | None, reason: str):
    with pytest.raises(ContractError) as caught:
        decode_event(value, NOW_MS)
    text = str(caught.value)
    assert reason in text, text
    assert "\n" not in text and len(text) < 200, text
