"""Decision encoding: the batch encoder writes exactly what one dict + orjson.dumps per decision writes."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scorer.config import DEFAULT_MODEL
from scorer.events.batches import TransactionBatch
from scorer.features.engine import FEATURE_NAMES
from scorer.rollout.serving import RolloutFields
from scorer.scoring.decisions import Explainer, ScoredBatch, encode_decisions, encode_decisions_dicts

EXPLAINER = Explainer.for_model(DEFAULT_MODEL, FEATURE_NAMES)
ids = st.text(min_size=0, max_size=12)  # quotes, backslashes, control characters, '","', '%', non-ASCII
numbers = st.floats(allow_nan=True, allow_infinity=False, width=64)


def _scored(
    tx: list[str], customers: list[str], amounts: list[float], scores: list[float], version: str
) -> ScoredBatch:
    n = len(tx)
    rng = np.random.default_rng(n)
    batch = TransactionBatch(
        tx, customers, [f"T{i}" for i in range(n)], np.asarray(amounts, dtype=np.float64),
        1_767_225_600_000 + rng.integers(0, 10**9, n), [None] * n, [None] * n, [None] * n,
    )  # fmt: skip
    features = (rng.standard_normal((n, len(FEATURE_NAMES))) * 100).astype(np.float32)
    s = np.asarray(scores, dtype=np.float64)
    return ScoredBatch(batch, features, s, s > 0.5, 0.0920, version)


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.tuples(ids, ids, numbers, numbers), min_size=0, max_size=20),
    version=st.text(max_size=10),
)
def test_the_batch_encoder_equals_one_dumps_per_decision(
    rows: list[tuple[str, str, float, float]], version: str
) -> None:
    scored = _scored(
        [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows], version
    )
    fast = encode_decisions(scored, EXPLAINER, 1_767_225_700_123)
    assert fast == encode_decisions_dicts(scored, EXPLAINER, 1_767_225_700_123)
    for doc, tx in zip(fast, scored.batch.transaction_id, strict=True):
        assert orjson.loads(doc)["transaction_id"] == tx
    scored.with_features = True
    fast = encode_decisions(scored, EXPLAINER, 1_767_225_700_123)
    assert fast == encode_decisions_dicts(scored, EXPLAINER, 1_767_225_700_123)
    for doc, row in zip(fast, scored.features, strict=True):  # float32 round trip: the values as scored
        assert np.array_equal(np.asarray(orjson.loads(doc)["features"], dtype=np.float32), row)


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.tuples(ids, numbers, numbers, numbers, numbers, st.booleans()), min_size=1, max_size=20),
    version=st.text(max_size=8),
    scored_by_challenger=st.booleans(),
)
def test_rollout_fields_under_a_plan_are_written_as_the_dict_path_writes_them(
    rows: list[tuple[str, float, float, float, float, bool]], version: str, scored_by_challenger: bool
) -> None:
    """Each row's threshold replaces the document's; its other fields follow scored_at, in their order."""
    scored = _scored([r[0] for r in rows], ["c"] * len(rows), [1.0] * len(rows), [r[1] for r in rows], "d/2")
    challenger = np.asarray([r[3] for r in rows]) if scored_by_challenger else None
    scored.extra = RolloutFields(
        version, np.asarray([r[2] for r in rows]), challenger, np.asarray([r[4] for r in rows]),
        np.asarray([r[5] for r in rows]),
    )  # fmt: skip
    fast = encode_decisions(scored, EXPLAINER, 0)
    assert fast == encode_decisions_dicts(scored, EXPLAINER, 0)


def test_the_threshold_of_a_row_under_a_plan_is_its_own() -> None:
    scored = _scored(["a", "b"], ["c", "d"], [1.0, 2.0], [0.1, 0.9], "default/2")
    scored.extra = RolloutFields(
        "default/3",
        np.array([0.5, 0.5]),
        np.array([0.2, np.nan]),
        np.array([0.3, 0.4]),
        np.array([False, True]),
    )
    docs = [orjson.loads(d) for d in encode_decisions(scored, EXPLAINER, 0)]
    assert [d["threshold"] for d in docs] == [0.3, 0.4] and docs[1]["flagged"] is True
    assert list(docs[0])[-4:] == ["scored_at", "challenger_version", "blend_weight", "challenger_score"]
    assert docs[1]["challenger_fallback"] is True and "challenger_score" not in docs[1]


def _median_row() -> np.ndarray:
    """A typical transaction of the default model's training data: each feature at its median."""
    reference = orjson.loads((DEFAULT_MODEL / "model.json").read_bytes())["reference"]["features"]
    medians = [reference[n]["edges"][len(reference[n]["edges"]) // 2] for n in FEATURE_NAMES]
    return np.asarray([medians], dtype=np.float32)


def test_an_alerted_decision_gives_its_three_largest_contributions_an_approval_none() -> None:
    """The issue's case: an amount of 3,000 on an otherwise typical card and terminal is explained by the
    amount first, not by a terminal risk at its most common value 0."""
    X = np.repeat(_median_row(), 2, axis=0)
    X[0, FEATURE_NAMES.index("amount")] = 3000.0
    X[0, FEATURE_NAMES.index("log_amount")] = np.log1p(3000.0)
    scored = _scored(["a", "b"], ["c", "d"], [3000.0, 45.2], [0.82, 0.01], "default/2")
    scored.features = X
    alerted, approved = (orjson.loads(d) for d in encode_decisions(scored, EXPLAINER, 0))
    assert approved["reasons"] == []
    assert EXPLAINER.shap is not None
    phi = EXPLAINER.shap.contributions(X[:1])[0]
    top = np.argsort(-np.abs(phi), kind="stable")[:3]
    assert [r["feature"] for r in alerted["reasons"]] == [FEATURE_NAMES[i] for i in top]
    assert [r["contribution"] for r in alerted["reasons"]] == phi[top].round(6).tolist()
    assert [r["value"] for r in alerted["reasons"]] == X[0, top].tolist()
    assert alerted["reasons"][0]["feature"] == "amount" and alerted["reasons"][0]["contribution"] > 1.0
    assert "term_fresh_risk_7d" not in [r["feature"] for r in alerted["reasons"]]


def test_a_model_without_covers_gives_no_reasons_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("model.onnx", "model.json"):
        shutil.copy(DEFAULT_MODEL / name, tmp_path / name)
    with caplog.at_level(logging.WARNING):
        explainer = Explainer.for_model(tmp_path, FEATURE_NAMES, "old/1")
    assert [r.getMessage() for r in caplog.records] == ["reasons_unavailable"]
    assert "covers.npz" in caplog.records[0].reason  # type: ignore[attr-defined]
    scored = _scored(["a"], ["c"], [3000.0], [0.9], "old/1")
    assert orjson.loads(encode_decisions(scored, explainer, 0)[0])["reasons"] == []
    assert encode_decisions(scored, explainer, 0) == encode_decisions_dicts(scored, explainer, 0)
