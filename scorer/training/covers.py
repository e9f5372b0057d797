"""Node covers (training rows per tree node) for TreeSHAP, which the ONNX file does not hold.

Two sources, one file (covers.npz beside model.onnx, `scorer.model.shap.write_covers`):
- at training, LightGBM's own counts (`dump_model()`: internal_count at splits, leaf_count at leaves: the
  rows of that tree's bag), matched to the ONNX nodes by walking both trees together
  (`learner.booster_covers`);
- for a model trained before covers were stored, `python -m scorer.training.covers MODEL_DIR --data DIR`
  re-derives them by pushing the model's fit rows through its ONNX trees (`pushed_covers`): the training
  period and the seeded sample of genuine rows recorded in model.json, on the same data (its sha256 must
  match), replayed by this version's feature engine. Retraining cannot stand in: a retrain with today's
  code does not reproduce the shipped trees byte for byte. These covers count the whole fit sample, where
  LightGBM counts each tree's bag (a random 80 % of it), so the contributions of a backfilled model differ
  from LightGBM's `pred_contrib` by that sampling only; both are exact Shapley values for their covers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import orjson

from scorer.errors import ScorerError
from scorer.model.onnx import read_meta
from scorer.model.quality import ThresholdPolicy
from scorer.model.shap import COVERS_FILE, LeafPaths, write_covers
from scorer.model.trees import TreeEnsemble, read_tree_ensemble
from scorer.training.dataset import day_index, fraud_targets, load_history, replay_features
from scorer.training.learner import sample_rows
from scorer.training.train import TrainParams, data_hash, in_days, plan_periods

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
PUSHED_SOURCE = "fit rows pushed through the ONNX trees"


def pushed_covers(trees: TreeEnsemble, X: F32) -> F64:
    """How many rows of X reach each node (splits: the sum of their children)."""
    covers = np.zeros(len(trees.feature))
    for root in trees.roots.tolist():
        covers += np.bincount(trees.leaves(X, root), minlength=len(covers))
    # children come after their parent in no guaranteed order: sum bottom-up from an explicit order
    order: list[int] = []
    stack = trees.roots.tolist()
    while stack:
        node = stack.pop()
        order.append(node)
        if not trees.is_leaf[node]:
            stack += [int(trees.left[node]), int(trees.right[node])]
    for node in reversed(order):
        if not trees.is_leaf[node]:
            covers[node] = covers[trees.left[node]] + covers[trees.right[node]]
    return covers


def backfill(model_dir: Path, data_dir: Path) -> tuple[int, float]:
    """Write covers.npz for an artefact from the rows it was fitted on; returns (rows, smallest split
    cover). ScorerError when the data is not the model's (sha256) or a split no fit row reaches."""
    meta = read_meta(model_dir)
    training = meta.raw["training"]
    if data_hash(data_dir) != training["data_sha256"]:
        raise ScorerError(f"{data_dir} is not the data {model_dir} was trained on (sha256 differs)")
    p = dict(training["params"])
    p["policy"] = ThresholdPolicy(p["policy"]["kind"], float(p["policy"]["value"]))
    p["grid"] = tuple(p["grid"])
    params = TrainParams(**p)
    history = load_history(data_dir)
    periods = plan_periods(history, params)
    full = in_days(day_index(history), periods.train)
    X = replay_features(history, meta.feature_config)[full]
    y = fraud_targets(history, known_by_ms=periods.cutoff_ms)[full]
    keep, _ = sample_rows(y, params.seed, params.negative_share)
    trees = read_tree_ensemble((model_dir / "model.onnx").read_bytes(), str(model_dir / "model.onnx"))
    covers = pushed_covers(trees, X[keep])
    split_covers = covers[~trees.is_leaf]
    if (split_covers <= 0).any():
        raise ScorerError(f"{model_dir}: a split of the model is reached by none of its fit rows")
    LeafPaths.build(trees, covers, len(meta.feature_names))  # refuses covers TreeSHAP cannot use
    write_covers(model_dir / COVERS_FILE, trees, covers, PUSHED_SOURCE)
    return int(keep.sum()), float(split_covers.min())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scorer.training.covers", description=__doc__)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="the directory the model was trained on")
    args = parser.parse_args(argv)
    try:
        rows, smallest = backfill(args.model_dir, args.data)
    except ScorerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        orjson.dumps(
            {
                "model": str(args.model_dir),
                "covers": COVERS_FILE,
                "fit_rows": rows,
                "min_split_cover": smallest,
            }
        ).decode()
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
