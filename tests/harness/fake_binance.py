"""A local HTTP server that answers like Binance's spot REST API, as Binance's spot API
documentation (binance-spot-api-docs: rest-api.md, errors.md) describes it.

    with FakeBinance({"BTCUSDT": "43250.75000000"}) as binance:
        binance.fail_next(Fault.rate_limited(retry_after=2), Fault.slow(5))
        ...point the producer at binance.base_url...
        first, second, third = binance.wait_for_requests(3, timeout=10)

Faults only ever apply to `/api/v3/ticker/price`, one per request, in the order queued.
A person can queue them over HTTP too, under `/_harness` (see fault_control.py).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.harness.net import free_port, wait_until

JSON_CONTENT_TYPE = "application/json;charset=UTF-8"
HTML_CONTENT_TYPE = "text/html; charset=utf-8"
TICKER_PATH = "/api/v3/ticker/price"
CONTROL_PREFIX = "/_harness"  # by-hand fault control, see fault_control.py
DEFAULT_PRICES = {"BTCUSDT": "43250.75000000"}

RESTRICTED_LOCATION_BODY = (
    '{"code": 0, "msg": "Service unavailable from a restricted location according to '
    "'b. Eligibility' in https://www.binance.com/en/terms. Please contact customer service "
    'if you believe you received this message in error."}'
)
TRUNCATED_TICKER = '{"symbol":"BTCUSDT","pri'
PROXY_HTML = (
    "<html><head><title>502 Bad Gateway</title></head>"
    "<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
)

# Binance's own validation patterns, quoted back in its -1100 messages.
SYMBOL_PATTERN = r"^[A-Z0-9-_.]{1,20}$"
SYMBOLS_PATTERN = r'^\[("[A-Z0-9-_.]{1,20}"(,"[A-Z0-9-_.]{1,20}"){0,}){0,1}\]$'

SERVER_ERRORS = {
    500: (-1001, "Internal error; unable to process your request. Please try again."),
    502: (-1001, "Internal error; unable to process your request. Please try again."),
    503: (-1008, "Server is currently overloaded with other requests. Please try again later."),
    504: (-1007, "Timeout waiting for response from backend server. Please try again."),
}


class _Missing(Enum):
    MISSING = "MISSING"


MISSING = _Missing.MISSING  # as a bad price: the "price" field is left out entirely


@dataclass(frozen=True)
class BadPrice:
    value: object  # any JSON-serialisable value, or MISSING
    symbol: str | None = None  # None: every entry of the response


@dataclass(frozen=True)
class Fault:
    """What to do instead of (or before) the normal answer. Build with the class methods."""

    status: int | None = None  # None: answer normally (after `delay`, with `price_override`)
    body: str = ""
    content_type: str = JSON_CONTENT_TYPE
    retry_after: int | None = None
    delay: float = 0.0
    drop_connection: bool = False
    price_override: BadPrice | None = None

    @classmethod
    def error(cls, status: int, code: int, msg: str, retry_after: int | None = None) -> Fault:
        """A Binance-style error body, e.g. `Fault.error(400, -1121, "Invalid symbol.")`."""
        return cls(status=status, body=_error_body(code, msg), retry_after=retry_after)

    @classmethod
    def rate_limited(cls, retry_after: int = 2) -> Fault:
        msg = (
            "Too many requests; current limit of IP(127.0.0.1) is 6000 requests per minute. "
            "Please use the websocket for live updates to avoid polling the API."
        )
        return cls.error(429, -1003, msg, retry_after=retry_after)

    @classmethod
    def banned(cls, retry_after: int = 120) -> Fault:
        """418: the IP ban Binance hands out after repeated 429s."""
        until_ms = int((time.time() + retry_after) * 1000)
        msg = (
            f"Way too many requests; IP(127.0.0.1) banned until {until_ms}. "
            "Please use the websocket for live updates to avoid bans."
        )
        return cls.error(418, -1003, msg, retry_after=retry_after)

    @classmethod
    def restricted_location(cls) -> Fault:
        """451 with the exact body Binance sends to restricted regions and many cloud hosts."""
        return cls(status=451, body=RESTRICTED_LOCATION_BODY)

    @classmethod
    def server_error(cls, status: int = 500) -> Fault:
        code, msg = SERVER_ERRORS.get(status, SERVER_ERRORS[500])
        return cls.error(status, code, msg)

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        """Answer normally, but only after `seconds` (cut short by stop())."""
        return cls(delay=seconds)

    @classmethod
    def invalid_json(cls, body: str = TRUNCATED_TICKER) -> Fault:
        return cls(status=200, body=body)

    @classmethod
    def html_page(cls, status: int = 200, body: str = PROXY_HTML) -> Fault:
        """What a captive portal or proxy in between returns instead of JSON."""
        return cls(status=status, body=body, content_type=HTML_CONTENT_TYPE)

    @classmethod
    def bad_price(cls, value: object, symbol: str | None = None) -> Fault:
        """200 with well-formed JSON whose "price" is `value` (for `symbol` only, if given)."""
        return cls(price_override=BadPrice(value, symbol))

    @classmethod
    def missing_price(cls, symbol: str | None = None) -> Fault:
        return cls.bad_price(MISSING, symbol)

    @classmethod
    def drop(cls) -> Fault:
        """Close the connection without answering (the client sees a connection error)."""
        return cls(drop_connection=True)


@dataclass
class RecordedRequest:
    monotonic: float  # time.monotonic() when the request arrived
    wall: float  # FakeBinance.clock() (time.time() by default) when it arrived
    path: str
    query: dict[str, str]  # decoded; the last value wins for repeated parameters
    headers: dict[str, str]  # as the client spelled them
    status: int | None = None  # None until answered (or if never answered: drop, stop)


@dataclass(frozen=True)
class _Response:
    status: int
    body: str
    content_type: str = JSON_CONTENT_TYPE
    retry_after: int | None = None


class _BinanceError(Exception):
    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(msg)
        self.response = _Response(status, _error_body(code, msg))


def _error_body(code: int, msg: str) -> str:
    return _json({"code": code, "msg": msg})


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))  # compact, as Binance sends it


def listed_pairs(count: int = 3000) -> dict[str, str]:
    """About as many pairs as Binance lists (some 3,000), with 8-decimal prices: what
    ticker/price without parameters answers. Names are made up, but follow Binance's rule."""
    quotes = ("USDT", "BTC", "ETH", "BNB", "FDUSD", "TRY", "EUR")
    pairs = {}
    for i in range(count):
        base = "".join(chr(ord("A") + (i // 26**k) % 26) for k in range(3))
        pairs[f"{base}{i // 26**3}{quotes[i % len(quotes)]}"] = f"{(i * 7919) % 90_000 + 1}.{i:08d}"
    return pairs


def _weight(path: str, query: dict[str, str]) -> int:
    if path == TICKER_PATH:
        return 2 if "symbol" in query and "symbols" not in query else 4
    return 1 if path in ("/api/v3/ping", "/api/v3/time") else 0


class FakeBinance:
    """Binance's spot REST API on 127.0.0.1, with faults on demand and every request recorded."""

    def __init__(self, prices: dict[str, str] | None = None) -> None:
        self.prices: dict[str, str] = dict(DEFAULT_PRICES if prices is None else prices)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.requests: list[RecordedRequest] = []
        self.clock: Callable[[], float] = time.time  # serverTime and the weight minute
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._weight_minute = -1
        self._weight_used = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- control -------------------------------------------------------------------------

    def set_price(self, symbol: str, price: str) -> None:
        with self._lock:
            self.prices[symbol] = price

    def fail_next(self, *faults: Fault) -> None:
        with self._lock:
            self._faults.extend(faults)

    def queued_faults(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    def clear_faults(self) -> int:
        """Drop every queued fault; returns how many there were."""
        with self._lock:
            cleared, self._faults = len(self._faults), []
            return cleared

    def ticker_requests(self) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path == TICKER_PATH]

    def wait_for_requests(self, n: int, timeout: float) -> list[RecordedRequest]:
        """The first `n` ticker/price requests, once that many have arrived."""

        def first_n() -> list[RecordedRequest] | None:
            arrived = self.ticker_requests()
            return arrived[:n] if len(arrived) >= n else None

        return wait_until(
            first_n,
            timeout,
            f"{n} ticker/price requests at {self.base_url}",
            interval=0.01,
        )

    def start(self) -> FakeBinance:
        """Listen on `base_url`; after stop() it can start again on the same port."""
        if self._server is not None:
            raise RuntimeError("FakeBinance is already running")
        self._server = _Server(("127.0.0.1", self.port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # how long stop() may wait for the accept loop
            name=f"fake-binance-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection, including ones mid slow answer."""
        server, self._server = self._server, None
        if server is None:
            return
        server.stopping.set()  # wakes handlers sleeping in a slow fault
        server.shutdown()
        server.server_close()
        server.close_connections()  # wakes handlers waiting on idle keep-alive connections
        server.join_handlers(timeout=5)  # so nothing answers or records after stop()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> FakeBinance:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- answering (called from handler threads) -----------------------------------------

    def _record(self, path: str, query: dict[str, str], headers: dict[str, str]) -> RecordedRequest:
        record = RecordedRequest(time.monotonic(), self.clock(), path, query, headers)
        with self._lock:
            self.requests.append(record)
        return record

    def _use_weight(self, weight: int) -> int:
        """Add to this minute's weight and return the total, as X-MBX-USED-WEIGHT-1M does."""
        minute = int(self.clock() // 60)
        with self._lock:
            if minute != self._weight_minute:
                self._weight_minute, self._weight_used = minute, 0
            self._weight_used += weight
            return self._weight_used

    def _next_fault(self) -> Fault | None:
        with self._lock:
            return self._faults.pop(0) if self._faults else None

    def _answer(
        self, path: str, query: dict[str, str], headers: dict[str, str], stopping: threading.Event
    ) -> _Response | None:
        """The response to send, or None to close the connection without one."""
        fault = self._next_fault() if path == TICKER_PATH else None
        if fault is not None:
            if fault.delay and stopping.wait(fault.delay):
                return None  # stopped while "slow": go away like a dying server
            if fault.drop_connection:
                return None
            if fault.status is not None:
                return _Response(fault.status, fault.body, fault.content_type, fault.retry_after)
        try:
            return _Response(200, self._normal_body(path, query, headers, fault))
        except _BinanceError as error:
            return error.response

    def _normal_body(
        self, path: str, query: dict[str, str], headers: dict[str, str], fault: Fault | None
    ) -> str:
        if path == "/api/v3/ping":
            return "{}"
        if path == "/api/v3/time":
            micro = headers.get("x-mbx-time-unit", "").upper() == "MICROSECOND"
            return _json({"serverTime": int(self.clock() * (1_000_000 if micro else 1000))})
        if path == TICKER_PATH:
            return self._ticker_body(query, fault.price_override if fault else None)
        raise _BinanceError(404, -1000, f"Not found: {path}")

    def _ticker_body(self, query: dict[str, str], bad_price: BadPrice | None) -> str:
        with self._lock:
            prices = dict(self.prices)
        symbols = _requested_symbols(query)
        if symbols is None:
            symbols = list(prices)
        if any(symbol not in prices for symbol in symbols):
            raise _BinanceError(400, -1121, "Invalid symbol.")
        entries = [{"symbol": symbol, "price": prices[symbol]} for symbol in symbols]
        if bad_price is not None:
            _spoil_prices(entries, bad_price)
        return _json(entries[0] if "symbol" in query else entries)


def _requested_symbols(query: dict[str, str]) -> list[str] | None:
    """The symbols asked for, in order; None for all. Validated as Binance validates them."""
    if "symbol" in query and "symbols" in query:
        raise _BinanceError(400, -1101, "Too many parameters sent for this endpoint.")
    if "symbol" in query:
        return [_checked_symbol(query["symbol"])]
    if "symbols" in query:
        if not re.fullmatch(SYMBOLS_PATTERN, query["symbols"]):
            raise _illegal_characters("symbols", SYMBOLS_PATTERN)
        return json.loads(query["symbols"])
    return None


def _checked_symbol(symbol: str) -> str:
    if not symbol:
        msg = "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."
        raise _BinanceError(400, -1102, msg)
    if not re.fullmatch(SYMBOL_PATTERN, symbol):
        raise _illegal_characters("symbol", SYMBOL_PATTERN)
    return symbol


def _illegal_characters(parameter: str, pattern: str) -> _BinanceError:
    msg = f"Illegal characters found in parameter '{parameter}'; legal range is '{pattern}'."
    return _BinanceError(400, -1100, msg)


def _spoil_prices(entries: list[dict[str, Any]], bad_price: BadPrice) -> None:
    for entry in entries:
        if bad_price.symbol not in (None, entry["symbol"]):
            continue
        if bad_price.value is MISSING:
            del entry["price"]
        else:
            entry["price"] = bad_price.value


class _Server(ThreadingHTTPServer):
    """One daemon thread per connection (a forgotten stop() must not block interpreter exit),
    each tracked so that stop() can cut its connection and wait for it."""

    def __init__(self, address: tuple[str, int], fake: FakeBinance) -> None:
        self.fake = fake
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._handlers: list[threading.Thread] = []
        self._tracking_lock = threading.Lock()
        super().__init__(address, _Handler)

    # Replaces ThreadingMixIn's, which does not keep daemon threads. Runs in the accept loop,
    # so once shutdown() has returned every connection and thread is already tracked here.
    def process_request(self, request: Any, client_address: Any) -> None:
        handler = threading.Thread(
            target=self.process_request_thread, args=(request, client_address), daemon=True
        )
        with self._tracking_lock:
            self._connections.add(request)
            self._handlers = [thread for thread in self._handlers if thread.is_alive()]
            self._handlers.append(handler)
        handler.start()

    def shutdown_request(self, request: Any) -> None:
        with self._tracking_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._tracking_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by its handler
                connection.shutdown(socket.SHUT_RDWR)

    def join_handlers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._tracking_lock:
            handlers = list(self._handlers)
        for handler in handlers:
            handler.join(max(0.0, deadline - time.monotonic()))

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and hung up is expected here, not worth a traceback.
        if not self.stopping.is_set() and not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as clients with a Session expect
    server: _Server

    def do_GET(self) -> None:
        fake, url = self.server.fake, urlsplit(self.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        if url.path.startswith(CONTROL_PREFIX):
            self._control("GET", url.path, query)
            return
        headers = dict(self.headers.items())
        record = fake._record(url.path, query, headers)
        weight = fake._use_weight(_weight(url.path, query))
        lowered = {name.lower(): value for name, value in headers.items()}
        response = fake._answer(url.path, query, lowered, self.server.stopping)
        if response is None:
            self.close_connection = True
            return
        record.status = response.status
        self._send(response, weight)

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        self._control("POST", url.path, dict(parse_qsl(url.query, keep_blank_values=True)))

    def do_DELETE(self) -> None:
        url = urlsplit(self.path)
        self._control("DELETE", url.path, dict(parse_qsl(url.query, keep_blank_values=True)))

    def _control(self, method: str, path: str, query: dict[str, str]) -> None:
        """The by-hand control endpoint (tests/harness/fault_control.py); never recorded."""
        from tests.harness import fault_control  # it builds on this module

        self.rfile.read(int(self.headers.get("Content-Length") or 0))  # a body is not used
        try:
            answer = fault_control.control(self.server.fake, method, path, query)
            response = _Response(200, fault_control.to_json(answer))
        except fault_control.BadRequest as error:
            response = _Response(400, fault_control.to_json({"error": str(error)}))
        self._send(response, weight=0)

    def _send(self, response: _Response, weight: int) -> None:
        body = response.body.encode()
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-MBX-USED-WEIGHT-1M", str(weight))
        if response.retry_after is not None:
            self.send_header("Retry-After", str(response.retry_after))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests and benchmarks read the recorded requests instead
