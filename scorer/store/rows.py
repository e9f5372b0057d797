"""Kafka records -> the rows of the store's tables, as columns (no SQL here: scorer/db/writes.py has it).

Each topic has its reader: transactions and labels go through the stream's own decoders (a record they
refuse is not stored: the scorer dead-letters refused transactions, and the dead letter is stored), decisions
are the scorer's own documents, dead letters are described by their headers (kafka/deadletters.py) and
keep the original bytes. Rows are keyed as the tables are (a transaction by its event day and id, a label
by transaction and source, a dead letter by the original record's place in Kafka): when a batch holds two
records for one key, the later one (higher offset) is kept, so the batch is one upsert per table.
Times are ms since the epoch; days are days since 1970-01-01 (UTC).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from confluent_kafka import Message

from scorer.events.decode import decode_labels, decode_transactions
from scorer.events.timestamps import MS_PER_DAY, stamps_ms

ACTIONS = ("approve", "review", "decline")
LABEL_SOURCES = ("chargeback", "analyst")


@dataclass(slots=True)
class Rows:
    """One table's rows of a batch as columns (name -> values), and how many records were skipped why."""

    table: str
    columns: dict[str, list[Any]]
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()), []))

    def skip(self, reason: str, n: int = 1) -> None:
        if n:
            self.skipped[reason] = self.skipped.get(reason, 0) + n


def _last_per_key(keys: Sequence[Any]) -> list[int]:
    """Positions of the last record of each key, in input order."""
    last = {key: i for i, key in enumerate(keys)}
    return sorted(last.values())


def _storable(columns: dict[str, list[Any]], texts: Sequence[str]) -> list[int]:
    """Positions of the rows whose text columns hold no NUL character, which PostgreSQL's text cannot:
    such a record (the stream accepts it) is skipped and counted, never changed to fit."""
    bad: set[int] = set()
    for name in texts:
        bad.update(i for i, v in enumerate(columns[name]) if v is not None and "\x00" in v)
    n = len(next(iter(columns.values()), []))
    return [i for i in range(n) if i not in bad] if bad else list(range(n))


def _keep(table: str, columns: dict[str, list[Any]], texts: Sequence[str], key: Sequence[str]) -> Rows:
    """The storable rows of a table, the last of each key."""
    n = len(next(iter(columns.values()), []))
    storable = _storable(columns, texts)
    columns = _pick(columns, storable)
    keys = list(zip(*(columns[name] for name in key), strict=True))
    rows = Rows(table, _pick(columns, _last_per_key(keys)))
    rows.skip("nul_character", n - len(storable))
    return rows


def _pick(columns: dict[str, list[Any]], keep: list[int]) -> dict[str, list[Any]]:
    if len(keep) == len(next(iter(columns.values()), [])):
        return columns
    return {name: [values[i] for i in keep] for name, values in columns.items()}


def _origin(msgs: Sequence[Message]) -> tuple[list[int], list[int]]:
    return [m.partition() or 0 for m in msgs], [m.offset() or 0 for m in msgs]


def transaction_rows(msgs: Sequence[Message], max_value_bytes: int) -> Rows:
    """The valid transactions (as the scorer's decoder sees them)."""
    decoded = decode_transactions([m.value() for m in msgs], max_value_bytes)
    b, kept = decoded.batch, decoded.kept.tolist()
    partition, offset = _origin([msgs[i] for i in kept])
    columns: dict[str, list[Any]] = {
        "day": (b.event_ts_ms // MS_PER_DAY).tolist(),
        "transaction_id": b.transaction_id,
        "event_ms": b.event_ts_ms.tolist(),
        "customer_id": b.customer_id,
        "terminal_id": b.terminal_id,
        "amount": b.amount.tolist(),
        "currency": b.currency,
        "channel": b.channel,
        "merchant_category": b.merchant_category,
        "source_partition": partition,
        "source_offset": offset,
    }
    texts = ("transaction_id", "customer_id", "terminal_id", "currency", "channel", "merchant_category")
    rows = _keep("transactions", columns, texts, ("day", "transaction_id"))
    rows.skip("invalid_transaction", len(decoded.rejected))
    return rows


def decision_rows(msgs: Sequence[Message]) -> Rows:
    """The scorer's decisions; a record that is not one (not JSON, a field missing) is skipped."""
    docs: list[dict[str, Any]] = []
    where: list[Message] = []
    skipped = 0
    for msg in msgs:
        doc = _decision(msg.value())
        if doc is None:
            skipped += 1
            continue
        docs.append(doc)
        where.append(msg)
    event_ms, bad_event = stamps_ms([d["timestamp"] for d in docs])
    scored_ms, bad_scored = stamps_ms([d["scored_at"] for d in docs])
    good = np.flatnonzero(~(bad_event | bad_scored)).tolist()
    skipped += len(docs) - len(good)
    docs, where = [docs[i] for i in good], [where[i] for i in good]
    columns = _decision_columns(docs, event_ms[good].tolist(), scored_ms[good].tolist(), where)
    texts = ("transaction_id", "customer_id", "terminal_id", "action_source", "model_version")
    rows = _keep("decisions", columns, (*texts, "challenger_version"), ("day", "transaction_id"))
    rows.skip("invalid_decision", skipped)
    return rows


_DECISION_TYPES: dict[str, Callable[[Any], bool]] = {
    "transaction_id": lambda v: isinstance(v, str),
    "customer_id": lambda v: isinstance(v, str),
    "terminal_id": lambda v: isinstance(v, str),
    "amount": lambda v: type(v) in (int, float),
    "timestamp": lambda v: isinstance(v, str),
    "score": lambda v: type(v) in (int, float),
    "flagged": lambda v: type(v) is bool,
    "action": lambda v: v in ACTIONS,
    "action_source": lambda v: isinstance(v, str),
    "threshold": lambda v: type(v) in (int, float),
    "model_version": lambda v: isinstance(v, str),
    "reasons": lambda v: isinstance(v, list),
    "scored_at": lambda v: isinstance(v, str),
}


def _decision(raw: bytes | None) -> dict[str, Any] | None:
    """A decision document with every required field of its type, or None."""
    try:
        doc = orjson.loads(raw or b"")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    if all(name in doc and ok(doc[name]) for name, ok in _DECISION_TYPES.items()):
        return doc
    return None


def _decision_columns(
    docs: list[dict[str, Any]], event_ms: list[int], scored_ms: list[int], msgs: list[Message]
) -> dict[str, list[Any]]:
    def col(name: str) -> list[Any]:
        return [d.get(name) for d in docs]

    partition, offset = _origin(msgs)
    return {
        "day": [ms // MS_PER_DAY for ms in event_ms],
        "transaction_id": col("transaction_id"),
        "event_ms": event_ms,
        "customer_id": col("customer_id"),
        "terminal_id": col("terminal_id"),
        "amount": [float(v) for v in col("amount")],
        "score": [float(v) for v in col("score")],
        "flagged": col("flagged"),
        "action": col("action"),
        "action_source": col("action_source"),
        "threshold": [float(v) for v in col("threshold")],
        "model_version": col("model_version"),
        "reasons": [orjson.dumps(r).decode() for r in col("reasons")],
        "challenger_version": col("challenger_version"),
        "challenger_score": col("challenger_score"),
        "blend_weight": col("blend_weight"),
        "challenger_fallback": col("challenger_fallback"),
        "scored_ms": scored_ms,
        "features": [_array_literal(f) for f in col("features")],
        "source_partition": partition,
        "source_offset": offset,
    }


def _array_literal(features: Any) -> str | None:
    """A JSON array of numbers as PostgreSQL's array literal ({...}); None for anything else."""
    if not isinstance(features, list) or not all(type(v) in (int, float) for v in features):
        return None
    return "{" + orjson.dumps(features).decode()[1:-1] + "}"


def label_rows(msgs: Sequence[Message], max_value_bytes: int) -> Rows:
    """The valid labels (the stream's decoder), with their source (chargeback unless they say analyst),
    analyst and case when they carry them."""
    decoded = decode_labels([m.value() for m in msgs], max_value_bytes)
    b, kept = decoded.batch, decoded.kept.tolist()
    extra = [_label_extra(msgs[i].value()) for i in kept]
    partition, offset = _origin([msgs[i] for i in kept])
    columns: dict[str, list[Any]] = {
        "transaction_id": b.transaction_id,
        "source": [e[0] for e in extra],
        "customer_id": b.customer_id,
        "terminal_id": b.terminal_id,
        "is_fraud": b.is_fraud.tolist(),
        "reported_ms": b.reported_ts_ms.tolist(),
        "event_ms": [ms if ms >= 0 else None for ms in b.tx_ts_ms.tolist()],
        "analyst": [e[1] for e in extra],
        "case_id": [e[2] for e in extra],
        "source_partition": partition,
        "source_offset": offset,
    }
    texts = ("transaction_id", "customer_id", "terminal_id", "analyst", "case_id")
    rows = _keep("labels", columns, texts, ("transaction_id", "source"))
    rows.skip("invalid_label", len(decoded.rejected))
    return rows


def _label_extra(raw: bytes | None) -> tuple[str, str | None, str | None]:
    """(source, analyst, case_id) of a valid label: the optional fields, strings or absent."""
    doc = orjson.loads(raw or b"")
    source = doc.get("source")
    analyst, case = doc.get("analyst_id"), doc.get("case_id")
    return (
        source if source in LABEL_SOURCES else "chargeback",
        analyst if isinstance(analyst, str) else None,
        case if isinstance(case, str) else None,
    )


def dead_letter_rows(msgs: Sequence[Message], dlq_topic: str) -> Rows:
    """Every dead letter, described by its headers, with the original key, value and headers intact."""
    rows = [_dead_letter(m, dlq_topic) for m in msgs]
    columns = {name: [r[name] for r in rows] for name in DEAD_LETTER_COLUMNS}
    key = ("day", "source_topic", "source_partition", "source_offset")
    return _keep("dead_letters", columns, (), key)


DEAD_LETTER_COLUMNS = (
    "day", "source_topic", "source_partition", "source_offset", "reason", "detail", "transaction_id",
    "source_ms", "dead_lettered_ms", "key", "value", "header_names", "header_values", "dlq_partition",
    "dlq_offset",
)  # fmt: skip


def _dead_letter(msg: Message, dlq_topic: str) -> dict[str, Any]:
    """One dead letter's row. A header missing or unreadable (a record put there by hand) gets a stand-in
    that says so, and the record's own place in the dead-letter topic as its source: never skipped. Its
    texts cannot hold a NUL character (PostgreSQL's text cannot): one is written \\u0000 there, while the
    key, the value and the header values keep their bytes."""
    raw = msg.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    headers = [(_text(name), value if isinstance(value, bytes) else b"") for name, value in pairs]
    found = {name: value for name, value in headers}
    kind, stamp = msg.timestamp()
    own_ms = stamp if kind and stamp > 0 else 0
    source_ms = _int(found.get("source.timestamp"), -1)
    lettered_ms = _int(found.get("dead_lettered_at"), own_ms)
    topic = _text(found.get("source.topic", b"").decode("utf-8", "replace"))
    partition = _int(found.get("source.partition"), -1)
    offset = _int(found.get("source.offset"), -1)
    if not topic or partition < 0 or offset < 0:  # no source: its place here is what identifies it
        topic, partition, offset = dlq_topic, msg.partition() or 0, msg.offset() or 0
    day_ms = source_ms if source_ms > 0 else lettered_ms
    return {
        "day": day_ms // MS_PER_DAY,
        "source_topic": topic,
        "source_partition": partition,
        "source_offset": offset,
        "reason": _text(found.get("reason", b"unknown").decode("utf-8", "replace")),
        "detail": _text(found.get("detail", b"").decode("utf-8", "replace")),
        "transaction_id": _transaction_id(msg.value()),
        "source_ms": source_ms if source_ms > 0 else None,
        "dead_lettered_ms": lettered_ms,
        "key": msg.key(),
        "value": msg.value(),
        "header_names": [name for name, _ in headers],
        "header_values": [value for _, value in headers],
        "dlq_partition": msg.partition() or 0,
        "dlq_offset": msg.offset() or 0,
    }


def _text(value: str) -> str:
    return value.replace("\x00", "\\u0000")


def _int(raw: bytes | None, default: int) -> int:
    try:
        return int(raw) if raw else default
    except ValueError:
        return default


def _transaction_id(raw: bytes | None) -> str | None:
    """The original's transaction_id, when it is a JSON object that has a string one."""
    try:
        doc = orjson.loads(raw or b"")
    except orjson.JSONDecodeError:
        return None
    tid = doc.get("transaction_id") if isinstance(doc, dict) else None
    return tid if isinstance(tid, str) and "\x00" not in tid else None
