"""Serving under a plan: blended scores and thresholds, fallback to the champion, shadow scores apart."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scorer.config import DEFAULT_MODEL
from scorer.events.decode import decode_transactions
from scorer.model.onnx import OnnxModel
from scorer.rollout.plans import Plan
from scorer.rollout.serving import Serving
from scorer.training.simulate import SimulationParams, simulate, transaction_values

DAY = 86_400_000


@pytest.fixture(scope="module")
def inputs() -> tuple[Any, Any]:
    data = simulate(SimulationParams(customers=100, terminals=80, days=10, seed=1))
    batch = decode_transactions(transaction_values(data, np.arange(200, dtype=np.int64))).batch
    X = np.random.default_rng(0).random((len(batch), 26)).astype(np.float32)
    return batch, X


def plan(strategy: str, start_ms: int, **kw: Any) -> Plan:
    return Plan(
        plan_id="p", strategy=strategy, champion="tiny/1", challenger="tiny/1", start_ms=start_ms, **kw
    )


def timings() -> tuple[list[str], Any]:
    seen: list[str] = []
    return seen, lambda label, seconds: seen.append(label)


def test_blend_halfway_scores_the_mean_and_records_the_weight(
    tiny_model: Path, inputs: tuple[Any, Any]
) -> None:
    batch, X = inputs
    champion, challenger = OnnxModel(tiny_model), OnnxModel(tiny_model)
    challenger.predict = lambda X: np.full(len(X), 0.9)  # type: ignore[method-assign]
    t0 = int(batch.event_ts_ms.min())
    serving = Serving(
        champion, challenger, plan("blend", t0 - DAY, end_ms=int(batch.event_ts_ms.max()) + DAY * 10)
    )
    seen, timed = timings()
    out = serving.score(X, batch, timed)
    weight = np.array([row["blend_weight"] for row in (out.extra.rows() if out.extra else [])])
    assert ((weight > 0) & (weight < 1)).all() and out.fallbacks == 0
    expected = (1 - weight) * champion.predict(X) + weight * 0.9
    assert np.allclose(out.scores, expected)
    assert {row["challenger_score"] for row in (out.extra.rows() if out.extra else [])} == {0.9}
    assert seen == ["tiny/1", "tiny/1"]  # both models timed


def test_a_failing_challenger_falls_back_and_is_counted(tiny_model: Path, inputs: tuple[Any, Any]) -> None:
    batch, X = inputs
    champion, challenger = OnnxModel(tiny_model), OnnxModel(tiny_model)

    def broken(X: Any) -> Any:
        raise RuntimeError("onnxruntime exploded")

    challenger.predict = broken  # type: ignore[method-assign]
    serving = Serving(champion, challenger, plan("direct", 0))
    out = serving.score(X, batch, lambda *_: None)
    assert out.fallbacks == len(X) and np.array_equal(out.scores, champion.predict(X))
    assert all(
        row["challenger_fallback"] and row["blend_weight"] == 0.0
        for row in (out.extra.rows() if out.extra else [])
    )


def test_nan_from_the_challenger_falls_back_per_event(tiny_model: Path, inputs: tuple[Any, Any]) -> None:
    batch, X = inputs
    champion, challenger = OnnxModel(tiny_model), OnnxModel(tiny_model)
    nan_every_third = np.where(np.arange(len(X)) % 3 == 0, np.nan, 0.5)
    challenger.predict = lambda X: nan_every_third  # type: ignore[method-assign]
    out = Serving(champion, challenger, plan("direct", 0)).score(X, batch, lambda *_: None)
    assert out.fallbacks == int(np.isnan(nan_every_third).sum())
    assert np.isfinite(out.scores).all()
    assert np.array_equal(out.scores[1::3], np.full(len(out.scores[1::3]), 0.5))


def test_shadow_never_decides(tiny_model: Path, inputs: tuple[Any, Any]) -> None:
    batch, X = inputs
    champion, challenger = OnnxModel(tiny_model), OnnxModel(tiny_model)
    challenger.predict = lambda X: np.ones(len(X))  # type: ignore[method-assign]
    out = Serving(champion, challenger, plan("shadow", 0)).score(X, batch, lambda *_: None)
    assert np.array_equal(out.scores, champion.predict(X))
    assert np.array_equal(out.flagged, out.scores >= out.review)
    assert out.shadow_scores is not None and (out.shadow_scores == 1.0).all()
    # the decisions carry the shadow score at weight 0 (the store keeps both for `scorer retrain`)
    assert out.extra is not None and out.extra.challenger_score is not None
    assert (out.extra.blend_weight == 0).all() and (out.extra.challenger_score == 1.0).all()
    assert (out.extra.threshold == out.review).all() and not out.extra.fallback.any()


def test_a_slow_challenger_times_out_and_falls_back(tiny_model: Path, inputs: tuple[Any, Any]) -> None:
    batch, X = inputs
    champion, challenger = OnnxModel(tiny_model), OnnxModel(tiny_model)

    def slow(X: Any) -> Any:
        time.sleep(0.5)
        return np.ones(len(X))

    challenger.predict = slow  # type: ignore[method-assign]
    out = Serving(champion, challenger, plan("direct", 0)).score(X, batch, lambda *_: None, timeout_s=0.05)
    assert out.fallbacks == len(X) and out.challenger_scores is None
    assert np.array_equal(out.scores, champion.predict(X))


def test_a_challenger_that_cannot_keep_up_is_skipped_never_queued(inputs: tuple[Any, Any]) -> None:
    batch, X = inputs
    champion, challenger = OnnxModel(DEFAULT_MODEL), OnnxModel(DEFAULT_MODEL)
    release, calls = threading.Event(), []

    def stuck(X: Any) -> Any:
        calls.append(len(X))
        release.wait(30)
        return np.full(len(X), 0.5)

    challenger.predict = stuck  # type: ignore[method-assign]
    serving = Serving(champion, challenger, plan("direct", 0))
    try:
        outs = [serving.score(X, batch, lambda *_: None, timeout_s=0.0) for _ in range(50)]
    finally:
        release.set()
    assert [o.challenger_skipped for o in outs] == [False] + [True] * 49
    assert all(o.fallbacks == len(X) and o.challenger_scores is None for o in outs)  # the champion decided
    deadline = time.monotonic() + 30
    while serving.score(X, batch, lambda *_: None, timeout_s=30).challenger_skipped:
        assert time.monotonic() < deadline  # the stuck batch is finishing
    assert calls == [len(X), len(X)]  # the stuck batch and the last one: the 49 skipped never ran
