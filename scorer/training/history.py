"""Replay a recorded history (transactions + delayed labels) through the feature engine in event-time order.

Training and `scorer evaluate` get their features this way, so they are the features the streaming scorer
computes. A label becomes known at its `reported_at`: it is applied before every transaction whose event
time is at or after that instant, never earlier, so no feature sees the future.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import numpy.typing as npt

from scorer.events.batches import LabelBatch, TransactionBatch, take_labels, take_transactions
from scorer.features.engine import FEATURE_NAMES, FeatureEngine

I64 = npt.NDArray[np.int64]
DEFAULT_CHUNK = 4096


def replay_steps(tx_ts_ms: I64, reported_ts_ms: I64, chunk: int = DEFAULT_CHUNK) -> Iterator[tuple[I64, I64]]:
    """Yield (label positions, transaction positions) to apply in turn, both in time order.

    Each step's labels are applied first; they were all reported at or before the first transaction of
    the step and after the last transaction of the previous step.
    """
    tx_order = np.argsort(tx_ts_ms, kind="stable")
    label_order = np.argsort(reported_ts_ms, kind="stable")
    cut = np.searchsorted(tx_ts_ms[tx_order], reported_ts_ms[label_order], side="left")
    label_start = 0
    start = 0
    n = len(tx_order)
    while start < n or label_start < len(label_order):
        label_end = int(np.searchsorted(cut, start, side="right"))
        next_cut = int(cut[label_end]) if label_end < len(cut) else n
        end = min(n, start + chunk, max(next_cut, start + 1))
        yield label_order[label_start:label_end], tx_order[start:end]
        label_start, start = label_end, end
        if start >= n and label_start >= len(label_order):
            break


def replay(
    transactions: TransactionBatch,
    labels: LabelBatch,
    engine: FeatureEngine | None = None,
    chunk: int = DEFAULT_CHUNK,
    progress: Callable[[int, int], None] | None = None,
) -> npt.NDArray[np.float32]:
    """Features of every transaction (rows in input order) as the streaming scorer would compute them."""
    engine = engine or FeatureEngine()
    out = np.zeros((len(transactions), len(FEATURE_NAMES)), dtype=np.float32)
    done = 0
    for label_idx, tx_idx in replay_steps(transactions.event_ts_ms, labels.reported_ts_ms, chunk):
        if len(label_idx):
            engine.apply_labels(take_labels(labels, label_idx))
        if len(tx_idx):
            out[tx_idx] = engine.update_and_compute(take_transactions(transactions, tx_idx))
            done += len(tx_idx)
            if progress is not None:
                progress(done, len(transactions))
    return out
