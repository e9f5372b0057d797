"""The store's write path in-process, per row: Kafka records -> rows (`read_batch`) -> PostgreSQL
(`PostgresTarget.write`: partitions, rows, offsets, commit), without a broker.

`python -m benchmarks.store_write` scores simulated events with the scorer's own core (benchmarks/stages.py's
Replay) to get real decision records, then writes them in batches into a fresh embedded PostgreSQL (fsync on)
per route and repetition, each in a process of its own, interleaved: microseconds per row of the rows step
(this thread's CPU), of the write (this thread's CPU and the database's: every server process, exited ones
included) and rows/s end to end. Routes: `overlapped` (what the store does: a batch written on the writer's
thread while the next is read, scorer/store/writer.py), `auto` (the same writes one after the other, so the
rows and write steps can be timed apart), `statement` (one after the other, every table through the upsert
statement). Every route also gives the store process's CPU per row (all its threads). `--against COMMIT` adds `scorer/` as of that commit (route `auto`: it
uses only read_batch and PostgresTarget.write), for a before/after in one run. Prints JSON.
"""

from __future__ import annotations

import argparse
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from confluent_kafka import Message
from threadpoolctl import threadpool_limits

from benchmarks.stages import PARTITIONS, Replay
from benchmarks.store import database_cpu_seconds
from scorer.config import Settings
from scorer.db import writes
from scorer.db.embedded import EmbeddedPostgres
from scorer.runtime.process import tune_gc
from scorer.store.batch import read_batch
from scorer.store.database import PostgresTarget
from scorer.store.writer import BatchWriter
from scorer.training.simulate import SimulationParams, simulate, transaction_values

RECORD = struct.Struct(">BiqI")  # topic index, partition, offset, value length


def records(events: int, transactions: bool) -> list[Message]:
    """The decisions the scorer makes of the first `events` simulated events (and the events themselves), as
    consumed records: 4 partitions by customer, offsets in order."""
    data = simulate(SimulationParams(days=max(SimulationParams().days, events // 9_000 + 2)))
    values = transaction_values(data, np.arange(events, dtype=np.int64))
    partitions = np.array([zlib.crc32(c.encode()) % PARTITIONS for c in data.customer_id[:events]])
    replay = Replay(2000)
    s, offsets = Settings(), [0] * PARTITIONS
    out: list[Message] = []
    for start in range(0, events, 2000):
        chunk, where = values[start : start + 2000], partitions[start : start + 2000].tolist()
        scored = replay.scorer.score(chunk, partitions[start : start + 2000])
        replay._aggregate(chunk)
        for p, decision, value in zip(where, scored.decisions, chunk, strict=True):
            out.append(
                Message(topic=s.decisions_topic, partition=p, offset=offsets[p], value=decision["value"])
            )
            if transactions:
                out.append(Message(topic=s.input_topic, partition=p, offset=offsets[p], value=value))
            offsets[p] += 1
    return out


def measure(msgs: list[Message], batch: int, route: str) -> dict[str, Any]:
    """One fresh database, every batch written; per-row costs."""
    s = Settings()
    forced: dict[str, Callable[..., Any]] = {}
    if route == "statement":
        forced["upsert"] = writes.upsert_statement
    original = {name: getattr(writes, name) for name in forced}
    rows_cpu = write_cpu = wall = process_cpu = 0.0
    with EmbeddedPostgres(durable=True) as server:
        target = PostgresTarget(server.uri, s.store_group, 120.0)
        try:
            target.migrate()
            for name, fn in forced.items():
                setattr(writes, name, fn)
            database_before, process_before = database_cpu_seconds(server.pid), time.process_time()
            if route == "overlapped":
                wall = overlapped(msgs, batch, s, target)
            else:
                for start in range(0, len(msgs), batch):
                    t0, c0 = time.perf_counter(), time.thread_time()
                    rows = read_batch(msgs[start : start + batch], s)
                    c1 = time.thread_time()
                    target.write(rows)
                    rows_cpu += c1 - c0
                    write_cpu += time.thread_time() - c1
                    wall += time.perf_counter() - t0
            database = database_cpu_seconds(server.pid) - database_before
            process_cpu = time.process_time() - process_before
            stored = target.conn.execute("select count(*) from decisions").fetchone() if target.conn else None
        finally:
            for name, fn in original.items():
                setattr(writes, name, fn)
            target.close()
    n = len(msgs)
    return {
        "route": route,
        "records": n,
        "decisions_stored": stored[0] if stored else 0,
        "rows_per_s": round(n / wall),
        "us_per_row": {
            **({} if route == "overlapped" else {"rows": round(rows_cpu / n * 1e6, 2)}),
            **({} if route == "overlapped" else {"write (store)": round(write_cpu / n * 1e6, 2)}),
            "store (process)": round(process_cpu / n * 1e6, 2),
            "write (database)": round(database / n * 1e6, 2),
        },
    }


def overlapped(msgs: list[Message], batch: int, s: Settings, target: PostgresTarget) -> float:
    """Every batch through the store's writer (read the next while the last is written); the wall time."""
    writer = BatchWriter(target.write, time.perf_counter, threaded=True)
    t0 = time.perf_counter()
    try:
        for start in range(0, len(msgs), batch):
            rows = read_batch(msgs[start : start + batch], s)
            writer.finish()
            writer.submit(rows)
        writer.finish()
    finally:
        writer.close()
    return time.perf_counter() - t0


def save(msgs: list[Message], path: Path) -> None:
    """Records as (topic, partition, offset, length) headers and values, for the child processes."""
    topics = sorted({m.topic() or "" for m in msgs})
    with path.open("wb") as f:
        f.write(orjson.dumps(topics) + b"\n")
        for m in msgs:
            value = m.value() or b""
            f.write(
                RECORD.pack(topics.index(m.topic() or ""), m.partition() or 0, m.offset() or 0, len(value))
            )
            f.write(value)


def load(path: Path) -> list[Message]:
    data = path.read_bytes()
    head, at = data.index(b"\n"), 0
    topics, at = orjson.loads(data[:head]), head + 1
    msgs = []
    while at < len(data):
        topic, partition, offset, length = RECORD.unpack_from(data, at)
        at += RECORD.size
        msgs.append(
            Message(topic=topics[topic], partition=partition, offset=offset, value=data[at : at + length])
        )
        at += length
    return msgs


def child(path: Path, batch: int, route: str) -> dict[str, Any]:
    msgs = load(path)
    tune_gc()
    threadpool_limits(limits=1, user_api="blas")  # as `scorer store` does
    return measure(msgs, batch, route)


def checkout(commit: str, into: Path) -> Path:
    """`scorer/` as of `commit` beside a link to this checkout's benchmarks/: run from there, Python imports
    the old package and these benchmarks."""
    into.mkdir()
    archive = subprocess.run(["git", "archive", commit, "scorer"], capture_output=True, check=True)  # noqa: S603, S607
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)  # noqa: S603, S607
    (into / "benchmarks").symlink_to(Path(__file__).resolve().parent)
    return into


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.store_write", description=__doc__)
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=5000, help="records per batch (the store's store_batch_max)")
    p.add_argument("--routes", default="overlapped,auto", help="overlapped, auto, statement: comma separated")
    p.add_argument("--repeat", type=int, default=2, help="rounds over the variants, interleaved")
    p.add_argument("--transactions", action="store_true", help="each event's transaction record too")
    p.add_argument("--against", metavar="COMMIT", help="also route auto of scorer/ as of this commit")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--route", default="auto", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        sys.stdout.write(orjson.dumps(child(args.child, args.batch, args.route)).decode() + "\n")
        return 0
    with tempfile.TemporaryDirectory(prefix="store-write-") as tmp:
        path = Path(tmp) / "records"
        save(records(args.events, args.transactions), path)
        variants = [("this checkout", Path.cwd(), r) for r in args.routes.split(",") if r]
        if args.against:
            variants.append((args.against, checkout(args.against, Path(tmp) / "base"), "auto"))
        runs = []
        for _ in range(args.repeat):
            for label, where, route in variants:
                cmd = [sys.executable, "-m", "benchmarks.store_write", "--child", str(path)]
                cmd += ["--batch", str(args.batch), "--route", route]
                done = subprocess.run(cmd, cwd=where, capture_output=True, check=True, timeout=3600)  # noqa: S603
                runs.append({"code": label, **orjson.loads(done.stdout)})
                sys.stderr.write(f"[store_write] {orjson.dumps(runs[-1]).decode()}\n")
    result = {"events": args.events, "batch": args.batch, "transactions": args.transactions, "runs": runs}
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
