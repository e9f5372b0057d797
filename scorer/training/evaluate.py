"""`scorer evaluate`: score the last test days of any simulate-format directory with any model artefact.

The whole history is replayed through the feature engine with the model's own feature config, each label
released only at its report time, so test-day features are exactly what the live scorer would have had.
A transaction without a fraud label counts as genuine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from scorer.errors import DataError
from scorer.model.onnx import OnnxModel
from scorer.model.quality import quality_report
from scorer.runtime.console import table
from scorer.training.dataset import (
    History,
    card_codes,
    day_index,
    fraud_targets,
    known_compromised,
    replay_features,
)

F64 = npt.NDArray[np.float64]


@dataclass(slots=True)
class Evaluation:
    """The metrics plus what was scored, for `--scores-out`."""

    report: dict[str, float | int]
    transaction_ids: list[str]
    scores: F64
    test_days: tuple[str, str]


def evaluate(history: History, model: OnnxModel, test_days: int, progress: Any = None) -> Evaluation:
    """Replay everything, then score the transactions of the last `test_days` days in one batch."""
    if test_days < 1:
        raise DataError("--test-days must be at least 1")
    X = replay_features(history, model.meta.feature_config, progress)
    days = day_index(history)
    last = int(days.max())
    rows = days > last - test_days
    scores = model.predict(X[rows])
    y = fraud_targets(history)
    report = quality_report(
        days[rows],
        card_codes(history)[rows],
        y[rows],
        scores,
        known_compromised(history)[rows],
        model.threshold,
    )
    report = {"model_version": model.label, **report}  # type: ignore[dict-item]
    ids = [t for t, keep in zip(history.transactions.transaction_id, rows.tolist(), strict=True) if keep]
    span = (_iso(last - test_days + 1), _iso(last))
    return Evaluation(report, ids, scores, span)


def _iso(day: int) -> str:
    return str(np.datetime64(day, "D"))


def metrics_table(report: dict[str, Any]) -> str:
    """The results table printed by `scorer evaluate` and `scorer demo`."""
    rows = [
        ("ROC AUC", report["roc_auc"]),
        ("Average Precision", report["average_precision"]),
        ("Card Precision@100", report["card_precision_at_100"]),
        ("Card Precision@100 (handbook: drop detected)", report["card_precision_at_100_detected"]),
        (f"precision @ threshold {report['threshold']:.4f}", report["precision"]),
        ("recall @ threshold", report["recall"]),
        ("transactions scored", int(report["n_transactions"])),
        ("frauds among them", int(report["n_fraud"])),
    ]
    confusion = table(
        ["", "predicted fraud", "predicted genuine"],
        [
            ("actual fraud", int(report["tp"]), int(report["fn"])),
            ("actual genuine", int(report["fp"]), int(report["tn"])),
        ],
    )
    return table(["metric", "value"], rows) + "\n\nconfusion matrix at the threshold:\n" + confusion


def write_scores(path: Path, evaluation: Evaluation) -> None:
    """`transaction_id,score` for every scored transaction."""
    with path.open("w", encoding="utf-8") as fh:
        fh.write("transaction_id,score\n")
        for tx_id, score in zip(evaluation.transaction_ids, evaluation.scores.tolist(), strict=True):
            fh.write(f"{tx_id},{score:.8f}\n")
