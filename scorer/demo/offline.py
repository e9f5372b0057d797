"""`scorer demo`: the whole offline pipeline on the defaults: simulate -> train -> evaluate, with a table."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from scorer.model.onnx import OnnxModel
from scorer.runtime.console import ProgressBar
from scorer.training.dataset import load_history
from scorer.training.evaluate import evaluate, metrics_table
from scorer.training.simulate import SimulationParams, simulate, write_jsonl
from scorer.training.train import TrainParams, train, write_artefact

TEST_DAYS = 7


def run_offline_demo(params: SimulationParams, workdir: Path) -> int:
    """Simulate into the workdir, train on all but the last week, evaluate on that week."""
    data_dir, model_dir = workdir / "data", workdir / "models" / "demo" / "1"
    started = time.monotonic()
    print(
        f"[1/3] simulating {params.customers:,} customers, {params.terminals:,} terminals, {params.days} days"
    )
    data = simulate(params)
    write_jsonl(data, data_dir)
    print(
        f"      {len(data.transaction_id):,} transactions, {len(data.label_index):,} fraud labels -> {data_dir}"
    )
    print(f"[2/3] training (last {TEST_DAYS} days held out for the test)")
    history = load_history(data_dir)
    if model_dir.exists():
        shutil.rmtree(model_dir)
    result = train(
        history,
        data_dir,
        TrainParams(name="demo", holdout_days=TEST_DAYS),
        say=_say,
        progress=ProgressBar("features"),
    )
    write_artefact(model_dir, result)
    print(f"      model -> {model_dir}")
    print(f"[3/3] evaluating on the last {TEST_DAYS} days")
    evaluation = evaluate(history, OnnxModel(model_dir), TEST_DAYS, ProgressBar("features"))
    print(f"\nResults, test days {evaluation.test_days[0]} .. {evaluation.test_days[1]}:")
    print(metrics_table(evaluation.report))
    print(f"\ndone in {time.monotonic() - started:.0f}s; model card: {model_dir / 'MODEL_CARD.md'}")
    return 0


def _say(message: str) -> None:
    print(f"      {message}")
