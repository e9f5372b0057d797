"""Row selection and concatenation for the columnar batches of events.py (no parsing here)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from scorer.events import LabelBatch, TransactionBatch

I64 = npt.NDArray[np.int64]


def take_transactions(batch: TransactionBatch, idx: I64) -> TransactionBatch:
    """The rows `idx` of a batch, in that order."""
    rows = idx.tolist()
    return TransactionBatch(
        transaction_id=[batch.transaction_id[i] for i in rows],
        customer_id=[batch.customer_id[i] for i in rows],
        terminal_id=[batch.terminal_id[i] for i in rows],
        amount=batch.amount[idx],
        event_ts_ms=batch.event_ts_ms[idx],
        currency=[batch.currency[i] for i in rows],
        channel=[batch.channel[i] for i in rows],
        merchant_category=[batch.merchant_category[i] for i in rows],
    )


def take_labels(labels: LabelBatch, idx: I64) -> LabelBatch:
    """The rows `idx` of a label batch, in that order."""
    rows = idx.tolist()
    return LabelBatch(
        transaction_id=[labels.transaction_id[i] for i in rows],
        customer_id=[labels.customer_id[i] for i in rows],
        terminal_id=[labels.terminal_id[i] for i in rows],
        is_fraud=labels.is_fraud[idx],
        reported_ts_ms=labels.reported_ts_ms[idx],
        tx_ts_ms=labels.tx_ts_ms[idx],
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
    )
