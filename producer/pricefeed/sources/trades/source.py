"""`--source binance-trades`: every aggregate trade of SYMBOLS, live over Binance's combined
WebSocket streams, with what a connection missed fetched through REST aggTrades, so that each
trade is published once, in id order per symbol (join.py decides; this module does the I/O,
pages.py fetches the REST pages, the next one ahead).

Where it starts: after the last trade of each symbol that the topic holds (a restart, even on
an empty disk), else at the first trade at or after TRADES_SINCE (default: the start of the
current 5-minute window). A cut connection reconnects (StreamRunner) and catches up; a
`serverShutdown` notice, and a connection's age nearing Binance's 24-hour limit, open a new
connection before the old one is closed. Bad input is logged and counted, never published.
"""

from __future__ import annotations

import itertools
import logging
import queue
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from btcpipe.backoff import Backoff
from btcpipe.clock import wall_clock_ms
from btcpipe.contract import PriceEvent, agg_trade_stream
from pricefeed.binance.rest import (
    AGG_TRADES_LIMIT,
    BinanceClient,
    BinanceError,
    InvalidResponse,
    weight_pause,
)
from pricefeed.binance.ws import (
    KEEPALIVE,
    Closed,
    Message,
    StreamConnection,
    StreamUnavailable,
    stream_groups,
)
from pricefeed.sources.base import SourceError, StreamInterrupted
from pricefeed.sources.trades.frames import (
    LiveTrade,
    Refused,
    Reply,
    Shutdown,
    parse_frame,
    parse_rest_rows,
)
from pricefeed.sources.trades.join import (
    FromId,
    FromTime,
    LiveOrder,
    Step,
    SymbolJoin,
    utc_text,
    window_start,
)
from pricefeed.sources.trades.pages import PageFetcher

log = logging.getLogger("producer")

# Binance closes a connection 24 hours after it opened: replace it well before (make before
# break), so that no trade falls between two connections.
REPLACE_AFTER_SECONDS = 23.5 * 3600
DRAIN_AT_MOST = 5000  # frames handled per read: a read stays short, the sink is tended
UNREAD_AT_MOST = 50_000  # frames waiting to be read (Kafka away): then the sockets wait
NAMED_AT_MOST = 20  # symbols whose start is logged one by one
REPORT_EVERY_SECONDS = 10.0  # a `Trades:` line, as often as the ticker's polls
REST_LAG_WAIT_SECONDS = 1.0  # before asking again when REST stopped short of the stream


class TradeLog(Protocol):
    """Where the published trades are (kafka_tail.TopicTail): the last seq of each stream."""

    @property
    def unavailable(self) -> type[Exception]:
        """What it raises when it cannot answer now (a RetryReason)."""
        ...

    def last_seqs(self, streams: Mapping[str, str]) -> dict[str, int]: ...


def stream_name(symbol: str) -> str:
    return f"{symbol.lower()}@aggTrade"


class TradeStreamSource:
    """A StreamSource (streaming.StreamRunner runs it) of Binance's aggregate trades."""

    echoes_each_event = False  # trades come many a second

    def __init__(
        self,
        client: BinanceClient,
        ws_url: str,
        trade_log: TradeLog,
        symbols: Sequence[str] | None,
        since_ms: int | None,
        timeout: float,
        backoff: Backoff,
        replace_after: float = REPLACE_AFTER_SECONDS,
        keepalive: float = KEEPALIVE,
    ) -> None:
        self.client = client
        self.pages = PageFetcher(client)  # survives reconnects: one request at a time
        self.ws_url = ws_url
        self.trade_log = trade_log
        self.symbols = None if symbols is None else tuple(symbols)  # None: every listed pair
        self.since_ms = since_ms
        self.timeout = timeout
        self.backoff = backoff
        self.replace_after = replace_after
        self.keepalive = keepalive  # our pings: a connection silent past two of these is cut
        self.joins: dict[str, SymbolJoin] = {}
        self.skipped = 0  # input refused, never published
        self.gaps = 0
        self.handed = 0  # trades handed to the sink since the start
        self._since_report = 0
        self._report_due: float | None = None

    @property
    def label(self) -> str:
        what = "every pair Binance lists" if self.symbols is None else ", ".join(self.symbols)
        return f"Binance's aggregate trades of {what} from {self.ws_url}"

    def connect(self) -> TradeConnection:
        if not self.joins:
            self._start()
        for join in self.joins.values():
            join.reconnected()
        return TradeConnection(self)

    def count(self, handed: int, now: float) -> None:
        """Note trades handed to the sink; every REPORT_EVERY_SECONDS say how many."""
        self.handed += handed
        self._since_report += handed
        if self._report_due is None:
            self._report_due = now + REPORT_EVERY_SECONDS
        if now < self._report_due:
            return
        log.info(
            "Trades: %d handed to Kafka in the last %.0f s, %d since the start; %d skipped, "
            "%d gaps",
            self._since_report,
            now - self._report_due + REPORT_EVERY_SECONDS,
            self.handed,
            self.skipped,
            self.gaps,
        )
        self._since_report, self._report_due = 0, now + REPORT_EVERY_SECONDS

    def refuse(self, reason: str) -> None:
        self.skipped += 1
        log.warning("Skipped trade input: %s (%d skipped so far)", reason, self.skipped)

    def _start(self) -> None:
        """The symbols held against Binance's listing, and where each one starts."""
        symbols = self._listed_symbols()
        streams = {symbol: agg_trade_stream(symbol) for symbol in symbols}
        try:
            last = self.trade_log.last_seqs(streams)
        except self.trade_log.unavailable as error:
            raise StreamInterrupted(f"Cannot read the topic's last trades: {error}") from error
        since = self.since_ms if self.since_ms is not None else window_start(wall_clock_ms())
        joins = {}
        for symbol in symbols:
            if symbol in last:
                joins[symbol] = SymbolJoin(symbol, last=last[symbol])
            else:
                joins[symbol] = SymbolJoin(symbol, since_ms=since)
        _log_starts(joins, since)
        self.joins = joins

    def _listed_symbols(self) -> list[str]:
        try:
            listed = {symbol for symbol, _ in self.client.ticker_prices(None)}
        except BinanceError as error:
            raise StreamInterrupted.because(error) from error
        if self.symbols is None:
            return sorted(listed)
        gone = [symbol for symbol in self.symbols if symbol not in listed]
        if gone:
            pairs = "a pair" if len(gone) == 1 else f"{len(gone)} pairs"
            raise SourceError(
                f"SYMBOLS names {pairs} that Binance does not list: {', '.join(gone)}."
            )
        return list(self.symbols)


def _log_starts(joins: Mapping[str, SymbolJoin], since: int) -> None:
    resumed = [join for join in joins.values() if join.last is not None]
    fresh = [join.symbol for join in joins.values() if join.last is None]
    if len(joins) <= NAMED_AT_MOST:
        for join in resumed:
            log.info(
                "%s resumes after aggregate trade %d, the last of its trades on the topic",
                join.symbol,
                join.last,
            )
    elif resumed:
        log.info("%d symbols resume after the last of their trades on the topic", len(resumed))
    if fresh:
        named = ", ".join(fresh) if len(fresh) <= NAMED_AT_MOST else f"{len(fresh)} symbols"
        verb = "starts" if len(fresh) == 1 else "start"
        log.info("%s %s at the first trade at or after %s", named, verb, utc_text(since))


class TradeConnection:
    """One session of the source: a WebSocket connection per group of at most 1,024
    streams, read into one inbox, and the REST pages that fill what they missed."""

    def __init__(self, source: TradeStreamSource, clock: Callable[[], float] = time.monotonic):
        self.source = source
        self.clock = clock
        self.inbox: queue.Queue[tuple[int, Message]] = queue.Queue(UNREAD_AT_MOST)
        self.order = LiveOrder()
        self.open: dict[int, StreamConnection] = {}
        self.retired: set[int] = set()  # replaced by us: their end is no interruption
        self.numbers = itertools.count(1)
        self.rest_ready_at = 0.0
        self.filled: dict[str, int] = {}  # trades REST brought this fill, per symbol
        self.symbols = frozenset(source.joins)
        try:
            for group in stream_groups([stream_name(s) for s in source.joins]):
                self._open(group)
        except StreamInterrupted:
            self.close()
            raise
        log.info(
            "Connected to Binance's trade streams: %d symbol%s over %d connection%s",
            len(self.symbols),
            "" if len(self.symbols) == 1 else "s",
            len(self.open),
            "" if len(self.open) == 1 else "s",
        )

    def _open(self, streams: Sequence[str]) -> StreamConnection:
        number = next(self.numbers)
        try:
            connection = StreamConnection(
                number,
                self.source.ws_url,
                streams,
                self.inbox,
                self.source.timeout,
                self.source.keepalive,
            )
        except StreamUnavailable as error:
            raise StreamInterrupted.because(error) from error
        self.open[number] = connection
        return connection

    def read(self, timeout: float) -> list[PriceEvent]:
        events: list[PriceEvent] = []
        self._replace_old()
        self._drain(0.0, events)
        if not self._fill(events) and not events:
            self._drain(timeout, events)
        self.source.count(len(events), self.clock())
        return events

    def close(self) -> None:
        for connection in list(self.open.values()):
            connection.close()
        self.open.clear()

    # --- the live streams ------------------------------------------------------------------

    def _drain(self, timeout: float, events: list[PriceEvent]) -> None:
        """Handle what arrived, waiting up to `timeout` for the first frame."""
        for count in range(DRAIN_AT_MOST):
            try:
                if count == 0 and timeout > 0:
                    number, message = self.inbox.get(timeout=timeout)
                else:
                    number, message = self.inbox.get_nowait()
            except queue.Empty:
                return
            self._handle(number, message, events)

    def _handle(self, number: int, message: Message, events: list[PriceEvent]) -> None:
        if isinstance(message, Closed):
            if number in self.retired:
                self.retired.discard(number)
                return
            raise StreamInterrupted(f"Binance's stream connection {number} ended: {message.reason}")
        frame = parse_frame(message, self.symbols, wall_clock_ms())
        if isinstance(frame, LiveTrade):
            row = frame.row
            if self.order.went_back(number, row):
                self.source.refuse(f"{row.symbol}: live aggregate id {row.agg_id} went back")
                return
            self._apply(self.source.joins[row.symbol].live(row), events)
        elif isinstance(frame, Shutdown):
            log.info(
                "Binance announced a server shutdown on stream connection %d: opening a new "
                "connection before closing it",
                number,
            )
            self._replace(number)
        elif isinstance(frame, Refused):
            self.source.refuse(frame.reason)
        else:
            assert isinstance(frame, Reply)

    def _replace_old(self) -> None:
        now = self.clock()
        for number, connection in list(self.open.items()):
            if now - connection.opened >= self.source.replace_after:
                log.info(
                    "Stream connection %d is %.1f h old: replacing it before Binance's "
                    "24-hour limit",
                    number,
                    (now - connection.opened) / 3600,
                )
                self._replace(number)

    def _replace(self, number: int) -> None:
        """Make before break: the new connection is open before the old one closes; what
        falls between the two is fetched from REST (a live id that skips ahead)."""
        old = self.open.get(number)
        if old is None:
            return  # replaced already
        self._open(old.streams)
        del self.open[number]
        self.retired.add(number)
        old.close()

    # --- filling through REST --------------------------------------------------------------

    def _fill(self, events: list[PriceEvent]) -> bool:
        """One REST page for a symbol that is filling; False when none is due."""
        if self.clock() < self.rest_ready_at:
            return False
        due = self._due()
        if due is None:
            return False
        join, request = due
        try:
            payload = self.source.pages.page(join.symbol, request)
            parsed = parse_rest_rows(join.symbol, payload, wall_clock_ms())
            if parsed is None:
                raise InvalidResponse(f"aggTrades answer is not a list of rows: {payload!r:.120}")
        except BinanceError as error:
            self._rest_failed(join.symbol, error)
            return False
        rows, refused = parsed
        for reason in refused:
            self.source.refuse(reason)
        assert isinstance(payload, list)
        step = join.page(rows, full=len(payload) >= AGG_TRADES_LIMIT)
        self._apply(step, events)
        self.source.backoff.reset()
        self._note_fill(join, len(step.events))
        if join.waits_for_rest:
            self.rest_ready_at = self.clock() + REST_LAG_WAIT_SECONDS
        pause = weight_pause(self.source.client.used_weight, time.time())
        if pause:
            log.info(
                "Binance REST weight %s used this minute: next page in %.1f s",
                self.source.client.used_weight,
                pause,
            )
            self.rest_ready_at = self.clock() + pause
        elif (ahead := self._due()) is not None and self.clock() >= self.rest_ready_at:
            self.source.pages.fetch_ahead(ahead[0].symbol, ahead[1])
        return True

    def _due(self) -> tuple[SymbolJoin, FromId | FromTime] | None:
        """The symbol whose page comes next, and what to ask for."""
        return next(
            ((j, r) for j in self.source.joins.values() if (r := j.next_request()) is not None),
            None,
        )

    def _rest_failed(self, symbol: str, error: BinanceError) -> None:
        """Wait before the next page: Retry-After if Binance gave one, else the backoff (an
        invalid body too: asking again at once would hammer a broken answer)."""
        delay = error.retry_after or self.source.backoff.next_delay()
        then = f"fetching {symbol}'s trades again in {delay:.1f} s"
        if isinstance(error, InvalidResponse):
            log.warning("Binance sent an invalid aggTrades answer (%s); %s", error, then)
        else:
            log.log(error.level, "%s", error.explain(then))
        self.rest_ready_at = self.clock() + delay

    def _note_fill(self, join: SymbolJoin, count: int) -> None:
        self.filled[join.symbol] = self.filled.get(join.symbol, 0) + count
        if not join.filling:
            filled = self.filled.pop(join.symbol)
            if not filled and len(self.symbols) > NAMED_AT_MOST:
                return  # every pair: only those that had something to fetch
            log.info(
                "%s follows the live stream: %d trade%s fetched from REST, up to aggregate "
                "trade %s",
                join.symbol,
                filled,
                "" if filled == 1 else "s",
                join.last,
            )

    def _apply(self, step: Step, events: list[PriceEvent]) -> None:
        events.extend(step.events)
        for row in step.refused:
            assert row.reason is not None
            self.source.refuse(row.reason)
        for gap in step.gaps:
            self.source.gaps += 1
            log.warning("Gap in the trades: %s", gap.describe())
