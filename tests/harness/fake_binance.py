"""A local Binance: its spot REST API over HTTP and its market streams over WebSocket, as
Binance's spot API documentation (binance-spot-api-docs: rest-api.md, errors.md,
web-socket-streams.md) describes them.

    with FakeBinance({"BTCUSDT": "43250.75000000"}) as binance:
        binance.fail_next(Fault.rate_limited(retry_after=2), Fault.slow(5))
        ...point the producer at binance.base_url...
        first, second, third = binance.wait_for_requests(3, timeout=10)

    with FakeBinance(prices={}, trades_per_second={"BTCUSDT": 20}) as binance:
        ...binance.ws_url + "/stream?streams=btcusdt@aggTrade", binance.base_url...
        binance.trades("BTCUSDT")  # the ground truth: what REST serves and WS pushed

Prices: `ticker/price` answers a symbol's fixed price (`prices`, `set_price`), else the last
price of its trade tape. Trades: one append-only tape per symbol (trade_tape.py), filled by a
seeded random walk at `trades_per_second`, by `add_trades`/`add_trade`, or from a public-data
aggTrades file (`load_agg_trades`); `aggTrades` and `klines` answer from it and every appended
trade is pushed to the `<symbol>@aggTrade` streams (binance_ws.py).

REST faults apply to one path each (ticker/price unless told), one per request, in the order
queued. A person can queue them, and break the streams, over HTTP too, under `/_harness`
(see fault_control.py).
"""

from __future__ import annotations

import contextlib
import errno
import json
import re
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.harness import market_data
from tests.harness.binance_ws import StreamConnection, StreamRules, StreamServer
from tests.harness.market_data import AGG_TRADES_PATH, KLINES_PATH
from tests.harness.net import free_port, wait_until
from tests.harness.rest_errors import (
    JSON_CONTENT_TYPE,
    BinanceError,
    compact_json,
    error_body,
    illegal_characters,
    invalid_symbol,
    mandatory_missing,
)
from tests.harness.trade_generator import RandomWalk, TradeGenerator, append_steps
from tests.harness.trade_tape import AggTrade, Tape, read_agg_trades

HTML_CONTENT_TYPE = "text/html; charset=utf-8"
TICKER_PATH = "/api/v3/ticker/price"
FAULT_PATHS = (TICKER_PATH, AGG_TRADES_PATH, KLINES_PATH)  # where REST faults can be queued
CONTROL_PREFIX = "/_harness"  # by-hand fault control, see fault_control.py
DEFAULT_PRICES = {"BTCUSDT": "43250.75000000"}
DEFAULT_START_PRICE = "43250.75000000"  # where a tape's walk starts without a fixed price

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
        return cls(status=status, body=error_body(code, msg), retry_after=retry_after)

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
            f"Way too much request weight used; IP banned until {until_ms}. "
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
    if path == AGG_TRADES_PATH:
        return 4
    if path == KLINES_PATH:
        return 2
    return 1 if path in ("/api/v3/ping", "/api/v3/time") else 0


class FakeBinance:
    """Binance's spot REST API and market streams on 127.0.0.1, with trade tapes, faults on
    demand and every REST request recorded.

    `port` and `ws_port`: 0 for a free port. `trades_per_second`: symbol -> rate of its
    tape's random walk (seeded by `seed`), started with start(). The WebSocket rules
    (binance_ws.StreamRules) default to Binance's: a ping every `ping_interval` s, closed
    when a ping is unanswered for `pong_timeout` s or `max_connection_age` s after opening,
    at most `max_incoming_per_second` incoming messages and `max_streams` streams a
    connection, `max_connection_attempts` handshakes per IP within `attempt_window` s."""

    def __init__(
        self,
        prices: Mapping[str, str] | None = None,
        *,
        port: int = 0,
        ws_port: int = 0,
        trades_per_second: Mapping[str, float] | None = None,
        seed: int = 0,
        ping_interval: float = 20.0,
        pong_timeout: float = 60.0,
        max_connection_age: float = 86_400.0,
        max_incoming_per_second: int = 5,
        max_streams: int = 1024,
        max_connection_attempts: int = 300,
        attempt_window: float = 300.0,
    ) -> None:
        self.prices: dict[str, str] = dict(DEFAULT_PRICES if prices is None else prices)
        self.port = port or free_port()
        self._port_chosen = not port  # ours to choose again if another process takes it first
        self.requests: list[RecordedRequest] = []
        self.clock: Callable[[], float] = time.time  # serverTime, the weight minute, trades
        self.seed = seed
        self.stream_rules = StreamRules(
            ping_interval=ping_interval,
            pong_timeout=pong_timeout,
            max_connection_age=max_connection_age,
            max_incoming_per_second=max_incoming_per_second,
            max_streams=max_streams,
            max_connection_attempts=max_connection_attempts,
            attempt_window=attempt_window,
        )
        self._streams = StreamServer(ws_port, self.stream_rules, self._now)
        self._lock = threading.Lock()
        self._faults: dict[str, list[Fault]] = {path: [] for path in FAULT_PATHS}
        self._weight_minute = -1
        self._weight_used = 0
        self._weight_load = 0  # used each minute by other clients of the same IP
        self._tapes: dict[str, Tape] = {}
        self._walks: dict[str, RandomWalk] = {}
        self._generator = TradeGenerator(self._now)
        for symbol, rate in (trades_per_second or {}).items():
            self.set_trade_rate(symbol, rate)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def _now(self) -> float:
        return self.clock()  # late-bound: a test may replace `clock` after construction

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_port(self) -> int:
        return self._streams.port

    @property
    def ws_url(self) -> str:
        """`ws://127.0.0.1:PORT`; streams are under /ws/<stream> and /stream?streams=..."""
        return self._streams.url

    # --- control -------------------------------------------------------------------------

    def set_price(self, symbol: str, price: str) -> None:
        """A fixed ticker/price for `symbol` (over its tape's last price, if it has one)."""
        with self._lock:
            self.prices[symbol] = price

    def delist(self, symbol: str) -> None:
        """Binance stops listing `symbol`: its fixed price and its tape go, and requests
        naming it get 400 Invalid symbol (code -1121)."""
        if symbol in self.tape_symbols():
            self.set_trade_rate(symbol, 0)
        with self._lock:
            self.prices.pop(symbol, None)
            self._tapes.pop(symbol, None)
            self._walks.pop(symbol, None)

    def fail_next(self, *faults: Fault, path: str = TICKER_PATH) -> None:
        """Queue faults for the next requests to `path` (one of FAULT_PATHS)."""
        with self._lock:
            self._faults[_fault_path(path)].extend(faults)

    def set_weight_load(self, per_minute: int) -> None:
        """Other clients of the same IP use `per_minute` request weight each minute (Binance
        counts weight per IP): this minute has used at least that much already, and each
        next minute starts from it; 0 ends the load (from the next minute)."""
        with self._lock:
            self._roll_weight_minute()
            self._weight_used = max(self._weight_used, per_minute)
            self._weight_load = per_minute

    def queued_faults(self, path: str = TICKER_PATH) -> list[Fault]:
        with self._lock:
            return list(self._faults[_fault_path(path)])

    def clear_faults(self) -> int:
        """Drop every queued fault, of every path; returns how many there were."""
        with self._lock:
            cleared = sum(len(queue) for queue in self._faults.values())
            for queue in self._faults.values():
                queue.clear()
            return cleared

    def requests_to(self, path: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def ticker_requests(self) -> list[RecordedRequest]:
        return self.requests_to(TICKER_PATH)

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

    # --- trade tapes -----------------------------------------------------------------------

    def add_tape(self, symbol: str, start_price: str | None = None) -> Tape:
        """`symbol`'s tape, made empty if it has none; its walk starts at `start_price`, else
        at its fixed price, else at DEFAULT_START_PRICE."""
        _checked_symbol(symbol)
        with self._lock:
            if symbol not in self._tapes:
                start = start_price or self.prices.get(symbol) or DEFAULT_START_PRICE
                tape = Tape(symbol, start)
                tape.on_append = lambda trade: self._streams.publish(symbol, trade)
                self._tapes[symbol] = tape
                self._walks[symbol] = RandomWalk(self.seed, symbol, start)
            return self._tapes[symbol]

    def tape(self, symbol: str) -> Tape:
        with self._lock:
            return self._tapes[symbol]

    def tape_symbols(self) -> list[str]:
        with self._lock:
            return list(self._tapes)

    def trades(self, symbol: str) -> list[AggTrade]:
        """Everything on `symbol`'s tape, in order (placeholders included)."""
        return self.tape(symbol).trades()

    def set_trade_rate(self, symbol: str, per_second: float) -> None:
        """Let the walk append `per_second` trades a second to `symbol`'s tape (0: stop)."""
        tape = self.add_tape(symbol)
        with self._lock:
            walk = self._walks[symbol]
        self._generator.set_rate(tape, walk, per_second)

    def trade_rates(self) -> dict[str, float]:
        return self._generator.rates()

    def add_trades(self, symbol: str, count: int) -> list[AggTrade]:
        """`count` trades of `symbol`'s walk, now, in one burst (they share a millisecond or
        a few); pushed to the streams as any appended trade."""
        tape = self.add_tape(symbol)
        with self._lock:
            walk = self._walks[symbol]
        before = len(tape)
        append_steps(tape, walk, count, int(self.clock() * 1_000_000))
        return tape.trades()[before:]

    def add_trade(
        self,
        symbol: str,
        price: str,
        quantity: str,
        buyer_is_maker: bool = False,
        raw_trades: int = 1,
        time_ms: int | None = None,
    ) -> AggTrade:
        """One trade as given (time: now unless told, never before the tape's last)."""
        time_us = int(self.clock() * 1_000_000) if time_ms is None else time_ms * 1000
        return self.add_tape(symbol).append(price, quantity, time_us, buyer_is_maker, raw_trades)

    def load_agg_trades(self, symbol: str, path: Path) -> int:
        """Append a public-data aggTrades CSV to `symbol`'s tape (not pushed: it is history);
        returns how many rows."""
        trades = read_agg_trades(path)
        start = next((t.price for t in trades if not t.is_placeholder), None)
        return self.add_tape(symbol, start).load(trades)

    def skip_ids(self, symbol: str, count: int) -> tuple[int, int]:
        """A hole of `count` ids in `symbol`'s tape that neither REST nor WS will ever serve;
        returns the first and last missing id."""
        return self.add_tape(symbol).skip_ids(count)

    def add_placeholder(self, symbol: str) -> AggTrade:
        """One of Binance's invalid archive rows (price 0, quantity 0, f = l = -1) at the next
        id: REST serves it, the streams never push it, klines do not count it."""
        return self.add_tape(symbol).append_placeholder()

    # --- stream faults ---------------------------------------------------------------------

    def cut_streams(self) -> int:
        """Abort every WebSocket's TCP connection; returns how many."""
        return self._streams.cut()

    def send_shutdown_notice(self, close_after: float | None = None) -> int:
        """Binance's `serverShutdown` event on every WebSocket; with `close_after`, each is
        closed that many seconds later. Returns how many got it."""
        return self._streams.send_shutdown_notice(close_after)

    def stall_streams(self, seconds: float) -> int:
        """Every open WebSocket sends nothing (no event, ping or pong) for `seconds`, then
        what was held; returns how many."""
        return self._streams.stall(seconds)

    def stream_connections(self) -> list[StreamConnection]:
        return self._streams.connections()

    @property
    def ws_connection_attempts(self) -> Counter[str]:
        """WebSocket handshakes by client IP, refused ones included."""
        return self._streams.attempts

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> FakeBinance:
        """Listen on `base_url` and `ws_url` and start the trade walks; after stop() it can
        start again on the same ports."""
        if self._server is not None:
            raise RuntimeError("FakeBinance is already running")
        self._streams.start()
        self._server = self._bind()
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # how long stop() may wait for the accept loop
            name=f"fake-binance-{self.port}",
            daemon=True,
        )
        self._thread.start()
        self._port_chosen = False  # clients may know the address from now on
        self._generator.start()
        return self

    def _bind(self) -> _Server:
        """The HTTP server on `port`. A free port found earlier may have been taken since by
        another process (tests run side by side): then another free one, before the first
        start only (after it, clients know the address)."""
        for _ in range(5):
            try:
                return _Server(("127.0.0.1", self.port), self)
            except OSError as error:
                if error.errno != errno.EADDRINUSE or not self._port_chosen:
                    raise
                self.port = free_port()
        return _Server(("127.0.0.1", self.port), self)

    def stop(self) -> None:
        """Stop listening and cut every open connection, including ones mid slow answer."""
        server, self._server = self._server, None
        if server is None:
            return
        self._generator.stop()
        self._streams.stop()
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
        with self._lock:
            self._roll_weight_minute()
            self._weight_used += weight
            return self._weight_used

    def _roll_weight_minute(self) -> None:
        """A new minute starts from the load of other clients (under self._lock)."""
        minute = int(self.clock() // 60)
        if minute != self._weight_minute:
            self._weight_minute, self._weight_used = minute, self._weight_load

    def _next_fault(self, path: str) -> Fault | None:
        with self._lock:
            queue = self._faults.get(path)
            return queue.pop(0) if queue else None

    def _answer(
        self, path: str, query: dict[str, str], headers: dict[str, str], stopping: threading.Event
    ) -> _Response | None:
        """The response to send, or None to close the connection without one."""
        fault = self._next_fault(path)
        if fault is not None:
            if fault.delay and stopping.wait(fault.delay):
                return None  # stopped while "slow": go away like a dying server
            if fault.drop_connection:
                return None
            if fault.status is not None:
                return _Response(fault.status, fault.body, fault.content_type, fault.retry_after)
        try:
            return _Response(200, self._normal_body(path, query, headers, fault))
        except BinanceError as error:
            return _Response(error.status, error.body)

    def _normal_body(
        self, path: str, query: dict[str, str], headers: dict[str, str], fault: Fault | None
    ) -> str:
        micro = headers.get("x-mbx-time-unit", "").upper() == "MICROSECOND"
        if path == "/api/v3/ping":
            return "{}"
        if path == "/api/v3/time":
            return compact_json({"serverTime": int(self.clock() * (1_000_000 if micro else 1000))})
        if path == TICKER_PATH:
            return self._ticker_body(query, fault.price_override if fault else None)
        if path == AGG_TRADES_PATH:
            return compact_json(market_data.agg_trades(self._tape_of(query), query, micro))
        if path == KLINES_PATH:
            now_ms = int(self.clock() * 1000)
            return compact_json(market_data.kline_rows(self._tape_of(query), query, now_ms, micro))
        raise BinanceError(404, -1000, f"Not found: {path}")

    def _tape_of(self, query: dict[str, str]) -> Tape:
        """The tape of the query's symbol; a symbol with only a fixed price has an empty one."""
        symbol = _checked_symbol(query.get("symbol", ""))
        with self._lock:
            tape = self._tapes.get(symbol)
            known = symbol in self.prices
        if tape is None and not known:
            raise invalid_symbol()
        return tape if tape is not None else Tape(symbol, self.prices[symbol])

    def _ticker_body(self, query: dict[str, str], bad_price: BadPrice | None) -> str:
        prices = self._current_prices()
        symbols = _requested_symbols(query)
        if symbols is None:
            symbols = list(prices)
        if any(symbol not in prices for symbol in symbols):
            raise invalid_symbol()
        entries = [{"symbol": symbol, "price": prices[symbol]} for symbol in symbols]
        if bad_price is not None:
            _spoil_prices(entries, bad_price)
        return compact_json(entries[0] if "symbol" in query else entries)

    def _current_prices(self) -> dict[str, str]:
        """Every symbol's ticker price: fixed ones, then tapes' last prices."""
        with self._lock:
            prices = dict(self.prices)
            tapes = [tape for symbol, tape in self._tapes.items() if symbol not in prices]
        prices.update({tape.symbol: tape.last_price() for tape in tapes})
        return prices


def _fault_path(path: str) -> str:
    if path not in FAULT_PATHS:
        raise ValueError(f"faults apply to {', '.join(FAULT_PATHS)}, not {path!r}")
    return path


def _requested_symbols(query: dict[str, str]) -> list[str] | None:
    """The symbols asked for, in order; None for all. Validated as Binance validates them."""
    if "symbol" in query and "symbols" in query:
        raise BinanceError(400, -1101, "Too many parameters sent for this endpoint.")
    if "symbol" in query:
        return [_checked_symbol(query["symbol"])]
    if "symbols" in query:
        if not re.fullmatch(SYMBOLS_PATTERN, query["symbols"]):
            raise illegal_characters("symbols", SYMBOLS_PATTERN)
        return json.loads(query["symbols"])
    return None


def _checked_symbol(symbol: str) -> str:
    if not symbol:
        raise mandatory_missing("symbol")
    if not re.fullmatch(SYMBOL_PATTERN, symbol):
        raise illegal_characters("symbol", SYMBOL_PATTERN)
    return symbol


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
    # The headers and the body go out as two writes: with Nagle's algorithm the body would
    # wait for the client's (delayed) acknowledgement of the headers on every keep-alive
    # request.
    disable_nagle_algorithm = True
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

        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            answer = fault_control.control(self.server.fake, method, path, query, body)
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
