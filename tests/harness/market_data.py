"""The fake Binance's REST market data from trade tapes: `GET /api/v3/aggTrades` and
`GET /api/v3/klines`, their parameters checked as Binance checks them (rest-api.md,
errors.md). Pure: a query and a tape in, a JSON-ready answer out, or a BinanceError."""

from __future__ import annotations

import re
from typing import Any

from tests.harness.klines import HOUR_MS, INTERVALS_MS, klines
from tests.harness.rest_errors import (
    BinanceError,
    bad_request,
    illegal_characters,
    invalid_value,
    mandatory_missing,
    unread_parameters,
)
from tests.harness.trade_tape import MICROSECOND_TIMES_FROM, Tape

AGG_TRADES_PATH = "/api/v3/aggTrades"
KLINES_PATH = "/api/v3/klines"
DEFAULT_LIMIT, MAX_LIMIT = 500, 1000
MAX_TIME_SPAN_MS = HOUR_MS  # aggTrades: startTime and endTime at most an hour apart
LONG_PATTERN = r"^-?[0-9]{1,19}$"
AGG_TRADES_PARAMETERS = ("symbol", "fromId", "startTime", "endTime", "limit")
KLINES_PARAMETERS = ("symbol", "interval", "startTime", "endTime", "timeZone", "limit")


def agg_trades(tape: Tape, query: dict[str, str], microseconds: bool) -> list[dict[str, Any]]:
    """The rows aggTrades answers: from `fromId`, or within [startTime, endTime] (oldest
    first when a start is given, else the newest), or the most recent; `limit` of them."""
    _check_read(query, AGG_TRADES_PARAMETERS)
    limit = _limit(query)
    start, end = _time_us(query, "startTime"), _time_us(query, "endTime", last=True)
    if "fromId" in query:
        if start is not None or end is not None:
            raise bad_request(-1128, "Combination of optional parameters invalid.")
        found = tape.from_id(_long(query, "fromId"), limit)
    else:
        if start is not None and end is not None and end - start > MAX_TIME_SPAN_MS * 1000 + 999:
            raise bad_request(-1127, "More than 1 hours between startTime and endTime.")
        found = tape.between(start, end, limit)
    return [trade.binance_row(microseconds) for trade in found]


def kline_rows(
    tape: Tape, query: dict[str, str], now_ms: int, microseconds: bool
) -> list[list[Any]]:
    """The rows klines answers, computed from the tape (tests/harness/klines.py)."""
    _check_read(query, KLINES_PARAMETERS)
    interval = query.get("interval", "")
    if not interval:
        raise mandatory_missing("interval")
    if interval not in INTERVALS_MS:
        raise bad_request(-1120, "Invalid interval.")
    if query.get("timeZone", "0") not in ("0", "+0", "00:00", "+00:00", "0:00"):
        raise invalid_value("timeZone")  # only UTC candles are served here
    found = klines(
        tape,
        INTERVALS_MS[interval],
        now_ms,
        _time(query, "startTime"),
        _time(query, "endTime"),
        _limit(query),
    )
    return [kline.binance_row(microseconds) for kline in found]


def _check_read(query: dict[str, str], known: tuple[str, ...]) -> None:
    read = sum(name in query for name in known)
    if read != len(query):
        raise unread_parameters(read, len(query))


def _long(query: dict[str, str], name: str) -> int:
    text = query[name]
    if not re.fullmatch(LONG_PATTERN, text):
        raise illegal_characters(name, LONG_PATTERN)
    return int(text)


def _limit(query: dict[str, str]) -> int:
    if "limit" not in query:
        return DEFAULT_LIMIT
    limit = _long(query, "limit")
    if not 1 <= limit <= MAX_LIMIT:
        raise invalid_value("limit")
    return limit


def _time_us(query: dict[str, str], name: str, last: bool = False) -> int | None:
    """A time parameter, in ms or µs (Binance takes both, told apart here by size), in µs;
    an inclusive end in ms covers its whole millisecond."""
    if name not in query:
        return None
    value = _long(query, name)
    if value >= MICROSECOND_TIMES_FROM:
        return value
    return value * 1000 + (999 if last else 0)


def _time(query: dict[str, str], name: str) -> int | None:
    """A time parameter in ms."""
    value = _time_us(query, name)
    return None if value is None else value // 1000


__all__ = ["AGG_TRADES_PATH", "KLINES_PATH", "BinanceError", "agg_trades", "kline_rows"]
