"""Decision encoding: the batch encoder writes exactly what one dict + orjson.dumps per decision writes."""

from __future__ import annotations

import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from scorer.config import DEFAULT_MODEL
from scorer.events.batches import TransactionBatch
from scorer.features.engine import FEATURE_NAMES
from scorer.model.onnx import read_meta
from scorer.rollout.serving import RolloutFields
from scorer.scoring.decisions import Explainer, ScoredBatch, encode_decisions, encode_decisions_dicts

EXPLAINER = Explainer.from_meta(read_meta(DEFAULT_MODEL).raw, FEATURE_NAMES)
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
