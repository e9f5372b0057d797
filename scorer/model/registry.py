"""The model registry (`models/<name>/<version>/`) and the validation gate every promotion passes.

A version directory holds model.onnx, model.json (what training wrote), covers.npz (the trees' node covers
for the decisions' reasons: without it the model scores but explains nothing) and MODEL_CARD.md. The gate
refuses a candidate, saying why, when it would fail in production or when nobody wrote down how it fails:
the ONNX file must load, its input must be what the feature engine computes, it must reproduce the scores
stored at training on the reference sample (a different runtime or a corrupted file shows here), its
holdout metrics must not be worse than the champion's beyond a tolerance, its card must list known
faults and limits, and the scorers serving the champion must be able to serve it (the same windows and
label delay: their state is built for them; the categorical vocabulary may differ).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scorer.errors import ModelError
from scorer.model.onnx import ModelMeta, OnnxModel, read_meta, resolve_artefact

SCORE_TOLERANCE = 1e-5  # reference-sample scores: training checked ONNX against the trained model to this
GATED_METRICS = ("roc_auc", "average_precision")  # higher is better; compared on the validation period
DEFAULT_METRIC_TOLERANCE = 0.01


@dataclass(frozen=True, slots=True)
class Entry:
    """One registered model version."""

    name: str
    version: str
    path: Path
    meta: ModelMeta

    @property
    def label(self) -> str:
        return f"{self.name}/{self.version}"


class Registry:
    """Model versions found under a root directory (read-only: versions are written by `scorer train`)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def entries(self) -> list[Entry]:
        """Every readable version, by name then numeric version; unreadable ones are skipped here and
        reported by `validate`."""
        found = []
        for meta_file in sorted(self.root.glob("*/*/model.json")):
            try:
                meta = read_meta(meta_file.parent)
            except ModelError:
                continue
            found.append(Entry(meta.name, meta.version, meta_file.parent, meta))
        return sorted(found, key=lambda e: (e.name, _version_key(e.version)))

    def get(self, ref: str) -> Entry:
        """`name/version`, `name` (its newest version) or a directory path."""
        path = Path(ref)
        if path.is_dir() and (path / "model.json").is_file():
            meta = read_meta(resolve_artefact(path))
            return Entry(meta.name, meta.version, path, meta)
        name, _, version = ref.partition("/")
        matches = [e for e in self.entries() if e.name == name and (not version or e.version == version)]
        if not matches:
            known = ", ".join(e.label for e in self.entries()) or "none"
            raise ModelError(f"no model {ref!r} in {self.root} (registered: {known})")
        return matches[-1]


def _version_key(version: str) -> tuple[int, str]:
    """Numeric versions in number order (2 before 10), any others after them by name."""
    return (int(version), "") if version.isdigit() else (2**62, version)


@dataclass(frozen=True, slots=True)
class Check:
    """One gate check: its name, whether it passed, and what was found."""

    name: str
    ok: bool
    detail: str


def validate(
    candidate: Path, champion: Path | None = None, tolerance: float = DEFAULT_METRIC_TOLERANCE
) -> list[Check]:
    """Every gate check of `candidate` (against `champion` when given); a model passes when all are ok."""
    try:
        model = OnnxModel(candidate)
    except ModelError as exc:
        return [Check("loads", False, str(exc))]
    checks = [Check("loads", True, f"{model.label}: ONNX loads; input and output fit the feature engine")]
    checks.append(_reference_scores(model))
    checks.append(_card(model))
    if champion is not None:
        running = read_meta(resolve_artefact(champion))
        checks.append(_against_champion(model.meta, running, tolerance))
        checks.append(servable(model.meta, running))
    return checks


def passed(checks: Sequence[Check]) -> bool:
    return all(c.ok for c in checks)


def _reference_scores(model: OnnxModel) -> Check:
    sample = model.meta.raw.get("reference", {}).get("sample")
    if not sample or not sample.get("features"):
        return Check("reference_scores", False, "model.json holds no reference sample to re-score")
    X = np.asarray(sample["features"], dtype=np.float32)
    stored = np.asarray(sample["scores"], dtype=np.float64)
    got = model.predict(X)
    delta = float(np.max(np.abs(got - stored))) if len(stored) == len(got) else math.inf
    ok = delta <= SCORE_TOLERANCE
    return Check("reference_scores", ok, f"{len(stored)} sample rows, max |score - stored| = {delta:.2e}")


def _card(model: OnnxModel) -> Check:
    raw = model.meta.raw
    missing = [k for k in ("known_faults", "limits") if not raw.get(k)]
    if not (model.directory / "MODEL_CARD.md").is_file():
        missing.append("MODEL_CARD.md")
    if missing:
        return Check("model_card", False, f"missing or empty: {', '.join(missing)}")
    return Check("model_card", True, f"{len(raw['known_faults'])} known faults, {len(raw['limits'])} limits")


def servable(candidate: ModelMeta, champion: ModelMeta) -> Check:
    """Can the scorers that serve the champion serve the candidate? Its vocabulary may differ (each
    model's codes are its own), its state-shaping features may not (features/engine.py)."""
    why = champion.feature_config.state_difference(candidate.feature_config)
    if why is not None:
        return Check("feature_state", False, f"the scorers' state does not fit it: {why}")
    return Check(
        "feature_state", True, f"windows and label delay as {champion.label}'s: the scorers serve it"
    )


def _against_champion(candidate: ModelMeta, champion: ModelMeta, tolerance: float) -> Check:
    worse = []
    shown = []
    for metric in GATED_METRICS:
        new = candidate.raw.get("metrics", {}).get("validation", {}).get(metric)
        old = champion.raw.get("metrics", {}).get("validation", {}).get(metric)
        if new is None or old is None:
            worse.append(f"{metric} missing")
            continue
        shown.append(f"{metric} {new:.4f} vs {old:.4f}")
        if new < old - tolerance:
            worse.append(f"{metric} {new:.4f} < {old:.4f} - {tolerance}")
    label = f"against champion {champion.label}"
    if worse:
        return Check("metrics", False, f"{label}: " + "; ".join(worse))
    return Check("metrics", True, f"{label}: " + ", ".join(shown))
