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
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from confluent_kafka import Message

from scorer.events.columns import DICT, NUMBER, STR
from scorer.events.decode import decode_labels, decode_transactions
from scorer.events.timestamps import MS_PER_DAY, stamps_ms

ACTIONS = ("approve", "review", "decline")
ACTION_SET = frozenset(ACTIONS)


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
    if len(last) == len(keys):  # every key once: all of them
        return list(range(len(keys)))
    return sorted(last.values())


def _storable(columns: dict[str, list[Any]], texts: Sequence[str]) -> list[int]:
    """Positions of the rows whose text columns hold no NUL character, which PostgreSQL's text cannot:
    such a record (the stream accepts it) is skipped and counted, never changed to fit."""
    n = len(next(iter(columns.values()), []))
    suspect = [name for name in texts if "\x00" in "".join(filter(None, columns[name]))]  # one scan each
    bad: set[int] = set()
    for name in suspect:
        bad.update(i for i, v in enumerate(columns[name]) if v is not None and "\x00" in v)
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
    docs, kept, fields = _decisions([m.value() for m in msgs])
    where = list(msgs) if len(kept) == len(msgs) else [msgs[i] for i in kept]
    event_ms, bad_event = stamps_ms(fields["timestamp"])
    scored_ms, bad_scored = stamps_ms(fields["scored_at"])
    good = np.flatnonzero(~(bad_event | bad_scored))
    skipped = len(msgs) - len(good)
    if len(good) < len(docs):
        keep = good.tolist()
        docs, where = [docs[i] for i in keep], [where[i] for i in keep]
        fields = {name: [values[i] for i in keep] for name, values in fields.items()}
    columns = _decision_columns(docs, fields, event_ms[good], scored_ms[good], where)
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
# The same checks a whole column at a time (JSON gives exact types: no subclass of these ever appears);
# tests/unit/test_store_rows.py checks that both say the same of every document.
_DECISION_COLUMN_TYPES: dict[str, set[type]] = {
    "transaction_id": STR, "customer_id": STR, "terminal_id": STR, "amount": NUMBER, "timestamp": STR,
    "score": NUMBER, "flagged": {bool}, "action": STR, "action_source": STR, "threshold": NUMBER,
    "model_version": STR, "reasons": {list}, "scored_at": STR,
}  # fmt: skip
_REQUIRED = tuple(_DECISION_TYPES)
_required = itemgetter(*_REQUIRED)


def _decisions(values: list[bytes | None]) -> tuple[list[dict[str, Any]], list[int], dict[str, list[Any]]]:
    """The decision documents among `values`, their positions, and their required fields as columns.

    A whole batch is parsed and checked a column at a time; only a batch where a check fails is looked at
    one document at a time (`_decision`, the reference, which alone says which documents are decisions)."""
    try:
        parsed: list[Any] = list(map(orjson.loads, values))  # type: ignore[arg-type]  # None: raises
    except (orjson.JSONDecodeError, TypeError):
        parsed = [_loads(v) for v in values]
    fields = _columns_if_all_decisions(parsed)
    if fields is not None:
        return parsed, list(range(len(parsed))), fields
    kept = [i for i, doc in enumerate(parsed) if _is_decision(doc)]
    docs = [parsed[i] for i in kept]
    return docs, kept, _required_columns(docs)


def _columns_if_all_decisions(docs: list[Any]) -> dict[str, list[Any]] | None:
    """The required fields as columns when every document is a decision; None when any is not."""
    if not docs:
        return _required_columns(docs)
    if set(map(type, docs)) != DICT:
        return None
    try:
        fields = _required_columns(docs)
    except KeyError:
        return None
    for name, types in _DECISION_COLUMN_TYPES.items():
        if not set(map(type, fields[name])) <= types:
            return None
    return fields if set(fields["action"]) <= ACTION_SET else None


def _required_columns(docs: list[dict[str, Any]]) -> dict[str, list[Any]]:
    if not docs:
        return {name: [] for name in _REQUIRED}
    columns = zip(*map(_required, docs), strict=True)
    return {name: list(values) for name, values in zip(_REQUIRED, columns, strict=True)}


def _loads(raw: bytes | None) -> Any:
    try:
        return orjson.loads(raw or b"")
    except orjson.JSONDecodeError:
        return None


def _decision(raw: bytes | None) -> dict[str, Any] | None:
    """A decision document with every required field of its type, or None (the per-record reference)."""
    doc = _loads(raw)
    return doc if _is_decision(doc) else None


def _is_decision(doc: Any) -> bool:
    if not isinstance(doc, dict):
        return False
    return all(name in doc and ok(doc[name]) for name, ok in _DECISION_TYPES.items())


def _decision_columns(
    docs: list[dict[str, Any]],
    fields: dict[str, list[Any]],
    event_ms: npt.NDArray[np.int64],
    scored_ms: npt.NDArray[np.int64],
    msgs: list[Message],
) -> dict[str, list[Any]]:
    def col(name: str) -> list[Any]:
        return [d.get(name) for d in docs]

    partition, offset = _origin(msgs)
    return {
        "day": (event_ms // MS_PER_DAY).tolist(),
        "transaction_id": fields["transaction_id"],
        "event_ms": event_ms.tolist(),
        "customer_id": fields["customer_id"],
        "terminal_id": fields["terminal_id"],
        "amount": list(map(float, fields["amount"])),
        "score": list(map(float, fields["score"])),
        "flagged": fields["flagged"],
        "action": fields["action"],
        "action_source": fields["action_source"],
        "threshold": list(map(float, fields["threshold"])),
        "model_version": fields["model_version"],
        "reasons": [orjson.dumps(r).decode() for r in fields["reasons"]],
        "challenger_version": col("challenger_version"),
        "challenger_score": col("challenger_score"),
        "blend_weight": col("blend_weight"),
        "challenger_fallback": col("challenger_fallback"),
        "scored_ms": scored_ms.tolist(),
        "features": _vectors(col("features")),
        "source_partition": partition,
        "source_offset": offset,
    }


def _vectors(values: list[Any]) -> list[list[int | float] | None]:
    """Each feature vector: a JSON array of numbers as it is, None for anything else."""
    if set(map(type, values)) == {list} and set(map(type, chain.from_iterable(values))) <= NUMBER:
        return values
    return [v if isinstance(v, list) and all(type(x) in (int, float) for x in v) else None for v in values]


def label_rows(msgs: Sequence[Message], max_value_bytes: int) -> Rows:
    """The valid labels (the stream's decoder), with their source (chargeback unless they say analyst),
    and the verdict's `analyst_id` (stored as `analyst`) and `case_id` when they carry them."""
    decoded = decode_labels([m.value() for m in msgs], max_value_bytes)
    b, kept = decoded.batch, decoded.kept.tolist()
    partition, offset = _origin([msgs[i] for i in kept])
    columns: dict[str, list[Any]] = {
        "transaction_id": b.transaction_id,
        "source": b.source,
        "customer_id": b.customer_id,
        "terminal_id": b.terminal_id,
        "is_fraud": b.is_fraud.tolist(),
        "reported_ms": b.reported_ts_ms.tolist(),
        "event_ms": [ms if ms >= 0 else None for ms in b.tx_ts_ms.tolist()],
        "analyst": b.analyst_id,
        "case_id": b.case_id,
        "source_partition": partition,
        "source_offset": offset,
    }
    texts = ("transaction_id", "customer_id", "terminal_id", "analyst", "case_id")
    rows = _keep("labels", columns, texts, ("transaction_id", "source"))
    rows.skip("invalid_label", len(decoded.rejected))
    return rows


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
