"""The Flusher's timing rules without a server: when the next flush is due."""

from __future__ import annotations

import time
from pathlib import Path

from aggregator.core.accumulator import Accumulator
from aggregator.flusher import Flusher
from aggregator.kafka_reader.positions import Positions
from aggregator.postgres.store import Store
from aggregator.settings import Settings


def new_flusher() -> Flusher:
    settings = Settings()
    store = Store("host=127.0.0.1 port=1 dbname=unused", Path("unused"))  # never connected
    return Flusher(settings, store, Accumulator(), Positions(settings.topic))


def test_flush_soon_brings_the_timer_forward():
    flusher = new_flusher()
    assert flusher.next_flush > time.monotonic() + 1  # the 30 s interval
    flusher.flush_soon("Caught up with the backlog")
    assert flusher.next_flush <= time.monotonic()


def test_flush_soon_leaves_an_outages_backoff_standing():
    flusher = new_flusher()
    flusher.store_down_since = time.monotonic()  # as on_store_down leaves it
    retry_at = flusher.next_flush = time.monotonic() + 5.0
    flusher.flush_soon("Caught up with the backlog")
    assert flusher.next_flush == retry_at
