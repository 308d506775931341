"""One connection to PostgreSQL, opened on demand, with a client-side deadline on every
answer, and every failure sorted into the errors of errors.py."""

from __future__ import annotations

import contextlib
import select
import threading
import time
from collections.abc import Iterator

import psycopg2
import psycopg2.extensions
from psycopg2.extensions import parse_dsn

from aggregator.postgres.errors import StoreFailed, StoreMisconfigured, StoreUnavailable
from btcpipe.process import one_line

# The client's bound on every answer, for a server that hangs (a healthy one answers far
# within it). It sits above the server's own statement_timeout, which fires first whenever the
# server can still answer, with the server's own words.
ANSWER_TIMEOUT_SECONDS = 12.0
STATEMENT_TIMEOUT_MS = 10_000

# -- a client-side deadline for every answer ------------------------------------------------
# statement_timeout is enforced by the server, so it cannot fire when the server itself hangs
# (a stalled disk or VM, SIGSTOP), and libpq would wait forever. psycopg2 hands every wait for
# the server to a callback: this one gives up at a deadline, set per call by the Connection.

_deadline = threading.local()


def _wait_until_deadline(conn: psycopg2.extensions.connection) -> None:
    """psycopg2's wait callback: psycopg2.extras.wait_select, with a deadline. The callback is
    process-wide: a connection used outside the Store's calls keeps libpq's own rule."""
    at: float | None = getattr(_deadline, "at", None)
    in_store_call = at is not None
    if not in_store_call:
        at = _connect_deadline(conn)
    while True:
        state = conn.poll()
        if state == psycopg2.extensions.POLL_OK:
            return
        timeout = None if at is None else at - time.monotonic()
        if timeout is not None and timeout <= 0:
            if not in_store_call:
                raise psycopg2.OperationalError("timeout expired")  # libpq's words
            # psycopg2 then closes the connection, and what the caller catches may be about
            # that ("connection already closed"): keep the real reason where it can be found.
            _deadline.missed = f"PostgreSQL did not answer within {_deadline.seconds:g} s"
            raise psycopg2.OperationalError(_deadline.missed)
        fd = conn.fileno()
        if state == psycopg2.extensions.POLL_READ:
            select.select([fd], [], [], timeout)
        elif state == psycopg2.extensions.POLL_WRITE:
            select.select([], [fd], [], timeout)
        else:  # pragma: no cover - psycopg2 documents no other state
            raise psycopg2.OperationalError(f"unexpected poll state {state}")


def _connect_deadline(conn: psycopg2.extensions.connection) -> float | None:
    """libpq's limit for a connection outside the Store's calls: its `connect_timeout` while
    it connects, none after."""
    if conn.status != psycopg2.extensions.STATUS_SETUP:
        return None
    seconds = int(parse_dsn(conn.dsn).get("connect_timeout") or 0)
    return time.monotonic() + seconds if seconds > 0 else None


@contextlib.contextmanager
def _answer_within(seconds: float) -> Iterator[None]:
    _deadline.at, _deadline.seconds = time.monotonic() + seconds, seconds
    _deadline.missed = None
    try:
        yield
    finally:
        _deadline.at = None


class Connection:
    """One connection to PostgreSQL, opened on demand: every call answered within a deadline,
    every failure sorted into what the caller can do (StoreUnavailable, StoreMisconfigured,
    StoreFailed)."""

    def __init__(self, dsn: str, answer_timeout: float) -> None:
        self.dsn = dsn
        self.answer_timeout = answer_timeout
        self.started = False  # after the first success, a host name failing to resolve is DNS
        self._conn: psycopg2.extensions.connection | None = None
        psycopg2.extensions.set_wait_callback(_wait_until_deadline)

    @contextlib.contextmanager
    def call(self, timeout: float | None = None) -> Iterator[psycopg2.extensions.connection]:
        """One store call: a connection, a deadline, and errors sorted by what can be done.
        What the caller raises itself (NotOwner, OffsetsMoved...) passes through as it is."""
        with _answer_within(timeout or self.answer_timeout):
            try:
                yield self._connection()
                self.started = True
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                raise self._fail(exc) from None
            except psycopg2.Error as exc:
                self.close()
                raise StoreFailed(_describe(exc)) from None

    def _connection(self) -> psycopg2.extensions.connection:
        if self._conn is None or self._conn.closed:
            try:
                # statement_timeout: the server's own bound, below the client's deadline.
                self._conn = psycopg2.connect(
                    self.dsn,
                    connect_timeout=5,
                    options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
                )
            except psycopg2.OperationalError as exc:
                reason = one_line(exc)
                if _is_permanent(reason, at_start=not self.started):
                    raise StoreMisconfigured(reason) from None
                raise StoreUnavailable(reason) from None
        return self._conn

    def _fail(self, exc: Exception) -> StoreUnavailable:
        """The error of a failed connection, closed: the next call reconnects."""
        self.close()
        missed = getattr(_deadline, "missed", None)
        return StoreUnavailable(f"{missed} (server hung?)" if missed else one_line(exc))

    def close(self) -> None:
        """Close the connection (also one that failed): the next call reconnects."""
        if self._conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self._conn.close()
        self._conn = None


def _describe(exc: psycopg2.Error) -> str:
    """The server's own words and SQLSTATE, e.g. for a constraint a flush violated."""
    code = f" [SQLSTATE {exc.pgcode}]" if exc.pgcode else ""
    return f"{exc.__class__.__name__}: {one_line(exc)}{code}"


# libpq's messages for settings that no retry can fix (it gives no SQLSTATE for a failed
# connection). A host name that does not resolve is a mistake at start, a DNS hiccup later.
_PERMANENT = ("password authentication failed", "does not exist", "no password supplied")
_PERMANENT_AT_START = ("could not translate host name",)


def _is_permanent(reason: str, at_start: bool) -> bool:
    return any(text in reason for text in _PERMANENT) or (
        at_start and any(text in reason for text in _PERMANENT_AT_START)
    )
