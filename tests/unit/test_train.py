"""Training: reproducible, ONNX parity with the trained model, artefacts complete, threshold from the policy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from scorer.errors import DataError, ModelError, ScorerError
from scorer.features.engine import FEATURE_NAMES, FeatureConfig
from scorer.model.onnx import OnnxModel
from scorer.model.quality import ThresholdPolicy
from scorer.training.dataset import load_history, replay_features
from scorer.training.learner import FIXED, check_parity, fit, float32_exact, onnx_scores, predict, to_onnx
from scorer.training.train import TrainParams, plan_periods, train
from tests.conftest import TINY


def test_artefact_is_complete_and_loads(tiny_model: Path) -> None:
    meta = orjson.loads((tiny_model / "model.json").read_bytes())
    assert meta["feature_names"] == list(FEATURE_NAMES)
    assert meta["threshold_policy"]["kind"] == "alert_budget"
    assert len(meta["training"]["data_sha256"]) == 64
    assert meta["known_faults"] and meta["limits"]
    assert set(meta["reference"]["features"]) == set(FEATURE_NAMES)
    card = (tiny_model / "MODEL_CARD.md").read_text()
    assert "## Known faults" in card and meta["known_faults"][0][:30] in card
    model = OnnxModel(tiny_model)
    sample = meta["reference"]["sample"]
    scores = model.predict(np.asarray(sample["features"], dtype=np.float32))
    np.testing.assert_allclose(scores, sample["scores"], atol=1e-6)
    assert ((scores >= 0) & (scores <= 1)).all()


def test_onnx_matches_the_trained_model_on_every_row(tiny_data: Path) -> None:
    history = load_history(tiny_data)
    X = replay_features(history, FeatureConfig())
    y = np.zeros(len(X), dtype=bool)
    y[::50] = True
    model = fit(
        X, y, {"n_estimators": 40, "num_leaves": 15, "learning_rate": 0.1}, seed=7, negative_share=0.1
    )
    onnx_bytes = to_onnx(model, len(FEATURE_NAMES))
    assert check_parity(model, onnx_bytes, X) <= 1e-5


def test_float32_thresholds_keep_the_export_exact_where_rounding_would_flip_splits() -> None:
    """Inputs on adjacent float32 values: LightGBM splits between them with a double threshold that
    rounds onto one of them in ONNX. Moving thresholds down to float32 changes no training decision
    and makes the export agree; the raw export does not."""
    import lightgbm as lgb

    rng = np.random.default_rng(1)
    base = rng.uniform(1, 1000, 50).astype(np.float32)
    up = rng.random(20_000) < 0.5
    x = base[rng.integers(0, 50, len(up))]
    x = np.where(up, np.nextafter(x, np.float32(np.inf)), x)
    X = np.column_stack([x, rng.random(len(up))]).astype(np.float32)
    y = (up & (rng.random(len(up)) < 0.9)) | (rng.random(len(up)) < 0.05)
    params = {"objective": "binary", "seed": 7, **FIXED, "n_estimators": 20, "num_leaves": 63}
    raw = lgb.train(params, lgb.Dataset(X, label=y.astype(np.int32)))
    exact = float32_exact(raw)
    np.testing.assert_array_equal(predict(exact, X), predict(raw, X))  # the same model on float32 inputs
    assert np.abs(onnx_scores(to_onnx(raw, 2), X) - predict(raw, X)).max() > 0.01
    assert check_parity(exact, to_onnx(exact, 2), X) <= 1e-6


def test_an_export_that_disagrees_is_refused() -> None:
    import lightgbm as lgb

    rng = np.random.default_rng(2)
    X = rng.random((500, 2)).astype(np.float32)
    y = X[:, 0] > 0.5
    params = {"objective": "binary", "seed": 7, **FIXED, "n_estimators": 5}
    one = float32_exact(lgb.train(params, lgb.Dataset(X, label=y.astype(np.int32))))
    other = float32_exact(lgb.train(params, lgb.Dataset(X, label=(X[:, 1] > 0.5).astype(np.int32))))
    with pytest.raises(ScorerError, match="ONNX export differs from the trained model"):
        check_parity(one, to_onnx(other, 2), X)


def test_training_is_reproducible(tiny_data: Path) -> None:
    params = TrainParams(holdout_days=7, grid=({"n_estimators": 20, "num_leaves": 7, "learning_rate": 0.2},))
    history = load_history(tiny_data)
    a = train(history, tiny_data, params, say=lambda _: None)
    b = train(history, tiny_data, params, say=lambda _: None)
    assert a.onnx_bytes == b.onnx_bytes
    assert a.validation == b.validation
    assert a.meta["threshold"] == b.meta["threshold"]


def test_alert_budget_threshold_is_stored_and_respected(tiny_model: Path) -> None:
    meta = orjson.loads((tiny_model / "model.json").read_bytes())
    validation = meta["metrics"]["validation"]
    flagged = validation["tp"] + validation["fp"]
    assert flagged <= 100 * 7  # the budget: 100 alerts per validation day
    assert 0.0 < meta["threshold"] <= 1.0


def test_too_short_history_is_a_clear_error(tiny_data: Path) -> None:
    history = load_history(tiny_data)
    with pytest.raises(DataError, match="not enough history to train: 80 days of data, need at least 125 "):
        plan_periods(history, TrainParams(holdout_days=TINY.days - 20))  # 60 held out + 65


def test_the_minimum_the_message_names_is_the_real_one(tiny_data: Path) -> None:
    """80 days of data: training works with 15 held out (65 days left) and is refused with 16."""
    history = load_history(tiny_data)
    plan_periods(history, TrainParams(holdout_days=15))
    with pytest.raises(DataError, match="80 days of data, need at least 81"):
        plan_periods(history, TrainParams(holdout_days=16))


@pytest.mark.parametrize("days", [7, 10, 20])
def test_a_short_training_window_is_honoured_with_a_selection_window_as_long(
    tiny_data: Path, days: int
) -> None:
    periods = plan_periods(load_history(tiny_data), TrainParams(holdout_days=7, train_days=days))
    assert periods.train[1] - periods.train[0] == days  # the final fit: the last N labelled days
    fold = periods.fold_train[1] - periods.fold_train[0]
    assert 7 <= fold <= days and periods.validation[0] - periods.fold_train[1] == 7


def test_periods_keep_the_label_delay_gap(tiny_data: Path) -> None:
    periods = plan_periods(load_history(tiny_data), TrainParams(holdout_days=7))
    assert periods.validation[0] - periods.fold_train[1] == 7
    assert periods.train[1] == periods.validation[1]


def test_model_with_other_features_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.onnx").write_bytes((tiny_model / "model.onnx").read_bytes())
    meta = orjson.loads((tiny_model / "model.json").read_bytes())
    meta["feature_names"] = list(reversed(meta["feature_names"]))
    (bad / "model.json").write_bytes(orjson.dumps(meta))
    with pytest.raises(ModelError, match="different order"):
        OnnxModel(bad)


def test_policy_description_is_human() -> None:
    assert "100" in ThresholdPolicy("alert_budget", 100.0).describe()
