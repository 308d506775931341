"""The fake Binance's control endpoint, so that a person can break things by hand:

    curl -X POST 'http://127.0.0.1:PORT/_harness/faults?kind=rate-limited&retry_after=5'
    curl -X POST 'http://127.0.0.1:PORT/_harness/faults?kind=server-error&status=503&count=10'
    curl 'http://127.0.0.1:PORT/_harness/faults'            # what is queued
    curl -X DELETE 'http://127.0.0.1:PORT/_harness/faults'  # answer normally again
    curl -X POST 'http://127.0.0.1:PORT/_harness/prices?symbol=BTCUSDT&price=44000.5'
    curl -X POST 'http://127.0.0.1:PORT/_harness/faults?kind=rate-limited&path=aggTrades'
    curl -X POST 'http://127.0.0.1:PORT/_harness/streams/cut'
    curl -X POST 'http://127.0.0.1:PORT/_harness/gap?symbol=BTCUSDT&ids=5'

Each queued fault answers one request to its path (ticker/price unless `path` says aggTrades
or klines), in order; `count` queues it that many times. The trade and stream controls act at
once. `GET /_harness` lists every endpoint, the fault kinds and their parameters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.harness.fake_binance import (
    CONTROL_PREFIX,
    FAULT_PATHS,
    SERVER_ERRORS,
    SYMBOL_PATTERN,
    TICKER_PATH,
    FakeBinance,
    Fault,
)
from tests.harness.trade_tape import AggTrade, TapeError

MAX_COUNT = 100_000
MAX_TRADES_PER_SECOND = 10_000


class BadRequest(ValueError):
    """A control request that cannot be done; the message says why."""


@dataclass(frozen=True)
class FaultKind:
    what: str
    parameters: dict[str, str]  # name -> meaning (with its default)
    build: Callable[[dict[str, str]], Fault]


def _int(query: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    text = query.get(name, str(default))
    if not text.isdigit() or not low <= int(text) <= high:
        raise BadRequest(f"{name} must be a whole number from {low} to {high}, not {text!r}")
    return int(text)


def _seconds(query: dict[str, str], name: str, default: float) -> float:
    text = query.get(name, str(default))
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:
        raise BadRequest(f"{name} must be a number of seconds from 0 to 3600, not {text!r}")
    return value


def _rate(query: dict[str, str], name: str) -> float:
    text = query.get(name, "")
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_TRADES_PER_SECOND:
        raise BadRequest(
            f"{name} must be a number of trades a second from 0 to {MAX_TRADES_PER_SECOND}, "
            f"not {text!r}"
        )
    return value


def _kinds() -> dict[str, FaultKind]:
    def server_error(query: dict[str, str]) -> Fault:
        status = _int(query, "status", 500, 500, 599)
        if status not in SERVER_ERRORS:
            raise BadRequest(f"status must be one of {sorted(SERVER_ERRORS)}, not {status}")
        return Fault.server_error(status)

    return {
        "restricted": FaultKind(
            "451, the restricted-location answer", {}, lambda q: Fault.restricted_location()
        ),
        "rate-limited": FaultKind(
            "429 with Retry-After",
            {"retry_after": "Retry-After seconds [2]"},
            lambda q: Fault.rate_limited(_int(q, "retry_after", 2, 0, 86_400)),
        ),
        "banned": FaultKind(
            "418 IP ban with Retry-After",
            {"retry_after": "Retry-After seconds [120]"},
            lambda q: Fault.banned(_int(q, "retry_after", 120, 0, 86_400)),
        ),
        "server-error": FaultKind(
            "5xx with Binance's error body", {"status": "500, 502, 503 or 504 [500]"}, server_error
        ),
        "slow": FaultKind(
            "the normal answer, late",
            {"seconds": "delay [10]"},
            lambda q: Fault.slow(_seconds(q, "seconds", 10)),
        ),
        "drop": FaultKind("close the connection without an answer", {}, lambda q: Fault.drop()),
        "invalid-json": FaultKind("200 with a truncated body", {}, lambda q: Fault.invalid_json()),
        "html": FaultKind("200 with a proxy's HTML page", {}, lambda q: Fault.html_page()),
        "bad-price": FaultKind(
            "200 whose price is not a positive decimal",
            {"value": "the price string [-1]", "symbol": "only this symbol [all]"},
            lambda q: Fault.bad_price(q.get("value", "-1"), q.get("symbol")),
        ),
        "missing-price": FaultKind(
            "200 without the price field",
            {"symbol": "only this symbol [all]"},
            lambda q: Fault.missing_price(q.get("symbol")),
        ),
    }


TICKER_ONLY_KINDS = ("bad-price", "missing-price")  # their answer is a ticker/price body
PATH_NAMES = {path.rsplit("/api/v3/", 1)[1]: path for path in FAULT_PATHS}  # "ticker/price"...


def describe() -> dict[str, Any]:
    """What GET /_harness answers: every endpoint and fault kind."""
    paths = ", ".join(PATH_NAMES)
    return {
        "endpoints": {
            f"POST {CONTROL_PREFIX}/faults?kind=KIND[&count=N][&path=PATH][&parameters]": (
                "queue N faults (default 1), each answering one request to PATH "
                f"({paths}; default ticker/price)"
            ),
            f"GET {CONTROL_PREFIX}/faults": "the queued faults, with their paths",
            f"DELETE {CONTROL_PREFIX}/faults": "drop every queued fault",
            f"POST {CONTROL_PREFIX}/prices?symbol=SYMBOL&price=PRICE": "set a fixed price",
            f"DELETE {CONTROL_PREFIX}/prices?symbol=SYMBOL": (
                "delist the symbol: its price and tape go, requests naming it get 400 "
                "Invalid symbol (code -1121)"
            ),
            f"GET {CONTROL_PREFIX}/trades?symbol=SYMBOL": "a tape: its size, ids, price, rate",
            f"POST {CONTROL_PREFIX}/trades?symbol=SYMBOL&count=N": (
                "append N trades of the symbol's random walk now (a new symbol gets a tape); "
                'or a JSON body [{"p": "43250.1", "q": "0.5", "m": false, "T": ms, "n": 1}] '
                "(m, T and n optional: buyer is maker, trade time, raw trades)"
            ),
            f"POST {CONTROL_PREFIX}/trade-rate?symbol=SYMBOL&per_second=R": (
                "the random walk appends R trades a second (0 stops it)"
            ),
            f"POST {CONTROL_PREFIX}/gap?symbol=SYMBOL[&ids=N]": (
                "a hole of N ids (default 1) that neither REST nor WebSocket will serve"
            ),
            f"POST {CONTROL_PREFIX}/placeholder?symbol=SYMBOL": (
                "an invalid archive row (price 0, quantity 0, f = l = -1) at the next id: "
                "served by REST, never pushed"
            ),
            f"GET {CONTROL_PREFIX}/streams": "the open WebSocket connections",
            f"POST {CONTROL_PREFIX}/streams/cut": "abort every WebSocket's TCP connection",
            f"POST {CONTROL_PREFIX}/streams/shutdown-notice[?close_after=S]": (
                "send serverShutdown on every WebSocket (and close each S seconds later)"
            ),
            f"POST {CONTROL_PREFIX}/streams/stall?seconds=S": (
                "every open WebSocket sends nothing (no event, ping or pong) for S seconds"
            ),
        },
        "kinds": {
            name: {"what": kind.what, "parameters": kind.parameters}
            for name, kind in _kinds().items()
        },
    }


def control(
    fake: FakeBinance, method: str, path: str, query: dict[str, str], body: bytes = b""
) -> Any:
    """Do one control request and return its JSON answer; BadRequest if it cannot be done."""
    route = path.removeprefix(CONTROL_PREFIX).rstrip("/")
    if (method, route) == ("GET", ""):
        return describe()
    routes: dict[tuple[str, str], Callable[[], Any]] = {
        ("POST", "/faults"): lambda: _queue_faults(fake, query),
        ("GET", "/faults"): lambda: {"queued": _listed_faults(fake)},
        ("DELETE", "/faults"): lambda: {"cleared": fake.clear_faults()},
        ("POST", "/prices"): lambda: _set_price(fake, query),
        ("DELETE", "/prices"): lambda: _delist(fake, query),
        ("GET", "/trades"): lambda: _tape_summary(fake, _tape_symbol(fake, query)),
        ("POST", "/trades"): lambda: _add_trades(fake, query, body),
        ("POST", "/trade-rate"): lambda: _set_trade_rate(fake, query),
        ("POST", "/gap"): lambda: _leave_gap(fake, query),
        ("POST", "/placeholder"): lambda: _add_placeholder(fake, query),
        ("GET", "/streams"): lambda: {"connections": [vars(c) for c in fake.stream_connections()]},
        ("POST", "/streams/cut"): lambda: {"cut": fake.cut_streams()},
        ("POST", "/streams/shutdown-notice"): lambda: _shutdown_notice(fake, query),
        ("POST", "/streams/stall"): lambda: {
            "stalled": fake.stall_streams(_seconds(query, "seconds", 10)),
            "seconds": _seconds(query, "seconds", 10),
        },
    }
    if (method, route) not in routes:
        raise BadRequest(f"no control endpoint {method} {path}; GET {CONTROL_PREFIX} lists them")
    return routes[method, route]()


def _queue_faults(fake: FakeBinance, query: dict[str, str]) -> dict[str, Any]:
    kinds = _kinds()
    name = query.get("kind", "")
    if name not in kinds:
        raise BadRequest(f"kind must be one of {', '.join(kinds)}, not {name!r}")
    known = {"kind", "count", "path", *kinds[name].parameters}
    unknown = sorted(set(query) - known)
    if unknown:
        raise BadRequest(f"{name} takes no parameter {', '.join(unknown)}")
    path = _fault_path(query)
    if name in TICKER_ONLY_KINDS and path != TICKER_PATH:
        raise BadRequest(f"{name} only applies to ticker/price")
    count = _int(query, "count", 1, 1, MAX_COUNT)
    fake.fail_next(*[kinds[name].build(query)] * count, path=path)
    queued = len(fake.queued_faults(path))
    return {"queued": queued, "added": count, "kind": name, "path": path}


def _fault_path(query: dict[str, str]) -> str:
    text = query.get("path", "ticker/price")
    path = PATH_NAMES.get(text.removeprefix("/api/v3/"))
    if path is None:
        raise BadRequest(f"path must be one of {', '.join(PATH_NAMES)}, not {text!r}")
    return path


def _listed_faults(fake: FakeBinance) -> list[dict[str, Any]]:
    return [
        {**summary(fault), "path": path}
        for path in FAULT_PATHS
        for fault in fake.queued_faults(path)
    ]


def _set_price(fake: FakeBinance, query: dict[str, str]) -> dict[str, Any]:
    symbol, price = query.get("symbol", ""), query.get("price", "")
    if not symbol or not price:
        raise BadRequest("give symbol and price, e.g. ?symbol=BTCUSDT&price=44000.5")
    fake.set_price(symbol, price)
    return {"symbol": symbol, "price": price}


def _delist(fake: FakeBinance, query: dict[str, str]) -> dict[str, Any]:
    symbol = _symbol(query)
    if symbol not in fake.prices and symbol not in fake.tape_symbols():
        raise BadRequest(f"{symbol} is not listed")
    fake.delist(symbol)
    return {"delisted": symbol}


# --- trade tapes -------------------------------------------------------------------------------


def _symbol(query: dict[str, str]) -> str:
    symbol = query.get("symbol", "")
    if not re.fullmatch(SYMBOL_PATTERN, symbol):
        raise BadRequest(f"symbol must be a Binance symbol like BTCUSDT, not {symbol!r}")
    return symbol


def _tape_symbol(fake: FakeBinance, query: dict[str, str]) -> str:
    """The query's symbol, which must have a tape already."""
    symbol = _symbol(query)
    if symbol not in fake.tape_symbols():
        have = ", ".join(fake.tape_symbols()) or "none"
        raise BadRequest(f"{symbol} has no trade tape (tapes: {have}); POST trades makes one")
    return symbol


def _tape_summary(fake: FakeBinance, symbol: str) -> dict[str, Any]:
    trades = fake.trades(symbol)
    return {
        "symbol": symbol,
        "trades": len(trades),
        "first_id": trades[0].agg_id if trades else None,
        "last_id": trades[-1].agg_id if trades else None,
        "last_price": fake.tape(symbol).last_price(),
        "trades_per_second": fake.trade_rates().get(symbol, 0),
    }


def _add_trades(fake: FakeBinance, query: dict[str, str], body: bytes) -> dict[str, Any]:
    symbol = _symbol(query)
    if body.strip():
        added = [_add_given_trade(fake, symbol, given) for given in _trades_of(body)]
    else:
        added = fake.add_trades(symbol, _int(query, "count", 1, 1, MAX_COUNT))
    return {
        "symbol": symbol,
        "added": len(added),
        "first_id": added[0].agg_id if added else None,
        "last_id": added[-1].agg_id if added else None,
    }


def _trades_of(body: bytes) -> list[dict[str, Any]]:
    try:
        trades = json.loads(body)
    except ValueError:
        raise BadRequest("the body must be a JSON array of trades") from None
    if not isinstance(trades, list) or not all(isinstance(t, dict) for t in trades):
        raise BadRequest('the body must be a JSON array of trades like {"p": "1.5", "q": "2"}')
    return trades


def _add_given_trade(fake: FakeBinance, symbol: str, given: dict[str, Any]) -> AggTrade:
    unknown = sorted(set(given) - {"p", "q", "m", "T", "n"})
    if unknown or "p" not in given or "q" not in given:
        raise BadRequest(f"a trade has p and q (and m, T, n optional), not {sorted(given)}")
    maker, time_ms, raw = given.get("m", False), given.get("T"), given.get("n", 1)
    if not isinstance(maker, bool) or not isinstance(raw, int) or isinstance(raw, bool):
        raise BadRequest("m must be true or false and n a whole number of raw trades")
    if time_ms is not None and (not isinstance(time_ms, int) or isinstance(time_ms, bool)):
        raise BadRequest("T must be a time in milliseconds")
    try:
        return fake.add_trade(symbol, str(given["p"]), str(given["q"]), maker, raw, time_ms)
    except TapeError as error:
        raise BadRequest(str(error)) from None


def _set_trade_rate(fake: FakeBinance, query: dict[str, str]) -> dict[str, Any]:
    symbol = _symbol(query)
    per_second = _rate(query, "per_second")
    fake.set_trade_rate(symbol, per_second)
    return {"symbol": symbol, "trades_per_second": per_second}


def _leave_gap(fake: FakeBinance, query: dict[str, str]) -> dict[str, Any]:
    symbol = _tape_symbol(fake, query)
    first, last = fake.skip_ids(symbol, _int(query, "ids", 1, 1, MAX_COUNT))
    return {"symbol": symbol, "missing_from": first, "missing_to": last}


def _add_placeholder(fake: FakeBinance, query: dict[str, str]) -> dict[str, Any]:
    symbol = _tape_symbol(fake, query)
    return {"symbol": symbol, "placeholder": fake.add_placeholder(symbol).binance_row()}


def _shutdown_notice(fake: FakeBinance, query: dict[str, str]) -> dict[str, Any]:
    close_after = _seconds(query, "close_after", 0) if "close_after" in query else None
    return {"notified": fake.send_shutdown_notice(close_after), "close_after": close_after}


def summary(fault: Fault) -> dict[str, Any]:
    """A queued fault in short: the fields that differ from a normal answer."""
    shown = {name: value for name, value in vars(fault).items() if value not in (None, 0, False)}
    shown.pop("content_type", None)
    if "body" in shown:
        shown["body"] = shown["body"][:60] if shown["body"] else None
    if fault.price_override is not None:
        shown["price_override"] = repr(fault.price_override.value)
    return {name: value for name, value in shown.items() if value is not None}


def to_json(answer: Any) -> str:
    return json.dumps(answer, indent=2) + "\n"
