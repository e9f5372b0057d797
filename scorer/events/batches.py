"""The columnar batches every later stage works on, and row selection / concatenation over them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]
T = TypeVar("T")


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


LABEL_SOURCES = ("chargeback", "analyst")  # schemas/label.schema.json's `source`; the first is the default


@dataclass(slots=True)
class LabelBatch:
    """A columnar batch of delayed fraud labels (chargebacks, analysts' verdicts).

    `source`, `analyst_id` and `case_id` may be left out (empty) by a caller that has only chargebacks:
    they are then filled with "chargeback" and None for every row, so every column has the batch's length.
    """

    transaction_id: list[str]
    customer_id: list[str]
    terminal_id: list[str]
    is_fraud: npt.NDArray[np.bool_]
    reported_ts_ms: npt.NDArray[np.int64]
    tx_ts_ms: npt.NDArray[np.int64]  # the labelled transaction's event time; -1 when the label lacks it
    source: list[str] = field(default_factory=list)  # one of LABEL_SOURCES
    analyst_id: list[str | None] = field(default_factory=list)
    case_id: list[str | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.transaction_id)
        if n and not self.source:
            self.source = [LABEL_SOURCES[0]] * n
        if n and not self.analyst_id:
            self.analyst_id = [None] * n
        if n and not self.case_id:
            self.case_id = [None] * n

    def __len__(self) -> int:
        return len(self.transaction_id)


def pick(values: Sequence[T], idx: I64) -> list[T]:
    """values[i] for each i in idx, as one map() over the rows (no bytecode per row)."""
    return list(map(values.__getitem__, idx.tolist()))


def take_transactions(batch: TransactionBatch, idx: I64) -> TransactionBatch:
    """The rows `idx` of a batch, in that order."""
    return TransactionBatch(
        transaction_id=pick(batch.transaction_id, idx),
        customer_id=pick(batch.customer_id, idx),
        terminal_id=pick(batch.terminal_id, idx),
        amount=batch.amount[idx],
        event_ts_ms=batch.event_ts_ms[idx],
        currency=pick(batch.currency, idx),
        channel=pick(batch.channel, idx),
        merchant_category=pick(batch.merchant_category, idx),
    )


def take_labels(labels: LabelBatch, idx: I64) -> LabelBatch:
    """The rows `idx` of a label batch, in that order."""
    return LabelBatch(
        transaction_id=pick(labels.transaction_id, idx),
        customer_id=pick(labels.customer_id, idx),
        terminal_id=pick(labels.terminal_id, idx),
        is_fraud=labels.is_fraud[idx],
        reported_ts_ms=labels.reported_ts_ms[idx],
        tx_ts_ms=labels.tx_ts_ms[idx],
        source=pick(labels.source, idx),
        analyst_id=pick(labels.analyst_id, idx),
        case_id=pick(labels.case_id, idx),
    )


def concat_labels(parts: Sequence[LabelBatch]) -> LabelBatch:
    """One label batch from several, in order."""
    return LabelBatch(
        transaction_id=[t for p in parts for t in p.transaction_id],
        customer_id=[c for p in parts for c in p.customer_id],
        terminal_id=[t for p in parts for t in p.terminal_id],
        is_fraud=np.concatenate([p.is_fraud for p in parts]),
        reported_ts_ms=np.concatenate([p.reported_ts_ms for p in parts]),
        tx_ts_ms=np.concatenate([p.tx_ts_ms for p in parts]),
        source=[s for p in parts for s in p.source],
        analyst_id=[a for p in parts for a in p.analyst_id],
        case_id=[c for p in parts for c in p.case_id],
    )
