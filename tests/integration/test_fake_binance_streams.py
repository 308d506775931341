"""The fake Binance's WebSocket streams with real clients: the `websockets` library, and a
frame-level client written here that answers pings only when told (the library always does).
Connection rules shortened through the constructor; every wait is on a condition."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.harness import FakeBinance, wait_until
from tests.harness.trade_tape import AggTrade

TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA


@pytest.fixture
def fake() -> Iterator[FakeBinance]:
    with FakeBinance(prices={}) as binance:
        binance.add_tape("BTCUSDT", "43250.75")
        binance.add_tape("ETHUSDT", "2300.10")
        yield binance


def listening(fake: FakeBinance, count: int = 1) -> None:
    """Wait until `count` connections are open: trades appended before that are not theirs."""
    wait_until(lambda: len(fake.stream_connections()) >= count, 10, f"{count} WebSockets")


def event_of(trade: AggTrade, symbol: str) -> dict[str, Any]:
    """The aggTrade event fields that come from the tape (E is the push time)."""
    return {"e": "aggTrade", "s": symbol, **trade.binance_row()}


def received(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    return [json.loads(ws.recv(timeout=10)) for _ in range(count)]


# --- a frame-level client ---------------------------------------------------------------------


@dataclass
class Frame:
    opcode: int
    payload: bytes


class RawClient:
    """A WebSocket client that does only what it is told: no automatic pong."""

    def __init__(self, url: str, path: str) -> None:
        host, port = url.removeprefix("ws://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        self.buffer = b""
        head = self._read_until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            self._fill()
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionResetError("the server closed the TCP connection")
        self.buffer += chunk

    def _take(self, count: int) -> bytes:
        while len(self.buffer) < count:
            self._fill()
        taken, self.buffer = self.buffer[:count], self.buffer[count:]
        return taken

    def frame(self, timeout: float = 10) -> Frame:
        self.sock.settimeout(timeout)
        first, second = self._take(2)
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", self._take(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self._take(8))[0]
        return Frame(first & 0x0F, self._take(length))

    def send(self, opcode: int, payload: bytes = b"") -> None:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        assert len(payload) < 126
        self.sock.sendall(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw_clients() -> Iterator[list[RawClient]]:
    clients: list[RawClient] = []
    yield clients
    for client in clients:
        client.close()


def close_code(frame: Frame) -> tuple[int, str]:
    assert frame.opcode == CLOSE, frame
    return struct.unpack("!H", frame.payload[:2])[0], frame.payload[2:].decode()


def until_close(client: RawClient, answer_pings: bool = False, timeout: float = 10) -> Frame:
    """Read frames until the close frame (answering pings if told), which it returns."""
    deadline = time.monotonic() + timeout
    while True:
        frame = client.frame(max(0.1, deadline - time.monotonic()))
        if frame.opcode == CLOSE:
            return frame
        if frame.opcode == PING and answer_pings:
            client.send(PONG, frame.payload)


# --- streams -----------------------------------------------------------------------------------


def test_a_combined_stream_delivers_each_tape_in_order(fake: FakeBinance) -> None:
    with connect(fake.ws_url + "/stream?streams=btcusdt@aggTrade/ethusdt@aggTrade") as ws:
        listening(fake)
        btc, eth = fake.add_trades("BTCUSDT", 40), fake.add_trades("ETHUSDT", 25)
        messages = received(ws, 65)
    by_stream: dict[str, list[dict[str, Any]]] = {"btcusdt@aggTrade": [], "ethusdt@aggTrade": []}
    for message in messages:
        assert set(message) == {"stream", "data"}
        by_stream[message["stream"]].append(message["data"])
    for stream, trades, symbol in (
        ("btcusdt@aggTrade", btc, "BTCUSDT"),
        ("ethusdt@aggTrade", eth, "ETHUSDT"),
    ):
        events = by_stream[stream]
        assert [{k: v for k, v in e.items() if k != "E"} for e in events] == [
            event_of(t, symbol) for t in trades
        ]
        assert all(event["E"] >= event["T"] for event in events)


def test_a_raw_stream_carries_bare_events_of_its_symbol_only(fake: FakeBinance) -> None:
    with connect(fake.ws_url + "/ws/btcusdt@aggTrade") as ws:
        listening(fake)
        fake.add_trades("ETHUSDT", 5)
        btc = fake.add_trades("BTCUSDT", 3)
        events = received(ws, 3)
    assert [{k: v for k, v in e.items() if k != "E"} for e in events] == [
        event_of(t, "BTCUSDT") for t in btc
    ]


def test_the_walk_streams_live_and_a_gap_or_placeholder_is_never_pushed() -> None:
    fake = FakeBinance(prices={}, trades_per_second={"BTCUSDT": 100})
    with fake, connect(fake.ws_url + "/ws/btcusdt@aggTrade") as ws:
        first = json.loads(ws.recv(timeout=10))
        hole = fake.skip_ids("BTCUSDT", 3)
        placeholder = fake.add_placeholder("BTCUSDT")
        events = [first, *received(ws, 60)]
    ids = [event["a"] for event in events]
    missing = set(range(hole[0], hole[1] + 1)) | {placeholder.agg_id}
    assert not missing & set(ids)
    assert ids == [a for a in range(ids[0], ids[-1] + 1) if a not in missing]
    on_tape = {t.agg_id: t for t in fake.trades("BTCUSDT")}
    assert all(event_of(on_tape[e["a"]], "BTCUSDT").items() <= e.items() for e in events)


def test_subscribe_list_and_unsubscribe(fake: FakeBinance) -> None:
    with connect(fake.ws_url + "/ws") as ws:
        ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@aggTrade"], "id": 1}))
        assert json.loads(ws.recv(timeout=10)) == {"result": None, "id": 1}
        trade = fake.add_trade("BTCUSDT", "43251", "0.5")
        assert json.loads(ws.recv(timeout=10))["a"] == trade.agg_id
        ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["ethusdt@aggTrade"], "id": 2}))
        assert json.loads(ws.recv(timeout=10)) == {"result": None, "id": 2}
        ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 3}))
        assert json.loads(ws.recv(timeout=10)) == {
            "result": ["btcusdt@aggTrade", "ethusdt@aggTrade"], "id": 3,
        }  # fmt: skip
        ws.send(json.dumps({"method": "UNSUBSCRIBE", "params": ["btcusdt@aggTrade"], "id": 4}))
        assert json.loads(ws.recv(timeout=10)) == {"result": None, "id": 4}
        time.sleep(1.1)  # spacing: at most 5 messages a second
        ws.send(json.dumps({"method": "SET_PROPERTY", "params": ["combined", True], "id": 5}))
        assert json.loads(ws.recv(timeout=10)) == {"result": None, "id": 5}
        fake.add_trade("BTCUSDT", "43252", "0.5")  # no longer subscribed
        eth = fake.add_trade("ETHUSDT", "2301", "1")
        wrapped = json.loads(ws.recv(timeout=10))
        assert wrapped["stream"] == "ethusdt@aggTrade"
        assert wrapped["data"].items() >= event_of(eth, "ETHUSDT").items()


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("{not json", 3),
        ('{"method": "SUBSCRIBE", "params": [], "id": 1.5}', 2),
        ('{"params": [], "id": 1}', 2),
        ('{"method": "SUBSCRIB", "params": [], "id": 7}', 2),
        ('{"method": "GET_PROPERTY", "params": ["colour"], "id": 8}', 0),
    ],
)
def test_a_bad_request_gets_binances_error_and_the_connection_stays(
    fake: FakeBinance, message: str, code: int
) -> None:
    with connect(fake.ws_url + "/ws/btcusdt@aggTrade") as ws:
        ws.send(message)
        answer = json.loads(ws.recv(timeout=10))
        assert answer["error"]["code"] == code and answer["error"]["msg"]
        trade = fake.add_trade("BTCUSDT", "43251", "0.5")
        assert json.loads(ws.recv(timeout=10))["a"] == trade.agg_id


def test_microseconds_when_asked(fake: FakeBinance) -> None:
    with connect(fake.ws_url + "/ws/btcusdt@aggTrade?timeUnit=MICROSECOND") as ws:
        listening(fake)
        trade = fake.add_trade("BTCUSDT", "43251", "0.5")
        event = json.loads(ws.recv(timeout=10))
    assert event["T"] == trade.time_us and event["E"] >= trade.time_us


# --- connection rules --------------------------------------------------------------------------


def test_a_client_that_does_not_answer_pings_is_closed(raw_clients: list[RawClient]) -> None:
    with FakeBinance(prices={}, ping_interval=0.2, pong_timeout=0.6) as fake:
        client = RawClient(fake.ws_url, "/ws/btcusdt@aggTrade")
        raw_clients.append(client)
        opened = time.monotonic()
        first = client.frame()
        assert first.opcode == PING and len(first.payload) > 0
        closing = until_close(client, answer_pings=False)
        assert time.monotonic() - opened >= 0.2 + 0.6  # not before its ping's time was up
        assert close_code(closing) == (1008, "Pong timeout")


def test_a_client_that_answers_pings_is_kept(raw_clients: list[RawClient]) -> None:
    # 4 pongs a second: within the 5-messages rule
    with FakeBinance(prices={}, ping_interval=0.25, pong_timeout=0.6) as fake:
        client = RawClient(fake.ws_url, "/ws/btcusdt@aggTrade")
        raw_clients.append(client)
        pings = 0
        while pings < 15:  # over six pong timeouts
            frame = client.frame()
            assert frame.opcode == PING, frame
            client.send(PONG, frame.payload)
            pings += 1
        (connection,) = fake.stream_connections()
        assert connection.pongs_received >= 14


def test_unsolicited_pongs_do_not_keep_a_connection(raw_clients: list[RawClient]) -> None:
    with FakeBinance(prices={}, ping_interval=0.4, pong_timeout=1.0) as fake:
        client = RawClient(fake.ws_url, "/ws")
        raw_clients.append(client)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            frame = client.frame()
            if frame.opcode == CLOSE:
                break
            client.send(PONG, b"")  # allowed, but answers no ping
        assert close_code(frame) == (1008, "Pong timeout")


def test_more_than_5_messages_in_a_second_close_the_connection(
    raw_clients: list[RawClient],
) -> None:
    with FakeBinance(prices={}, ping_interval=3600) as fake:
        polite = RawClient(fake.ws_url, "/ws")
        rude = RawClient(fake.ws_url, "/ws")
        raw_clients += [polite, rude]
        for _ in range(5):
            polite.send(PING, b"p")
        for _ in range(5):
            assert polite.frame() == Frame(PONG, b"p")
        time.sleep(1.1)  # spacing: the next five are in another second
        for _ in range(5):
            polite.send(PING, b"q")
        for _ in range(5):
            assert polite.frame() == Frame(PONG, b"q")
        for _ in range(3):
            rude.send(PONG, b"")
        subscribe = b'{"method":"LIST_SUBSCRIPTIONS","id":1}'
        rude.send(TEXT, subscribe)
        rude.send(PING, b"r")
        rude.send(PING, b"s")  # the sixth
        assert close_code(until_close(rude)) == (1008, "Too many requests")
        polite.send(PING, b"still")
        assert polite.frame() == Frame(PONG, b"still")


def test_every_connection_is_closed_at_its_age_limit() -> None:
    aging = FakeBinance(prices={}, max_connection_age=0.5)
    with aging, connect(aging.ws_url + "/ws/btcusdt@aggTrade") as ws:
        opened = time.monotonic()
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert time.monotonic() - opened >= 0.5
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001


def test_too_many_connection_attempts_are_refused_with_429() -> None:
    with FakeBinance(prices={}, max_connection_attempts=3, attempt_window=3600) as fake:
        for _ in range(3):
            with connect(fake.ws_url + "/ws/btcusdt@aggTrade"):
                pass
        with pytest.raises(InvalidStatus) as refused:
            connect(fake.ws_url + "/ws/btcusdt@aggTrade")
        assert refused.value.response.status_code == 429
        assert fake.ws_connection_attempts["127.0.0.1"] == 4


def test_at_most_max_streams_a_connection() -> None:
    with FakeBinance(prices={}, max_streams=2) as fake:
        with pytest.raises(InvalidStatus) as refused:
            connect(fake.ws_url + "/stream?streams=a@aggTrade/b@aggTrade/c@aggTrade")
        assert refused.value.response.status_code == 400
        with connect(fake.ws_url + "/stream?streams=a@aggTrade/b@aggTrade") as ws:
            ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["c@aggTrade"], "id": 9}))
            answer = json.loads(ws.recv(timeout=10))
        assert answer == {"error": {"code": 4, "msg": "Too many subscriptions"}, "id": 9}


# --- faults ------------------------------------------------------------------------------------


def test_a_shutdown_notice_reaches_raw_and_combined_streams(fake: FakeBinance) -> None:
    with (
        connect(fake.ws_url + "/ws/btcusdt@aggTrade") as raw,
        connect(fake.ws_url + "/stream?streams=btcusdt@aggTrade") as combined,
    ):
        listening(fake, 2)
        assert fake.send_shutdown_notice(close_after=0.2) == 2
        notice = json.loads(raw.recv(timeout=10))
        assert notice.keys() == {"e", "E"} and notice["e"] == "serverShutdown"
        wrapped = json.loads(combined.recv(timeout=10))
        assert wrapped["stream"] == "!serverShutdown" and wrapped["data"]["e"] == "serverShutdown"
        for ws in (raw, combined):
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001


def test_a_cut_drops_every_tcp_connection_and_nothing_is_replayed(fake: FakeBinance) -> None:
    with connect(fake.ws_url + "/ws/btcusdt@aggTrade") as ws:
        listening(fake)
        before = fake.add_trade("BTCUSDT", "43251", "0.1")
        assert json.loads(ws.recv(timeout=10))["a"] == before.agg_id
        assert fake.cut_streams() == 1
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is None  # no close frame: the TCP connection was cut
    wait_until(lambda: not fake.stream_connections(), 10, "the cut connection to go")
    fake.add_trades("BTCUSDT", 5)  # while nobody listens
    with connect(fake.ws_url + "/ws/btcusdt@aggTrade") as again:
        listening(fake)
        after = fake.add_trade("BTCUSDT", "43252", "0.1")
        assert json.loads(again.recv(timeout=10))["a"] == after.agg_id


def test_a_stall_sends_nothing_then_everything_in_order(raw_clients: list[RawClient]) -> None:
    with FakeBinance(prices={}, ping_interval=0.1, pong_timeout=30) as fake:
        fake.add_tape("BTCUSDT")
        client = RawClient(fake.ws_url, "/ws/btcusdt@aggTrade")
        raw_clients.append(client)
        assert client.frame().opcode == PING  # the connection is live
        assert fake.stall_streams(1.0) == 1
        client.send(PING, b"during")
        held = fake.add_trades("BTCUSDT", 4)
        with pytest.raises(TimeoutError):
            client.frame(timeout=0.5)  # no event, no pong, no ping for now
        (connection,) = fake.stream_connections()
        assert connection.messages_received == 1  # it still reads
        frames: list[Frame] = []
        while len([f for f in frames if f.opcode == TEXT]) < 4:
            frames.append(client.frame())
        assert Frame(PONG, b"during") in frames
        events = [json.loads(f.payload) for f in frames if f.opcode == TEXT]
        assert [event["a"] for event in events] == [trade.agg_id for trade in held]
