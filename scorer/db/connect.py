"""Connections to PostgreSQL, and what their errors mean: one line for a person, transient or fatal for a loop.

`connect` turns a failure to connect into ConnectFailed, one line that names host:port/database and the
user, never the password. `classify` sorts an error raised mid-run into transient (reconnect with backoff:
the connection was lost, the server restarts, a deadline struck) or fatal (exit 1: a statement timeout, a full
disk, a missing privilege, a read-only server, anything unexpected), with a stable reason for a metric label.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow

from scorer.db.deadline import DeadlineExceeded
from scorer.errors import ConfigError, ScorerError
from scorer.masking import mask_url

# Errors at connection time carry no SQLSTATE in libpq, only text: libpq's own (English) and the server's
# FATAL line (in the server's lc_messages). Unmatched text still reads well as database_connect_failed.
CONNECT_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "database_unreachable",
        re.compile(
            r"connection refused|timeout expired|could not translate host name|failed to resolve host|no route to host|network is "
            r"unreachable|server closed the connection|connection reset|the database system is",
            re.I,
        ),
    ),
    ("database_busy", re.compile(r"too many clients|remaining connection slots", re.I)),
    ("database_missing", re.compile(r'database ".*" does not exist', re.I)),
    (
        "database_auth_failed",
        re.compile(
            r"authentication failed|no password supplied|pg_hba\.conf|role \".*\" does not exist", re.I
        ),
    ),
    ("database_permission_denied", re.compile(r"permission denied|must be superuser|privilege", re.I)),
)
TRANSIENT_CONNECT = ("database_unreachable", "database_busy")  # worth a retry: the server may come (back)

# Mid-run errors by SQLSTATE (https://www.postgresql.org/docs/current/errcodes-appendix.html).
TRANSIENT_STATES = {
    "57P01": "admin_shutdown",  # pg_terminate_backend, or a fast shutdown of the server
    "57P02": "crash_shutdown",  # another backend crashed: the server restarts
    "57P03": "server_starting",  # cannot_connect_now: starting up or shutting down
    "57P05": "idle_session_timeout",
    "25P03": "idle_in_transaction_timeout",
    "40001": "serialization_failure",
    "40P01": "deadlock_detected",
    "53300": "too_many_connections",
}
FATAL_STATES = {
    "57014": "statement_timeout",  # query_canceled: statement_timeout, or an administrator's cancel
    "53100": "disk_full",
    "53200": "out_of_memory",
    "42501": "insufficient_privilege",
    "25006": "read_only",
}
FAILURE_REASONS = (  # every reason classify() can give, for metrics that pre-create their labels
    *TRANSIENT_CONNECT,
    "connection_lost",
    "deadline_exceeded",
    *TRANSIENT_STATES.values(),
    "database_missing",
    "database_auth_failed",
    "database_permission_denied",
    "database_connect_failed",
    *FATAL_STATES.values(),
    "query_canceled",
    "insufficient_resources",
    "unexpected",
)


class ConnectFailed(ScorerError):
    """No connection: `reason` is one of the CONNECT_PATTERNS names or database_connect_failed."""

    @property
    def transient(self) -> bool:
        return self.reason in TRANSIENT_CONNECT


@dataclass(frozen=True, slots=True)
class Failure:
    """What an error means to a loop: retry (`transient`) or stop (`fatal`), and why (snake_case)."""

    kind: Literal["transient", "fatal"]
    reason: str

    @property
    def transient(self) -> bool:
        return self.kind == "transient"


def connect(url: str, *, application_name: str, connect_timeout_s: float) -> psycopg.Connection[TupleRow]:
    """A connection to `url` (autocommit off: the caller commits), named application_name in pg_stat_activity.

    connect_timeout_s is rounded up to whole seconds, at least 2 (libpq's rule). ConfigError for a URL that
    does not parse, ConnectFailed (one line naming host:port/database and user) when the server cannot be
    reached (transient), refuses the user or password, has no such database, or denies the connection."""
    target = describe(url)  # parses the URL: psycopg would refuse nothing it accepts
    try:
        return psycopg.connect(
            url,
            application_name=application_name,
            connect_timeout=max(2, math.ceil(connect_timeout_s)),
            autocommit=False,
        )
    except psycopg.OperationalError as exc:
        raise translate(exc, target) from exc


def describe(url: str) -> str:
    """`user@host:port/database` of a URL, for messages (never the password). ConfigError if it does not parse."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise _invalid(url, exc) from None
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    user = f"{params['user']}@" if params.get("user") else ""
    return f"{user}{host}:{params.get('port') or 5432}/{params.get('dbname') or ''}"


def _invalid(url: str, exc: psycopg.ProgrammingError) -> ConfigError:
    """libpq quotes the token it cannot parse, which may be the password: masked, and not chained."""
    try:
        password = urlsplit(url).password if "://" in url else None
    except ValueError:
        return ConfigError(f"database_url {mask_url(url)} is not a valid PostgreSQL URL")
    text = str(exc).strip()  # libpq's message ends in a newline: the error stays one line
    text = text.replace(password, "***") if password else mask_url(text)
    return ConfigError(f"database_url {mask_url(url)} is not a valid PostgreSQL URL: {text}")


def translate(exc: psycopg.OperationalError, target: str) -> ConnectFailed:
    """A failure to connect as one line: what happened, where (target), and what to check."""
    detail = _server_message(str(exc))
    reason = next(
        (name for name, pattern in CONNECT_PATTERNS if pattern.search(detail)), "database_connect_failed"
    )
    advice = {
        "database_unreachable": "is PostgreSQL running there and the address right?",
        "database_busy": "the server has no connection slot free",
        "database_missing": "create it, or correct the name in database_url",
        "database_auth_failed": "check the user and password in database_url",
        "database_permission_denied": "grant the user CONNECT on it",
    }.get(reason, "see the server's log")
    return ConnectFailed(f"cannot connect to the database {target}: {detail} ({advice})", reason=reason)


def _server_message(text: str) -> str:
    """The informative part of libpq's connection error: the server's FATAL line, else libpq's own."""
    lines = [line.strip() for line in text.splitlines() if line.strip()] or ["no detail"]
    first = lines[0]
    if "FATAL:" in first:
        return first.split("FATAL:", 1)[1].strip()
    # 'connection failed: connection to server at "h", port p failed: Connection refused'
    return first.rsplit(" failed: ", 1)[-1].strip()


def classify(exc: BaseException) -> Failure:
    """Whether an error raised by a database call (or by connect, or a Deadline) is worth a retry."""
    if isinstance(exc, DeadlineExceeded):
        return Failure("transient", "deadline_exceeded")
    if isinstance(exc, ConnectFailed):
        return Failure("transient" if exc.transient else "fatal", exc.reason)
    if not isinstance(exc, psycopg.Error):
        return Failure("fatal", "unexpected")
    state = exc.sqlstate
    if state in TRANSIENT_STATES:
        return Failure("transient", TRANSIENT_STATES[state])
    if (state is None and isinstance(exc, psycopg.OperationalError)) or (state or "").startswith("08"):
        return Failure("transient", "connection_lost")  # no reply from the server, or class 08
    if state == "57014" and "statement timeout" not in str(exc):
        return Failure("fatal", "query_canceled")
    if state in FATAL_STATES:
        return Failure("fatal", FATAL_STATES[state])
    if (state or "").startswith("53"):
        return Failure("fatal", "insufficient_resources")
    return Failure("fatal", "unexpected")
