"""The message contract, as a table: every rule's edges, fed to both sides.

The producer builds with `make_event`, the consumer decodes with `decode_event`; both use the
one set of rules in btcpipe.contract, which both scripts install.
For each case both must give the same verdict, with the same reason: what the producer
publishes (its own bytes) the consumer takes, what it refuses the consumer would dead-letter
(a hand-built message, as another producer might send)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from aggregator.core.decoding import decode_event
from btcpipe.contract import (
    EARLIEST_EVENT_MS,
    MAX_FUTURE_MS,
    MAX_MESSAGE_BYTES,
    MAX_SEQ,
    SOURCES,
    ContractError,
    DecodedEvent,
    PriceEvent,
    make_event,
    replay_stream,
)
from btcpipe.contract import ContractError as ConsumerRefuses
from pricefeed.sources.identity import Sequencer
from tests.pipeline import BASE_TIME_MS

NOW_MS = BASE_TIME_MS + 86_400_000  # both sides' clock
LIVE = "binance/BTCUSDT/20260101T000000Z-1a2b3c4d"
VALID: dict[str, Any] = {
    "symbol": "BTCUSDT",
    "price": "43250.75000000",
    "event_time": BASE_TIME_MS,
    "source": "binance",
    "stream": LIVE,
    "seq": 1,
}
TAKEN = None  # the verdict of a valid value; otherwise a part of the reason both give

CASES: list[tuple[str, object, str | None]] = [
    ("symbol", "BTCUSDT", TAKEN),
    ("symbol", "ETH-USD", TAKEN),
    ("symbol", "A.B_C", TAKEN),
    ("symbol", "X" * 20, TAKEN),
    ("symbol", "BTCUSDT\n", "symbol 'BTCUSDT\\n' is not a Binance symbol"),
    ("symbol", "X" * 21, "symbol 'XXX"),
    ("symbol", "btcusdt", "symbol 'btcusdt'"),
    ("symbol", "BTC/USDT", "symbol 'BTC/USDT'"),
    ("symbol", "BTC USDT", "symbol 'BTC USDT'"),
    ("symbol", " BTCUSDT", "symbol ' BTCUSDT'"),
    ("symbol", "", "symbol ''"),
    ("symbol", 5, "symbol 5"),
    ("symbol", None, "symbol None"),
    ("symbol", ["BTCUSDT"], "symbol ['BTCUSDT']"),
    ("price", "43250.75000000", TAKEN),
    ("price", "0.00000001", TAKEN),
    ("price", "1", TAKEN),
    ("price", "007.50", TAKEN),
    ("price", "9" * 20, TAKEN),  # 20 digits before the dot
    ("price", "1." + "0" * 19 + "1", TAKEN),  # 20 after it
    ("price", "9" * 20 + "." + "9" * 20, TAKEN),  # the longest price
    ("price", "1" * 21, "price '111"),
    ("price", "1." + "1" * 21, "price '1.111"),
    ("price", "0", "price '0' is not a positive number"),
    ("price", "0.0", "price '0.0' is not a positive number"),
    ("price", "0.00000000", "price '0.00000000' is not a positive number"),
    ("price", "-1", "price '-1' is not a plain decimal number"),
    ("price", "+1.5", "price '+1.5' is not a plain decimal number"),
    ("price", "1e5", "price '1e5' is not a plain decimal number"),
    ("price", "1E-8", "price '1E-8'"),
    ("price", "NaN", "price 'NaN'"),
    ("price", "Infinity", "price 'Infinity'"),
    ("price", " 1", "price ' 1'"),
    ("price", "1 ", "price '1 '"),
    ("price", "1\n", "price '1\\n'"),
    ("price", "1,5", "price '1,5'"),
    ("price", "1_000", "price '1_000'"),
    ("price", "١٢", "price '١٢'"),  # digits of another script: int() would take them
    ("price", "５", "price '５'"),  # a full-width digit: \d would take it
    ("price", "", "price ''"),
    ("price", ".5", "price '.5'"),
    ("price", "5.", "price '5.'"),
    ("price", "1.2.3", "price '1.2.3'"),
    ("price", 43250.75, "price 43250.75 is not a decimal string"),
    ("price", 5, "price 5 is not a decimal string"),
    ("price", True, "price True is not a decimal string"),
    ("price", None, "price None is not a decimal string"),
    ("price", float("nan"), "price nan"),  # JSON has no NaN: the consumer sees invalid JSON
    ("price", float("inf"), "price inf"),
    ("event_time", EARLIEST_EVENT_MS, TAKEN),
    ("event_time", NOW_MS, TAKEN),
    ("event_time", NOW_MS + MAX_FUTURE_MS, TAKEN),  # exactly at the 5-minute edge
    ("event_time", NOW_MS + MAX_FUTURE_MS + 1, "more than 5 minutes in the future"),
    ("event_time", EARLIEST_EVENT_MS - 1, "before 2009"),
    ("event_time", 1, "event_time 1 is before 2009"),
    ("event_time", 0, "before 2009"),
    ("event_time", -5, "before 2009"),
    ("event_time", NOW_MS // 1000, "before 2009"),  # seconds, not milliseconds
    ("event_time", True, "event_time True is not integer epoch milliseconds"),
    ("event_time", float(NOW_MS), f"event_time {float(NOW_MS)} is not integer"),
    ("event_time", str(NOW_MS), f"event_time {str(NOW_MS)!r} is not integer"),
    ("event_time", None, "event_time None"),
    *[("source", source, TAKEN) for source in SOURCES],
    ("source", "Binance", "source 'Binance' is not one of binance, simulated, replay"),
    ("source", "kraken", "source 'kraken'"),
    ("source", "replay ", "source 'replay '"),
    ("source", "", "source ''"),
    ("source", None, "source None"),
    ("source", 7, "source 7"),
    ("source", ["binance"], "source ['binance']"),
    ("stream", LIVE, TAKEN),
    ("stream", replay_stream("BTCUSDT", "ab" * 32), TAKEN),
    ("stream", "a", TAKEN),
    ("stream", "a:b/c.d_e-F9", TAKEN),
    ("stream", "A" * 128, TAKEN),
    ("stream", "A" * 129, "stream 'AAA"),
    ("stream", "", "stream ''"),
    ("stream", "with space", "stream 'with space'"),
    ("stream", "tab\there", "stream 'tab\\there'"),
    ("stream", "ü/x", "stream 'ü/x'"),
    ("stream", "a\n", "stream 'a\\n'"),
    ("stream", 7, "stream 7"),
    ("stream", None, "missing field 'stream' (seq without stream)"),
    ("seq", 1, TAKEN),
    ("seq", 2, TAKEN),
    ("seq", MAX_SEQ, TAKEN),
    ("seq", 0, "seq 0 is not a positive 64-bit integer"),
    ("seq", -1, "seq -1"),
    ("seq", MAX_SEQ + 1, "seq 9223372036854775808"),
    ("seq", True, "seq True"),
    ("seq", 1.0, "seq 1.0"),
    ("seq", "1", "seq '1'"),
    ("seq", None, "missing field 'seq' (stream without seq)"),
]


def producer_verdict(fields: dict[str, Any]) -> tuple[str | None, bytes]:
    """The producer's reason to refuse (None: it publishes), and the bytes that would reach
    the consumer: its own, or a hand-built message where it refuses."""
    try:
        event = make_event(**fields, now_ms=NOW_MS)
    except ContractError as refused:
        return str(refused), json.dumps(fields).encode()
    return None, event.to_json_bytes()


def consumer_verdict(value: bytes, fields: dict[str, Any] | None = None) -> str | None:
    """The consumer's reason to refuse (None: it takes the message, and with `fields` given,
    decodes to exactly them, the price as a Decimal)."""
    try:
        event = decode_event(value, NOW_MS)
    except ConsumerRefuses as refused:
        return str(refused)
    if fields is not None:
        unset = dict.fromkeys(event._fields)  # a sample: no quantity, trade ids or kline
        assert event._asdict() == {**unset, **fields, "price": Decimal(fields["price"])}
    return None


@pytest.mark.parametrize(
    ("field", "value", "reason"), CASES, ids=[f"{f}={v!r:.30}" for f, v, _ in CASES]
)
def test_both_sides_give_the_same_verdict(field: str, value: object, reason: str | None) -> None:
    fields = {**VALID, field: value}
    produced, message = producer_verdict(fields)
    consumed = consumer_verdict(message, fields if produced is None else None)
    if reason is TAKEN:
        assert (produced, consumed) == (None, None)
    else:
        assert produced is not None and reason in produced, produced
        assert consumed is not None, "the consumer takes what the producer refuses"
        if not consumed.startswith("invalid JSON"):  # NaN and Infinity have no JSON form
            assert consumed == produced
        assert "\n" not in produced and len(produced) < 200, produced


def test_make_event_and_its_json() -> None:
    event = make_event("BTCUSDT", "43250.75000000", 1_767_225_600_039, "binance", LIVE, 3)
    assert event == PriceEvent("BTCUSDT", "43250.75000000", 1_767_225_600_039, "binance", LIVE, 3)
    assert event.key() == b"BTCUSDT"
    assert json.loads(event.to_json_bytes()) == {
        "symbol": "BTCUSDT",
        "price": "43250.75000000",
        "event_time": 1_767_225_600_039,
        "source": "binance",
        "stream": LIVE,
        "seq": 3,
    }
    assert b'"price":"43250.75000000"' in event.to_json_bytes()  # a string, never a float


def test_the_cases_cover_both_verdicts_for_every_field() -> None:
    verdicts = {(field, reason is TAKEN) for field, _, reason in CASES}
    assert verdicts == {(field, taken) for field in VALID for taken in (True, False)}


def test_a_published_message_decodes_to_the_same_values_and_identity() -> None:
    sequencer = Sequencer("simulated", run_id="20260101T000000Z-00000000")
    sequencer.event("BTCUSDT", "1", BASE_TIME_MS)
    event = sequencer.event("BTCUSDT", "43250.75000000", BASE_TIME_MS)
    decoded = decode_event(event.to_json_bytes(), NOW_MS)
    assert str(decoded.price) == "43250.75000000"
    assert decoded == DecodedEvent(
        "BTCUSDT",
        Decimal("43250.75000000"),
        BASE_TIME_MS,
        "simulated",
        "simulated/BTCUSDT/20260101T000000Z-00000000",
        2,
    )
    assert decoded.feed == "samples"


def test_the_largest_event_the_producer_can_build_fits_the_consumers_size_limit() -> None:
    """make_event bounds every field, so its messages stay far below MAX_MESSAGE_BYTES and no
    check of the size is needed per message."""
    largest = make_event(
        symbol="X" * 20,
        price="9" * 20 + "." + "9" * 20,
        event_time=NOW_MS + MAX_FUTURE_MS,
        source="simulated",
        stream="A" * 128,
        seq=MAX_SEQ,
        now_ms=NOW_MS,
    )
    value = largest.to_json_bytes()
    assert len(value) < 300 < MAX_MESSAGE_BYTES
    assert consumer_verdict(value) is None
    assert "exceeds" in str(consumer_verdict(value.ljust(MAX_MESSAGE_BYTES + 1)))


def test_the_producer_judges_event_time_by_the_wall_clock_by_default() -> None:
    """A simulated or replayed time is published only if the consumer, on a real clock, will
    take it."""
    fields = {**VALID, "event_time": BASE_TIME_MS}
    assert make_event(**fields).event_time == BASE_TIME_MS
    with pytest.raises(ContractError, match="in the future"):
        make_event(**{**fields, "event_time": 4_102_444_800_000})  # 2100


def test_a_message_of_the_previous_release_has_no_identity_and_is_still_taken() -> None:
    old = {k: v for k, v in VALID.items() if k not in ("stream", "seq")}
    decoded = decode_event(json.dumps(old).encode(), NOW_MS)
    assert (decoded.stream, decoded.seq) == (None, None)
