"""The contract's rules, written once: one check per field, the bounds they enforce, and the
closed set of sources. Pure, no I/O.

The producer builds messages with these checks (`events.make_event`), the consumer decodes
with them (`decoding.decode_message`). Hot paths that cannot afford a call per field (the
consumer's msgspec decoder, the replay reader) take their bounds from the constants here, and
tests hold them to the checks.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# Binance's own rule for symbol names (rest-api.md, "symbol" parameter); always fullmatch.
SYMBOL_PATTERN = re.compile(r"[A-Z0-9\-_.]{1,20}")
# Plain decimal notation only, as Binance writes prices: no exponent (1e999999 would overflow
# NUMERIC), no sign, no spaces, so every price that fits is finite.
PRICE_PATTERN = re.compile(r"[0-9]{1,20}(?:\.[0-9]{1,20})?")
EARLIEST_EVENT_MS = 1_230_768_000_000  # 2009-01-01T00:00:00Z: nothing older is a real price
MAX_FUTURE_MS = 5 * 60 * 1000  # clocks drift; an event further ahead than this is wrong
MAX_MESSAGE_BYTES = 16 * 1024  # a price message is ~100 bytes, at most ~300 (see the test)
REPLAY_SOURCE = "replay"  # history loaded later: in its windows, but not processing lag
SOURCES = ("binance", "simulated", REPLAY_SOURCE)  # a closed set: anything else is refused
# Stream ids: letters, digits and . _ : / - (ids are built by events.live_stream and
# events.replay_stream).
STREAM_PATTERN = re.compile(r"[A-Za-z0-9._:/-]{1,128}")
MAX_SEQ = 2**63 - 1  # PostgreSQL bigint
MAX_ACCEPTED_NAMES = 10_000  # names remembered as accepted (symbols, streams): bounded memory


class ContractError(ValueError):
    """A value that breaks the contract: the producer does not publish it, the consumer sends
    the message to the dead-letter table. The text says why, in one line."""


def _name_check(
    field: str, pattern: re.Pattern[str], meaning: str
) -> tuple[frozenset[str] | set[str], Callable[[object], str]]:
    """The check of names that fit `pattern` (symbols, streams), and the set of names it has
    accepted: they are few, and nearly every message repeats one, so each is matched once."""
    valid: set[str] = set()

    def check(name: object) -> str:
        # A list or object is unhashable: `in` on the set would raise TypeError, not reject it.
        if isinstance(name, str) and name in valid:
            return name
        if not isinstance(name, str) or not pattern.fullmatch(name):
            raise ContractError(f"{field} {name!r:.40} is not {meaning}")
        if len(valid) < MAX_ACCEPTED_NAMES:
            valid.add(name)
        return name

    return valid, check


# The sets are the checks' memory: a name in them has passed its check (hot paths look there).
accepted_symbols, check_symbol = _name_check("symbol", SYMBOL_PATTERN, "a Binance symbol")
accepted_streams, check_stream = _name_check("stream", STREAM_PATTERN, "a stream id")


def is_positive_plain_decimal(text: str) -> bool:
    """Whether a string is a price: plain decimal notation (PRICE_PATTERN), not zero."""
    # Digits and at most one dot: zero is the only value that is not positive (cheaper than
    # building a Decimal for every line of a replay).
    return PRICE_PATTERN.fullmatch(text) is not None and bool(text.strip("0."))


def check_price(price: object) -> str:
    """The price string unchanged, if it is a positive plain decimal (finite by its form)."""
    # A string only: a JSON number would already have passed through a binary float.
    if not isinstance(price, str):
        raise ContractError(f"price {price!r:.40} is not a decimal string")
    if not PRICE_PATTERN.fullmatch(price):
        raise ContractError(f"price {price!r:.40} is not a plain decimal number")
    if not is_positive_plain_decimal(price):
        raise ContractError(f"price {price!r:.40} is not a positive number")
    return price


def event_time_in_range(event_time: int, now_ms: int) -> bool:
    """The bounds of check_event_time, for an int (hot paths)."""
    return EARLIEST_EVENT_MS <= event_time <= now_ms + MAX_FUTURE_MS


def check_event_time(event_time: object, now_ms: int) -> int:
    """Epoch milliseconds from 2009 up to MAX_FUTURE_MS ahead of `now_ms` (the clock of the
    side that checks: the producer's when it publishes, the consumer's when it receives)."""
    if isinstance(event_time, bool) or not isinstance(event_time, int):
        raise ContractError(f"event_time {event_time!r:.40} is not integer epoch milliseconds")
    if event_time < EARLIEST_EVENT_MS:
        raise ContractError(f"event_time {event_time} is before 2009: not epoch milliseconds")
    if event_time > now_ms + MAX_FUTURE_MS:
        raise ContractError(f"event_time {event_time} is more than 5 minutes in the future")
    return event_time


def check_source(source: object) -> str:
    # A tuple: `in` compares, so unhashable values are refused too.
    if not isinstance(source, str) or source not in SOURCES:
        raise ContractError(f"source {source!r:.40} is not one of {', '.join(SOURCES)}")
    return source


def seq_in_range(seq: int) -> bool:
    """The bounds of check_seq, for an int (hot paths)."""
    return 0 < seq <= MAX_SEQ


def check_seq(seq: object) -> int:
    if isinstance(seq, bool) or not isinstance(seq, int) or not seq_in_range(seq):
        raise ContractError(f"seq {seq!r:.40} is not a positive 64-bit integer")
    return seq


def check_identity(stream: object, seq: object) -> tuple[str, int]:
    """Both parts of an identity, valid; one without the other is refused."""
    if (stream is None) != (seq is None):
        missing, given = ("stream", "seq") if stream is None else ("seq", "stream")
        raise ContractError(f"missing field {missing!r} ({given} without {missing})")
    return check_stream(stream), check_seq(seq)
