"""`python -m scorer.training.curve MODEL_DIR --data DIR`: add the validation curve to an older artefact.

Models trained before the curve was stored (model/curve.py) cannot resolve an alert-budget or precision
band. This recomputes the curve the way training does: the same periods from the recorded parameters and
the same data (its hash must match model.json), the artefact's own ONNX scores on the validation days,
the labels known at the cut-off. Only `validation_curve` is added to model.json; nothing else changes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from scorer.errors import ScorerError
from scorer.features.engine import FeatureConfig
from scorer.model.curve import validation_curve
from scorer.model.onnx import OnnxModel
from scorer.model.quality import ThresholdPolicy
from scorer.training.dataset import day_index, fraud_targets, load_history, replay_features
from scorer.training.train import TrainParams, data_hash, in_days, plan_periods


def add_curve(model_dir: Path, data_dir: Path) -> int:
    """Write model.json's validation_curve; returns how many points it holds."""
    meta_path = model_dir / "model.json"
    meta = orjson.loads(meta_path.read_bytes())
    if data_hash(data_dir) != meta["training"]["data_sha256"]:
        raise ScorerError(f"{data_dir} is not the data {model_dir} was trained on (sha256 differs)")
    p = dict(meta["training"]["params"])
    p["policy"] = ThresholdPolicy(p["policy"]["kind"], float(p["policy"]["value"]))
    p["grid"] = tuple(p["grid"])
    params = TrainParams(**p)
    history = load_history(data_dir)
    periods = plan_periods(history, params)
    model = OnnxModel(model_dir)
    config: FeatureConfig = model.meta.feature_config
    val = in_days(day_index(history), periods.validation)
    scores = model.predict(replay_features(history, config)[val])
    y = fraud_targets(history, known_by_ms=periods.cutoff_ms)[val]
    curve = validation_curve(scores, y, float(periods.validation[1] - periods.validation[0]))
    meta["validation_curve"] = curve.to_dict()
    meta_path.write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    return len(curve.threshold)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scorer.training.curve", description=__doc__)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="the directory the model was trained on")
    args = parser.parse_args(argv)
    try:
        points = add_curve(args.model_dir, args.data)
    except ScorerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.model_dir}: validation_curve with {points} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
