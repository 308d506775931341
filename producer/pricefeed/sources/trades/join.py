"""Joining what REST fills in with the live stream, per symbol, without a hole or a repeat.
Pure, no I/O: the source asks what to fetch and hands over what arrived.

After every (re)connect a symbol is *filling*: its live trades are held while REST pages
(fromId = the last id published + 1, or on a first start startTime) bring what was missed;
once REST has given everything up to the held trades, they follow, and the symbol is live:
each next id is published as it comes. A live id that skips ahead (a trade lost between two
connections, or Binance's own hole) makes it fill again. Ids already published are dropped,
ids that neither side serves are reported as a gap, and everything goes out in id order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple

from btcpipe.contract import PriceEvent
from pricefeed.sources.trades.frames import TradeRow

WINDOW_MS = 5 * 60 * 1000  # the consumer's windows, for saying where a gap falls
# REST may lag the stream by a moment: a short page that stops before the held trades is
# asked again before the ids between are called a gap (REST skipping ids is one at once).
SHORT_PAGES_BEFORE_GAP = 3


def window_start(time_ms: int) -> int:
    return time_ms - time_ms % WINDOW_MS


def utc_text(time_ms: int) -> str:
    return datetime.fromtimestamp(time_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Gap(NamedTuple):
    """Aggregate ids `first`..`last` of `symbol` that neither REST nor the stream served,
    between the trades at `before_ms` and `after_ms` (None: unknown)."""

    symbol: str
    first: int
    last: int
    before_ms: int | None
    after_ms: int | None

    def describe(self) -> str:
        ids = f"id {self.first}" if self.first == self.last else f"ids {self.first}-{self.last}"
        times = [t for t in (self.before_ms, self.after_ms) if t is not None]
        windows = sorted({utc_text(window_start(t)) for t in times})
        where = (
            "in an unknown window"
            if not windows
            else f"in the window of {windows[0]}"
            if len(windows) == 1
            else f"between the windows of {windows[0]} and {windows[-1]}"
        )
        return f"{self.symbol}: aggregate trade {ids} served neither live nor by REST, {where}"


class Step(NamedTuple):
    """What one arrival gives: events to publish in this order, rows refused, gaps found."""

    events: list[PriceEvent]
    refused: list[TradeRow]
    gaps: list[Gap]


class FromId(NamedTuple):
    agg_id: int


class FromTime(NamedTuple):
    time_ms: int


@dataclass
class SymbolJoin:
    """One symbol's place: `last` is the last aggregate id published or passed over (a
    refused row uses up its id), None before the first; `since_ms` a first start's time,
    until the first trade at or after it is placed (while none is, a reconnect asks REST
    from that time again)."""

    symbol: str
    last: int | None = None
    since_ms: int | None = None
    filling: bool = True
    held: dict[int, TradeRow] = field(default_factory=dict)
    short_pages: int = 0  # short pages in a row that stopped before the held trades
    _last_time: int | None = None

    @property
    def waits_for_rest(self) -> bool:
        """Whether REST's last page stopped before the held trades: ask again a bit later."""
        return self.filling and self.short_pages > 0

    def reconnected(self) -> None:
        """A new connection: what the old one held is fetched again, from REST."""
        self.held.clear()
        self.short_pages = 0
        self.filling = self.last is not None or self.since_ms is not None

    def next_request(self) -> FromId | FromTime | None:
        """What to ask REST next; None when the symbol is live."""
        if not self.filling:
            return None
        if self.last is not None:
            return FromId(self.last + 1)
        if self.since_ms is not None:
            return FromTime(self.since_ms)
        return None  # nothing before the first live trade to fetch

    def live(self, row: TradeRow) -> Step:
        """A trade from the stream."""
        step = Step([], [], [])
        if self.last is not None and row.agg_id <= self.last:
            return step  # published already (by REST, or by the connection before)
        if self.filling or (self.last is not None and row.agg_id != self.last + 1):
            self.held[row.agg_id] = row
            self.filling = True  # a live id that skips ahead: fetch what lies between
            return step
        self._take(row, step)
        return step

    def page(self, rows: list[TradeRow], full: bool) -> Step:
        """REST's answer to next_request(), in id order; `full`: as many rows as asked for
        (there may be more). A short page is all REST has: what it did not serve up to the
        held trades is a gap once SHORT_PAGES_BEFORE_GAP pages in a row stopped there, and
        the held trades follow."""
        step = Step([], [], [])
        for row in sorted(rows, key=lambda r: r.agg_id):
            if self.last is not None and row.agg_id <= self.last:
                continue
            if self.last is not None and row.agg_id > self.last + 1:
                step.gaps.append(self._gap(row.agg_id - 1, row.time_ms))
            self._take(row, step)
        if full:
            self.short_pages = 0
            self.filling = not self._join_held(step, force=False)
            return step
        lagging = self.last is not None and self.short_pages + 1 < SHORT_PAGES_BEFORE_GAP
        self._join_held(step, force=not lagging)
        self.filling = bool(self.held)
        self.short_pages = self.short_pages + 1 if self.filling else 0
        return step

    def _join_held(self, step: Step, force: bool) -> bool:
        """Publish the held trades that follow on; with `force` all of them, gaps reported.
        True when something was held and none is left (the fill met the stream)."""
        had = bool(self.held)
        for agg_id in sorted(self.held):
            if self.last is not None and agg_id <= self.last:
                del self.held[agg_id]
                continue
            row = self.held[agg_id]
            if self.last is not None and agg_id > self.last + 1:
                if not force:
                    break
                step.gaps.append(self._gap(agg_id - 1, row.time_ms))
            del self.held[agg_id]
            self._take(row, step)
        return had and not self.held

    def _take(self, row: TradeRow, step: Step) -> None:
        self.last, self.since_ms = row.agg_id, None  # placed: ids from here on
        if row.time_ms is not None:
            self._last_time = row.time_ms
        if row.event is None:
            step.refused.append(row)
        else:
            step.events.append(row.event)

    def _gap(self, up_to: int, after_ms: int | None) -> Gap:
        assert self.last is not None
        return Gap(self.symbol, self.last + 1, up_to, self._last_time, after_ms)


class LiveOrder:
    """Per connection and symbol, the last live id seen: an id that goes back on the same
    connection is bad input (a repeat across connections, or of a fill, is not)."""

    def __init__(self) -> None:
        self._seen: dict[tuple[int, str], int] = {}

    def went_back(self, connection: int, row: TradeRow) -> bool:
        key = (connection, row.symbol)
        previous = self._seen.get(key)
        if previous is not None and row.agg_id <= previous:
            return True
        self._seen[key] = row.agg_id
        return False

    def forget(self, connection: int) -> None:
        for key in [key for key in self._seen if key[0] == connection]:
            del self._seen[key]
