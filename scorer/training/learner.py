"""The learner: LightGBM gradient-boosted trees, exported to ONNX so that the export scores exactly alike.

Why LightGBM: on the Fraud Detection Handbook's data (benchmarks/quality.py) it lifts Average Precision
from 0.61 (scikit-learn's GradientBoostingClassifier) to 0.70 with the same features, at 1.3-1.7 times the old
model's inference cost per event (benchmarks/model_cost.py), and trains the default model in a third of the time.

Why the thresholds are rewritten before export: LightGBM stores split thresholds as doubles that fall
between two float32 values, while ONNX's tree ensemble compares float32 inputs with float32 thresholds.
Rounding a threshold to float32 can move it past an input value, so the export disagreed with the trained
model by up to 0.02 on the same rows. The features are float32 from the engine, so for every input v,
`v <= t` holds exactly when `v <= f` for f the largest float32 not above t: rewriting each threshold to
that f changes no decision of the trained model and makes the export exact (parity ~1e-6, checked on every
training row by `check_parity`). Needs the `train` extra (lightgbm, onnxmltools, onnx).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import numpy.typing as npt

from scorer.errors import ScorerError
from scorer.model.trees import TreeEnsemble

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]
PARITY_TOLERANCE = 1e-5
ESTIMATOR = "lightgbm.LGBMClassifier"
BOOSTER_SOURCE = "lightgbm dump_model internal_count/leaf_count"  # how covers.npz was made
FIXED = {  # not searched: row/column subsampling as regularisation, one reproducible thread layout
    "subsample": 0.8,
    "subsample_freq": 1,
    "colsample_bytree": 0.8,
    "deterministic": True,
    "force_row_wise": True,
    "verbose": -1,
}


def fit(X: F32, y: B, hyper: dict[str, float | int], seed: int, negative_share: float) -> Any:
    """LightGBM on all frauds and a seeded share of genuine rows, weighted back up to their number.

    `hyper` takes LightGBM's parameter names or their scikit-learn aliases (n_estimators, num_leaves,
    learning_rate, min_child_samples, max_depth, ...); the native API needs no scikit-learn.
    """
    import lightgbm as lgb

    keep, weight = sample_rows(y, seed, negative_share)
    rows = lgb.Dataset(X[keep], label=y[keep].astype(np.int32), weight=weight, free_raw_data=True)
    params = {"objective": "binary", "seed": seed, **FIXED, **hyper}
    return float32_exact(lgb.train(params, rows))


def sample_rows(y: B, seed: int, negative_share: float) -> tuple[B, F64]:
    """The rows a fit sees (every fraud, a seeded share of genuine rows) and their weights (genuine rows
    weighted back up to their number); the covers backfill draws the same sample."""
    rng = np.random.default_rng(seed)
    keep = y | (rng.random(len(y)) < negative_share)
    return keep, np.where(y[keep], 1.0, 1.0 / negative_share)


def float32_exact(booster: Any) -> Any:
    """The same trees with every threshold moved down to the largest float32 not above it (see above)."""
    import lightgbm as lgb

    text = booster.model_to_string()
    text = re.sub(r"^threshold=(.*)$", lambda m: "threshold=" + _snap(m.group(1)), text, flags=re.MULTILINE)
    text = re.sub(r"^tree_sizes=.*\n", "", text, flags=re.MULTILINE)  # the byte sizes no longer hold
    return lgb.Booster(model_str=text)


def _snap(values: str) -> str:
    t = np.asarray(values.split(), dtype=np.float64)
    f = t.astype(np.float32)
    f = np.where(f.astype(np.float64) > t, np.nextafter(f, np.float32(-np.inf)), f)
    return " ".join(repr(float(v)) for v in f)


def predict(model: Any, X: F32) -> F64:
    """The trained model's fraud probability (the booster predicts the positive class)."""
    return np.asarray(model.predict(X), dtype=np.float64)


def importances(model: Any) -> F64:
    """Total split gain per feature, as shares of the whole (the reasons' weights in decisions.py)."""
    gain = np.asarray(model.feature_importance(importance_type="gain"), dtype=np.float64)
    total = gain.sum()
    return gain / total if total > 0 else gain


def to_onnx(model: Any, n_features: int) -> bytes:
    """Export with onnxmltools: one float input 'features', a 'probabilities' output, no ZipMap."""
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    onx = convert_lightgbm(
        model,
        name="scorer",  # a fixed graph name keeps exports byte-identical
        initial_types=[("features", FloatTensorType([None, n_features]))],
        zipmap=False,
        target_opset=15,
    )
    return bytes(onx.SerializeToString())


def onnx_scores(onnx_bytes: bytes, X: F32) -> F64:
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (proba,) = session.run(["probabilities"], {"features": X})
    return np.asarray(proba, dtype=np.float64)[:, 1]


def check_parity(model: Any, onnx_bytes: bytes, X: F32) -> float:
    """Max |ONNX - LightGBM| over X; refuses to ship an export that scores differently."""
    delta = float(np.max(np.abs(onnx_scores(onnx_bytes, X) - predict(model, X)))) if len(X) else 0.0
    if delta > PARITY_TOLERANCE:
        raise ScorerError(f"ONNX export differs from the trained model by {delta:.2e} (> {PARITY_TOLERANCE})")
    return delta


def booster_covers(booster: Any, trees: TreeEnsemble) -> F64:
    """Each ONNX node's LightGBM count; ScorerError when a tree's structure, split features or leaf values
    differ from the booster's (then the export is not the booster and its covers would mislead)."""
    covers = np.full(len(trees.feature), np.nan)
    infos = booster.dump_model()["tree_info"]
    if len(infos) != len(trees.roots):
        raise ScorerError(f"the booster has {len(infos)} trees, the ONNX model {len(trees.roots)}")
    for info, root in zip(infos, trees.roots.tolist(), strict=True):
        stack: list[tuple[dict[str, Any], int]] = [(info["tree_structure"], root)]
        while stack:
            node, at = stack.pop()
            if "split_feature" in node:
                if trees.is_leaf[at] or int(trees.feature[at]) != int(node["split_feature"]):
                    raise ScorerError(f"tree {info['tree_index']}: the ONNX split differs from the booster's")
                covers[at] = float(node["internal_count"])
                stack += [
                    (node["left_child"], int(trees.left[at])),
                    (node["right_child"], int(trees.right[at])),
                ]
            else:
                if not trees.is_leaf[at] or not np.isclose(
                    trees.value[at], node["leaf_value"], rtol=1e-5, atol=1e-7
                ):
                    raise ScorerError(f"tree {info['tree_index']}: the ONNX leaf differs from the booster's")
                covers[at] = float(node.get("leaf_count", node.get("internal_count", 0)))
    if np.isnan(covers).any():
        raise ScorerError("the ONNX model has nodes the booster's trees do not reach")
    return covers
