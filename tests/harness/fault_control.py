"""The fake Binance's control endpoint, so that a person can break things by hand:

    curl -X POST 'http://127.0.0.1:PORT/_harness/faults?kind=rate-limited&retry_after=5'
    curl -X POST 'http://127.0.0.1:PORT/_harness/faults?kind=server-error&status=503&count=10'
    curl 'http://127.0.0.1:PORT/_harness/faults'            # what is queued
    curl -X DELETE 'http://127.0.0.1:PORT/_harness/faults'  # answer normally again
    curl -X POST 'http://127.0.0.1:PORT/_harness/prices?symbol=BTCUSDT&price=44000.5'

Each queued fault answers one ticker/price request, in order; `count` queues it that many
times. `GET /_harness` lists the kinds and their parameters.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.harness.fake_binance import CONTROL_PREFIX, SERVER_ERRORS, FakeBinance, Fault

MAX_COUNT = 100_000


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


def describe() -> dict[str, Any]:
    """What GET /_harness answers: every endpoint and fault kind."""
    return {
        "endpoints": {
            f"POST {CONTROL_PREFIX}/faults?kind=KIND[&count=N][&parameters]": (
                "queue N faults (default 1), each answering one ticker/price request"
            ),
            f"GET {CONTROL_PREFIX}/faults": "the queued faults",
            f"DELETE {CONTROL_PREFIX}/faults": "drop every queued fault",
            f"POST {CONTROL_PREFIX}/prices?symbol=SYMBOL&price=PRICE": "set a price",
        },
        "kinds": {
            name: {"what": kind.what, "parameters": kind.parameters}
            for name, kind in _kinds().items()
        },
    }


def control(fake: FakeBinance, method: str, path: str, query: dict[str, str]) -> Any:
    """Do one control request and return its JSON answer; BadRequest if it cannot be done."""
    route = path.removeprefix(CONTROL_PREFIX).rstrip("/")
    if (method, route) == ("GET", ""):
        return describe()
    if (method, route) == ("POST", "/faults"):
        return _queue_faults(fake, query)
    if (method, route) == ("GET", "/faults"):
        return {"queued": [summary(fault) for fault in fake.queued_faults()]}
    if (method, route) == ("DELETE", "/faults"):
        return {"cleared": fake.clear_faults()}
    if (method, route) == ("POST", "/prices"):
        return _set_price(fake, query)
    raise BadRequest(f"no control endpoint {method} {path}; GET {CONTROL_PREFIX} lists them")


def _queue_faults(fake: FakeBinance, query: dict[str, str]) -> dict[str, Any]:
    kinds = _kinds()
    name = query.get("kind", "")
    if name not in kinds:
        raise BadRequest(f"kind must be one of {', '.join(kinds)}, not {name!r}")
    known = {"kind", "count", *kinds[name].parameters}
    unknown = sorted(set(query) - known)
    if unknown:
        raise BadRequest(f"{name} takes no parameter {', '.join(unknown)}")
    count = _int(query, "count", 1, 1, MAX_COUNT)
    fake.fail_next(*[kinds[name].build(query)] * count)
    return {"queued": len(fake.queued_faults()), "added": count, "kind": name}


def _set_price(fake: FakeBinance, query: dict[str, str]) -> dict[str, Any]:
    symbol, price = query.get("symbol", ""), query.get("price", "")
    if not symbol or not price:
        raise BadRequest("give symbol and price, e.g. ?symbol=BTCUSDT&price=44000.5")
    fake.set_price(symbol, price)
    return {"symbol": symbol, "price": price}


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
