"""Train a candidate on a window read from the store and put it through the validation gate.

Training is `scorer train`'s code (training/train.py) on the window's history, with the champion's label delay
and threshold policy, so the scorers' state fits the candidate. The gate is the registry's (the ONNX file
loads and fits the feature engine, re-scores its reference sample, has a card with known faults, can be
served by the scorers serving the champion), and its metric check is made on the same week for both: the
candidate's model selected before the most recent fully labelled week (out of sample) against the champion
scoring that week, each under its own categorical vocabulary. A candidate that fails any check is refused.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from scorer.features.engine import CATEGORY_COLUMNS, category_codes
from scorer.model.card import render_card
from scorer.model.onnx import OnnxModel, read_meta
from scorer.model.quality import ThresholdPolicy, quality_report
from scorer.model.registry import DEFAULT_METRIC_TOLERANCE, GATED_METRICS, Check, servable, validate
from scorer.retrain.alarms import window_alarms
from scorer.training.dataset import History, card_codes, day_index, history_hash, known_compromised
from scorer.training.train import DataSource, TrainParams, TrainResult, train, write_artefact

F32 = npt.NDArray[np.float32]
Say = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class CandidateSpec:
    """What a retrain cycle asks of training (the rest comes from the champion)."""

    name: str = "retrained"
    train_days: int = 28
    validation_days: int = 7
    tolerance: float = DEFAULT_METRIC_TOLERANCE
    seed: int = 7


@dataclass(frozen=True, slots=True)
class Candidate:
    """A trained candidate, written to `directory`, with the gate's verdict and what its card records."""

    directory: Path
    label: str
    checks: list[Check]
    alarms: list[str]
    labels_by_source: dict[str, int]
    data_sha256: str
    onnx_sha256: str
    comparison: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.checks)

    def refusals(self) -> str:
        return "; ".join(f"{c.name}: {c.detail}" for c in self.checks if not c.ok)


def train_candidate(
    history: History,
    champion: OnnxModel,
    spec: CandidateSpec,
    out_dir: Path,
    run: Mapping[str, Any],
    say: Say,
) -> Candidate:
    """Train on `history`, write the artefact to `out_dir` (model.json's `retrain` section holds `run`: id,
    window, cut-off) and gate it. DataError when the window is too short to train on; ScorerError when the
    directory cannot be written."""
    params = _params(champion, spec, str(run["run_id"]))
    source = DataSource(f"store window {run['window'][0]} .. {run['window'][1]}", history_hash(history))
    result = train(history, source, params, say)
    champion_X = _under_vocabulary(history, result.features, champion)
    champion_scores = champion.predict(champion_X[result.train_rows])
    alarms = window_alarms(
        champion_X[result.train_rows], champion_scores, champion.meta.raw.get("reference", {})
    )
    same_week = _same_week(history, result, champion, champion_X, spec.tolerance)
    by_source = dict(Counter(history.labels.source))
    retrain = {
        **run,
        "champion": champion.label,
        "labels_by_source": by_source,
        "alarms": alarms,
        "gate": [],
        "decision": None,
    }
    result.meta["retrain"] = retrain
    directory = write_artefact(out_dir, result)
    checks = [*validate(directory), servable(read_meta(directory), champion.meta), same_week.check]
    retrain["gate"] = [f"{'passed' if c.ok else 'FAILED'} {c.name}: {c.detail}" for c in checks]
    rewrite_meta(directory, {"retrain": retrain})
    onnx_sha256 = hashlib.sha256((directory / "model.onnx").read_bytes()).hexdigest()
    return Candidate(
        directory,
        f"{params.name}/{params.version}",
        checks,
        alarms,
        by_source,
        source.sha256,
        onnx_sha256,
        same_week.figures,
    )


def _params(champion: OnnxModel, spec: CandidateSpec, version: str) -> TrainParams:
    """The champion's label delay and threshold policy, so the scorers' state and the alert volume fit."""
    policy = champion.meta.raw.get("threshold_policy", {})
    base = TrainParams()
    return TrainParams(
        name=spec.name,
        version=version,
        seed=spec.seed,
        train_days=spec.train_days,
        validation_days=spec.validation_days,
        label_delay_days=champion.meta.feature_config.label_delay_days,
        policy=ThresholdPolicy(policy["kind"], float(policy["value"])) if policy.get("kind") else base.policy,
    )


def _under_vocabulary(history: History, X: F32, model: OnnxModel) -> F32:
    """The features as `model` reads them: its own categorical codes."""
    theirs = X.copy()
    theirs[:, CATEGORY_COLUMNS] = category_codes(history.transactions, model.meta.feature_config.codes())
    return theirs


@dataclass(frozen=True, slots=True)
class _SameWeek:
    check: Check
    figures: dict[str, dict[str, float]]


def _same_week(
    history: History, result: TrainResult, champion: OnnxModel, champion_X: F32, tolerance: float
) -> _SameWeek:
    """The candidate (selected before the week) against the champion on the most recent labelled week."""
    rows = result.validation_rows
    y = result.targets[rows]
    scores = champion.predict(champion_X[rows])
    days, cards = day_index(history)[rows], card_codes(history)[rows]
    theirs = quality_report(days, cards, y, scores, known_compromised(history)[rows], champion.threshold)
    ours = result.selection
    figures = {
        "candidate": {m: float(ours[m]) for m in GATED_METRICS},
        "champion": {m: float(theirs[m]) for m in GATED_METRICS},
    }
    week = f"on the week's {int(rows.sum()):,} transactions, {int(y.sum())} frauds"
    if not y.any():
        return _SameWeek(
            Check("metrics", False, f"no labelled fraud in the validation week ({week})"), figures
        )
    worse = [
        f"{m} {figures['candidate'][m]:.4f} < {figures['champion'][m]:.4f} - {tolerance}"
        for m in GATED_METRICS
        if not figures["candidate"][m] >= figures["champion"][m] - tolerance
    ]
    shown = ", ".join(
        f"{m} {figures['candidate'][m]:.4f} vs {figures['champion'][m]:.4f}" for m in GATED_METRICS
    )
    label = f"against champion {champion.label} {week}"
    if worse or any(math.isnan(v) for v in figures["candidate"].values()):
        return _SameWeek(Check("metrics", False, f"{label}: " + ("; ".join(worse) or shown)), figures)
    return _SameWeek(Check("metrics", True, f"{label}: {shown}"), figures)


def rewrite_meta(directory: Path, changes: Mapping[str, Any]) -> None:
    """Update model.json with `changes` and re-render MODEL_CARD.md from it (the ONNX file is untouched:
    a version's decisions stay what they were; its card gains what happened to it)."""
    meta = orjson.loads((directory / "model.json").read_bytes())
    meta.update(changes)
    meta["card_updated"] = datetime.now(UTC).isoformat(timespec="seconds")
    (directory / "model.json").write_bytes(
        orjson.dumps(meta, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    )
    (directory / "MODEL_CARD.md").write_text(render_card(meta), encoding="utf-8")
