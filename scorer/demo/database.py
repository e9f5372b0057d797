"""The live demo's PostgreSQL, which `scorer store` fills beside the scorer: the embedded server (or the user's
own), the one-liner that queries it, and how many of the demo's decisions it holds at the end.

The embedded server starts in a thread as soon as the demo does, so that its ~2.5 s (initdb, then the server)
overlap the simulation and the warm state instead of adding to them; the demo waits for it only when it starts
the store. Its data directory is temporary and goes when the demo stops, like the embedded broker's topics;
a database that should outlive the demo is the user's own (`--database-url`, e.g. `scorer postgres --dir`).
psycopg (the `store` extra) is imported only once the demo has checked it is there: one line if it is not.
"""

from __future__ import annotations

import importlib.util
import shlex
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from scorer.db.embedded import EmbeddedPostgres, postgres_bin
from scorer.errors import ScorerError

EXAMPLE_QUERY = "select event_day, action, decisions from daily_alerts order by event_day desc limit 5"
TIMEOUT_S = 5.0  # a connection or a count that takes longer has failed (the database is down or frozen)
STORE_WAIT_S = 30.0  # at the end, how long the demo waits for the store to write what was decided
POLL_S = 0.5
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class DemoDatabase(Protocol):
    """Where the demo's store writes."""

    kept: bool  # whether it outlives the demo

    def url(self) -> str:
        """The URL for `scorer store` and `scorer sql`, once the database accepts connections."""
        ...

    def describe(self) -> str: ...

    def close(self) -> None: ...


def open_database(url: str | None, log_path: Path) -> DemoDatabase:
    """The user's database when a URL is given (reached at once), else the embedded one (started in the
    background). ScorerError (one line) when an extra is missing or the user's database cannot be reached;
    ConfigError when the URL does not parse."""
    require_store_extra()
    return OwnDatabase(url) if url else EmbeddedDatabase(log_path)


def require_store_extra() -> None:
    """The demo counts its stored decisions with psycopg, which `scorer store` needs too."""
    if importlib.util.find_spec("psycopg") is None:
        raise ScorerError(
            "the demo writes its decisions into PostgreSQL with scorer store, which needs the `store` extra: "
            "pip install 'scorer[store]'",
            reason="store_missing",
        )


class EmbeddedDatabase:
    """The embedded PostgreSQL in a temporary directory, started in a thread of its own at once."""

    kept = False

    def __init__(self, log_path: Path, port: int | None = None) -> None:
        """ScorerError at once when the `postgres` extra is missing; a failed start surfaces from url()."""
        postgres_bin()
        self.server = EmbeddedPostgres(port=port, log_path=log_path)
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedded-postgres")
        self.starting: Future[None] = pool.submit(self.server.start)
        pool.shutdown(wait=False)  # the start runs on; nothing else is ever submitted

    def url(self) -> str:
        """Waits for the start; ScorerError (one line: the port, initdb, the server's log) if it failed."""
        self.starting.result()
        return self.server.uri

    def describe(self) -> str:
        s = self.server
        return f"embedded PostgreSQL on 127.0.0.1:{s.port} (pid {s.pid}, data in a temporary directory)"

    def close(self) -> None:
        """Stop the server and remove its directory, once its start has finished whichever way."""
        while True:
            try:
                self.starting.exception()
                break
            except KeyboardInterrupt:
                # another Ctrl-C while the start finishes: the server must still be stopped, or it would
                # outlive the demo (it runs in a session of its own)
                continue
        self.server.close()


class OwnDatabase:
    """The user's PostgreSQL (`--database-url`), reached once at once: a wrong URL costs one line before
    any work. It outlives the demo."""

    kept = True

    def __init__(self, url: str) -> None:
        from scorer.db.connect import connect, describe

        self.target = describe(url)  # ConfigError for a URL that does not parse
        connect(url, application_name="scorer-demo", connect_timeout_s=TIMEOUT_S).close()
        self._url = url

    def url(self) -> str:
        return self._url

    def describe(self) -> str:
        return f"your PostgreSQL at {self.target}"

    def close(self) -> None:
        """Nothing: the database is the user's."""


def scorer_command() -> str:
    """This installation's `scorer` as the user can type it here: the script beside the Python that runs the
    demo (relative below the current directory, e.g. `.venv/bin/scorer`), else `python -m scorer`."""
    python = Path(sys.executable)  # not resolved: a virtual environment's python is a symbolic link
    script = python.with_name("scorer")
    if not script.is_file():
        return f"{shlex.quote(str(python))} -m scorer"
    if script.is_relative_to(Path.cwd()):
        script = script.relative_to(Path.cwd())
    return shlex.quote(str(script))


def sql_command(url: str, query: str = EXAMPLE_QUERY) -> str:
    """A shell one-liner that runs `query` against the database, quoted to work as printed."""
    return f"{scorer_command()} sql --database-url {shlex.quote(url)} {shlex.quote(query)}"


def count_decisions(url: str, first_ms: int, last_ms: int) -> int:
    """Decisions stored for transactions with event times in [first_ms, last_ms] (the demo's, even in a
    database that holds earlier runs). ScorerError (one line) when they cannot be counted within TIMEOUT_S."""
    import psycopg

    from scorer.db.connect import connect
    from scorer.db.deadline import Deadline

    first, last = EPOCH + timedelta(milliseconds=first_ms), EPOCH + timedelta(milliseconds=last_ms)
    conn = connect(url, application_name="scorer-demo", connect_timeout_s=TIMEOUT_S)
    try:
        with Deadline(conn, TIMEOUT_S, what="the count of decisions"):
            row = conn.execute(
                "select count(*) from decisions "
                "where event_day between %s and %s and event_time between %s and %s",
                (first.date(), last.date(), first, last),
            ).fetchone()
    except psycopg.Error as exc:
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ScorerError(f"the database did not count the decisions: {line}") from None
    finally:
        conn.close()
    return int(row[0]) if row else 0


@dataclass(frozen=True, slots=True)
class Stored:
    """What the database held at the end: `decisions` of the `decided` (None: not counted) and `why` the
    figure is short or missing."""

    decided: int
    decisions: int | None = None
    why: str = ""

    def cell(self) -> str:
        """The summary's figure: `N of M decided`, with why it is short or missing."""
        if self.decisions is None:
            return f"unknown: {self.why}"
        figure = f"{self.decisions:,} of {self.decided:,} decided"
        return f"{figure} ({self.why})" if self.why else figure


def wait_stored(
    count: Callable[[], int],
    decided: int,
    skip: threading.Event,
    store_running: Callable[[], bool],
    timeout_s: float = STORE_WAIT_S,
    clock: Callable[[], float] = time.monotonic,
) -> Stored:
    """Count until the database holds the `decided` decisions, the store stops, timeout_s pass or `skip` is
    set (a Ctrl-C); the last count. A count that fails ends the wait with its reason."""
    deadline = clock() + timeout_s
    while True:
        try:
            decisions = count()
        except ScorerError as exc:
            return Stored(decided, why=str(exc))
        if decisions >= decided:
            return Stored(decided, decisions)
        if not store_running():
            return Stored(decided, decisions, "the store had stopped")
        if clock() >= deadline:
            return Stored(decided, decisions, f"the store was still writing after {timeout_s:g} s")
        if skip.wait(POLL_S):
            return Stored(decided, decisions, "the wait was skipped")
