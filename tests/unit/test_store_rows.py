"""scorer/store/rows.py: a batch of decisions checked a column at a time says what the per-record reference
says of each record, whatever the records hold."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from scorer.store import rows

VALID: dict[str, Any] = {
    "transaction_id": "tx1", "customer_id": "C1", "terminal_id": "T1", "amount": 12.5,
    "timestamp": "2026-03-01T10:00:00.000Z", "score": 0.25, "flagged": False, "action": "approve",
    "action_source": "model", "threshold": 0.5, "model_version": "m/1", "reasons": [],
    "scored_at": "2026-03-01T10:00:00.100Z", "features": [1.0, 2],
}  # fmt: skip
json_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=3),
    st.sampled_from(rows.ACTIONS),
    st.lists(st.one_of(st.integers(-2, 2), st.floats(-2, 2), st.booleans(), st.none()), max_size=3),
    st.dictionaries(st.text(max_size=2), st.integers(-(2**63), 2**63 - 1), max_size=1),  # JSON: 64-bit
)
changes = st.dictionaries(st.sampled_from(sorted(VALID)), st.one_of(json_values, st.just(...)), max_size=2)


def record(change: dict[str, Any] | None) -> bytes:
    """A valid decision with fields changed (`...`: removed); None: not a JSON object at all."""
    if change is None:
        return b"[1, 2]"
    doc = {k: v for k, v in VALID.items() if change.get(k, 0) is not ...}
    doc.update({k: v for k, v in change.items() if v is not ...})
    return orjson.dumps(doc)


batches = st.lists(st.one_of(st.just({}), changes, st.none(), st.just("bytes")), min_size=0, max_size=8).map(
    lambda cs: [b"{not json" if c == "bytes" else record(c) for c in cs]
)


@given(batches)
def test_the_column_checks_keep_what_the_reference_keeps(values: list[bytes]) -> None:
    docs, kept, fields = rows._decisions(values)
    reference = [i for i, v in enumerate(values) if rows._decision(v) is not None]
    assert kept == reference
    assert docs == [orjson.loads(values[i]) for i in reference]
    assert fields == {name: [doc[name] for doc in docs] for name in rows._REQUIRED}


@given(st.lists(json_values, max_size=6))
def test_feature_vectors_are_kept_only_when_they_are_arrays_of_numbers(values: list[Any]) -> None:
    def reference(v: Any) -> Any:
        return v if isinstance(v, list) and all(type(x) in (int, float) for x in v) else None

    assert rows._vectors(values) == [reference(v) for v in values]


def test_a_clean_batch_is_read_at_once_and_one_bad_record_falls_back_to_the_reference() -> None:
    good = [record({"transaction_id": f"tx{i}"}) for i in range(3)]
    assert rows._decisions(good)[1] == [0, 1, 2]
    assert rows._decisions([*good, record({"flagged": 1})])[1] == [0, 1, 2]
    assert rows._decisions([good[0], None, b"", good[1]])[1] == [0, 3]  # type: ignore[list-item]


class _LabelMessage:
    """The Message methods label_rows reads."""

    def __init__(self, value: bytes, offset: int) -> None:
        self._value, self._offset = value, offset

    def value(self) -> bytes:
        return self._value

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


def test_label_rows_store_the_analysts_fields_as_the_console_publishes_them() -> None:
    base = {"transaction_id": "tx1", "customer_id": "C1", "terminal_id": "T1", "is_fraud": True,
            "reported_at": "2026-03-05T10:00:00Z"}  # fmt: skip
    docs = [
        base,
        {**base, "source": "analyst", "analyst_id": "alice", "case_id": "C1"},
        {**base, "source": "analyst", "is_fraud": False, "analyst_id": "bob", "case_id": "C1"},  # a reversal
        {**base, "source": "bank"},  # no such source: refused, as every consumer refuses it
    ]
    msgs = [_LabelMessage(orjson.dumps(d), i) for i, d in enumerate(docs)]
    out = rows.label_rows(msgs, 65_536)  # type: ignore[arg-type]
    assert out.columns["source"] == ["chargeback", "analyst"]  # one row per (transaction, source): the last
    assert out.columns["is_fraud"] == [True, False]
    assert out.columns["analyst"] == [None, "bob"]
    assert out.columns["case_id"] == [None, "C1"]
    assert out.skipped == {"invalid_label": 1}
