"""The fake Binance's WebSocket market streams (Binance's web-socket-streams.md), on a port of
their own: raw streams `/ws/<stream>[/<stream>...]`, combined streams
`/stream?streams=<s1>/<s2>` (each event wrapped `{"stream": ..., "data": ...}`), live
SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS / SET_PROPERTY / GET_PROPERTY, and
`<symbol>@aggTrade` events pushed as trades are appended to a tape. Nothing is replayed: a
connection gets what is appended while it is subscribed.

Binance's connection rules, each a `StreamRules` field so that tests can shorten them:
the server pings every `ping_interval` seconds and closes a connection whose oldest unanswered
ping is `pong_timeout` old (only a pong with that ping's payload answers it); it closes every
connection `max_connection_age` after it opened; more than `max_incoming_per_second` incoming
messages (text, binary, ping and pong frames) within one second close it (1008, "Too many
requests", as Binance does); at most `max_streams` streams a connection; at most
`max_connection_attempts` handshakes per IP within `attempt_window` seconds, the next refused
with HTTP 429.

Faults, for tests and by hand: `cut` (abort every TCP connection, no close frame),
`send_shutdown_notice` (Binance's `serverShutdown` event), `stall` (send nothing, not even a
pong or a ping, for N seconds; what is sent meanwhile goes out after it, in order).

It runs an asyncio loop in a thread of its own; every public method may be called from any
thread.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response

from tests.harness.trade_tape import AggTrade

T = TypeVar("T")
COUNTED_OPCODES = (Opcode.TEXT, Opcode.BINARY, Opcode.PING, Opcode.PONG)
SUPERVISE_SECONDS = 0.02  # how often a connection's timers are looked at
CLOSE_TIMEOUT = 2.0  # seconds a closing handshake may take before the TCP connection is cut
POLICY_VIOLATION = 1008
GOING_AWAY = 1001
METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
MAX_ID_LENGTH = 36

# Quiet: the websockets library logs failed handshakes (a test's refused client) as errors.
_LOG = logging.getLogger("tests.harness.binance_ws")
_LOG.addHandler(logging.NullHandler())
_LOG.propagate = False


@dataclass(frozen=True)
class StreamRules:
    """Binance's WebSocket connection rules; the defaults are Binance's."""

    ping_interval: float = 20.0  # seconds between the server's pings
    pong_timeout: float = 60.0  # seconds a ping may go unanswered before the connection closes
    max_connection_age: float = 86_400.0  # seconds a connection lives (24 h)
    max_incoming_per_second: int = 5  # messages a connection may send within any second
    max_streams: int = 1024  # streams a connection may listen to
    max_connection_attempts: int = 300  # handshakes per IP within attempt_window
    attempt_window: float = 300.0  # seconds (5 minutes)


@dataclass(frozen=True)
class StreamConnection:
    """What a test can see of one open connection."""

    path: str
    streams: tuple[str, ...]
    combined: bool
    pings_sent: int
    pongs_received: int  # answering one of the server's pings
    messages_received: int  # counted against max_incoming_per_second


def stream_name(symbol: str) -> str:
    return f"{symbol.lower()}@aggTrade"


class StreamServer:
    """`<symbol>@aggTrade` streams on ws://127.0.0.1:`port`."""

    def __init__(self, port: int, rules: StreamRules, clock: Callable[[], float]) -> None:
        """`port` 0: one the system gives at the first start (kept for later starts)."""
        self.port = port
        self.rules = rules
        self.clock = clock  # event times (E)
        self.attempts: collections.Counter[str] = collections.Counter()  # handshakes by IP
        self._recent_attempts: dict[str, collections.deque[float]] = {}
        self._sessions: set[_Session] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._start_error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        ready = threading.Event()
        self._start_error = None
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._serve(ready)),
            name=f"fake-binance-ws-{self.port}",
            daemon=True,
        )
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"the WebSocket server did not start on port {self.port}")
        if self._start_error is not None:
            raise self._start_error

    def stop(self) -> None:
        """Cut every connection and stop listening; start() may follow on the same port."""
        loop, stopping, thread = self._loop, self._stopping, self._thread
        if loop is None or stopping is None or thread is None:
            return
        loop.call_soon_threadsafe(stopping.set)
        thread.join(10)
        self._loop = self._stopping = self._thread = None

    async def _serve(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            server = await serve(
                self._handle,
                "127.0.0.1",
                self.port,  # 0 the first time: the system picks one, no other process can race
                process_request=self._process_request,
                create_connection=_Connection,
                compression=None,
                ping_interval=None,  # the server's own pings follow Binance's rules instead
                close_timeout=CLOSE_TIMEOUT,
                logger=_LOG,
            )
        except OSError as error:
            self._start_error = error
            ready.set()
            return
        if self.port == 0:
            self.port = server.sockets[0].getsockname()[1]
        ready.set()
        await self._stopping.wait()
        for session in list(self._sessions):
            session.cut()
        server.close(close_connections=False)
        await server.wait_closed()

    # --- pushing trades --------------------------------------------------------------------

    def publish(self, symbol: str, trade: AggTrade) -> None:
        """Push a trade to every connection listening to its stream (from any thread; the
        order of calls is the order of pushes)."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # closed while stopping: nobody is connected
            loop.call_soon_threadsafe(self._dispatch, symbol, trade)

    def _dispatch(self, symbol: str, trade: AggTrade) -> None:
        stream = stream_name(symbol)
        now = self.clock()
        for session in self._sessions:
            if stream in session.streams:
                event = agg_trade_event(symbol, trade, now, session.microseconds)
                session.push(stream, event)

    # --- faults ----------------------------------------------------------------------------

    def cut(self) -> int:
        """Abort every connection's TCP connection (no close frame); returns how many."""

        async def cut_all() -> int:
            sessions = list(self._sessions)
            for session in sessions:
                session.cut()
            return len(sessions)

        return self._run(cut_all())

    def send_shutdown_notice(self, close_after: float | None = None) -> int:
        """Send `serverShutdown` to every connection (and close each `close_after` seconds
        later, if given); returns how many got it."""

        async def notify_all() -> int:
            now = self.clock()
            for session in self._sessions:
                session.push("!serverShutdown", {"e": "serverShutdown", "E": _ms(now, False)})
                if close_after is not None:
                    session.close_later(close_after, GOING_AWAY, "Server shutdown")
            return len(self._sessions)

        return self._run(notify_all())

    def stall(self, seconds: float) -> int:
        """Send nothing on any open connection for `seconds` (no events, pings or pongs),
        without closing; returns how many connections stall."""

        async def stall_all() -> int:
            for session in self._sessions:
                session.stall(seconds)
            return len(self._sessions)

        return self._run(stall_all())

    def connections(self) -> list[StreamConnection]:
        async def describe() -> list[StreamConnection]:
            return [session.describe() for session in self._sessions]

        return self._run(describe()) if self._loop is not None else []

    def _run(self, work: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            work.close()
            raise RuntimeError("the WebSocket server is not running")
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout=10)

    # --- connections -----------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        ip = str(connection.remote_address[0])
        if not self._attempt_allowed(ip):
            return connection.respond(429, "Too many connection attempts.\n")
        url = urlsplit(request.path)
        query = dict(parse_qsl(url.query))
        if url.path == "/ws" or url.path.startswith("/ws/"):
            streams, combined = [s for s in url.path[len("/ws/") :].split("/") if s], False
        elif url.path.rstrip("/") == "/stream":
            streams, combined = [s for s in query.get("streams", "").split("/") if s], True
        else:
            return connection.respond(404, "Not found: /ws/<stream> or /stream?streams=...\n")
        if len(streams) > self.rules.max_streams:
            return connection.respond(400, f"At most {self.rules.max_streams} streams.\n")
        microseconds = query.get("timeUnit", "").upper() == "MICROSECOND"
        assert isinstance(connection, _Connection)
        connection.session = _Session(
            connection, url.path, streams, combined, microseconds, self.rules
        )
        return None

    def _attempt_allowed(self, ip: str) -> bool:
        assert self._loop is not None
        now = self._loop.time()
        self.attempts[ip] += 1
        recent = self._recent_attempts.setdefault(ip, collections.deque())
        while recent and recent[0] <= now - self.rules.attempt_window:
            recent.popleft()
        recent.append(now)
        return len(recent) <= self.rules.max_connection_attempts

    async def _handle(self, connection: ServerConnection) -> None:
        assert isinstance(connection, _Connection) and connection.session is not None
        session = connection.session
        self._sessions.add(session)
        try:
            await session.run()
        finally:
            self._sessions.discard(session)


class _Connection(ServerConnection):
    """A websockets connection that counts what it receives and can hold what it sends."""

    session: _Session | None = None  # set during the opening handshake

    def process_event(self, event: Any) -> None:
        if isinstance(event, Frame) and self.session is not None:
            self.session.note_frame(event)
        super().process_event(event)

    def send_data(self) -> None:
        # While stalled, outgoing bytes (events, pongs, pings, close frames) wait in the
        # protocol's buffer; the stall's end writes them, in order.
        if self.session is not None and self.session.stalled:
            return
        super().send_data()


class _Session:
    """One connection's streams, timers and counters (used in the server's loop only)."""

    def __init__(
        self,
        connection: _Connection,
        path: str,
        streams: list[str],
        combined: bool,
        microseconds: bool,
        rules: StreamRules,
    ) -> None:
        self.connection = connection
        self.path = path
        self.streams: dict[str, None] = dict.fromkeys(streams)  # ordered, unique
        self.combined = combined
        self.microseconds = microseconds
        self.rules = rules
        self.loop = asyncio.get_running_loop()
        self.opened = self.loop.time()
        self.outbox: asyncio.Queue[str] = asyncio.Queue()
        self.pending_pings: dict[bytes, float] = {}  # payload -> when sent
        self.incoming: collections.deque[float] = collections.deque()
        self.stalled_until: float | None = None
        self.closing = False
        self.pings_sent = self.pongs_received = self.messages_received = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def stalled(self) -> bool:
        return self.stalled_until is not None

    def describe(self) -> StreamConnection:
        return StreamConnection(
            self.path,
            tuple(self.streams),
            self.combined,
            self.pings_sent,
            self.pongs_received,
            self.messages_received,
        )

    async def run(self) -> None:
        sender = self._spawn(self._send_loop())
        supervisor = self._spawn(self._supervise())
        try:
            async for message in self.connection:
                reply = answer_request(self, message)
                if reply is not None:
                    self.outbox.put_nowait(json.dumps(reply, separators=(",", ":")))
        except ConnectionClosed:
            pass
        finally:
            sender.cancel()
            supervisor.cancel()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = self.loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- sending ---------------------------------------------------------------------------

    def push(self, stream: str, event: dict[str, Any]) -> None:
        payload = {"stream": stream, "data": event} if self.combined else event
        self.outbox.put_nowait(json.dumps(payload, separators=(",", ":")))

    async def _send_loop(self) -> None:
        while True:
            text = await self.outbox.get()
            try:
                await self.connection.send(text)
            except ConnectionClosed:
                return

    # --- receiving -------------------------------------------------------------------------

    def note_frame(self, frame: Frame) -> None:
        if frame.opcode not in COUNTED_OPCODES:
            return
        self.messages_received += 1
        now = self.loop.time()
        self.incoming.append(now)
        while self.incoming and self.incoming[0] <= now - 1.0:
            self.incoming.popleft()
        if frame.opcode is Opcode.PONG:
            self._acknowledge(bytes(frame.data))
        if len(self.incoming) > self.rules.max_incoming_per_second:
            self.close_later(0, POLICY_VIOLATION, "Too many requests")

    def _acknowledge(self, payload: bytes) -> None:
        """A pong answers its ping and every earlier one; an unsolicited pong answers none."""
        if payload not in self.pending_pings:
            return
        self.pongs_received += 1
        sent = self.pending_pings[payload]
        for key, when in list(self.pending_pings.items()):
            if when <= sent:
                del self.pending_pings[key]

    # --- timers ----------------------------------------------------------------------------

    async def _supervise(self) -> None:
        next_ping = self.opened + self.rules.ping_interval
        while not self.closing:
            await asyncio.sleep(SUPERVISE_SECONDS)
            now = self.loop.time()
            if self.stalled_until is not None and now >= self.stalled_until:
                self._end_stall()
            if now - self.opened >= self.rules.max_connection_age:
                await self.close(GOING_AWAY, "Connection age limit")
            elif self.pending_pings and min(self.pending_pings.values()) <= (
                now - self.rules.pong_timeout
            ):
                await self.close(POLICY_VIOLATION, "Pong timeout")
            elif not self.stalled and now >= next_ping:
                next_ping = now + self.rules.ping_interval
                await self._ping(now)

    async def _ping(self, now: float) -> None:
        payload = os.urandom(8)
        self.pending_pings[payload] = now
        self.pings_sent += 1
        with contextlib.suppress(ConnectionClosed):
            await self.connection.ping(payload)

    def stall(self, seconds: float) -> None:
        self.stalled_until = self.loop.time() + seconds

    def _end_stall(self) -> None:
        self.stalled_until = None
        self.connection.send_data()

    # --- closing ---------------------------------------------------------------------------

    def close_later(self, seconds: float, code: int, reason: str) -> None:
        async def close_then() -> None:
            await asyncio.sleep(seconds)
            await self.close(code, reason)

        self._spawn(close_then())

    async def close(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        if self.stalled:
            self._end_stall()  # the close frame goes after what was held
        await self.connection.close(code, reason)

    def cut(self) -> None:
        self.closing = True
        self.connection.transport.abort()


# --- messages --------------------------------------------------------------------------------


def agg_trade_event(symbol: str, trade: AggTrade, now: float, microseconds: bool) -> dict[str, Any]:
    """The `<symbol>@aggTrade` event for a trade pushed at `now` (seconds)."""
    return {
        "e": "aggTrade",
        "E": _ms(now, microseconds),
        "s": symbol,
        "a": trade.agg_id,
        "p": trade.price,
        "q": trade.quantity,
        "f": trade.first_id,
        "l": trade.last_id,
        "T": trade.time_us if microseconds else trade.time_ms,
        "m": trade.buyer_is_maker,
        "M": trade.best_match,
    }


def _ms(seconds: float, microseconds: bool) -> int:
    return int(seconds * (1_000_000 if microseconds else 1000))


class _RequestError(Exception):
    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code, self.msg = code, msg


def answer_request(session: _Session, message: str | bytes) -> dict[str, Any] | None:
    """The answer to a control message, as Binance words it (its error table)."""
    text = message.decode(errors="replace") if isinstance(message, bytes) else message
    request_id: Any = None
    try:
        request = _parse(text)
        request_id = request.get("id")
        return {"result": _perform(session, request), "id": request_id}
    except _RequestError as error:
        return {"error": {"code": error.code, "msg": error.msg}, "id": request_id}


def _parse(text: str) -> dict[str, Any]:
    try:
        request = json.loads(text)
    except json.JSONDecodeError as error:
        msg = f"Invalid JSON: expected value at line {error.lineno} column {error.colno}"
        raise _RequestError(3, msg) from None
    if not isinstance(request, dict):
        raise _RequestError(2, "Invalid request: expected a JSON object")
    if "method" not in request:
        raise _RequestError(2, "Invalid request: missing field `method`")
    if not _valid_id(request.get("id", ...)):
        raise _RequestError(2, "Invalid request: request ID must be an unsigned integer")
    return request


def _valid_id(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    return isinstance(value, str) and value.isalnum() and len(value) <= MAX_ID_LENGTH


def _perform(session: _Session, request: dict[str, Any]) -> Any:
    method, params = request["method"], request.get("params", [])
    if method not in METHODS:
        expected = ", ".join(f"`{name}`" for name in METHODS)
        raise _RequestError(
            2, f"Invalid request: unknown variant `{method}`, expected one of {expected}"
        )
    if not isinstance(params, list):
        raise _RequestError(2, "Invalid request: params must be an array")
    if method == "SUBSCRIBE":
        return _subscribe(session, params)
    if method == "UNSUBSCRIBE":
        for stream in params:
            session.streams.pop(str(stream), None)
        return None
    if method == "LIST_SUBSCRIPTIONS":
        return list(session.streams)
    if not params or params[0] != "combined":
        raise _RequestError(0, "Unknown property")
    if method == "GET_PROPERTY":
        return session.combined
    if len(params) != 2 or not isinstance(params[1], bool):
        raise _RequestError(1, "Invalid value type: expected Boolean")
    session.combined = params[1]
    return None


def _subscribe(session: _Session, params: list[Any]) -> None:
    if not all(isinstance(stream, str) for stream in params):
        raise _RequestError(2, "Invalid request: stream names must be strings")
    if len(session.streams | dict.fromkeys(params)) > session.rules.max_streams:
        raise _RequestError(4, "Too many subscriptions")
    session.streams.update(dict.fromkeys(params))
