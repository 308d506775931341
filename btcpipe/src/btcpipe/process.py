"""What both scripts do alike as processes: their log format, their stop on SIGINT/SIGTERM,
and how they name an exception in a log line."""

from __future__ import annotations

import logging
import signal
import sys
import threading


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(message)s",
        stream=sys.stdout,
    )
    # The Kafka client logs every failed reconnect; the scripts say what matters in their own
    # words.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)


def stop_on_signals(stop: threading.Event, log: logging.Logger, then: str) -> None:
    """Set `stop` on SIGINT or SIGTERM, saying what happens next (`then`)."""

    def handle(signum: int, _frame: object) -> None:
        log.info("Received %s: %s", signal.strsignal(signum), then)
        stop.set()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)


def one_line(exc: BaseException) -> str:
    """An exception's text on one line, or its class name if it has none."""
    return _joined_lines(str(exc)) or exc.__class__.__name__


def _joined_lines(text: str) -> str:
    """Lines joined by "; " (a library's second line is often a hint of its own sentence),
    whitespace inside each collapsed."""
    lines = (" ".join(line.split()) for line in text.splitlines())
    return "; ".join(line for line in lines if line)


def describe(exc: BaseException | None) -> str:
    """`ClassName: text` on one line, without repeating a class name the text starts with."""
    if exc is None:
        return "no error"
    text = _joined_lines(str(exc))
    name = exc.__class__.__name__
    return text if text.startswith(name) else f"{name}: {text}" if text else name
