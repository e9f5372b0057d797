"""A recorded history (a `scorer simulate`-format directory) turned into features and labels for training.

Both `scorer train` and `scorer evaluate` start here, so they read, replay and label the data in one way.
Only labels reported by a cut-off count as known, exactly as a live system would have them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from scorer.errors import DataError
from scorer.events.batches import LabelBatch, TransactionBatch, take_transactions
from scorer.events.files import read_labels_jsonl, read_transactions_jsonl
from scorer.events.labelstate import first_fraud_reports, fraud_as_of
from scorer.events.timestamps import MS_PER_DAY, NEVER
from scorer.features.engine import CATEGORICAL_FIELDS, FeatureConfig, FeatureEngine
from scorer.training.history import replay

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]
Progress = Callable[[int, int], None]


@dataclass(slots=True)
class History:
    """Transactions (sorted by event time) and labels read from a directory."""

    transactions: TransactionBatch
    labels: LabelBatch

    @property
    def end_ms(self) -> int:
        return int(self.transactions.event_ts_ms.max())

    @property
    def start_ms(self) -> int:
        return int(self.transactions.event_ts_ms.min())


def load_history(data_dir: Path) -> History:
    """Read DIR/transactions.jsonl and DIR/labels.jsonl; a bad line is a DataError naming file and line."""
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: no such data directory (expected transactions.jsonl and labels.jsonl)")
    tx = read_transactions_jsonl(data_dir / "transactions.jsonl")
    if len(tx) == 0:
        raise DataError(f"{data_dir / 'transactions.jsonl'}: no transactions")
    labels = read_labels_jsonl(data_dir / "labels.jsonl")
    order = np.argsort(tx.event_ts_ms, kind="stable")
    return History(take_transactions(tx, order), labels)


def history_hash(history: History) -> str:
    """sha256 of a history's rows in a fixed layout: the same rows give the same hash wherever they were
    read from (the store's database holds them in no particular order, so rows are ordered here first)."""
    tx, labels = history.transactions, history.labels
    digest = hashlib.sha256()
    order = np.lexsort((np.asarray(tx.transaction_id), tx.event_ts_ms))
    for i in order.tolist():
        digest.update(
            f"t|{tx.transaction_id[i]}|{tx.event_ts_ms[i]}|{tx.customer_id[i]}|{tx.terminal_id[i]}|"
            f"{tx.amount[i]!r}|{tx.currency[i]}|{tx.channel[i]}|{tx.merchant_category[i]}\n".encode()
        )
    order = np.lexsort((np.asarray(labels.source), np.asarray(labels.transaction_id), labels.reported_ts_ms))
    for i in order.tolist():
        digest.update(
            f"l|{labels.transaction_id[i]}|{labels.source[i]}|{bool(labels.is_fraud[i])}|"
            f"{labels.reported_ts_ms[i]}\n".encode()
        )
    return digest.hexdigest()


def vocabulary(tx: TransactionBatch, until_ms: int) -> dict[str, list[str]]:
    """Sorted distinct categorical values seen up to `until_ms`: the codes a model is trained with."""
    seen = tx.event_ts_ms <= until_ms
    vocab: dict[str, list[str]] = {}
    for name in CATEGORICAL_FIELDS:
        values = getattr(tx, name)
        vocab[name] = sorted(
            {v for v, keep in zip(values, seen.tolist(), strict=True) if keep and v is not None}
        )
    return vocab


def replay_features(history: History, config: FeatureConfig, progress: Progress | None = None) -> F32:
    """Features of every transaction, labels released at their report time (see history.replay)."""
    return replay(history.transactions, history.labels, FeatureEngine(config), progress=progress)


def fraud_targets(history: History, known_by_ms: int | None = None) -> B:
    """True for transactions that are fraud by their labels (those reported by `known_by_ms` when given):
    the latest label of some source says fraud (scorer/events/labelstate.py), as every live consumer
    counts them."""
    labels = history.labels
    known = None if known_by_ms is None else labels.reported_ts_ms <= known_by_ms
    fraud_ids = fraud_as_of(labels, known)
    return np.fromiter((t in fraud_ids for t in history.transactions.transaction_id), dtype=bool)


def card_codes(history: History) -> I64:
    """Integer code per customer id (for per-card metrics)."""
    _, codes = np.unique(np.asarray(history.transactions.customer_id), return_inverse=True)
    return codes.astype(np.int64)


def known_compromised(history: History) -> B:
    """True where the card already had a fraud label reported before the start of the transaction's day
    (dated by the labels that stand: labelstate.first_fraud_reports, as `scorer monitor` dates them)."""
    first = first_fraud_reports(history.labels)
    tx = history.transactions
    first_ms = np.fromiter((first.get(c, NEVER) for c in tx.customer_id), dtype=np.int64)
    day_start = (tx.event_ts_ms // MS_PER_DAY) * MS_PER_DAY
    known: npt.NDArray[np.bool_] = (first_ms != NEVER) & (first_ms < day_start)
    return known


def day_index(history: History) -> I64:
    """Event day (days since the Unix epoch) of every transaction."""
    return history.transactions.event_ts_ms // MS_PER_DAY
