"""The identity of live events: per symbol, a stream of this producer run, numbered from 1."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from btcpipe.contract import PriceEvent, live_stream, make_event


def new_run_id() -> str:
    """Names one producer run: its start (readable) and 32 random bits (two runs started in
    the same second still differ)."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


class Sequencer:
    """The identity of live events: per symbol, a stream of this producer run, numbered
    1, 2, 3... in the order the events are made (which is the order they are sent)."""

    def __init__(self, source: str, run_id: str | None = None) -> None:
        self.source = source
        self.run_id = run_id or new_run_id()
        self._last: dict[str, int] = {}

    def event(self, symbol: str, price: object, event_time: int) -> PriceEvent:
        """The next event of `symbol`'s stream; raises ContractError (using up no number) for
        a value that must not be published."""
        seq = self._last.get(symbol, 0) + 1
        stream = live_stream(self.source, symbol, self.run_id)
        event = make_event(symbol, price, event_time, self.source, stream, seq)
        self._last[symbol] = seq
        return event
