"""bytes -> columnar batches of Transactions / Labels, or Rejected(reason): the only code that parses input.

One fast decoder enforces exactly the contract of schemas/*.schema.json (a test checks the two agree on a
corpus) with a stable snake_case reason per rejected record; no generic JSON-Schema validation per event.
Transactions are checked a whole column at a time; the per-record checks stay the reference for reasons.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from itertools import compress, repeat
from operator import itemgetter
from pathlib import Path
from typing import Any, cast

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


# The usual stamp, as rfc3339_ms writes it, checked and converted for a whole batch at once as bytes.
_USUAL_STAMP = "0000-00-00T00:00:00.000Z"  # "0": an ASCII digit; anything else: itself
_DIGITS_AT = [i for i, c in enumerate(_USUAL_STAMP) if c == "0"]
_FIXED_AT = [i for i, c in enumerate(_USUAL_STAMP) if c != "0"]
_FIXED = np.frombuffer(_USUAL_STAMP.encode(), dtype=np.uint8)[_FIXED_AT]
_PART_WEIGHTS = np.zeros((len(_DIGITS_AT), 7))  # digits @ weights -> year, month, day, h, min, s, ms
for _part, (_start, _stop) in enumerate([(0, 4), (4, 6), (6, 8), (8, 10), (10, 12), (12, 14), (14, 17)]):
    _PART_WEIGHTS[_start:_stop, _part] = 10.0 ** np.arange(_stop - _start - 1, -1, -1)
_DAYS_IN_MONTH = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])


def _usual_stamps_ms(stamps: list[str]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """ms of stamps of exactly len(_USUAL_STAMP) characters, and which are valid "....T...Z" stamps.

    Accepts only a subset of what parse_rfc3339_ms accepts (ASCII digits, "T", "Z", 3 fraction digits),
    with the same ms; the caller sends the rest through parse_rfc3339_ms.
    """
    raw = "".join(stamps).encode("latin-1", "replace")  # one byte per character keeps the rows aligned
    chars = np.frombuffer(raw, dtype=np.uint8).reshape(len(stamps), len(_USUAL_STAMP))
    digits = chars[:, _DIGITS_AT] - np.uint8(ord("0"))  # wraps: a non-digit is > 9
    parts = (digits @ _PART_WEIGHTS).astype(np.int64)  # float matmul is exact this small, int is slow
    year, month, day, hour, minute, second, milli = parts.T
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    month_days = _DAYS_IN_MONTH[np.clip(month, 0, 12)] + (leap & (month == 2))
    ok = (
        (chars[:, _FIXED_AT] == _FIXED).all(axis=1)
        & (digits <= 9).all(axis=1)
        & (year >= 1970)
        & (month >= 1)
        & (month <= 12)
        & (day >= 1)
        & (day <= month_days)
        & (hour <= 23)
        & (minute <= 59)
        & (second <= 59)
    )
    months = np.where(ok, (year - 1970) * 12 + month - 1, 0)
    days = months.astype("datetime64[M]").astype("datetime64[D]").astype(np.int64) + day - 1
    return days * MS_PER_DAY + ((hour * 60 + minute) * 60 + second) * 1000 + milli, ok


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
_NUMBER: set[type] = {int, float}  # exact types: bool is an int to Python but not a number to JSON
_STR: set[type] = {str}
_DICT: set[type] = {dict}


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


def _decode_transactions_per_record(
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
    if set(map(type, docs)) <= _DICT and max(map(len, raws), default=0) <= max_value_bytes:
        return docs, np.arange(len(docs), dtype=np.int64), []
    good = _of_types(docs, _DICT)
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


def _of_types(col: list[Any], types: set[type]) -> npt.NDArray[np.bool_]:
    """Per value: is its type one of `types` (exactly: a bool is no int here)? No bytecode per value."""
    return np.fromiter(map(types.__contains__, map(type, col)), dtype=bool, count=len(col))


def _typed(col: list[Any], types: set[type], stand_in: Any) -> tuple[list[Any], list[int]]:
    """`col` with `stand_in` for each value of another type, and where those were; cheap when none are."""
    if set(map(type, col)) <= types:
        return col, []
    odd = np.flatnonzero(~_of_types(col, types)).tolist()
    col = col.copy()
    for i in odd:
        col[i] = stand_in
    return col, odd


def _bad_text(
    docs: list[dict[str, Any]], col: list[Any], name: str, limit: int, required: bool
) -> npt.NDArray[np.bool_]:
    texts, odd = _typed(col, _STR, "")
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    bad: npt.NDArray[np.bool_] = (lengths == 0) | (lengths > limit)
    if not required:  # not a string: fine only if absent (None), not null or another type
        bad[odd] = [name in docs[i] for i in odd]
    return bad


def _amounts(col: list[Any]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    numbers, _ = _typed(col, _NUMBER, math.nan)
    amount = np.fromiter(numbers, dtype=np.float64, count=len(numbers))
    return amount, ~((amount >= 0.0) & (amount <= MAX_AMOUNT))  # NaN is neither


def _bad_currency(docs: list[dict[str, Any]], col: list[Any]) -> npt.NDArray[np.bool_]:
    """Matches each distinct code once: a stream has few."""
    codes, odd = _typed(col, _STR, "")
    wrong = {code for code in set(codes) if CURRENCY_RE.fullmatch(code) is None}
    bad = np.fromiter(map(wrong.__contains__, codes), dtype=bool, count=len(codes))
    bad[odd] = ["currency" in docs[i] for i in odd]  # not a string: fine only if absent
    return bad


def stamps_ms(col: list[Any]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """ms since the epoch per timestamp, and where it is not a valid one; the usual form all at once.

    Shared by the transaction decoder and `scorer monitor` (decision timestamps)."""
    stamps, _ = _typed(col, _STR, "")  # "" is no timestamp
    ms = np.zeros(len(stamps), dtype=np.int64)
    ok = np.fromiter(map(len, stamps), dtype=np.int64, count=len(stamps)) == len(_USUAL_STAMP)
    usual = np.flatnonzero(ok)
    if usual.size:
        picked = stamps if usual.size == len(stamps) else [stamps[i] for i in usual.tolist()]
        ms[usual], ok[usual] = _usual_stamps_ms(picked)
    for i in np.flatnonzero(~ok).tolist():  # any other form: the regex, one by one
        with suppress(Rejected):
            ms[i] = parse_rfc3339_ms(stamps[i])
            ok[i] = True
    return ms, ~ok


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
