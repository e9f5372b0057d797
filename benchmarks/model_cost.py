"""Inference cost per event of two model artefacts, measured in the same run, interleaved.

`python -m benchmarks.model_cost models/default/1 models/default/2 --data data/default` replays a history
(`scorer simulate --out data/default` writes the default one) through the feature engine, then scores its last `--events` rows in batches of `--batch` with each model in
turn (onnxruntime, one thread, as `scorer run` does), for `--rounds` rounds, and prints microseconds per
event per round and the ratio. The "model" stage of `python -m benchmarks.stages` measures the same call
inside the core, but a full stages run per model is too noisy on a shared machine to compare two models.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

from scorer.model.onnx import OnnxModel
from scorer.training.dataset import load_history, replay_features


def us_per_event(model: OnnxModel, batches: list[npt.NDArray[np.float32]]) -> float:
    started = time.perf_counter()
    for batch in batches:
        model.predict(batch)
    return (time.perf_counter() - started) / sum(len(b) for b in batches) * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.model_cost", description=__doc__)
    p.add_argument("baseline", type=Path)
    p.add_argument("candidate", type=Path)
    p.add_argument(
        "--data", type=Path, default=Path("data/default"), help="transactions.jsonl + labels.jsonl"
    )
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    base, cand = OnnxModel(args.baseline), OnnxModel(args.candidate)
    X = replay_features(load_history(args.data), base.meta.feature_config)[-args.events :]
    batches = [X[i : i + args.batch] for i in range(0, len(X), args.batch)]
    ratios = []
    for r in range(args.rounds):
        a, b = us_per_event(base, batches), us_per_event(cand, batches)
        ratios.append(b / a)
        print(
            f"round {r + 1}: {base.meta.label} {a:.2f} us, {cand.meta.label} {b:.2f} us per event, x{b / a:.2f}"
        )
    print(f"median ratio x{float(np.median(ratios)):.2f} over {args.rounds} rounds, batches of {args.batch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
