"""`scorer retrain`'s record in PostgreSQL (migration 0004): its runs, the lock that lets one instance work
at a time, and its entries in the append-only audit log.

The lock is a session-level advisory lock held on a connection of its own for as long as the instance works
on a cycle: a second instance (or a CronJob that overlaps the Deployment) finds it taken and skips its cycle.
A crashed instance's lock goes with its connection, so nothing has to clean it up.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb

Connection = psycopg.Connection[TupleRow]
RETRAIN_LOCK = "scorer-retrain"  # hashed to the advisory lock's key
ACTIVE = ("shadow", "blending")
ACTOR = "scorer retrain"  # the audit log's actor for everything it decides
_COLUMNS = (
    "run_id, started_at, cutoff, champion, candidate, status, window_from, window_to, data_sha256, onnx_sha256, "
    "labels_by_source, alarms, gate, shadow_from, promoted_from, blend_to, evidence, reasons, decided_at"
)
_UPDATABLE = frozenset(_COLUMNS.split(", ")) - {"run_id", "started_at"}


@dataclass(frozen=True, slots=True)
class Run:
    """One row of retrain_runs."""

    run_id: int
    started_at: datetime
    cutoff: datetime
    champion: str
    candidate: str | None
    status: str
    window_from: datetime | None
    window_to: datetime | None
    data_sha256: str | None
    onnx_sha256: str | None
    labels_by_source: dict[str, int]
    alarms: list[str]
    gate: list[dict[str, Any]]
    shadow_from: datetime | None
    promoted_from: datetime | None
    blend_to: datetime | None
    evidence: dict[str, Any] | None
    reasons: str | None
    decided_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (times as ISO 8601): what `scorer retrain status` and the report print."""
        out: dict[str, Any] = {}
        for name in _COLUMNS.split(", "):
            value = getattr(self, name)
            out[name] = value.isoformat() if isinstance(value, datetime) else value
        return out


def try_lock(conn: Connection) -> bool:
    """Take the retrain lock for this session; False when another instance holds it."""
    row = conn.execute("select pg_try_advisory_lock(hashtext(%s))", (RETRAIN_LOCK,)).fetchone()
    return bool(row and row[0])


def unlock(conn: Connection) -> None:
    conn.execute("select pg_advisory_unlock(hashtext(%s))", (RETRAIN_LOCK,))


def open_run(conn: Connection, champion: str, cutoff_ms: int) -> int:
    """A new run in status `training`; its id."""
    row = conn.execute(
        "insert into retrain_runs (cutoff, champion, status) values (to_timestamp(%s / 1000.0), %s, 'training') "
        "returning run_id",
        (cutoff_ms, champion),
    ).fetchone()
    assert row is not None  # noqa: S101 - insert ... returning always returns the row
    return int(row[0])


def update_run(conn: Connection, run_id: int, **fields: Any) -> None:
    """Set columns of a run (times as datetime, JSON columns as Python values). ValueError on a column
    that is not one (a bug of ours, never data)."""
    unknown = set(fields) - _UPDATABLE
    if unknown:
        raise ValueError(f"retrain_runs has no column(s) {sorted(unknown)}")
    names = sorted(fields)
    values = [Jsonb(fields[n]) if isinstance(fields[n], (dict, list)) else fields[n] for n in names]
    assignments = ", ".join(f"{n} = %s" for n in names)
    conn.execute(
        f"update retrain_runs set {assignments}, updated_at = now() where run_id = %s",  # noqa: S608 - names checked
        (*values, run_id),
    )


def active_run(conn: Connection) -> Run | None:
    """The run in shadow or blending (at most one: the table's partial unique index)."""
    rows = _select(conn, "where status in ('shadow', 'blending')", ())
    return rows[0] if rows else None


def interrupted(conn: Connection) -> list[int]:
    """Runs left in `training` by an instance that stopped mid-way (only meaningful under the lock)."""
    return [int(row[0]) for row in conn.execute("select run_id from retrain_runs where status = 'training'")]


def latest_run(conn: Connection) -> Run | None:
    """The newest run that trained something or failed to (the schedule counts from its cut-off)."""
    rows = _select(conn, "order by run_id desc limit 1", ())
    return rows[0] if rows else None


def runs(conn: Connection, limit: int = 20) -> list[Run]:
    """The newest runs first."""
    return _select(conn, "order by run_id desc limit %s", (limit,))


def _select(conn: Connection, tail: str, params: tuple[Any, ...]) -> list[Run]:
    rows = conn.execute(f"select {_COLUMNS} from retrain_runs {tail}", params).fetchall()  # noqa: S608
    return [Run(*row) for row in rows]


def audit(conn: Connection, action: str, detail: dict[str, Any]) -> None:
    """An entry in the audit log (actor `scorer retrain`): what it decided and why."""
    conn.execute(
        "insert into audit_log (actor, action, detail) values (%s, %s, %s)",
        (ACTOR, action, Jsonb(orjson.loads(orjson.dumps(detail)))),
    )
