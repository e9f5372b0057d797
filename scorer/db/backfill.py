"""History the store never saw live (a `scorer simulate` directory, a recorded export) written into the
store's tables exactly as `scorer store` would have written it: a backfill.

Rows get the columns and values the store gives them (scorer/store/rows.py, scorer/db/writes.py), with
source_partition = -1 and source_offset = the row's index in the batch it came in: -1 marks a backfilled row,
since the store's live rows come from Kafka partitions, numbered from 0. A row whose key is stored already
(by the store live, or by an earlier backfill) is left as it is: the backfill only adds, so running it twice
writes nothing the second time, and it never overwrites what the store wrote.

Each table's rows travel by one binary COPY into a temporary table, then one `INSERT ... SELECT ... ON
CONFLICT DO NOTHING` into the table (the server parses no text, and checks each key once). Measured on the
development machine (2 cores, the embedded PostgreSQL 18; docs/database.md): 1,475,269 transactions and
12,246 labels (a 150-day `scorer simulate`) in 19.5 s (21 s with fsync on), of which 2 s are the COPY and
most of the rest the insert's index upkeep; the second run, which writes nothing, 8.8 s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg import sql

from scorer.db import writes
from scorer.events.batches import LabelBatch, TransactionBatch
from scorer.events.timestamps import MS_PER_DAY

BACKFILL_PARTITION = -1  # source_partition of a backfilled row; the store's live rows have 0 and up
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Backfilled:
    """What a backfill did: rows written per table; rows left out because their key was stored already
    (or came twice in the batch: the one the store would keep is the one offered); rows left out because a
    text holds a NUL character, which PostgreSQL's text cannot (the store skips those too)."""

    transactions: int
    labels: int
    skipped: int
    unstorable: int = 0

    def __str__(self) -> str:
        return (
            f"backfilled {self.transactions:,} transactions and {self.labels:,} labels; "
            f"{self.skipped:,} skipped as already present"
            + (f", {self.unstorable:,} unstorable (a NUL character)" if self.unstorable else "")
        )


@dataclass(frozen=True, slots=True)
class _Staged:
    """One table's backfill: the temporary table its rows are copied into, and the insert from there."""

    table: str
    columns: tuple[tuple[str, str, str], ...]  # (name in the temporary table, its SQL type, COPY wire type)
    insert: str  # SELECT over the temporary table `s`, in the order of `targets`
    targets: tuple[str, ...]  # the table's columns the insert fills
    key: tuple[str, ...]


_TEXT, _BIGINT = ("text", "text"), ("bigint", "int8")
_TRANSACTIONS = _Staged(
    "transactions",
    (
        ("day", "integer", "int4"), ("transaction_id", *_TEXT), ("event_ms", *_BIGINT),
        ("customer_id", *_TEXT), ("terminal_id", *_TEXT), ("amount", "float8", "float8"),
        ("currency", *_TEXT), ("channel", *_TEXT), ("merchant_category", *_TEXT),
        ("source_offset", *_BIGINT),
    ),
    f"{writes.EPOCH_DAY}s.day, s.transaction_id, {writes.MS}s.event_ms, s.customer_id, s.terminal_id, "
    f"s.amount, s.currency, s.channel, s.merchant_category, {BACKFILL_PARTITION}, s.source_offset",
    (
        "event_day", "transaction_id", "event_time", "customer_id", "terminal_id", "amount", "currency",
        "channel", "merchant_category", "source_partition", "source_offset",
    ),
    ("event_day", "transaction_id"),
)  # fmt: skip
_LABELS = _Staged(
    "labels",
    (
        ("transaction_id", *_TEXT), ("source", *_TEXT), ("customer_id", *_TEXT), ("terminal_id", *_TEXT),
        ("is_fraud", "boolean", "bool"), ("reported_ms", *_BIGINT), ("event_ms", *_BIGINT),
        ("analyst", *_TEXT), ("case_id", *_TEXT), ("source_offset", *_BIGINT),
    ),
    f"s.transaction_id, s.source, s.customer_id, s.terminal_id, s.is_fraud, {writes.MS}s.reported_ms, "
    f"{writes.MS}s.event_ms, s.analyst, s.case_id, {BACKFILL_PARTITION}, s.source_offset",
    (
        "transaction_id", "source", "customer_id", "terminal_id", "is_fraud", "reported_at", "event_time",
        "analyst", "case_id", "source_partition", "source_offset",
    ),
    ("transaction_id", "source"),
)  # fmt: skip
_TX_TEXTS = ("transaction_id", "customer_id", "terminal_id", "currency", "channel", "merchant_category")


def backfill(
    conn: psycopg.Connection[Any],
    transactions: TransactionBatch,
    labels: LabelBatch,
    until_ms: int | None = None,
) -> Backfilled:
    """Add the transactions (event time <= until_ms, when given) and the labels (reported <= until_ms) that
    are not stored yet; what was written and left out.

    All in one transaction, committed on return (a savepoint of the caller's transaction when one is open:
    the caller then commits). A database error (psycopg.Error) rolls all of it back and propagates."""
    tx = _transaction_rows(transactions, until_ms)
    label = _label_rows(labels, until_ms)
    with conn.transaction():
        writes.ensure_partitions(conn, "transactions", set(tx.columns["day"]))
        tx_written = _copy_and_insert(conn, _TRANSACTIONS, tx.columns)
        label_written = _copy_and_insert(conn, _LABELS, label.columns)
    return Backfilled(
        transactions=tx_written,
        labels=label_written,
        skipped=tx.storable + label.storable - tx_written - label_written,
        unstorable=tx.unstorable + label.unstorable,
    )


@dataclass(frozen=True, slots=True)
class _Rows:
    """A table's rows to offer (the temporary table's columns), out of `storable` rows in the window (the
    others, `unstorable`, hold a NUL character); fewer when a key came more than once."""

    columns: dict[str, list[Any]]
    storable: int
    unstorable: int


def _transaction_rows(batch: TransactionBatch, until_ms: int | None) -> _Rows:
    """The transactions to offer. Of a (day, transaction_id) given more than once, the last row: the one
    the store keeps of a key's records."""
    ts = batch.event_ts_ms
    chosen = _until(ts, until_ms)
    texts: dict[str, Sequence[str | None]] = {name: getattr(batch, name) for name in _TX_TEXTS}
    storable = _storable(texts, chosen)
    days = ts // MS_PER_DAY
    ids = _pick(batch.transaction_id, storable)
    keep = _last_per_key(ids, lambda: list(zip(days[storable].tolist(), ids, strict=True)), storable)
    columns = {
        "day": days[keep].tolist(),
        "transaction_id": ids if len(keep) == len(storable) else _pick(batch.transaction_id, keep),
        "event_ms": ts[keep].tolist(),
        "customer_id": _pick(batch.customer_id, keep),
        "terminal_id": _pick(batch.terminal_id, keep),
        "amount": batch.amount[keep].tolist(),
        "currency": _pick(batch.currency, keep),
        "channel": _pick(batch.channel, keep),
        "merchant_category": _pick(batch.merchant_category, keep),
        "source_offset": keep.tolist(),
    }
    return _Rows(columns, len(storable), len(chosen) - len(storable))


def _label_rows(batch: LabelBatch, until_ms: int | None) -> _Rows:
    """The labels to offer. Of a (transaction, source) given more than once, the one the store keeps
    (events/labelstate.py's rule): the latest reported, a tie going to the later row."""
    reported = batch.reported_ts_ms
    chosen = _until(reported, until_ms)
    texts: dict[str, Sequence[str | None]] = {
        "transaction_id": batch.transaction_id, "source": batch.source, "customer_id": batch.customer_id,
        "terminal_id": batch.terminal_id, "analyst": batch.analyst_id, "case_id": batch.case_id,
    }  # fmt: skip
    storable = _storable(texts, chosen)
    by_report = storable[np.lexsort((storable, reported[storable]))]  # ties in row order
    pairs = list(zip(_pick(batch.transaction_id, by_report), _pick(batch.source, by_report), strict=True))
    keep = np.sort(_last_per_key(pairs, lambda: pairs, by_report))
    columns = {
        "transaction_id": _pick(batch.transaction_id, keep),
        "source": _pick(batch.source, keep),
        "customer_id": _pick(batch.customer_id, keep),
        "terminal_id": _pick(batch.terminal_id, keep),
        "is_fraud": batch.is_fraud[keep].tolist(),
        "reported_ms": reported[keep].tolist(),
        "event_ms": [ms if ms >= 0 else None for ms in batch.tx_ts_ms[keep].tolist()],  # -1: none given
        "analyst": _pick(batch.analyst_id, keep),
        "case_id": _pick(batch.case_id, keep),
        "source_offset": keep.tolist(),
    }
    return _Rows(columns, len(storable), len(chosen) - len(storable))


def _until(ts: I64, until_ms: int | None) -> I64:
    """The rows at or before until_ms (all of them without it)."""
    return np.arange(len(ts), dtype=np.int64) if until_ms is None else np.flatnonzero(ts <= until_ms)


def _pick(values: Sequence[Any], idx: I64) -> list[Any]:
    """values[i] for each i in idx (a copy of the list when idx is every row in order, the usual case)."""
    if len(idx) == len(values) and bool((idx == np.arange(len(idx))).all()):
        return list(values)
    return list(map(values.__getitem__, idx.tolist()))


def _storable(texts: dict[str, Sequence[str | None]], chosen: I64) -> I64:
    """The rows of `chosen` whose texts hold no NUL character (one scan of each column in the usual case)."""
    bad: set[int] = set()
    for values in texts.values():
        if "\x00" in "".join(filter(None, values)):
            bad.update(i for i, v in enumerate(values) if v is not None and "\x00" in v)
    if not bad:
        return chosen
    return chosen[~np.isin(chosen, np.fromiter(bad, dtype=np.int64))]


def _last_per_key(ids: Sequence[Any], keys: Callable[[], list[Any]], rows: I64) -> I64:
    """Of `rows`, the last of each key. `ids` identify a row when they are all distinct (the usual case, one
    set to check); `keys()`, the full keys in the rows' order, is only built when they are not."""
    if len(set(ids)) == len(ids):
        return rows
    last = {key: i for i, key in enumerate(keys())}
    if len(last) == len(rows):
        return rows
    return rows[np.sort(np.fromiter(last.values(), dtype=np.int64, count=len(last)))]


def _copy_and_insert(conn: psycopg.Connection[Any], staged: _Staged, columns: dict[str, list[Any]]) -> int:
    """The rows into `staged.table` through a temporary table; how many it took (the others' keys are stored)."""
    n = len(columns[staged.columns[0][0]])
    if n == 0:
        return 0
    temp = sql.Identifier(f"backfill_{staged.table}")
    conn.execute(
        sql.SQL("create temporary table {} ({})").format(
            temp,
            sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(kind))
                for name, kind, _ in staged.columns
            ),
        )
    )
    names = [name for name, _, _ in staged.columns]
    copy_sql = sql.SQL("copy {} ({}) from stdin (format binary)").format(
        temp, sql.SQL(", ").join(map(sql.Identifier, names))
    )
    with conn.cursor() as cursor, cursor.copy(copy_sql) as copy:
        copy.set_types([wire for _, _, wire in staged.columns])
        for row in zip(*(columns[name] for name in names), strict=True):
            copy.write_row(row)
    cursor = conn.execute(
        sql.SQL(
            "insert into {table} ({targets}) select {values} from {temp} as s on conflict ({key}) do nothing"
        ).format(
            table=sql.Identifier(staged.table),
            targets=sql.SQL(", ").join(map(sql.Identifier, staged.targets)),
            values=sql.SQL(staged.insert),  # a constant of this module
            temp=temp,
            key=sql.SQL(", ").join(map(sql.Identifier, staged.key)),
        )
    )
    written = cursor.rowcount
    conn.execute(sql.SQL("drop table {}").format(temp))
    return written
