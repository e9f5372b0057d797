"""Store: `scorer store` writing the decisions of a drain into the embedded PostgreSQL, beside the scorer's rate.

The events are preloaded as for the drain; `scorer run` + `scorer aggregate` (the scorer profile) drain them
(decisions/s from the first decision to the last, checked exactly once: benchmarks/drain.py). Then each
phase starts a fresh embedded PostgreSQL (fsync on unless the phase says otherwise) and a `scorer store` in a
group of its own over the finished decisions topic, and measures from the first committed batch to the last
(the store's `scorer_store_rows_total`, read from its /metrics every POLL_S): rows/s, the store's CPU (its
process), the database's (the postmaster, every backend alive at the end, and every one that exited
meanwhile, which the postmaster's children's CPU counts), the broker's and the machine's busy share. Then the
table is read back: each decision once, no other. Every process is stopped by its PID.

The store keeps up when it writes rows at least as fast as the scorer made them, using at most one core of
its own (per process, in the phase with two). A phase with the transactions also stores every input event (2 rows per event, as in production).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.drain import drain
from benchmarks.harness import (
    PARTITIONS,
    SESSION_TIMEOUT_MS,
    TICKS_PER_S,
    Launcher,
    Profile,
    _spawn,
    cpu_seconds,
    machine_busy_s,
)
from scorer.db.embedded import EmbeddedPostgres
from scorer.db.processes import child_pids
from scorer.demo.broker import free_port
from scorer.kafka.admin import TopicSpec, ensure_topics

POLL_S = 0.2
SCORER = Profile("scorer", "scorer", description="scorer run + aggregate, default settings")


@dataclass(frozen=True, slots=True)
class Phase:
    """One store run: its settings (SCORER_*), the database's (`-c name=value`), whether it also stores
    the transactions, and whether the database fsyncs (a temporary one does not by default)."""

    name: str
    description: str
    env: Mapping[str, str] = field(default_factory=dict)
    database: Mapping[str, str] = field(default_factory=dict)
    transactions: bool = False
    durable: bool = True
    instances: int = 1  # store processes in the group (they split the partitions)


PHASES = {
    p.name: p
    for p in (
        Phase("decisions", "the decisions topic, default settings (5,000-record batches)"),
        Phase(
            "decisions-20k", "the decisions topic, 20,000-record batches", {"SCORER_STORE_BATCH_MAX": "20000"}
        ),
        Phase(
            "decisions-async-commit",
            "the decisions topic, synchronous_commit = off (measured only: the store's guarantee needs it on)",
            database={"synchronous_commit": "off"},
        ),
        Phase(
            "decisions-no-fsync", "the decisions topic, fsync = off (as the tests' databases)", durable=False
        ),
        Phase(
            "with-transactions", "the transactions and decisions topics: 2 rows per event", transactions=True
        ),
        Phase(
            "decisions-serial",
            "the decisions topic, each batch written before the next is read (store_overlap = false)",
            {"SCORER_STORE_OVERLAP": "false"},
        ),
        Phase(
            "decisions-2", "the decisions topic, two store processes splitting its partitions", instances=2
        ),
        Phase(
            "with-transactions-2",
            "the transactions and decisions topics, two store processes splitting the partitions",
            transactions=True,
            instances=2,
        ),
    )
}
DEFAULT_PHASES = "decisions,with-transactions"


def store_workload(
    launcher: Launcher,
    broker_pid: int,
    topic: str,
    ids: list[str],
    phases: list[Phase],
    workdir: Path,
    timeout_s: float,
) -> dict[str, Any]:
    """The scorer's drain of the preloaded `topic` (its ids), then each phase's store over its decisions."""
    scorer = drain(launcher, SCORER, topic, set(ids), broker_pid, timeout_s)
    result: dict[str, Any] = {"events": len(ids), "scorer": scorer, "phases": []}
    if "error" in scorer:
        return result
    settings = launcher.scorer_settings(topic, f"r{launcher.runs}-{SCORER.name}", SCORER)
    empty = {name: f"store-empty-{name}" for name in ("transactions", "labels", "dead-letters")}
    ensure_topics(launcher.brokers, [TopicSpec(t, PARTITIONS) for t in empty.values()])
    for phase in phases:
        launcher.runs += 1
        topics = {
            "SCORER_DECISIONS_TOPIC": settings.decisions_topic,
            "SCORER_INPUT_TOPIC": topic if phase.transactions else empty["transactions"],
            "SCORER_LABELS_TOPIC": empty["labels"],  # the store subscribes to four distinct topics
            "SCORER_DLQ_TOPIC": empty["dead-letters"],
        }
        run = _phase(
            launcher, phase, topics, ids, workdir / f"r{launcher.runs}-store-{phase.name}", timeout_s
        )
        run["keeps_up"] = _keeps_up(run, scorer)
        result["phases"].append(run)
    return result


def _keeps_up(run: dict[str, Any], scorer: dict[str, Any]) -> bool:
    """Stores events at least as fast as the scorer decided them, on at most one core of its own."""
    if "error" in run:
        return False
    per_process = run["store_cores"] / run["instances"]
    return bool(run["events_per_s"] >= scorer["events_per_s"] and per_process <= 1.0)


def _phase(
    launcher: Launcher,
    phase: Phase,
    topics: Mapping[str, str],
    ids: list[str],
    directory: Path,
    timeout_s: float,
) -> dict[str, Any]:
    directory.mkdir(parents=True)
    expected = len(ids) * (2 if phase.transactions else 1)
    result: dict[str, Any] = {"phase": phase.name, "description": phase.description}
    result["transactions"] = phase.transactions
    result["instances"] = phase.instances
    result["load_average_1m_before"] = round(os.getloadavg()[0], 2)  # what else the machine was doing
    # a temporary data directory of its own (under /tmp: the server's user must reach it), removed at the end
    server = EmbeddedPostgres(
        durable=phase.durable, settings=phase.database, log_path=directory / "postgres.log"
    )
    with (
        _running(server),
        _stores(launcher, phase, topics, server.uri, directory / "store.log") as stores,
    ):
        start, end = _watch(stores, server.pid, expected, timeout_s)
        if start is None or end is None or end["rows"] < expected:
            got = end["rows"] if end else 0
            return {
                **result,
                "error": f"{got:,} of {expected:,} rows stored; {_last_line(directory / 'store.log')}",
            }
        result.update(_check(server.uri, ids, phase.transactions))
        if end["rows"] <= start["rows"] or end["t"] <= start["t"]:  # all of it in the first committed batch
            return {**result, "error": "stored in one go: too few events to time (raise --events)"}
        result.update(_rates(start, end, len(ids)))
    return result


@contextlib.contextmanager
def _running(server: EmbeddedPostgres) -> Iterator[EmbeddedPostgres]:
    try:
        server.start()
        yield server
    finally:
        server.close()  # by its PID, SIGKILL to every server process if it does not stop in time


Stores = list[tuple[int, subprocess.Popen[bytes]]]  # each process with its metrics port


@contextlib.contextmanager
def _stores(
    launcher: Launcher, phase: Phase, topics: Mapping[str, str], url: str, log: Path
) -> Iterator[Stores]:
    env = {
        "SCORER_BROKERS": launcher.brokers,
        "SCORER_DATABASE_URL": url,
        "SCORER_STORE_GROUP": f"r{launcher.runs}-store",
        "SCORER_FETCH_WAIT_MAX_MS": str(launcher.fetch_wait_ms),
        "SCORER_KAFKA_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS),
        "SCORER_LOG_LEVEL": "WARNING",
        **topics,
        **phase.env,
    }
    stores: Stores = []
    try:
        for _ in range(phase.instances):
            port = free_port()
            command = [sys.executable, "-m", "scorer", "store"]
            stores.append((port, _spawn(command, log, {**env, "SCORER_METRICS_PORT": str(port)})))
        yield stores
    finally:
        for _, proc in stores:
            if proc.poll() is None:
                proc.terminate()
        for _, proc in stores:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return f"the store's log ends: {lines[-1][:300]}" if lines else "the store wrote no log"


def _watch(
    stores: Stores, postmaster: int, expected: int, timeout_s: float
) -> tuple[dict[str, float] | None, dict[str, float] | None]:
    """Samples at the first committed rows and when `expected` rows are in (or at the deadline)."""
    start: dict[str, float] | None = None
    last: dict[str, float] | None = None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and all(proc.poll() is None for _, proc in stores):
        rows = sum(_rows_stored(port) for port, _ in stores)
        if rows > 0:
            last = _sample(rows, [proc.pid for _, proc in stores], postmaster)
            if start is None:
                start = last
            if rows >= expected:
                break
        time.sleep(POLL_S)
    return start, last


def _rows_stored(port: int) -> int:
    """The store's rows written so far, every table (0 until its metrics answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:  # noqa: S310
            text = r.read().decode()
    except OSError:
        return 0
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("scorer_store_rows_total{")
        )
    )


def _sample(rows: int, store_pids: list[int], postmaster: int) -> dict[str, float]:
    busy, total = machine_busy_s()
    return {
        "t": time.monotonic(),
        "rows": rows,
        "store": sum(map(cpu_seconds, store_pids)),
        "database": database_cpu_seconds(postmaster),
        "busy": busy,
        "total": total,
    }


def database_cpu_seconds(postmaster: int) -> float:
    """CPU of a PostgreSQL server: the postmaster's own and its exited children's (cutime + cstime, the
    backends and workers it has reaped), plus every child alive now."""
    try:
        fields = Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    own = sum(int(v) for v in fields[11:15]) / TICKS_PER_S  # utime, stime, cutime, cstime
    return own + sum(cpu_seconds(pid) for pid in child_pids(postmaster))


def _rates(a: dict[str, float], b: dict[str, float], events: int) -> dict[str, Any]:
    rows, seconds = b["rows"] - a["rows"], b["t"] - a["t"]
    store, database = b["store"] - a["store"], b["database"] - a["database"]
    per_event = b["rows"] / events
    return {
        "rows": int(b["rows"]),
        "seconds": round(seconds, 3),
        "rows_per_s": round(rows / seconds),
        "events_per_s": round(rows / seconds / per_event),
        "store_cpu_s": round(store, 2),
        "store_cores": round(store / seconds, 2),
        "rows_per_store_cpu_s": round(rows / store) if store > 0 else 0,
        "database_cpu_s": round(database, 2),
        "database_cores": round(database / seconds, 2),
        "us_per_row_store": round(store / rows * 1e6, 1),
        "us_per_row_database": round(database / rows * 1e6, 1),
        "machine_busy_share": round((b["busy"] - a["busy"]) / max(b["total"] - a["total"], 1e-9), 3),
    }


def _check(url: str, ids: list[str], transactions: bool) -> dict[str, Any]:
    """Each decision (and transaction) once, no other."""
    expected = set(ids)
    found: dict[str, Any] = {}
    with psycopg.connect(url) as conn:
        for table in ("decisions", "transactions") if transactions else ("decisions",):
            stored = [r[0] for r in conn.execute(f"select transaction_id from {table}")]  # noqa: S608
            distinct = set(stored)
            found[table] = {
                "rows": len(stored),
                "duplicates": len(stored) - len(distinct),
                "missing": len(expected - distinct),
                "unexpected": len(distinct - expected),
            }
    once = all(not (f["duplicates"] or f["missing"] or f["unexpected"]) for f in found.values())
    return {"exactly_once": once, "tables": found}
