"""The Binance REST edge: one GET of /api/v3/ticker/price for all symbols, pages of
/api/v3/aggTrades, the weight Binance says was used, what can go wrong, and how each failure
is said and retried. It knows no source: a poll source raises its
failures on as PollFailed, a stream source (catching up through REST) as StreamInterrupted
(sources.base.Retryable.because)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from datetime import UTC, datetime

import orjson
import requests

RESTRICTED_FIX = (
    "set BINANCE_BASE_URL=https://data-api.binance.vision (Binance's market-data-only host), "
    "or https://api.binance.us in the United States"
)
INVALID_SYMBOL = -1121  # Binance's code for a symbol it does not list (any more)
# A 418 says until when in epoch milliseconds: "IP banned until 1620286253180."
BANNED_UNTIL = re.compile(r"(banned until )(\d{12,16})\b")
AGG_TRADES_LIMIT = 1000  # rows a page, Binance's maximum
# Binance allows an IP 6,000 weight a minute; past this share, wait for the next minute (other
# clients may share the IP, and a 429 costs more than the wait).
WEIGHT_BUDGET_1M = 4800


class BinanceError(Exception):
    """A request that brought no prices; the subclass says when to try again and how to say
    it (the three of sources.base.RetryReason)."""

    retry_after: float | None = None  # seconds; None: after the caller's next backoff delay
    level: int = logging.WARNING

    def explain(self, then: str) -> str:
        return f"Binance unavailable: {self}; {then}"


class RateLimited(BinanceError):
    """429 (too many requests) or 418 (IP banned): wait `retry_after` seconds."""

    def __init__(self, status: int, retry_after: float | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after

    def explain(self, then: str) -> str:
        if self.retry_after is None:
            return f"Binance rate limit: {self}, no Retry-After; {then}"
        what = "IP banned" if self.status == 418 else "rate limit"
        return f"Binance {what}: {self}; Retry-After {self.retry_after:g} s, {then}"


class Restricted(BinanceError):
    """451: Binance refuses this location."""

    level = logging.ERROR

    def explain(self, then: str) -> str:
        return f"Binance refuses this location ({self}). To fix: {RESTRICTED_FIX}. {_capital(then)}"


class Unavailable(BinanceError):
    """5xx, a timeout or a broken connection: the outcome is unknown, try again later."""


class Rejected(BinanceError):
    """Another 4xx: Binance says the request itself is wrong; `code` is Binance's own
    (INVALID_SYMBOL: a symbol it does not list), None without one."""

    level = logging.ERROR

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code

    def explain(self, then: str) -> str:
        return f"Binance rejected the request: {self}; check SYMBOLS. {_capital(then)}"


class InvalidResponse(BinanceError):
    """A 200 whose body is not the documented JSON: skip this tick only."""

    retry_after = 0.0

    def explain(self, then: str) -> str:
        return f"Skipped poll: Binance sent an invalid body ({self}); {then}"


def _capital(words: str) -> str:
    """The same words, starting a sentence."""
    return words[0].upper() + words[1:]


def ticker_price_params(symbols: Sequence[str] | None) -> dict[str, str]:
    """One request for any number of symbols: `symbol=` for one, `symbols=[...]` for more,
    and no parameter at all for every pair Binance lists (None)."""
    if symbols is None:
        return {}
    if len(symbols) == 1:
        return {"symbol": symbols[0]}
    return {"symbols": json.dumps(list(symbols), separators=(",", ":"))}


def parse_ticker_prices(payload: object) -> list[tuple[str, object]]:
    """(symbol, price) pairs as sent, prices unvalidated: the contract checks them one by one."""
    items = payload if isinstance(payload, list) else [payload]
    pairs: list[tuple[str, object]] = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("symbol"), str):
            raise InvalidResponse(f"unexpected item in ticker/price response: {item!r:.200}")
        pairs.append((item["symbol"], item.get("price")))
    return pairs


def _error_text(response: requests.Response) -> str:
    """Binance's own words from an error body {"code": -1121, "msg": "Invalid symbol."}."""
    try:
        body = response.json()
        return f"{readable_times(body['msg'])} (code {body['code']})"
    except (ValueError, KeyError, TypeError):
        return response.text[:200].strip() or response.reason


def _error_code(response: requests.Response) -> int | None:
    try:
        code = response.json()["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return code if isinstance(code, int) else None


def readable_times(msg: str) -> str:
    """A ban's end as an ISO UTC time, the epoch milliseconds Binance sent kept after it."""

    def iso(match: re.Match[str]) -> str:
        try:
            when = datetime.fromtimestamp(int(match[2]) / 1000, UTC)
        except (OverflowError, ValueError, OSError):
            return match[0]
        return f"{match[1]}{when.isoformat(timespec='seconds').replace('+00:00', 'Z')} ({match[2]})"

    return BANNED_UNTIL.sub(iso, msg)


def _used_weight(response: requests.Response) -> int | None:
    try:
        return int(response.headers["X-MBX-USED-WEIGHT-1M"])
    except (KeyError, ValueError):
        return None


def _retry_after(response: requests.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["Retry-After"]))
    except (KeyError, ValueError):
        return None


def agg_trades_params(
    symbol: str, from_id: int | None, start_time_ms: int | None, limit: int = AGG_TRADES_LIMIT
) -> dict[str, str]:
    """A page of aggregate trades: from an id (inclusive), or the first ones at or after a
    time (Binance refuses both together); oldest first either way."""
    params = {"symbol": symbol, "limit": str(limit)}
    if from_id is not None:
        params["fromId"] = str(from_id)
    elif start_time_ms is not None:
        params["startTime"] = str(start_time_ms)
    return params


def weight_pause(used: int | None, now: float, budget: int = WEIGHT_BUDGET_1M) -> float:
    """Seconds to wait before the next request: to the next minute once this minute's weight
    (X-MBX-USED-WEIGHT-1M) reached `budget`, else 0."""
    if used is None or used < budget:
        return 0.0
    return 60.0 - now % 60.0


class BinanceClient:
    def __init__(self, base_url: str, timeout: float, session: requests.Session | None = None):
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/api/v3/ticker/price"
        self.timeout = timeout
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = "btc-price-pipeline/1.0"
        self.used_weight: int | None = None  # X-MBX-USED-WEIGHT-1M of the last answer

    def ticker_prices(self, symbols: Sequence[str] | None) -> list[tuple[str, object]]:
        """Fetch the latest prices (symbols None: of every pair Binance lists); raise a
        BinanceError subclass when there are none."""
        return parse_ticker_prices(self._get_json(self.url, ticker_price_params(symbols)))

    def agg_trades(
        self, symbol: str, from_id: int | None = None, start_time_ms: int | None = None
    ) -> object:
        """One page (AGG_TRADES_LIMIT rows) of `symbol`'s aggregate trades, as sent (the
        caller reads the rows); raise a BinanceError subclass when there is none."""
        params = agg_trades_params(symbol, from_id, start_time_ms)
        return self._get_json(self.base_url + "/api/v3/aggTrades", params)

    def _get_json(self, url: str, params: dict[str, str]) -> object:
        try:
            response = self.session.get(url, params=params, timeout=self.timeout)
        except requests.Timeout:
            raise Unavailable(f"no answer within {self.timeout:g} s") from None
        except requests.RequestException as exc:
            raise Unavailable(f"request failed: {exc.__class__.__name__}: {exc}") from None
        self.used_weight = _used_weight(response)
        self._raise_for_status(response)
        try:
            return orjson.loads(response.content)  # a page of 1,000 trades: cheaper than json
        except orjson.JSONDecodeError:
            raise InvalidResponse(f"body is not JSON: {response.text[:120]!r}") from None

    @staticmethod
    def _raise_for_status(response: requests.Response) -> None:
        status = response.status_code
        if status == 200:
            return
        text = _error_text(response)
        if status in (418, 429):
            raise RateLimited(status, _retry_after(response), f"HTTP {status}: {text}")
        if status == 451:
            raise Restricted(f"HTTP 451: {text}")
        if status >= 500:
            raise Unavailable(f"HTTP {status}: {text}")
        raise Rejected(f"HTTP {status}: {text}", _error_code(response))
