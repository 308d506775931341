"""The seam a reconnecting stream source uses, end to end, without Binance: a local TCP server
serves a tape of prices as lines and cuts the connection a few times (a reset, a half-sent
line, a goodbye); a small stream source reads it, raising StreamInterrupted at each cut;
StreamRunner reconnects it, and the events go through the real KafkaSink into a real broker.
The topic must hold every line of the tape exactly once, in order."""

from __future__ import annotations

import logging
import socket
import socketserver
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

import pytest

from btcpipe.backoff import Backoff
from btcpipe.clock import wall_clock_ms
from btcpipe.contract import PriceEvent
from pricefeed.kafka_sink import KafkaSink
from pricefeed.sources.base import SourceError, StreamInterrupted
from pricefeed.sources.identity import Sequencer
from pricefeed.sources.streaming import StreamRunner
from tests.harness import TansuBroker, wait_until
from tests.pipeline import read_all_records
from tests.producer_runs import message

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")


@dataclass(frozen=True)
class Cut:
    """How the server ends a connection after sending `after` lines of the tape."""

    after: int
    how: str  # "reset" (RST), "half-line" (half the next line, then FIN) or "goodbye"


class TapeServer:
    """Serves `tape` as lines `<index> <symbol> <price>`, from the index each connection asks
    for (`FROM <index>`), ending the n-th connection as cuts[n] says; the connections after
    the last cut get the rest of the tape and stay open. 127.0.0.1, a free port."""

    def __init__(self, tape: Sequence[tuple[str, str]], cuts: Sequence[Cut]) -> None:
        self.tape = list(tape)
        self.cuts = list(cuts)
        self.asked_from: list[int] = []  # per connection, the index it asked for
        self._lock = threading.Lock()
        self._closing = threading.Event()
        server = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                server.serve(self.request)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> TapeServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def line(self, index: int) -> bytes:
        symbol, price = self.tape[index]
        return f"{index} {symbol} {price}\n".encode()

    def serve(self, connection: socket.socket) -> None:
        asked = connection.makefile("rb").readline().decode().split()
        if asked[:1] != ["FROM"]:
            return
        start = int(asked[1])
        with self._lock:
            number = len(self.asked_from)
            self.asked_from.append(start)
        cut = self.cuts[number] if number < len(self.cuts) else None
        end = len(self.tape) if cut is None else min(start + cut.after, len(self.tape))
        connection.sendall(b"".join(self.line(index) for index in range(start, end)))
        if cut is None:
            self._closing.wait()  # the live stream: open until the test ends
        elif cut.how == "reset":
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif cut.how == "half-line":
            connection.sendall(self.line(end)[:5])
        elif cut.how == "goodbye":
            connection.sendall(b"GOODBYE\n")
        connection.close()


class ServerClosing(StreamInterrupted):
    """The server said it closes: reconnect at once."""

    retry_after = 0.0


class TapeConnection:
    """One connection to the tape server; a line cut short is dropped (asked for again)."""

    def __init__(self, sock: socket.socket, source: TapeSource) -> None:
        self.sock = sock
        self.source = source
        self.pending = b""
        self.closing = False  # the server said goodbye: the events before it came first

    def read(self, timeout: float) -> list[PriceEvent]:
        if self.closing:
            raise ServerClosing("the tape server is closing the connection")
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return []
        except ConnectionResetError:
            raise StreamInterrupted("the tape server reset the connection") from None
        if not data:
            raise StreamInterrupted("the tape server closed the connection")
        *lines, self.pending = (self.pending + data).split(b"\n")
        events = []
        for line in lines:
            if line == b"GOODBYE":
                self.closing = True
                break
            events.append(self.source.event(line.decode()))
        return events

    def close(self) -> None:
        self.sock.close()


class TapeSource:
    """A stream source of the tape server's lines, resuming after the last line it read."""

    label = "the tape server's prices"
    echoes_each_event = False

    def __init__(self, port: int) -> None:
        self.port = port
        self.next_index = 0
        self.sequencer = Sequencer("simulated")

    def connect(self) -> TapeConnection:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        except OSError as exc:
            raise StreamInterrupted(f"cannot connect to the tape server: {exc}") from None
        sock.sendall(f"FROM {self.next_index}\n".encode())
        return TapeConnection(sock, self)

    def event(self, line: str) -> PriceEvent:
        index, symbol, price = line.split()
        if int(index) != self.next_index:
            raise SourceError(f"line {index} came where line {self.next_index} was due")
        self.next_index += 1
        return self.sequencer.event(symbol, price, wall_clock_ms())


def test_a_reconnecting_stream_delivers_every_event_once_and_in_order(
    broker: TansuBroker, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    tape = [(SYMBOLS[i % 3], f"{40_000 + i}.{i:08d}") for i in range(3000)]
    cuts = [Cut(700, "reset"), Cut(1, "half-line"), Cut(500, "goodbye"), Cut(0, "reset")]
    stop = threading.Event()
    sink = KafkaSink(broker.bootstrap, topic, 3, stop, Backoff(0.2, 2), echo=False)
    assert sink.connect()
    with TapeServer(tape, cuts) as server, caplog.at_level(logging.INFO, logger="producer"):
        source = TapeSource(server.port)
        runner = StreamRunner(source, Backoff(0.05, 0.2))
        running = threading.Thread(target=runner.run, args=(sink, stop))
        running.start()
        try:
            wait_until(lambda: sink.delivered >= len(tape), 60, "the whole tape acknowledged")
        finally:
            stop.set()
            running.join(10)
            lost = sink.close()
    assert not running.is_alive() and lost == 0 and sink.delivered == len(tape)

    # Each connection asked for the line after the last one read before its cut (a line
    # out of turn would have stopped the source).
    assert len(server.asked_from) == len(cuts) + 1
    assert server.asked_from[0] == 0 < server.asked_from[1]
    assert server.asked_from == sorted(server.asked_from)
    assert server.asked_from[-1] < len(tape)  # the last cut came before the end
    reconnects = [r.getMessage() for r in caplog.records if "reconnecting in" in r.getMessage()]
    assert len(reconnects) == len(cuts)
    assert any("is closing the connection; reconnecting in 0.0 s" in r for r in reconnects)
    assert "Streaming the tape server's prices" in caplog.text

    records = [r for batch in read_all_records(broker.bootstrap, topic).values() for r in batch]
    assert len(records) == len(tape)  # nothing lost, nothing twice
    for symbol in SYMBOLS:
        mine = sorted((r for r in records if r.key == symbol.encode()), key=lambda r: r.offset)
        bodies = [message(r) for r in mine]
        assert [b["price"] for b in bodies] == [price for s, price in tape if s == symbol]
        assert [b["seq"] for b in bodies] == list(range(1, len(bodies) + 1))
        assert len({r.partition for r in mine}) == 1
