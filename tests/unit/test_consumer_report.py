"""The consumer's log lines: prices as money, each message or a backlog's summary."""

from __future__ import annotations

import logging
from decimal import Decimal

import pytest

from aggregator import report
from aggregator.core.accumulator import PendingFlush
from aggregator.core.decoding import decode_event
from aggregator.core.windows import WindowStats
from aggregator.report import ConsumedLog, money, report_flush
from tests.pipeline import (
    BASE_TIME_MS,
    NOW_MS,
    message,
)


@pytest.mark.parametrize(
    ("price", "text"),
    [
        ("43250.75000000", "43250.75"),
        ("43250.00000000", "43250.00"),
        ("43250", "43250.00"),
        ("100", "100.00"),  # normalize() makes this 1E+2: must not print as such
        ("0.5", "0.50"),
        ("0.00000001", "0.00000001"),
        ("43250.12345678", "43250.12345678"),
    ],
)
def test_money(price: str, text: str) -> None:
    assert money(Decimal(price)) == text


def consumed_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    lines = [r.getMessage() for r in caplog.records if r.name == "consumer"]
    caplog.clear()
    return lines


def test_consumed_log_goes_from_each_message_to_summaries_and_back(caplog):
    clock = [1000.0]
    caplog.set_level(logging.INFO, logger="consumer")
    log = ConsumedLog(clock=lambda: clock[0])
    btc = decode_event(message(), NOW_MS)
    eth = decode_event(message(symbol="ETHUSDT", price="2000.5"), NOW_MS)

    assert log.wants_each(report.PER_MESSAGE_LIMIT)
    log.each([(btc, False), (eth, True)])
    assert consumed_lines(caplog) == [
        "Consumed: BTCUSDT = $43250.75",
        "Consumed: ETHUSDT = $2000.50 (late)",
    ]

    assert not log.wants_each(report.PER_MESSAGE_LIMIT + 1)  # a backlog: count instead
    log.count(500)
    assert consumed_lines(caplog) == []
    assert not log.wants_each(1)  # until the summary is out, small polls are counted too
    clock[0] += 3
    log.count(1)
    log.summarise_if_due()
    assert consumed_lines(caplog) == []
    clock[0] += 2
    log.summarise_if_due()
    assert consumed_lines(caplog) == ["Consumed: 501 messages in 5 s (100/s)"]
    log.summarise_if_due()
    assert consumed_lines(caplog) == []

    assert log.wants_each(1)  # the backlog is over: one line per message again
    log.each([(btc, False)])
    assert consumed_lines(caplog) == ["Consumed: BTCUSDT = $43250.75"]


def test_a_flushed_line_of_trades_names_its_feed_volume_and_trade_count(caplog) -> None:
    pending = PendingFlush()
    stats = WindowStats.of_trade(Decimal("100.5"), Decimal("0.25"), BASE_TIME_MS, 7, 9)
    pending.windows.deltas[("BTCUSDT", BASE_TIME_MS, "trades")] = stats
    with caplog.at_level(logging.INFO, logger="consumer"):
        report_flush(pending, 1.0)
    (line, _) = [r.getMessage() for r in caplog.records]
    assert line == (
        "Flushed: 2026-01-01 00:00 BTCUSDT trades | 1 events | avg 100.50 | min 100.50 "
        "| max 100.50 | volume 0.25 | 3 trades"
    )
