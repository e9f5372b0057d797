"""The store's two routes into PostgreSQL leave the same rows: the binary COPY (scorer/db/binary.py) and the
upsert statement it falls back to when a row is stored already (a replay)."""

from __future__ import annotations

from typing import Any

import orjson
import psycopg
import pytest
from confluent_kafka import Message

from scorer.config import Settings
from scorer.db import writes
from scorer.db.migrate import migrate
from scorer.store.batch import StoreBatch, read_batch

S = Settings()
DAYS = ("2026-03-01", "2026-03-02")


def decision(i: int) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "transaction_id": f"tx-{i}", "customer_id": f"C{i % 7}", "terminal_id": f"T{i % 5}",
        "amount": 10.25 + i, "timestamp": f"{DAYS[i % 2]}T{i % 24:02d}:15:30.{i % 1000:03d}Z",
        "score": i / 97, "flagged": i % 9 == 0, "action": ("approve", "review", "decline")[i % 3],
        "action_source": "model" if i % 4 else "block-list", "threshold": 0.09202712774276733,
        "model_version": "default/2", "reasons": [{"feature": "amount", "value": i / 3}, {"feature": "é\"\\", "value": -1}],
        "scored_at": f"{DAYS[i % 2]}T23:59:59.5Z", "features": [float(i), 4.674136, 0.010076945, -0.0, 1e-40, 3],
    }  # fmt: skip
    if i % 5 == 0:
        doc |= {"challenger_version": "c/1", "challenger_score": 0.5, "blend_weight": 0.25}
        doc |= {"challenger_fallback": False}
    if i % 6 == 0:
        doc["features"] = None
    return doc


def transaction(i: int) -> dict[str, Any]:
    doc = {k: decision(i)[k] for k in ("transaction_id", "customer_id", "terminal_id", "amount", "timestamp")}
    return doc | ({"currency": "EUR", "channel": "web", "merchant_category": "5411"} if i % 2 else {})


def batch(start: int, n: int, offset: int = 0, change: dict[str, Any] | None = None) -> StoreBatch:
    msgs = []
    for i in range(start, start + n):
        for topic, doc in (
            (S.decisions_topic, decision(i) | (change or {})),
            (S.input_topic, transaction(i)),
        ):
            msgs.append(Message(topic=topic, partition=i % 2, offset=offset + i, value=orjson.dumps(doc)))
    return read_batch(msgs, S)


def write(conn: psycopg.Connection[Any], b: StoreBatch, route: str) -> list[bool]:
    """The batch's rows by one route; per table, whether the COPY took them."""
    for table in ("transactions", "decisions"):
        conn.execute("select store_ensure_partition(%s, date '2026-03-01')", (table,))
        conn.execute("select store_ensure_partition(%s, date '2026-03-02')", (table,))
    copied = []
    for rows in b.tables:
        if route == "copy":
            copied.append(writes.copy_new(conn, rows.table, rows.columns))
        if route != "copy" or not copied[-1]:
            writes.upsert_statement(conn, rows.table, rows.columns)
    conn.commit()
    return copied


def content(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    """Every column of both tables but stored_at, as text (exact: float4 and float8 print in full)."""
    out = {}
    for table in ("transactions", "decisions"):
        names = [
            r[0]
            for r in conn.execute(
                "select column_name from information_schema.columns where table_name = %s "
                "and column_name <> 'stored_at' order by ordinal_position",
                (table,),
            )
        ]
        select = ", ".join(f"{n}::text" for n in names)
        out[table] = conn.execute(f"select {select} from {table} order by transaction_id").fetchall()  # noqa: S608
    return out


@pytest.mark.integration
def test_the_copy_and_the_upsert_statement_store_the_same_rows(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        migrate(conn)
        conn.commit()
        conn.execute("set extra_float_digits = 3")  # floats as text with every digit
        assert write(conn, batch(0, 60), "statement") == []
        by_statement = content(conn)
        conn.execute("truncate transactions, decisions")
        conn.commit()
        assert write(conn, batch(0, 60), "copy") == [True, True]
        assert content(conn) == by_statement
        assert len(by_statement["decisions"]) == 60

        assert write(conn, batch(0, 60), "copy") == [False, False]  # a replay: every row stored already
        assert content(conn) == by_statement
        newer = batch(0, 60, offset=100, change={"score": 0.75})  # later records of the same transactions
        assert write(conn, newer, "copy") == [False, False]
        scores = {r[0] for r in conn.execute("select score from decisions")}
        assert scores == {0.75}
        assert write(conn, batch(60, 10), "copy") == [True, True]  # new rows again: the COPY
        assert conn.execute("select count(*) from decisions").fetchone() == (70,)


def test_a_label_replaces_the_stored_one_only_when_reported_no_earlier(database_url: str) -> None:
    """The label rule every consumer applies: per (transaction, source) the latest reported_at wins (a tie:
    the later record), even when an older report arrives later (another partition, a late producer)."""

    def label(fraud: bool, reported_ms: int, partition: int, offset: int) -> dict[str, list[Any]]:
        return {
            "transaction_id": ["tx-1"], "source": ["analyst"], "customer_id": ["C1"], "terminal_id": ["T1"],
            "is_fraud": [fraud], "reported_ms": [reported_ms], "event_ms": [1_772_000_000_000],
            "analyst": ["ana"], "case_id": ["C1"], "source_partition": [partition], "source_offset": [offset],
        }  # fmt: skip

    with psycopg.connect(database_url) as conn:
        migrate(conn)
        writes.upsert(conn, "labels", label(True, 2_000, 0, 5))
        writes.upsert(conn, "labels", label(False, 1_000, 1, 9))  # an older report, arriving later
        assert conn.execute("select is_fraud from labels").fetchall() == [(True,)]
        writes.upsert(conn, "labels", label(False, 2_000, 0, 6))  # the same time, a later record: it wins
        assert conn.execute("select is_fraud from labels").fetchall() == [(False,)]
        writes.upsert(conn, "labels", label(True, 3_000, 0, 4))  # a replay of an older offset: nothing
        assert conn.execute("select is_fraud from labels").fetchall() == [(False,)]
