"""The training reference stored in model.json: binned feature and score distributions plus a scored sample.

Drift checks compare live binned counts against these bins; the validation gate re-scores the sample to
prove an artefact still computes what training computed; decision reasons use the quantiles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
N_BINS = 10
SAMPLE_ROWS = 200
EDGE_DECIMALS = 6  # model.json stores edges rounded to this many decimals
EDGE_SLACK = 0.5 * 10.0**-EDGE_DECIMALS


def stored_edges(dist: Mapping[str, Any]) -> F64:
    """A distribution's edges as binning must use them: lowered by half a unit of the stored precision.

    Training binned with the exact edges, and a value equal to an edge went to the bin above. Edges are
    quantiles, so they often equal a value many rows share (a count, the model's score for an ordinary
    transaction); rounded on storage, such an edge can end up just above the value, and every one of
    those rows would fall a bin lower than in training: a PSI of 1.5 on the very training data, seen
    here before this correction. Any value within rounding distance of an edge counts as at the edge.
    """
    return np.asarray(dist["edges"], dtype=np.float64) - EDGE_SLACK


def distribution(values: npt.NDArray[np.floating[Any]]) -> dict[str, Any]:
    """Decile edges (deduplicated) and the share of values in each of the len(edges)+1 bins."""
    v = np.asarray(values, dtype=np.float64)
    edges = np.unique(np.quantile(v, np.linspace(0, 1, N_BINS + 1)[1:-1])) if len(v) else np.zeros(0)
    counts = np.bincount(np.searchsorted(edges, v, side="right"), minlength=len(edges) + 1)
    share = counts / max(1, len(v))
    return {
        "edges": [round(float(e), 6) for e in edges],
        "share": [round(float(s), 6) for s in share],
        "min": float(v.min()) if len(v) else 0.0,
        "max": float(v.max()) if len(v) else 0.0,
        "mean": float(v.mean()) if len(v) else 0.0,
    }


def build_reference(X: F32, scores: F64, names: Sequence[str], seed: int) -> dict[str, Any]:
    """Per-feature and score distributions over the training rows, and a seeded sample with its scores."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(X), size=min(SAMPLE_ROWS, len(X)), replace=False))
    return {
        "n_rows": len(X),
        "features": {name: distribution(X[:, i]) for i, name in enumerate(names)},
        "score": distribution(scores),
        "sample": {"features": X[rows].tolist(), "scores": scores[rows].tolist()},
    }


def quantile_edges(reference: Mapping[str, Any], names: Sequence[str]) -> tuple[F64, ...]:
    """The stored training quantile edges of each feature, as arrays (prepared once per model)."""
    return tuple(stored_edges(reference["features"][name]) for name in names)


def quantile_position(edges: Sequence[F64], X: F32) -> F64:
    """(n, features): where each value falls in its training distribution, 0 (lowest bin) to 1 (highest)."""
    out = np.zeros(X.shape, dtype=np.float64)
    for i, e in enumerate(edges):
        out[:, i] = np.searchsorted(e, X[:, i], side="right") / max(1, len(e))
    return out
