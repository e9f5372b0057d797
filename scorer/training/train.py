"""`scorer train`: time-ordered training of a gradient-boosted model on replayed features, exported to ONNX.

Protocol (after the Fraud Detection Handbook): only labels reported by the data's cut-off are known, so
training uses transactions older than the label delay, after a warm-up as long as the longest feature
window. Hyper-parameters are chosen on a validation week that follows the fold's training period after a
gap equal to the label delay; the final model is refit on the whole training period with the winner.
The learner and its ONNX export are in learner.py. Needs the `train` extra; serving never imports this.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from scorer.errors import DataError, ScorerError
from scorer.events.timestamps import MS_PER_DAY
from scorer.features.engine import FEATURE_NAMES, FeatureConfig
from scorer.model.curve import validation_curve
from scorer.model.quality import ThresholdPolicy, choose_threshold, quality_report
from scorer.model.reference import build_reference
from scorer.model.shap import COVERS_FILE, write_covers
from scorer.model.trees import read_tree_ensemble
from scorer.training.dataset import (
    History,
    card_codes,
    day_index,
    fraud_targets,
    known_compromised,
    replay_features,
    vocabulary,
)
from scorer.training.learner import (
    BOOSTER_SOURCE,
    ESTIMATOR,
    booster_covers,
    check_parity,
    fit,
    importances,
    onnx_scores,
    predict,
    to_onnx,
)
from scorer.version import __version__

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]
Say = Callable[[str], None]

# The inference budget: at most twice the first default model's cost per event in the stages benchmark.
# On the project's data 100 trees of 15 leaves cost 1.55x and 80 of 31 leaves 1.70x; 100 of 31 (1.9-2.1x) and
# 150 of 15 (2.4x) scored no better on the handbook's data (benchmarks/README.md).
DEFAULT_GRID: tuple[dict[str, float | int], ...] = (
    {"n_estimators": 100, "num_leaves": 15, "learning_rate": 0.05, "min_child_samples": 50},
    {"n_estimators": 80, "num_leaves": 31, "learning_rate": 0.05, "min_child_samples": 50},
)


WARM_UP_DAYS = 30  # the longest feature window: rows before it have incomplete windows
MIN_TRAIN_DAYS = 7  # the shortest period a model is fitted on


@dataclass(frozen=True, slots=True)
class TrainParams:
    """Everything that decides the model; recorded in model.json so a run can be repeated."""

    name: str = "default"
    version: str = "1"
    seed: int = 7
    train_days: int | None = None  # keep only the last N labelled days
    holdout_days: int = 0  # ignore the last N days of the data entirely (kept for `scorer evaluate`)
    validation_days: int = 7
    label_delay_days: int = 7
    negative_share: float = 0.1  # share of genuine rows kept (weighted back up): fits ~10x faster
    policy: ThresholdPolicy = field(default_factory=lambda: ThresholdPolicy("alert_budget", 100.0))
    grid: Sequence[dict[str, float | int]] = DEFAULT_GRID


@dataclass(frozen=True, slots=True)
class Periods:
    """Day ranges (inclusive start, exclusive end, days since epoch) of the protocol."""

    train: tuple[int, int]
    fold_train: tuple[int, int]
    validation: tuple[int, int]
    cutoff_ms: int


def plan_periods(history: History, params: TrainParams) -> Periods:
    """Work out the periods from the data's span; a DataError when the data is too short."""
    delay = params.label_delay_days
    first_day = history.start_ms // MS_PER_DAY
    cutoff_ms = history.end_ms - params.holdout_days * MS_PER_DAY
    labelled_end = (cutoff_ms // MS_PER_DAY) - delay + 1  # days whose labels are all known by the cut-off
    warm = first_day + WARM_UP_DAYS + delay  # warm-up: the longest window (terminal risk, 30 days, delayed)
    val_start = labelled_end - params.validation_days
    fold_end = val_start - delay
    start, fold_start = warm, warm
    if params.train_days is not None:  # the final fit on the last N labelled days; the selection fit on
        start = max(warm, labelled_end - params.train_days)  # N days too, the ones before the validation gap
        fold_start = max(warm, fold_end - params.train_days)
    if fold_end - fold_start < MIN_TRAIN_DAYS:
        span = history.end_ms // MS_PER_DAY - first_day + 1
        need = (
            WARM_UP_DAYS
            + delay
            + MIN_TRAIN_DAYS
            + delay
            + params.validation_days
            + delay
            + params.holdout_days
        )
        raise DataError(
            f"not enough history to train: {span} days of data, need at least {need} "
            f"(warm-up {WARM_UP_DAYS} days + the {delay}-day label delay, {MIN_TRAIN_DAYS} days to fit on, a "
            f"{delay}-day gap, {params.validation_days} validation days, {delay} days until their labels are "
            f"known, {params.holdout_days} held out)"
        )
    return Periods((start, labelled_end), (fold_start, fold_end), (val_start, labelled_end), cutoff_ms)


def in_days(days: npt.NDArray[np.int64], span: tuple[int, int]) -> B:
    return (days >= span[0]) & (days < span[1])


def data_hash(data_dir: Path) -> str:
    digest = hashlib.sha256()
    for name in ("transactions.jsonl", "labels.jsonl"):
        with (data_dir / name).open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class DataSource:
    """Where a model's training data came from, for its card: a directory or a database window, and the
    sha256 that identifies exactly those rows (a directory's files; a window's rows, dataset.history_hash)."""

    description: str
    sha256: str

    @classmethod
    def of_directory(cls, data_dir: Path) -> DataSource:
        return cls(str(data_dir), data_hash(data_dir))


def code_version() -> str:
    """Package version plus the git commit when run from a checkout (for the record, not for logic)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607 - git from PATH, fixed arguments
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return __version__
    return (
        f"{__version__}+{out.stdout.strip()}" if out.returncode == 0 and out.stdout.strip() else __version__
    )


@dataclass(slots=True)
class TrainResult:
    onnx_bytes: bytes
    meta: dict[str, Any]
    validation: dict[str, float | int]
    covers: F64  # each ONNX node's training rows (LightGBM's counts), for TreeSHAP: covers.npz
    # the selected hyper-parameters' model fitted before the validation week, scored on it: out of sample,
    # unlike `validation` (the final model is refit on the validation week too). What a gate compares.
    selection: dict[str, float | int]
    features: F32  # every transaction's replayed features (rows as in the history)
    targets: B  # fraud by the labels known at the cut-off
    train_rows: B  # the final fit's rows
    validation_rows: B  # the validation week's rows


def train(
    history: History, data: Path | DataSource, params: TrainParams, say: Say, progress: Any = None
) -> TrainResult:
    """Replay, split, select, refit, export, verify: everything but writing files. `data` is the history's
    directory or, for a history read elsewhere (`scorer retrain`: the store's database), its DataSource."""
    source = data if isinstance(data, DataSource) else DataSource.of_directory(data)
    periods = plan_periods(history, params)
    vocab = vocabulary(history.transactions, periods.cutoff_ms)
    config = FeatureConfig(label_delay_days=params.label_delay_days, categories=vocab)
    say("replaying the history through the feature engine (as the stream would)")
    X = replay_features(history, config, progress)
    y = fraud_targets(history, known_by_ms=periods.cutoff_ms)
    days = day_index(history)
    fold, val, full = (in_days(days, p) for p in (periods.fold_train, periods.validation, periods.train))
    n_val_days = periods.validation[1] - periods.validation[0]
    best, best_ap, selection = params.grid[0], -1.0, {}
    for number, hyper in enumerate(params.grid, 1):
        say(f"fitting candidate {number}/{len(params.grid)} on {int(fold.sum()):,} transactions ...")
        model = fit(X[fold], y[fold], hyper, params.seed, params.negative_share)
        report = _report(history, days, y, val, predict(model, X[val]), 0.5)
        say(f"candidate {hyper}: validation AP {report['average_precision']:.4f} AUC {report['roc_auc']:.4f}")
        if report["average_precision"] > best_ap:
            best, best_ap, selection = hyper, float(report["average_precision"]), report
    say(f"refitting the best, {best}, on {int(full.sum()):,} transactions ...")
    model = fit(X[full], y[full], best, params.seed, params.negative_share)
    say("exporting to ONNX and checking it against the trained model on every row ...")
    onnx_bytes = to_onnx(model, len(FEATURE_NAMES))
    delta = check_parity(model, onnx_bytes, X[full | val])
    covers = booster_covers(model, read_tree_ensemble(onnx_bytes))
    val_scores = onnx_scores(onnx_bytes, X[val])
    threshold = choose_threshold(params.policy, val_scores, y[val], float(n_val_days))
    validation = _report(history, days, y, val, val_scores, threshold)
    train_scores = onnx_scores(onnx_bytes, X[full])
    meta = _meta(history, source, params, periods, config, best, threshold, validation, delta)
    meta["reference"] = build_reference(X[full], train_scores, FEATURE_NAMES, params.seed)
    meta["feature_importances"] = dict(zip(FEATURE_NAMES, importances(model).round(6).tolist(), strict=True))
    meta["validation_curve"] = validation_curve(val_scores, y[val], float(n_val_days)).to_dict()
    return TrainResult(onnx_bytes, meta, validation, covers, selection, X, y, full, val)


def _report(
    history: History, days: Any, y: B, rows: B, scores: F64, threshold: float
) -> dict[str, float | int]:
    return quality_report(
        days[rows], card_codes(history)[rows], y[rows], scores, known_compromised(history)[rows], threshold
    )


def _meta(
    history: History,
    source: DataSource,
    params: TrainParams,
    periods: Periods,
    config: FeatureConfig,
    hyper: dict[str, float | int],
    threshold: float,
    validation: dict[str, float | int],
    parity: float,
) -> dict[str, Any]:
    def iso_day(day: int) -> str:
        return datetime.fromtimestamp(day * 86_400, UTC).date().isoformat()

    p = asdict(params)
    p["policy"] = {"kind": params.policy.kind, "value": params.policy.value}
    p["grid"] = list(params.grid)
    return {
        "name": params.name,
        "version": params.version,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "format": "onnx",
        "input": {"name": "features", "dtype": "float32", "shape": [None, len(FEATURE_NAMES)]},
        "output": "probabilities[:, 1]",
        "feature_names": list(FEATURE_NAMES),
        "feature_dtypes": ["float32"] * len(FEATURE_NAMES),
        "feature_config": {
            "label_delay_days": config.label_delay_days,
            "customer_ring_days": config.customer_ring_days,
            "categories": dict(config.categories),
        },
        "threshold": threshold,
        "threshold_policy": {**p["policy"], "description": params.policy.describe()},
        "estimator": {"type": ESTIMATOR, "hyperparameters": hyper},
        "training": {
            "data_dir": source.description,
            "data_sha256": source.sha256,
            "code_version": code_version(),
            "params": p,
            "periods": {
                k: [iso_day(v[0]), iso_day(v[1] - 1)] for k, v in asdict(periods).items() if k != "cutoff_ms"
            },
            "n_transactions": len(history.transactions),
            "n_labels": len(history.labels),
            "onnx_parity_max_abs_delta": parity,
        },
        "metrics": {"validation": validation},
    }


def refuse_existing(out_dir: Path) -> None:
    """A model version is written once: ScorerError when `out_dir` holds one, or cannot be a directory."""
    if (out_dir / "model.onnx").exists():
        raise ScorerError(f"{out_dir}: a model already exists there; choose a new version directory")
    if out_dir.exists() and not out_dir.is_dir():
        raise ScorerError(f"{out_dir}: not a directory")


def write_artefact(out_dir: Path, result: TrainResult) -> Path:
    """models/<name>/<version>/: model.onnx, model.json, covers.npz (TreeSHAP's node covers) and
    MODEL_CARD.md (refuses to overwrite)."""
    from scorer.model.card import KNOWN_FAULTS, LIMITS, render_card

    refuse_existing(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ScorerError(f"{out_dir}: cannot create the directory ({exc.strerror})") from exc
    meta = {**result.meta, "known_faults": list(KNOWN_FAULTS), "limits": list(LIMITS)}
    (out_dir / "model.onnx").write_bytes(result.onnx_bytes)
    write_covers(out_dir / COVERS_FILE, read_tree_ensemble(result.onnx_bytes), result.covers, BOOSTER_SOURCE)
    (out_dir / "model.json").write_bytes(
        orjson.dumps(meta, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    )
    (out_dir / "MODEL_CARD.md").write_text(render_card(meta), encoding="utf-8")
    return out_dir
