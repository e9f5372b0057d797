"""bytes -> columnar batches of Transactions / Labels, or Rejected(reason): the only code that parses input.

One fast decoder enforces exactly the contract of schemas/*.schema.json (a test checks the two agree on a
corpus) with a stable snake_case reason per rejected record; no generic JSON-Schema validation per event.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from scorer.errors import DataError, Rejected

MS_PER_DAY = 86_400_000


@dataclass(slots=True)
class TransactionBatch:
    """A columnar batch of valid transactions, the unit that features, model and sink work on."""

    transaction_id: list[str]
    customer_id: list[str]
    terminal_id: list[str]
    amount: npt.NDArray[np.float64]
    event_ts_ms: npt.NDArray[np.int64]  # event time, ms since the Unix epoch, UTC
    currency: list[str | None]
    channel: list[str | None]
    merchant_category: list[str | None]

    def __len__(self) -> int:
        return len(self.transaction_id)


@dataclass(slots=True)
class LabelBatch:
    """A columnar batch of delayed fraud labels (chargebacks, investigations)."""

    transaction_id: list[str]
    customer_id: list[str]
    terminal_id: list[str]
    is_fraud: npt.NDArray[np.bool_]
    reported_ts_ms: npt.NDArray[np.int64]
    tx_ts_ms: npt.NDArray[np.int64]  # the labelled transaction's event time; -1 when the label lacks it

    def __len__(self) -> int:
        return len(self.transaction_id)


MAX_VALUE_BYTES = 65_536
MAX_ID_CHARS = 128
MAX_TEXT_CHARS = 64
MAX_AMOUNT = 1e9
TIMESTAMP_RE = re.compile(
    r"(19[7-9]\d|[2-9]\d{3})-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])[Tt]([01]\d|2[0-3]):([0-5]\d):([0-5]\d)"
    r"(?:\.(\d{1,9}))?(?:[Zz]|[+-]00:00)"
)
CURRENCY_RE = re.compile(r"[A-Z]{3}")
_EPOCH_DAY: dict[str, int] = {}  # "YYYY-MM-DD" -> days since 1970-01-01; dates repeat within a stream


def rfc3339_ms(ts_ms: npt.NDArray[np.int64]) -> list[str]:
    """Millisecond UTC timestamps as the contract's RFC 3339 strings ("...T12:03:04.123Z"), vectorised."""
    text = np.datetime_as_string(ts_ms.astype("datetime64[ms]"), unit="ms")
    return [t + "Z" for t in text.tolist()]


def parse_rfc3339_ms(text: str) -> int:
    """RFC 3339 UTC timestamp -> ms since the epoch; Rejected('invalid_timestamp') otherwise."""
    m = TIMESTAMP_RE.fullmatch(text)
    if m is None:
        raise Rejected("invalid_timestamp", f"not an RFC 3339 UTC timestamp: {text[:40]!r}")
    date = text[:10]
    day = _EPOCH_DAY.get(date)
    if day is None:
        try:
            day = (datetime.date(int(m[1]), int(m[2]), int(m[3])) - _EPOCH).days
        except ValueError as exc:
            raise Rejected("invalid_timestamp", f"impossible date {date}") from exc
        if len(_EPOCH_DAY) < 100_000:
            _EPOCH_DAY[date] = day
    frac = m[7]
    ms = int((frac + "00")[:3]) if frac else 0
    return ((day * 24 + int(m[4])) * 60 + int(m[5])) * 60_000 + int(m[6]) * 1000 + ms


_EPOCH = datetime.date(1970, 1, 1)


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


def decode_transactions(
    values: Sequence[bytes | None], max_value_bytes: int = MAX_VALUE_BYTES
) -> DecodedTransactions:
    """Decode and validate a batch per schemas/transaction.schema.json; never raises for bad input."""
    rows: list[tuple[str, str, str, float, int, str | None, str | None, str | None]] = []
    kept: list[int] = []
    rejected: list[tuple[int, Rejected]] = []
    for i, raw in enumerate(values):
        try:
            doc = load_object(raw, max_value_bytes)
            row = (
                _text(doc, "transaction_id", MAX_ID_CHARS),
                _text(doc, "customer_id", MAX_ID_CHARS),
                _text(doc, "terminal_id", MAX_ID_CHARS),
                _amount(doc),
                _timestamp(doc, "timestamp"),
                _currency(doc),
                _text(doc, "channel", MAX_TEXT_CHARS, required=False),
                _text(doc, "merchant_category", MAX_TEXT_CHARS, required=False),
            )
        except Rejected as exc:
            rejected.append((i, exc))
            continue
        rows.append(row)  # type: ignore[arg-type]  # required fields are never None here
        kept.append(i)
    cols: list[tuple[Any, ...]] = list(zip(*rows, strict=True)) if rows else [() for _ in range(8)]
    batch = TransactionBatch(
        transaction_id=list(cols[0]),
        customer_id=list(cols[1]),
        terminal_id=list(cols[2]),
        amount=np.asarray(cols[3], dtype=np.float64),
        event_ts_ms=np.asarray(cols[4], dtype=np.int64),
        currency=list(cols[5]),
        channel=list(cols[6]),
        merchant_category=list(cols[7]),
    )
    return DecodedTransactions(batch, np.asarray(kept, dtype=np.int64), rejected)


def decode_labels(values: Sequence[bytes | None], max_value_bytes: int = MAX_VALUE_BYTES) -> DecodedLabels:
    """Decode and validate a batch per schemas/label.schema.json; never raises for bad input."""
    rows: list[tuple[str, str, str, bool, int, int]] = []
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
            )
        except Rejected as exc:
            rejected.append((i, exc))
            continue
        rows.append(row)  # type: ignore[arg-type]
        kept.append(i)
    cols: list[tuple[Any, ...]] = list(zip(*rows, strict=True)) if rows else [() for _ in range(6)]
    batch = LabelBatch(
        transaction_id=list(cols[0]),
        customer_id=list(cols[1]),
        terminal_id=list(cols[2]),
        is_fraud=np.asarray(cols[3], dtype=bool),
        reported_ts_ms=np.asarray(cols[4], dtype=np.int64),
        tx_ts_ms=np.asarray(cols[5], dtype=np.int64),
    )
    return DecodedLabels(batch, np.asarray(kept, dtype=np.int64), rejected)


def _read_lines(path: Path) -> list[bytes]:
    try:
        return path.read_bytes().splitlines()
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such file") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from exc


def _first_error(path: Path, rejected: list[tuple[int, Rejected]], lines: list[bytes]) -> None:
    if rejected:
        index, exc = rejected[0]
        raise DataError(
            f"{path}:{index + 1}: {exc.reason}: {exc.detail} ({len(rejected)} bad line(s) in all)"
        )


def read_transactions_jsonl(path: Path) -> TransactionBatch:
    """Every line of a transactions.jsonl; DataError naming the first bad line (blank lines count as bad)."""
    lines = _read_lines(path)
    decoded = decode_transactions(lines, max_value_bytes=1 << 30)
    _first_error(path, decoded.rejected, lines)
    return decoded.batch


def read_labels_jsonl(path: Path) -> LabelBatch:
    """Every line of a labels.jsonl; DataError naming the first bad line."""
    lines = _read_lines(path)
    decoded = decode_labels(lines, max_value_bytes=1 << 30)
    _first_error(path, decoded.rejected, lines)
    return decoded.batch
