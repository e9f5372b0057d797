"""The store's schema, in versioned migrations: ordered SQL files and a version table, applied under a lock.

Why not a migration tool (Alembic, yoyo, sqitch): the schema is a handful of tables, views and functions
that SQL users and DBAs read as SQL; Alembic would bring SQLAlchemy along to run them, and the others a
dependency for what is a loop over files. Each file `scorer/db/migrations/NNNN_name.sql` runs once, in
number order, in one transaction with its row in `schema_migrations` (PostgreSQL's DDL is transactional:
a migration that fails leaves nothing behind). A transaction-level advisory lock makes concurrent starts
(several `scorer store` instances) wait for the first, which then finds nothing left to apply. A file
changed after it was applied is refused by its checksum: released migrations are never edited.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg

from scorer.errors import ScorerError

logger = logging.getLogger(__name__)
LOCK_KEY = 0x5C0BE5  # pg_advisory_xact_lock key of the store's migrations
FILE_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
VERSION_TABLE = """
create table if not exists schema_migrations (
    version integer primary key,
    name text not null,
    checksum text not null,
    applied_at timestamptz not null default now()
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    """One file: its number, name, text and the SHA-256 of the text."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations() -> list[Migration]:
    """Every migration shipped with the package, in version order."""
    found = []
    for entry in resources.files("scorer.db.migrations").iterdir():
        match = FILE_NAME.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise ScorerError(f"migrations must be numbered 1..n without gaps: {[m.version for m in found]}")
    return found


def migrate(conn: psycopg.Connection[Any]) -> list[str]:
    """Apply what is not applied yet (in one transaction, under the lock); returns the names applied.

    ScorerError when an applied migration's file changed, or a migration fails (its error, one line)."""
    applied: list[str] = []
    with conn.transaction():
        conn.execute("select pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        conn.execute(VERSION_TABLE)
        rows = conn.execute("select version, checksum from schema_migrations").fetchall()
        done = {int(v): str(c) for v, c in rows}
        for migration in migrations():
            if migration.version in done:
                _check_unchanged(migration, done[migration.version])
                continue
            _apply(conn, migration)
            applied.append(f"{migration.version:04d}_{migration.name}")
    for name in applied:
        logger.info("migration_applied", extra={"migration": name})
    return applied


def _check_unchanged(migration: Migration, checksum: str) -> None:
    if migration.checksum != checksum:
        raise ScorerError(
            f"migration {migration.version:04d}_{migration.name} changed after it was applied "
            "(released migrations are never edited: add a new one)"
        )


def _apply(conn: psycopg.Connection[Any], migration: Migration) -> None:
    try:
        conn.execute(migration.sql.encode())  # no parameters: the simple protocol runs the whole script
    except psycopg.Error as exc:
        raise ScorerError(
            f"migration {migration.version:04d}_{migration.name} failed: {str(exc).strip().splitlines()[0]}"
        ) from exc
    conn.execute(
        "insert into schema_migrations (version, name, checksum) values (%s, %s, %s)",
        (migration.version, migration.name, migration.checksum),
    )


def pending(conn: psycopg.Connection[Any]) -> list[str]:
    """The migrations not applied yet (the table missing: all of them)."""
    exists = conn.execute("select to_regclass('schema_migrations') is not null").fetchone()
    done: set[int] = set()
    if exists and exists[0]:
        done = {int(v) for (v,) in conn.execute("select version from schema_migrations").fetchall()}
    conn.rollback()
    return [f"{m.version:04d}_{m.name}" for m in migrations() if m.version not in done]
