"""TreeSHAP (scorer/model/shap.py) against a brute-force Shapley computation, LightGBM's own contributions
and onnxruntime's margins; the ONNX tree reader (scorer/model/trees.py) and the covers file."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scorer.errors import ModelError
from scorer.model.shap import COVERS_FILE, TreeExplainer, read_covers, write_covers
from scorer.model.trees import TreeEnsemble, read_tree_ensemble

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "models" / "default" / "2"
N_FEATURES = 5


def small_data(n: int = 3000, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Five features, two of them with a point mass at 0 and one with missing values; the label depends
    on an interaction, so trees split the same feature more than once on a path."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    X[rng.random(n) < 0.7, 1] = 0.0  # a point mass, like term_fresh_risk_7d
    X[rng.random(n) < 0.1, 2] = np.nan
    logit = 1.5 * X[:, 0] + 2.0 * (X[:, 1] > 0.5) - np.abs(X[:, 3]) + np.nan_to_num(X[:, 2], nan=1.0)
    y = rng.random(n) < 1 / (1 + np.exp(-logit))
    return X, y


@pytest.fixture(scope="module")
def small_model() -> tuple[Any, bytes, np.ndarray]:
    lgb = pytest.importorskip("lightgbm")
    from scorer.training.learner import FIXED, float32_exact, to_onnx

    X, y = small_data()
    params = {
        **FIXED,
        "objective": "binary",
        "seed": 1,
        "num_leaves": 8,
        "min_child_samples": 20,
        "verbose": -1,
    }
    booster = float32_exact(lgb.train({**params, "n_estimators": 12}, lgb.Dataset(X, label=y.astype(int))))
    return booster, to_onnx(booster, N_FEATURES), X


def brute_force(trees: TreeEnsemble, covers: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, float]:
    """Shapley values of x by enumerating every subset of features, with the path-dependent value
    function: at a split on a known feature follow x, otherwise both children weighted by cover."""

    def expect(node: int, known: frozenset[int]) -> float:
        if trees.is_leaf[node]:
            return float(trees.value[node])
        f, left, right = int(trees.feature[node]), int(trees.left[node]), int(trees.right[node])
        if f in known:
            v = x[f]
            go_left = bool(trees.nan_left[node]) if np.isnan(v) else bool(v <= trees.threshold[node])
            return expect(left if go_left else right, known)
        c = covers[node]
        return (covers[left] * expect(left, known) + covers[right] * expect(right, known)) / c

    def value(known: frozenset[int]) -> float:
        return trees.base + sum(expect(int(r), known) for r in trees.roots)

    n = len(x)
    phi = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for size in range(n):
            weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            for subset in itertools.combinations(others, size):
                s = frozenset(subset)
                phi[i] += weight * (value(s | {i}) - value(s))
    return phi, value(frozenset())


def test_reader_gives_onnxruntime_margins(small_model: tuple[Any, bytes, np.ndarray]) -> None:
    import onnxruntime as ort

    _, onnx_bytes, X = small_model
    trees = read_tree_ensemble(onnx_bytes)
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    proba = session.run(["probabilities"], {"features": X})[0][:, 1]
    assert trees.post_transform == "LOGISTIC"
    np.testing.assert_allclose(1 / (1 + np.exp(-trees.margin(X))), proba, atol=2e-6)


def test_contributions_equal_brute_force_shapley(small_model: tuple[Any, bytes, np.ndarray]) -> None:
    from scorer.training.learner import booster_covers

    booster, onnx_bytes, X = small_model
    trees = read_tree_ensemble(onnx_bytes)
    covers = booster_covers(booster, trees)
    explainer = TreeExplainer(trees, covers, N_FEATURES)
    missing = np.flatnonzero(np.isnan(X[:, 2]))[:3]
    rows = X[np.r_[np.arange(5), missing]]
    assert (rows[:, 1] == 0).any() and (rows[:, 1] != 0).any()  # on and off the point mass
    got = explainer.contributions(rows)
    for x, phi in zip(rows, got, strict=True):
        expected, base = brute_force(trees, covers, x)
        np.testing.assert_allclose(phi, expected, rtol=1e-9, atol=1e-10)
        assert explainer.base == pytest.approx(base, abs=1e-10)


def test_contributions_equal_lightgbm_pred_contrib(small_model: tuple[Any, bytes, np.ndarray]) -> None:
    from scorer.training.learner import booster_covers

    booster, onnx_bytes, X = small_model
    trees = read_tree_ensemble(onnx_bytes)
    explainer = TreeExplainer(trees, booster_covers(booster, trees), N_FEATURES)
    theirs = booster.predict(X[:500], pred_contrib=True)
    np.testing.assert_allclose(explainer.contributions(X[:500]), theirs[:, :N_FEATURES], atol=1e-6)
    np.testing.assert_allclose(explainer.base, theirs[:, N_FEATURES], atol=1e-6)


def test_contributions_add_up_to_the_shipped_models_margin() -> None:
    """default/2 with its backfilled covers: base + contributions = the margin onnxruntime scores, on
    rows spread over each feature's training range, some of them with missing values."""
    import onnxruntime as ort
    import orjson

    onnx_bytes = (DEFAULT_MODEL / "model.onnx").read_bytes()
    trees = read_tree_ensemble(onnx_bytes)
    explainer = TreeExplainer(trees, read_covers(DEFAULT_MODEL / COVERS_FILE, trees), 26)
    reference = orjson.loads((DEFAULT_MODEL / "model.json").read_bytes())["reference"]["features"]
    rng = np.random.default_rng(5)
    low = np.asarray([f["min"] for f in reference.values()])
    high = np.asarray([f["max"] for f in reference.values()])
    X = (low + (high - low) * rng.random((300, 26)) ** 3).astype(np.float32)  # more rows near the minimum
    X[rng.random(X.shape) < 0.02] = np.nan
    phi = explainer.contributions(X)
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    proba = session.run(["probabilities"], {"features": X})[0][:, 1].astype(np.float64)
    np.testing.assert_allclose(explainer.base + phi.sum(axis=1), trees.margin(X), atol=1e-9)
    np.testing.assert_allclose(1 / (1 + np.exp(-(explainer.base + phi.sum(axis=1)))), proba, atol=2e-6)
    assert (np.abs(phi) > 0).sum(axis=1).min() >= 3  # every row has reasons to give


def test_covers_file_round_trip_and_refusals(
    tmp_path: Path, small_model: tuple[Any, bytes, np.ndarray]
) -> None:
    from scorer.training.learner import booster_covers

    booster, onnx_bytes, _ = small_model
    trees = read_tree_ensemble(onnx_bytes)
    covers = booster_covers(booster, trees)
    write_covers(tmp_path / COVERS_FILE, trees, covers, "test")
    np.testing.assert_array_equal(read_covers(tmp_path / COVERS_FILE, trees), covers)
    missing = {"tree_ids": trees.tree_id[1:], "node_ids": trees.node_id[1:], "covers": covers[1:]}
    np.savez(tmp_path / "missing.npz", **missing)
    with pytest.raises(ModelError, match="no cover for node"):
        read_covers(tmp_path / "missing.npz", trees)
    split = int(np.flatnonzero(~trees.is_leaf)[0])
    bad = covers.copy()
    bad[split] += 5  # the children no longer add up to it
    np.savez(tmp_path / "bad.npz", tree_ids=trees.tree_id, node_ids=trees.node_id, covers=bad)
    with pytest.raises(ModelError, match="do not add up"):
        read_covers(tmp_path / "bad.npz", trees)
    with pytest.raises(ModelError, match="unreadable covers"):
        read_covers(tmp_path / "absent.npz", trees)


def test_pushed_covers_count_the_rows_reaching_each_node(small_model: tuple[Any, bytes, np.ndarray]) -> None:
    """The backfill's covers: pushing the training rows through the trees counts what LightGBM counted
    when every row is in every tree's bag (here: no bagging)."""
    lgb = pytest.importorskip("lightgbm")
    from scorer.training.covers import pushed_covers
    from scorer.training.learner import booster_covers, float32_exact, to_onnx

    X, y = small_data(800, seed=9)
    booster = float32_exact(
        lgb.train(
            {"objective": "binary", "num_leaves": 6, "n_estimators": 5, "verbose": -1, "deterministic": True},
            lgb.Dataset(X, label=y.astype(int)),
        )
    )
    trees = read_tree_ensemble(to_onnx(booster, N_FEATURES))
    np.testing.assert_array_equal(pushed_covers(trees, X), booster_covers(booster, trees))


def test_a_model_that_is_not_a_tree_ensemble_is_refused() -> None:
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["features"], ["probabilities"])],
        "g",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3])],
    )
    model = helper.make_model(graph)
    with pytest.raises(ModelError, match=r"found the operators \['Relu'\]"):
        read_tree_ensemble(model.SerializeToString())
    with pytest.raises(ModelError, match="not a readable ONNX model"):
        read_tree_ensemble(b"\x3a\xff\xff")


def test_training_writes_covers_that_explain_the_model(tiny_model: Path) -> None:
    """`scorer train` stores LightGBM's counts beside the model, saying so; with them base + contributions
    give onnxruntime's score."""
    import onnxruntime as ort

    from scorer.training.learner import BOOSTER_SOURCE

    with np.load(tiny_model / COVERS_FILE) as doc:
        assert str(doc["source"]) == BOOSTER_SOURCE
    onnx_bytes = (tiny_model / "model.onnx").read_bytes()
    trees = read_tree_ensemble(onnx_bytes)
    explainer = TreeExplainer(trees, read_covers(tiny_model / COVERS_FILE, trees), 26)
    X = np.random.default_rng(2).gamma(1.0, 20.0, (50, 26)).astype(np.float32)
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    proba = session.run(["probabilities"], {"features": X})[0][:, 1]
    margin = explainer.base + explainer.contributions(X).sum(axis=1)
    np.testing.assert_allclose(1 / (1 + np.exp(-margin)), proba, atol=2e-6)
