"""The store's PostgreSQL (the StoreTarget of target.py) on scorer/db: one connection, every call under a
deadline, every failure sorted into "wait and try again" or "stop".

A call that fails because the database cannot be reached now (a lost connection, a server shutting down
or restarting, a frozen server past the deadline: scorer/db/connect.py's `classify`) raises
DatabaseUnavailable and drops the connection; `reconnect` makes a new one. One it answers with a refusal
(a statement timeout, a full disk, a missing permission, anything unexpected) raises ScorerError with its
one-line reason. Either way the transaction is rolled back: nothing is committed past what was written.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import psycopg

from scorer.db import writes
from scorer.db.connect import ConnectFailed, classify, connect
from scorer.db.deadline import Deadline, DeadlineExceeded
from scorer.db.migrate import migrate
from scorer.errors import ScorerError
from scorer.store.batch import StoreBatch
from scorer.store.target import DatabaseUnavailable

logger = logging.getLogger(__name__)
T = TypeVar("T")
NO_PARTITION = "23514"  # check_violation: "no partition of relation ... found for row"
LABEL_RETENTION = "delete from labels where reported_at < date '1970-01-01' + %s::integer"


class PostgresTarget:
    """The store's database: `write` a batch with its offsets in one transaction, read `offsets`, drop old
    days. `migrate` brings the schema up to date (under a lock: concurrent stores wait)."""

    def __init__(
        self, url: str, group: str, timeout_s: float, application_name: str = "scorer-store"
    ) -> None:
        """Connects at once: ConnectFailed (one line) when the database cannot be reached or refuses."""
        self.url = url
        self.group = group
        self.timeout_s = timeout_s
        self.application_name = application_name
        self.partitions: dict[str, set[int]] = {table: set() for table in writes.PARTITIONED}
        self.conn: psycopg.Connection[Any] | None = self._connect()

    def _connect(self) -> psycopg.Connection[Any]:
        return connect(self.url, application_name=self.application_name, connect_timeout_s=self.timeout_s)

    def reconnect(self) -> None:
        self._drop()
        try:
            self.conn = self._connect()
        except ConnectFailed as exc:
            if not exc.transient:
                raise
            raise DatabaseUnavailable(exc.reason, str(exc)) from exc

    def migrate(self) -> list[str]:
        """Apply the migrations not applied yet; their names."""
        return self._call(migrate, "the migrations", timeout_s=max(60.0, self.timeout_s))

    def write(self, batch: StoreBatch) -> None:
        try:
            self._call(lambda conn: self._write(conn, batch), "a batch write")
        except ScorerError as exc:
            if getattr(exc.__cause__, "sqlstate", None) != NO_PARTITION:
                raise
            self.partitions = {table: set() for table in writes.PARTITIONED}  # dropped by another instance
            self._call(lambda conn: self._write(conn, batch), "a batch write")

    def _write(self, conn: psycopg.Connection[Any], batch: StoreBatch) -> None:
        self._ensure_partitions(conn, batch)
        for rows in batch.tables:
            if len(rows):
                writes.upsert(conn, rows.table, rows.columns)
        writes.save_offsets(conn, self.group, batch.offsets)
        conn.commit()

    def _ensure_partitions(self, conn: psycopg.Connection[Any], batch: StoreBatch) -> None:
        """A new day's partitions, committed on their own first: creating one locks its table, which the
        batch's transaction would otherwise hold for its whole length."""
        missing = {table: set(batch.days(table)) - known for table, known in self.partitions.items()}
        if not any(missing.values()):
            return
        for table, days in missing.items():
            writes.ensure_partitions(conn, table, days)
        conn.commit()
        for table, days in missing.items():
            self.partitions[table] |= days

    def offsets(self, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        wanted = list(partitions)

        def read(conn: psycopg.Connection[Any]) -> dict[tuple[str, int], int]:
            found = writes.load_offsets(conn, self.group, wanted)
            conn.rollback()
            return found

        return self._call(read, "reading the offsets")

    def drop_before(self, day: int) -> int:
        def drop(conn: psycopg.Connection[Any]) -> int:
            dropped = sum(writes.drop_partitions_before(conn, table, day) for table in writes.PARTITIONED)
            conn.execute(LABEL_RETENTION, (day,))
            conn.commit()
            return dropped

        dropped = self._call(drop, "the retention")
        for known in self.partitions.values():
            known.difference_update({d for d in known if d < day})
        if dropped:
            logger.info("partitions_dropped", extra={"before_day": day, "partitions": dropped})
        return dropped

    def _call(self, fn: Callable[[psycopg.Connection[Any]], T], what: str, timeout_s: float = 0.0) -> T:
        """`fn(conn)` under the deadline; its failure sorted (see the module docstring)."""
        conn = self.conn
        if conn is None or conn.closed:
            raise DatabaseUnavailable("connection_lost", "no connection to the database")
        try:
            with Deadline(conn, timeout_s or self.timeout_s, what=what):
                return fn(conn)
        except (psycopg.Error, DeadlineExceeded, ConnectFailed) as exc:
            failure = classify(exc)
            text = _one_line(exc)
            if failure.transient:
                self._drop()
                raise DatabaseUnavailable(failure.reason, text) from exc
            with contextlib.suppress(psycopg.Error):
                conn.rollback()
            raise ScorerError(f"the database refused {what} ({failure.reason}): {text}") from exc

    def _drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                conn.close()

    def close(self) -> None:
        self._drop()


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
