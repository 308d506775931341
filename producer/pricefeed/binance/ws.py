"""The Binance WebSocket edge: combined market streams, one connection per group of streams,
each read on a thread of its own into one inbox. It knows no source and no message format:
frames go to the inbox as text, and a connection's end as `Closed`.

Binance's rules (../../../docs/architecture.md, the trade source): at most 1,024 streams and
5 incoming messages a second per connection (SUBSCRIBE, pings and pongs count). The streams
go in the URL (`/stream?streams=a/b/...`), so that opening costs no message; only those past
a URL of URL_BUDGET characters are subscribed, a message every SUBSCRIBE_EVERY_SECONDS. The
websockets library answers the server's pings, and pings the server itself (every 20 s) to
notice a connection that went silent.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import NamedTuple

import orjson
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import ClientConnection, connect

MAX_STREAMS = 1024  # per connection, Binance's limit
URL_BUDGET = 6000  # characters of the streams in a URL: servers cap a request line (8 KiB)
SUBSCRIBE_BATCH = 200  # streams per SUBSCRIBE message
SUBSCRIBE_EVERY_SECONDS = 0.5  # at most 2 messages a second of the 5 allowed
KEEPALIVE = 20.0  # seconds between our pings, and how long a pong may take: then it is dead
CLOSE_TIMEOUT = 2.0
# The library logs a connection's failure (a keepalive ping timeout) as an error with its
# traceback; the end of a connection is said once, by its reader (Closed), so it stays quiet.
LIBRARY_LOG = logging.getLogger("pricefeed.binance.ws.library")
LIBRARY_LOG.setLevel(logging.CRITICAL)


class Closed(NamedTuple):
    """A connection ended; `reason` says how."""

    reason: str


Message = str | bytes | Closed


class StreamUnavailable(Exception):
    """A connection that could not be opened (refused, a bad handshake, a timeout): the
    outcome may change, so its caller retries (the three of sources.base.RetryReason)."""

    retry_after: float | None = None
    level = logging.WARNING

    def explain(self, then: str) -> str:
        return f"Binance's stream unavailable: {self}; {then}"


def stream_groups(streams: Sequence[str], most: int = MAX_STREAMS) -> list[list[str]]:
    """The streams in as few connections as Binance allows, as evenly as possible."""
    count = max(1, -(-len(streams) // most))
    size = -(-len(streams) // count)
    return [list(streams[i : i + size]) for i in range(0, len(streams), size)]


def in_url(streams: Sequence[str], budget: int = URL_BUDGET) -> int:
    """How many of `streams` fit in the URL (at least one)."""
    used = 0
    for count, stream in enumerate(streams):
        used += len(stream) + 1
        if used > budget:
            return max(1, count)
    return len(streams)


def combined_url(base_url: str, streams: Sequence[str]) -> str:
    return f"{base_url.rstrip('/')}/stream?streams={'/'.join(streams)}"


class StreamConnection:
    """One open WebSocket connection of `streams`; what it receives goes to `inbox` as
    (number, message), its end as (number, Closed). A bounded inbox that is full (its reader
    is held up: Kafka away, say) holds the reader back, and so the socket: memory stays
    bounded, and a connection Binance gives up on is caught up through REST later."""

    def __init__(
        self,
        number: int,
        base_url: str,
        streams: Sequence[str],
        inbox: queue.Queue[tuple[int, Message]],
        timeout: float,
        keepalive: float = KEEPALIVE,
    ) -> None:
        self.number = number
        self.streams = list(streams)
        self.inbox = inbox
        fits = in_url(self.streams)
        url = combined_url(base_url, self.streams[:fits])
        try:
            self.websocket: ClientConnection = connect(
                url,
                open_timeout=timeout,
                ping_interval=keepalive,
                ping_timeout=keepalive,
                close_timeout=CLOSE_TIMEOUT,
                max_size=2**20,
                logger=LIBRARY_LOG,
                # One connection, reconnected by its caller (which catches up through REST
                # first), not websockets' own reconnecting iterator that connect() becomes.
                legacy=True,
            )
        except (InvalidHandshake, InvalidURI, OSError, TimeoutError) as error:
            raise StreamUnavailable(f"{error.__class__.__name__}: {error}") from None
        self.opened = time.monotonic()
        self._closing = threading.Event()
        self._reader = threading.Thread(target=self._read, name=f"binance-ws-{number}", daemon=True)
        self._reader.start()
        self._subscribe(self.streams[fits:])

    def _subscribe(self, streams: list[str]) -> None:
        for request_id, start in enumerate(range(0, len(streams), SUBSCRIBE_BATCH), start=1):
            if request_id > 1:
                time.sleep(SUBSCRIBE_EVERY_SECONDS)  # Binance's pace: 5 messages a second
            batch = streams[start : start + SUBSCRIBE_BATCH]
            request = {"method": "SUBSCRIBE", "params": batch, "id": request_id}
            try:
                self.websocket.send(orjson.dumps(request).decode())
            except ConnectionClosed as error:
                raise StreamUnavailable(f"closed while subscribing: {error}") from None

    def _read(self) -> None:
        try:
            for message in self.websocket:
                if not self._put(message):
                    return  # closed by us while the inbox was full
            reason = _closing(self.websocket)
        except ConnectionClosed as error:
            reason = str(error)
        except OSError as error:  # a broken socket the library did not wrap
            reason = f"{error.__class__.__name__}: {error}"
        self._put(Closed(reason))

    def _put(self, message: Message) -> bool:
        """Into the inbox, waiting while it is full; False if closed meanwhile."""
        while not self._closing.is_set():
            try:
                self.inbox.put((self.number, message), timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def reader_alive(self) -> bool:
        return self._reader.is_alive()

    def close(self) -> None:
        self._closing.set()
        self.websocket.close()
        self._reader.join(CLOSE_TIMEOUT + 1)


def _closing(websocket: ClientConnection) -> str:
    code, reason = websocket.close_code, websocket.close_reason
    return f"closed with code {code}" + (f" ({reason})" if reason else "")
