"""Decision records (schemas/decision.schema.json) for a scored batch, with the reasons behind each score.

Reasons are the features that stand out most for this transaction, weighted by how much the model uses
them: importance x distance of the value from the training median (in training quantiles). It is a cheap,
vectorised explanation for reviewers, not an exact attribution like SHAP.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from scorer.events import TransactionBatch, rfc3339_ms
from scorer.reference import quantile_position

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
N_REASONS = 3


@dataclass(frozen=True, slots=True)
class Explainer:
    """Importance weights and training quantiles of one model, prepared once."""

    names: tuple[str, ...]
    importance: F64
    reference: Mapping[str, Any]

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], names: Sequence[str]) -> Explainer:
        weights = meta.get("feature_importances", {})
        importance = np.asarray([float(weights.get(n, 0.0)) for n in names], dtype=np.float64)
        return cls(tuple(names), importance, meta["reference"])

    def top(self, features: F32, k: int = N_REASONS) -> npt.NDArray[np.int64]:
        """(n, k) column indices of each row's strongest reasons, strongest first."""
        position = quantile_position(self.reference, self.names, features)
        weight = self.importance[None, :] * np.abs(position - 0.5)
        k = min(k, weight.shape[1])
        part = np.argpartition(-weight, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(weight, part, axis=1), axis=1, kind="stable")
        return np.take_along_axis(part, order, axis=1)


@dataclass(slots=True)
class ScoredBatch:
    """What the model said about a batch, ready to encode."""

    batch: TransactionBatch
    features: F32
    scores: F64
    flagged: npt.NDArray[np.bool_]
    threshold: float
    model_version: str
    extra: Sequence[Mapping[str, Any]] | None = None  # per-row rollout fields (challenger, weight)


def encode_decisions(scored: ScoredBatch, explainer: Explainer, scored_at_ms: int) -> list[bytes]:
    """One JSON document per transaction, in batch order."""
    b = scored.batch
    reasons_idx = explainer.top(scored.features).tolist()
    names = explainer.names
    event_times = rfc3339_ms(b.event_ts_ms)
    scored_at = rfc3339_ms(np.asarray([scored_at_ms], dtype=np.int64))[0]
    rows = scored.features.tolist()
    scores = scored.scores.tolist()
    flagged = scored.flagged.tolist()
    amounts = b.amount.tolist()
    out: list[bytes] = []
    for i in range(len(b)):
        row = rows[i]
        doc: dict[str, Any] = {
            "transaction_id": b.transaction_id[i],
            "customer_id": b.customer_id[i],
            "terminal_id": b.terminal_id[i],
            "amount": amounts[i],
            "timestamp": event_times[i],
            "score": scores[i],
            "flagged": flagged[i],
            "threshold": scored.threshold,
            "model_version": scored.model_version,
            "reasons": [{"feature": names[j], "value": row[j]} for j in reasons_idx[i]],
            "scored_at": scored_at,
        }
        if scored.extra is not None:
            doc.update(scored.extra[i])
        out.append(orjson.dumps(doc))
    return out
