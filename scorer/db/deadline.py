"""A deadline on one database call that holds even when the server is frozen.

A hung server host (or a SIGSTOPped postgres) leaves libpq waiting on its socket for ever: the server's own
statement_timeout cannot fire, and a cancel request goes to the same frozen server. The watchdog here shuts
the connection's socket down at the deadline instead: the blocked call then fails at once with an
OperationalError, which `Deadline` turns into DeadlineExceeded (transient: reconnect with backoff).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from types import TracebackType
from typing import Any

import psycopg

from scorer.errors import ScorerError


class DeadlineExceeded(ScorerError):
    """A database call did not finish in time; its connection is closed and must be replaced.

    When the call was a COMMIT, whether it took effect is unknown: read the state back after reconnecting
    (the store keeps its offsets in the same transaction as its rows for this reason)."""

    reason = "deadline_exceeded"


class Deadline:
    """`with Deadline(conn, timeout_s): ...`: the body's database calls must end within timeout_s.

    At the deadline the connection's socket is shut down (both directions), so a call blocked on a frozen
    server returns with an error, raised from __exit__ as DeadlineExceeded. A body that still completed
    (its last reply arrived as the deadline struck) is not an error, but `expired` is then True and the
    connection is dead: its next call fails as a lost connection. An error of the body before the deadline
    passes through unchanged. Entering raises psycopg.OperationalError if the connection is already lost.

    The socket is duplicated on entry: shutting down the duplicate stops the connection's socket (one
    socket, two descriptors) without racing libpq, which may close its own descriptor at any time, and a
    descriptor number reused meanwhile is never touched.
    """

    def __init__(
        self, conn: psycopg.Connection[Any], timeout_s: float, *, what: str = "a database call"
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"a deadline must be positive, got {timeout_s}")
        self.conn = conn
        self.timeout_s = timeout_s
        self.what = what
        self.expired = False
        self._lock = threading.Lock()  # the body's end and the watchdog's strike exclude each other
        self._done = False
        self._sock: socket.socket | None = None
        self._timer: threading.Timer | None = None

    def __enter__(self) -> Deadline:
        self._sock = socket.socket(fileno=os.dup(self.conn.pgconn.socket))
        self._timer = threading.Timer(self.timeout_s, self._strike)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        with self._lock:
            self._done = True  # from here on the watchdog leaves the socket alone
        if self._timer is not None:
            self._timer.cancel()
        if self._sock is not None:
            self._sock.close()  # the duplicate only; the connection keeps its own descriptor
        if self.expired and isinstance(ev, psycopg.Error | OSError):
            raise DeadlineExceeded(
                f"the database did not answer {self.what} within {self.timeout_s:g} s; connection closed"
            ) from ev

    def _strike(self) -> None:
        with self._lock:
            if self._done or self._sock is None:
                return
            self.expired = True
            with contextlib.suppress(OSError):  # already disconnected: the call fails (or failed) by itself
                self._sock.shutdown(socket.SHUT_RDWR)
