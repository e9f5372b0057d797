"""The statements `scorer store` writes a batch with: one upsert per table from column arrays, and the offsets.

Each table's rows go in as one `INSERT ... SELECT ... FROM unnest(arrays)` (one round trip whatever the batch
size), upserted on the table's key. A row replaces the one stored only if it comes from a later record of
the same partition (`source_offset`), so replaying a batch (after a crash, or by a zombie instance whose
partitions moved) changes nothing, and a newer record wins. The offsets are upserted the same way: they
never move back. The caller runs all of it in one transaction.

The tables that get a row per event (transactions, decisions) go in faster by a binary COPY (binary.py:
the server parses no text) when none of the batch's rows is stored yet, which is every batch but a replay:
the COPY runs under a savepoint, and a row already stored (a unique violation) rolls it back and sends the
batch through the upsert above, which then decides row by row as always. So both routes leave the same rows;
benchmarks/README.md has what each costs.

Times arrive as ms since the epoch and days as days since 1970-01-01, converted here (exact, no float).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from psycopg import errors, sql

from scorer.db import binary

EPOCH_DAY = "date '1970-01-01' + "
MS = "timestamptz 'epoch' + interval '1 millisecond' * "
NONE = type(None)


@dataclass(frozen=True, slots=True)
class Wire:
    """How a column's values travel in a binary COPY: the type psycopg sends them as, the Python types they
    may have (exactly: a bool is no int), and the conversion to PostgreSQL's binary form (binary.py; it
    returns None for a batch that must go the upsert's way). No conversion: the values as they are."""

    sent_as: str
    types: frozenset[type]
    convert: Callable[[Sequence[Any]], Sequence[Any] | None] | None = None


WIRES = {  # each array type's own binary form
    "text": Wire("text", frozenset({str, NONE})),
    "integer": Wire("int4", frozenset({int})),
    "bigint": Wire("int8", frozenset({int})),
    "float8": Wire("float8", frozenset({float, NONE})),
    "boolean": Wire("bool", frozenset({bool, NONE})),
}


@dataclass(frozen=True, slots=True)
class Column:
    """One column of an upsert: its name in the table, the array type it arrives as, and the SQL that
    turns the array element (`u.<input>`) into the stored value; `wire`, how a COPY sends it instead."""

    name: str
    array_type: str
    value: str = ""  # SQL over u.<input>; empty: the element as it is
    source: str = ""  # the input column's name in the rows (default: `name`)
    wire: Wire | None = None  # default: WIRES[array_type]

    @property
    def input(self) -> str:
        return self.source or self.name

    def binary(self, values: Sequence[Any]) -> Sequence[Any] | None:
        """The values in the form the COPY sends, or None when one has none (a type not expected here)."""
        wire = self.wire or WIRES[self.array_type]
        if not set(map(type, values)) <= wire.types:
            return None
        return wire.convert(values) if wire.convert is not None else values


@dataclass(frozen=True, slots=True)
class Table:
    """An upsert target: its columns and its key; `copy`: a row per event, worth a binary COPY."""

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    copy: bool = False
    # what else a newer record must be to replace a stored row (SQL over the table and `excluded`)
    also_newer: str = ""

    def copy_statement(self) -> sql.Composed:
        return sql.SQL("copy {table} ({names}) from stdin (format binary)").format(
            table=sql.Identifier(self.name),
            names=sql.SQL(", ").join(sql.Identifier(c.name) for c in self.columns),
        )

    def copy_types(self) -> list[str]:
        return [(c.wire or WIRES[c.array_type]).sent_as for c in self.columns]

    def statement(self) -> sql.Composed:
        inputs = [c.input for c in self.columns]
        arrays = sql.SQL(", ").join(
            sql.SQL("{}::{}[]").format(sql.Placeholder(c.input), sql.SQL(c.array_type)) for c in self.columns
        )
        values = sql.SQL(", ").join(
            sql.SQL(c.value.replace("$", "u." + c.input)) if c.value else sql.Identifier("u", c.input)
            for c in self.columns
        )
        names = sql.SQL(", ").join(sql.Identifier(c.name) for c in self.columns)
        updates = sql.SQL(", ").join(
            sql.SQL("{} = excluded.{}").format(sql.Identifier(c.name), sql.Identifier(c.name))
            for c in self.columns
            if c.name not in self.key
        )
        also = sql.SQL(f" and ({self.also_newer})" if self.also_newer else "")  # a constant of TABLES
        return sql.SQL(
            "insert into {table} ({names}) select {values} from unnest({arrays}) as u({inputs}) "
            "on conflict ({key}) do update set {updates}, stored_at = now() "
            "where ({table}.source_offset < excluded.source_offset "
            "or {table}.source_partition <> excluded.source_partition){also}"
        ).format(
            also=also,
            table=sql.Identifier(self.name),
            names=names,
            values=values,
            arrays=arrays,
            inputs=sql.SQL(", ").join(map(sql.Identifier, inputs)),
            key=sql.SQL(", ").join(map(sql.Identifier, self.key)),
            updates=updates,
        )


def _day(name: str) -> Column:
    return Column(name, "integer", EPOCH_DAY + "$", "day", Wire("int4", frozenset({int}), binary.dates))


def _ms(name: str, source: str) -> Column:
    return Column(name, "bigint", MS + "$", source, Wire("int8", frozenset({int, NONE}), binary.times))


def _origin() -> tuple[Column, ...]:
    return Column("source_partition", "integer"), Column("source_offset", "bigint")


TABLES = {
    "transactions": Table(
        "transactions",
        (
            _day("event_day"), Column("transaction_id", "text"), _ms("event_time", "event_ms"),
            Column("customer_id", "text"), Column("terminal_id", "text"), Column("amount", "float8"),
            Column("currency", "text"), Column("channel", "text"), Column("merchant_category", "text"),
            *_origin(),
        ),
        ("event_day", "transaction_id"),
        copy=True,
    ),
    "decisions": Table(
        "decisions",
        (
            _day("event_day"), Column("transaction_id", "text"), _ms("event_time", "event_ms"),
            Column("customer_id", "text"), Column("terminal_id", "text"), Column("amount", "float8"),
            Column("score", "float8"), Column("flagged", "boolean"), Column("action", "text"),
            Column("action_source", "text"), Column("threshold", "float8"), Column("model_version", "text"),
            Column("reasons", "text", "$::jsonb", wire=Wire("bytea", frozenset({str}), binary.jsonb)),
            Column("challenger_version", "text"), Column("challenger_score", "float8"),
            Column("blend_weight", "float8"), Column("challenger_fallback", "boolean"),
            _ms("scored_at", "scored_ms"),
            Column("features", "text", "$::real[]", wire=Wire("bytea", frozenset({list, NONE}), binary.real_arrays)),
            *_origin(),
        ),
        ("event_day", "transaction_id"),
        copy=True,
    ),
    "labels": Table(
        "labels",
        (
            Column("transaction_id", "text"), Column("source", "text"), Column("customer_id", "text"),
            Column("terminal_id", "text"), Column("is_fraud", "boolean"), _ms("reported_at", "reported_ms"),
            _ms("event_time", "event_ms"), Column("analyst", "text"), Column("case_id", "text"), *_origin(),
        ),
        ("transaction_id", "source"),
        # the label rule every consumer applies (events/labelstate.py): per (transaction, source) the latest
        # reported_at wins, a tie going to the later record
        also_newer="labels.reported_at <= excluded.reported_at",
    ),
    "dead_letters": Table(
        "dead_letters",
        (
            _day("day"), Column("source_topic", "text"), Column("source_partition", "integer"),
            Column("source_offset", "bigint"), Column("reason", "text"), Column("detail", "text"),
            Column("transaction_id", "text"), _ms("source_time", "source_ms"),
            _ms("dead_lettered_at", "dead_lettered_ms"), Column("key", "bytea"), Column("value", "bytea"),
            Column("header_names", "text", "$::text[]"),
            Column("header_values", "text", "$::bytea[]"),
            Column("dlq_partition", "integer"), Column("dlq_offset", "bigint"),
        ),
        ("day", "source_topic", "source_partition", "source_offset"),
    ),
}  # fmt: skip
PARTITIONED = {"transactions": "event_day", "decisions": "event_day", "dead_letters": "day"}
_STATEMENTS = {name: table.statement() for name, table in TABLES.items()}
_COPIES = {name: table.copy_statement() for name, table in TABLES.items()}
OFFSETS = (
    "insert into store_offsets (consumer_group, topic, partition, next_offset) "
    "select %(group)s, u.topic, u.partition, u.next_offset "
    "from unnest(%(topic)s::text[], %(partition)s::integer[], %(next_offset)s::bigint[]) "
    "as u(topic, partition, next_offset) "
    "on conflict (consumer_group, topic, partition) do update "
    "set next_offset = excluded.next_offset, updated_at = now() "
    "where store_offsets.next_offset < excluded.next_offset"
)


def upsert(conn: psycopg.Connection[Any], table: str, columns: Mapping[str, Sequence[Any]]) -> None:
    """Write one table's rows (column name -> values, every column of TABLES[table]); no commit.

    By a binary COPY when the table has one and it meets no stored row, else by `upsert_statement`."""
    target = TABLES[table]
    if not (target.copy and copy_new(conn, table, columns)):
        upsert_statement(conn, table, columns)


def upsert_statement(conn: psycopg.Connection[Any], table: str, columns: Mapping[str, Sequence[Any]]) -> None:
    """The rows by the table's upsert statement (the reference: every row decided by its key and offset)."""
    params = {c.input: _array(c, columns[c.input]) for c in TABLES[table].columns}
    conn.execute(_STATEMENTS[table], params)


def copy_new(conn: psycopg.Connection[Any], table: str, columns: Mapping[str, Sequence[Any]]) -> bool:
    """The rows by a binary COPY under a savepoint, if every value has a binary form and no row is stored
    yet; False (nothing written) otherwise."""
    target = TABLES[table]
    values = [c.binary(columns[c.input]) for c in target.columns]
    ready = [v for v in values if v is not None]
    if len(ready) < len(values):
        return False
    conn.execute("savepoint store_copy")
    try:
        with conn.cursor() as cursor, cursor.copy(_COPIES[table]) as copy:
            copy.set_types(target.copy_types())
            for row in zip(*ready, strict=True):
                copy.write_row(row)
    except errors.UniqueViolation:
        conn.execute("rollback to savepoint store_copy")
        return False
    conn.execute("release savepoint store_copy")
    return True


def _array(column: Column, values: Sequence[Any]) -> list[Any]:
    """Values as the statement's arrays take them: a row's own list (header names and values) travels as
    one array literal in a text element, since rows of different lengths make no 2-D PostgreSQL array;
    a feature vector as real[]'s literal."""
    if column.name == "header_names":
        return [_literal(map(_quoted, names)) for names in values]
    if column.name == "header_values":
        return [_literal(map(_hex, items)) for items in values]
    if column.name == "features":
        return [None if v is None else "{" + orjson.dumps(v).decode()[1:-1] + "}" for v in values]
    return list(values)


def _literal(elements: Iterable[str]) -> str:
    return "{" + ",".join(elements) + "}"


def _quoted(text: str) -> str:
    """An array literal's element: double-quoted, with backslash and double quote escaped."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _hex(data: bytes) -> str:
    """A bytea element in hex form, \\x<hex>, quoted (its backslash escaped inside the quotes)."""
    return _quoted("\\x" + data.hex())


def save_offsets(conn: psycopg.Connection[Any], group: str, offsets: Mapping[tuple[str, int], int]) -> None:
    """The next offset to read per (topic, partition), never moved back; no commit."""
    keys = sorted(offsets)
    conn.execute(
        OFFSETS,
        {
            "group": group,
            "topic": [t for t, _ in keys],
            "partition": [p for _, p in keys],
            "next_offset": [offsets[k] for k in keys],
        },
    )


def load_offsets(
    conn: psycopg.Connection[Any], group: str, partitions: Iterable[tuple[str, int]]
) -> dict[tuple[str, int], int]:
    """The stored next offsets of these (topic, partition)s (absent: never stored)."""
    wanted = list(partitions)
    rows = conn.execute(
        "select o.topic, o.partition, o.next_offset from store_offsets o "
        "join unnest(%(topic)s::text[], %(partition)s::integer[]) as u(topic, partition) "
        "using (topic, partition) where o.consumer_group = %(group)s",
        {"group": group, "topic": [t for t, _ in wanted], "partition": [p for _, p in wanted]},
    ).fetchall()
    return {(str(t), int(p)): int(o) for t, p, o in rows}


def ensure_partitions(conn: psycopg.Connection[Any], table: str, days: Iterable[int]) -> None:
    """A partition of `table` for each day (days since the epoch) that has none; no commit."""
    for day in sorted(set(days)):
        conn.execute("select store_ensure_partition(%s, date '1970-01-01' + %s::integer)", (table, day))


def drop_partitions_before(conn: psycopg.Connection[Any], table: str, day: int) -> int:
    """Drop every day partition of `table` before `day`; how many; no commit."""
    row = conn.execute(
        "select store_drop_partitions_before(%s, date '1970-01-01' + %s::integer)", (table, day)
    ).fetchone()
    return int(row[0]) if row else 0
