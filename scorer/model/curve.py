"""The validation curve stored with a model: alerts per day, precision and recall at candidate thresholds.

Training keeps it in model.json (`validation_curve`) so that a decision policy can be stated the way a
fraud team thinks (an alert budget per day, a precision target) and turned into thresholds later, at
`scorer models promote`, without the validation data: the curve holds up to MAX_POINTS operating points,
the highest thresholds densest (where budgets and precision targets land). A policy resolves to the lowest
stored threshold that meets it, the way `choose_threshold` does on the full data (the same threshold when
every candidate is stored; otherwise the next stored one above it, which asks for a little less).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]
MAX_POINTS = 400


@dataclass(frozen=True, slots=True)
class Curve:
    """Operating points, thresholds descending."""

    threshold: F64
    alerts_per_day: F64
    precision: F64
    recall: F64

    def to_dict(self) -> dict[str, list[float]]:
        return {
            "threshold": self.threshold.tolist(),
            "alerts_per_day": np.round(self.alerts_per_day, 4).tolist(),
            "precision": np.round(self.precision, 5).tolist(),
            "recall": np.round(self.recall, 5).tolist(),
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Curve:
        arrays = [
            np.asarray(doc[k], dtype=np.float64)
            for k in ("threshold", "alerts_per_day", "precision", "recall")
        ]
        if len({len(a) for a in arrays}) != 1 or not len(arrays[0]):
            raise ValueError("validation_curve: its four lists must be non-empty and of one length")
        return cls(*arrays)

    def at(self, threshold: float) -> tuple[float, float, float]:
        """(alerts per day, precision, recall) at the stored point nearest above `threshold`."""
        i = int(np.searchsorted(-self.threshold, -threshold, side="right")) - 1
        if i < 0:
            return 0.0, 1.0, 0.0
        return float(self.alerts_per_day[i]), float(self.precision[i]), float(self.recall[i])

    def lowest(self, ok: B) -> float | None:
        """The lowest threshold among the points where `ok` holds (None: none does)."""
        hits = np.flatnonzero(ok)
        return float(self.threshold[hits[-1]]) if hits.size else None


def validation_curve(scores: F64, y_true: B, n_days: float, max_points: int = MAX_POINTS) -> Curve:
    """Operating points on validation scores: at each kept candidate threshold t (a distinct score),
    what flagging `score >= t` gives. Points are kept at geometrically growing alert counts."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], np.asarray(y_true, dtype=bool)[order]
    last_of_value = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # candidate = every row down to a tie's end
    flagged = last_of_value + 1
    frauds = np.cumsum(y)[last_of_value]
    if len(flagged) <= max_points:
        keep = np.arange(len(flagged))
    else:  # geometrically growing alert counts: dense at the top, where bands are set
        keep = np.unique(np.geomspace(1, len(flagged), num=max_points).astype(np.int64) - 1)
    total = max(int(y.sum()), 1)
    return Curve(
        threshold=s[last_of_value][keep].astype(np.float64),
        alerts_per_day=flagged[keep] / n_days,
        precision=frauds[keep] / flagged[keep],
        recall=frauds[keep] / total,
    )
