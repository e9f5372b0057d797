"""The input-check and drift alarms of a training window, judged against the champion's training reference.

A candidate trained across a window whose inputs moved away from what the champion knew may be right to do
so (that is why it retrains) or may be learning a broken feed: either way its card says so. The alarms are
the ones `scorer run` raises live (monitoring/inputs.py, monitoring/drift.py), computed here over the whole
window at once:
- drift: a feature's or the champion's score's PSI over the window above MAJOR_PSI (the usual reading of
  "a major shift");
- input checks: more than OUT_OF_RANGE_SHARE of a feature's values outside the champion's training range,
  or of a categorical field's values never seen in its training.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from scorer.features.engine import CATEGORY_COLUMNS, FEATURE_NAMES, UNSEEN_CODE
from scorer.model.reference import stored_edges
from scorer.monitoring.drift import CYCLE_S, psi

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
MAJOR_PSI = 0.25
OUT_OF_RANGE_SHARE = 0.01


def window_alarms(X: F32, champion_scores: F64, reference: Mapping[str, Any]) -> list[str]:
    """One sentence per alarm over the window's rows `X` (under the champion's vocabulary) and the
    champion's scores of them; [] when the window looks like the champion's training data."""
    alarms = []
    features = reference.get("features", {})
    for i, name in enumerate(FEATURE_NAMES):
        dist = features.get(name)
        if dist is None or name in CYCLE_S:  # calendar features: a window of whole weeks matches by design
            continue
        value = _psi(X[:, i].astype(np.float64), dist)
        if value > MAJOR_PSI:
            alarms.append(f"drift: {name} PSI {value:.2f} against the champion's training (> {MAJOR_PSI})")
        if i in CATEGORY_COLUMNS:
            unseen = float(np.mean(X[:, i] == UNSEEN_CODE)) if len(X) else 0.0
            if unseen > OUT_OF_RANGE_SHARE:
                alarms.append(f"input check: {unseen:.1%} of {name} values unseen in the champion's training")
            continue
        outside = float(np.mean((X[:, i] < dist["min"]) | (X[:, i] > dist["max"]))) if len(X) else 0.0
        if outside > OUT_OF_RANGE_SHARE:
            alarms.append(f"input check: {outside:.1%} of {name} outside the champion's training range")
    score = reference.get("score")
    if score is not None:
        value = _psi(champion_scores, score)
        if value > MAJOR_PSI:
            alarms.append(f"drift: the champion's score PSI {value:.2f} against its training (> {MAJOR_PSI})")
    return alarms


def _psi(values: F64, dist: Mapping[str, Any]) -> float:
    edges = stored_edges(dist)
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    result = psi(counts.astype(np.float64), np.asarray(dist["share"], dtype=np.float64))
    return 0.0 if np.isnan(result) else result
