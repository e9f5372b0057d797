"""bytes -> columnar batches of Transactions / Labels, or Rejected(reason): the only code that parses input.

One fast decoder enforces exactly the contract of schemas/*.schema.json (a test checks the two agree on a
corpus) with a stable snake_case reason per rejected record; no generic JSON-Schema validation per event.
Transactions are checked a whole column at a time; the per-record checks stay the reference for reasons.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import compress, repeat
from operator import itemgetter
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import orjson

from scorer.errors import Rejected
from scorer.events.batches import LABEL_SOURCES, LabelBatch, TransactionBatch
from scorer.events.columns import DICT, NUMBER, STR, of_types, typed
from scorer.events.timestamps import parse_rfc3339_ms, stamps_ms

MAX_VALUE_BYTES = 65_536
MAX_ID_CHARS = 128
MAX_TEXT_CHARS = 64
MAX_AMOUNT = 1e9
CURRENCY_RE = re.compile(r"[A-Z]{3}")
# The fields schemas/transaction.schema.json requires (a test compares them): a CSV header names them all.
REQUIRED_FIELDS = ("transaction_id", "customer_id", "terminal_id", "amount", "timestamp")
# Every reason this package rejects a record for, in the order of the checks. Metrics pre-create one
# series per reason from this tuple; a test reads every Rejected("...") in scorer/events/ against it.
REASONS = (
    "empty_value", "oversized_value", "invalid_utf8", "invalid_json", "not_an_object", "missing_field",
    "wrong_type", "empty_field", "field_too_long", "invalid_amount", "invalid_timestamp", "invalid_currency",
    "invalid_source",
)  # fmt: skip


def load_object(raw: bytes | None, max_value_bytes: int = MAX_VALUE_BYTES) -> dict[str, Any]:
    """Kafka value -> JSON object, or Rejected saying why not."""
    if not raw:
        raise Rejected("empty_value", "the record has no value")
    if len(raw) > max_value_bytes:
        raise Rejected("oversized_value", f"{len(raw)} bytes > {max_value_bytes}")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as uexc:
            raise Rejected("invalid_utf8", str(uexc)) from exc
        raise Rejected("invalid_json", str(exc)) from exc
    if not isinstance(doc, dict):
        raise Rejected("not_an_object", f"top-level JSON value is {type(doc).__name__}")
    return doc


def _text(doc: dict[str, Any], name: str, limit: int, required: bool = True) -> str | None:
    value = doc.get(name)
    if value is None:
        if name not in doc and not required:
            return None
        if name not in doc:
            raise Rejected("missing_field", name)
        raise Rejected("wrong_type", f"{name} must be a string, not null")
    if type(value) is not str:
        raise Rejected("wrong_type", f"{name} must be a string, not {type(value).__name__}")
    if not value:
        raise Rejected("empty_field", name)
    if len(value) > limit:
        raise Rejected("field_too_long", f"{name} has {len(value)} characters > {limit}")
    return value


def _amount(doc: dict[str, Any]) -> float:
    if "amount" not in doc:
        raise Rejected("missing_field", "amount")
    value = doc["amount"]
    if type(value) not in (int, float):
        raise Rejected("wrong_type", f"amount must be a number, not {type(value).__name__}")
    amount = float(value)
    if not (0.0 <= amount <= MAX_AMOUNT):  # also false for NaN
        raise Rejected("invalid_amount", f"amount {value!r} is not within [0, {MAX_AMOUNT:g}]")
    return amount


def _timestamp(doc: dict[str, Any], name: str, required: bool = True) -> int:
    if name not in doc:
        if not required:
            return -1
        raise Rejected("missing_field", name)
    value = doc[name]
    if type(value) is not str:
        raise Rejected("wrong_type", f"{name} must be a string, not {type(value).__name__}")
    return parse_rfc3339_ms(value)


def _currency(doc: dict[str, Any]) -> str | None:
    if "currency" not in doc:
        return None
    value = doc["currency"]
    if type(value) is not str:
        raise Rejected("wrong_type", f"currency must be a string, not {type(value).__name__}")
    if CURRENCY_RE.fullmatch(value) is None:
        raise Rejected("invalid_currency", f"currency {value[:10]!r} is not 3 upper-case letters")
    return value


@dataclass(slots=True)
class DecodedTransactions:
    """The valid records of a batch as columns, where they were, and why the others were rejected."""

    batch: TransactionBatch
    kept: npt.NDArray[np.int64]  # index in the input of each valid record, in input order
    rejected: list[tuple[int, Rejected]]


@dataclass(slots=True)
class DecodedLabels:
    batch: LabelBatch
    kept: npt.NDArray[np.int64]
    rejected: list[tuple[int, Rejected]]


_Row = tuple[str, str, str, float, int, str | None, str | None, str | None]
_ID_FIELDS = ("transaction_id", "customer_id", "terminal_id")
_OPTIONAL_TEXT_FIELDS = ("channel", "merchant_category")


def _transaction(doc: dict[str, Any]) -> _Row:
    """The reference check, field by field in a fixed order: the one source of a transaction's reason."""
    return (
        _text(doc, "transaction_id", MAX_ID_CHARS),  # type: ignore[return-value]  # required: never None
        _text(doc, "customer_id", MAX_ID_CHARS),
        _text(doc, "terminal_id", MAX_ID_CHARS),
        _amount(doc),
        _timestamp(doc, "timestamp"),
        _currency(doc),
        _text(doc, "channel", MAX_TEXT_CHARS, required=False),
        _text(doc, "merchant_category", MAX_TEXT_CHARS, required=False),
    )


def _transaction_batch(cols: Sequence[Any]) -> TransactionBatch:
    return TransactionBatch(
        transaction_id=list(cols[0]),
        customer_id=list(cols[1]),
        terminal_id=list(cols[2]),
        amount=np.asarray(cols[3], dtype=np.float64),
        event_ts_ms=np.asarray(cols[4], dtype=np.int64),
        currency=list(cols[5]),
        channel=list(cols[6]),
        merchant_category=list(cols[7]),
    )


def decode_transactions(
    values: Sequence[bytes | None], max_value_bytes: int = MAX_VALUE_BYTES
) -> DecodedTransactions:
    """Decode and validate a batch per schemas/transaction.schema.json; never raises for bad input.

    Whole columns are checked at once. A record that any column check refuses goes through _transaction,
    which alone says why (so reasons are those of the per-record decoder) or keeps it after all.
    """
    docs, where, rejected = _load_objects(values, max_value_bytes)
    cols, bad = _transaction_columns(docs)
    for p in np.flatnonzero(bad).tolist():
        try:
            row = _transaction(docs[p])
        except Rejected as exc:
            rejected.append((int(where[p]), exc))
            continue
        for col, value in zip(cols, row, strict=True):
            col[p] = value
        bad[p] = False
    if bad.any():
        keep = ~bad
        cols = [c[keep] if isinstance(c, np.ndarray) else list(compress(c, keep.tolist())) for c in cols]
        where = where[keep]
    rejected.sort(key=itemgetter(0))  # load failures came first
    return DecodedTransactions(_transaction_batch(cols), where, rejected)


def decode_transactions_per_record(
    values: Sequence[bytes | None], max_value_bytes: int = MAX_VALUE_BYTES
) -> DecodedTransactions:
    """The plain per-record decoder: what decode_transactions must agree with, record for record (tests)."""
    rows: list[_Row] = []
    kept: list[int] = []
    rejected: list[tuple[int, Rejected]] = []
    for i, raw in enumerate(values):
        try:
            rows.append(_transaction(load_object(raw, max_value_bytes)))
        except Rejected as exc:
            rejected.append((i, exc))
            continue
        kept.append(i)
    cols: list[Any] = list(zip(*rows, strict=True)) if rows else [() for _ in range(8)]
    return DecodedTransactions(_transaction_batch(cols), np.asarray(kept, dtype=np.int64), rejected)


def _load_objects(
    values: Sequence[bytes | None], max_value_bytes: int
) -> tuple[list[dict[str, Any]], npt.NDArray[np.int64], list[tuple[int, Rejected]]]:
    """The values that are JSON objects, their indices in the input, and (index, why) for the others.

    Each value is parsed alone: joined into one array, crafted records could combine into valid JSON.
    """
    try:
        docs: list[Any] = [orjson.loads(raw) for raw in values]  # type: ignore[arg-type]  # None raises
    except orjson.JSONDecodeError:  # also for None and b""
        docs = [_loads_or_none(raw) for raw in values]
    raws = cast("Sequence[bytes]", values)  # len() is only taken of values that parsed: never None
    if set(map(type, docs)) <= DICT and max(map(len, raws), default=0) <= max_value_bytes:
        return docs, np.arange(len(docs), dtype=np.int64), []
    good = of_types(docs, DICT)
    parsed = np.flatnonzero(good)
    sizes = np.fromiter(map(len, map(raws.__getitem__, parsed.tolist())), dtype=np.int64, count=parsed.size)
    good[parsed[sizes > max_value_bytes]] = False
    rejected: list[tuple[int, Rejected]] = []
    for i in np.flatnonzero(~good).tolist():
        try:
            docs[i] = load_object(raws[i], max_value_bytes)  # raises, saying why
        except Rejected as exc:
            rejected.append((i, exc))
            continue
        good[i] = True
    return list(compress(docs, good.tolist())), np.flatnonzero(good), rejected


def _loads_or_none(raw: bytes | None) -> Any:
    try:
        return orjson.loads(raw)  # type: ignore[arg-type]
    except orjson.JSONDecodeError:
        return None


def _column(docs: list[dict[str, Any]], name: str) -> list[Any]:
    return list(map(dict.get, docs, repeat(name)))


def _transaction_columns(docs: list[dict[str, Any]]) -> tuple[list[Any], npt.NDArray[np.bool_]]:
    """The batch's columns in _transaction's order, and which records a column check refuses.

    The checks only ever refuse more than _transaction does, never less, and give the same values.
    """
    ids = [_column(docs, name) for name in _ID_FIELDS]
    amount, bad = _amounts(_column(docs, "amount"))
    ts_ms, bad_ts = stamps_ms(_column(docs, "timestamp"))
    currency = _column(docs, "currency")
    optional = [_column(docs, name) for name in _OPTIONAL_TEXT_FIELDS]
    bad |= bad_ts | _bad_currency(docs, currency)
    for name, col in zip(_ID_FIELDS, ids, strict=True):
        bad |= _bad_text(docs, col, name, MAX_ID_CHARS, required=True)
    for name, col in zip(_OPTIONAL_TEXT_FIELDS, optional, strict=True):
        bad |= _bad_text(docs, col, name, MAX_TEXT_CHARS, required=False)
    return [*ids, amount, ts_ms, currency, *optional], bad


def _bad_text(
    docs: list[dict[str, Any]], col: list[Any], name: str, limit: int, required: bool
) -> npt.NDArray[np.bool_]:
    texts, odd = typed(col, STR, "")
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    bad: npt.NDArray[np.bool_] = (lengths == 0) | (lengths > limit)
    if not required:  # not a string: fine only if absent (None), not null or another type
        bad[odd] = [name in docs[i] for i in odd]
    return bad


def _amounts(col: list[Any]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    numbers, _ = typed(col, NUMBER, math.nan)
    amount = np.fromiter(numbers, dtype=np.float64, count=len(numbers))
    return amount, ~((amount >= 0.0) & (amount <= MAX_AMOUNT))  # NaN is neither


def _bad_currency(docs: list[dict[str, Any]], col: list[Any]) -> npt.NDArray[np.bool_]:
    """Matches each distinct code once: a stream has few."""
    codes, odd = typed(col, STR, "")
    wrong = {code for code in set(codes) if CURRENCY_RE.fullmatch(code) is None}
    bad = np.fromiter(map(wrong.__contains__, codes), dtype=bool, count=len(codes))
    bad[odd] = ["currency" in docs[i] for i in odd]  # not a string: fine only if absent
    return bad


def decode_labels(values: Sequence[bytes | None], max_value_bytes: int = MAX_VALUE_BYTES) -> DecodedLabels:
    """Decode and validate a batch per schemas/label.schema.json; never raises for bad input.

    `source` absent is "chargeback"; `analyst_id` and `case_id` absent are None."""
    rows: list[tuple[str, str, str, bool, int, int, str, str | None, str | None]] = []
    kept: list[int] = []
    rejected: list[tuple[int, Rejected]] = []
    for i, raw in enumerate(values):
        try:
            doc = load_object(raw, max_value_bytes)
            if "is_fraud" not in doc:
                raise Rejected("missing_field", "is_fraud")
            if type(doc["is_fraud"]) is not bool:
                raise Rejected("wrong_type", "is_fraud must be a boolean")
            row = (
                _text(doc, "transaction_id", MAX_ID_CHARS),
                _text(doc, "customer_id", MAX_ID_CHARS),
                _text(doc, "terminal_id", MAX_ID_CHARS),
                doc["is_fraud"],
                _timestamp(doc, "reported_at"),
                _timestamp(doc, "timestamp", required=False),
                _source(doc),
                _text(doc, "analyst_id", MAX_ID_CHARS, required=False),
                _text(doc, "case_id", MAX_ID_CHARS, required=False),
            )
        except Rejected as exc:
            rejected.append((i, exc))
            continue
        rows.append(row)  # type: ignore[arg-type]
        kept.append(i)
    cols: list[tuple[Any, ...]] = list(zip(*rows, strict=True)) if rows else [() for _ in range(9)]
    batch = LabelBatch(
        transaction_id=list(cols[0]),
        customer_id=list(cols[1]),
        terminal_id=list(cols[2]),
        is_fraud=np.asarray(cols[3], dtype=bool),
        reported_ts_ms=np.asarray(cols[4], dtype=np.int64),
        tx_ts_ms=np.asarray(cols[5], dtype=np.int64),
        source=list(cols[6]),
        analyst_id=list(cols[7]),
        case_id=list(cols[8]),
    )
    return DecodedLabels(batch, np.asarray(kept, dtype=np.int64), rejected)


def _source(doc: dict[str, Any]) -> str:
    """The label's source: one of LABEL_SOURCES, "chargeback" when the label does not say."""
    if "source" not in doc:
        return LABEL_SOURCES[0]
    value = doc["source"]
    if type(value) is not str:
        raise Rejected("wrong_type", f"source must be a string, not {type(value).__name__}")
    if value not in LABEL_SOURCES:
        raise Rejected("invalid_source", f"source {value[:20]!r} is not one of {', '.join(LABEL_SOURCES)}")
    return value
