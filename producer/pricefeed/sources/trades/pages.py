"""REST aggTrades pages for the trade source, one request at a time: while the trades of one
page are sent to Kafka, the next page of a symbol that is catching up is already on its way,
on a thread of its own (a page's round trip is not spent waiting). Which page comes next is
join.py's to say; the source asks for one ahead only when nothing argues against it (a pause
for the weight budget, REST lagging the stream), so Binance sees the requests it would see
without fetching ahead, one at a time (a page fetched ahead that is no longer wanted, after
a reconnect say, is dropped)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from pricefeed.binance.rest import BinanceClient
from pricefeed.sources.trades.join import FromId, FromTime

Request = FromId | FromTime


class _Ahead:
    """One page asked for ahead: its answer, or what it raised, once `done`."""

    def __init__(self, key: tuple[str, Request], fetch: Callable[[], object]) -> None:
        self.key = key
        self._fetch = fetch
        self._payload: object = None
        self._error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            self._payload = self._fetch()
        except BaseException as error:  # raised again in the reading thread
            self._error = error
        finally:
            self.done.set()

    def result(self) -> object:
        self.done.wait()
        if self._error is not None:
            raise self._error
        return self._payload


def _fetch_ahead_forever(jobs: queue.SimpleQueue[_Ahead]) -> None:
    while True:
        jobs.get().run()


class PageFetcher:
    """The aggTrades pages of one client. Its requests never overlap: a page asked for now
    waits until the one fetched ahead has been answered (and uses it when it is the same)."""

    def __init__(self, client: BinanceClient) -> None:
        self.client = client
        self._ahead: _Ahead | None = None
        self._jobs: queue.SimpleQueue[_Ahead] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None  # started by the first fetch ahead

    def page(self, symbol: str, request: Request) -> object:
        """The answer to `request` (raises the client's BinanceError)."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead.done.wait()
            if ahead.key == (symbol, request):
                return ahead.result()
        return self._get(symbol, request)

    def fetch_ahead(self, symbol: str, request: Request) -> None:
        """Start asking for the page `request`; `page` with the same request takes it."""
        if self._ahead is not None:
            self._ahead.done.wait()
        if self._worker is None:
            # A daemon: a stop does not wait for an answer that nobody will read.
            self._worker = threading.Thread(
                target=_fetch_ahead_forever, args=(self._jobs,), name="binance-rest-ahead",
                daemon=True,
            )  # fmt: skip
            self._worker.start()
        self._ahead = _Ahead((symbol, request), lambda: self._get(symbol, request))
        self._jobs.put(self._ahead)

    def _get(self, symbol: str, request: Request) -> object:
        if isinstance(request, FromId):
            return self.client.agg_trades(symbol, request.agg_id, None)
        return self.client.agg_trades(symbol, None, request.time_ms)
