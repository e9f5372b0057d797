"""scorer/events/labelstate.py: the latest label per (transaction, source) wins; fraud when any says so."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from scorer.events.batches import LabelBatch
from scorer.events.labelstate import LabelState, first_fraud_reports, fraud_as_of

Label = tuple[str, str, int, bool, str]  # transaction, source, reported ms, is_fraud, card
labels_st = st.lists(
    st.tuples(
        st.sampled_from(["t1", "t2", "t3"]), st.sampled_from(["chargeback", "analyst"]), st.integers(0, 5),
        st.booleans(), st.sampled_from(["C1", "C2"]),
    ),
    max_size=12,
)  # fmt: skip


def batch(rows: list[Label]) -> LabelBatch:
    n = len(rows)
    return LabelBatch(
        transaction_id=[r[0] for r in rows], customer_id=[r[4] for r in rows], terminal_id=["T"] * n,
        is_fraud=np.asarray([r[3] for r in rows], dtype=bool),
        reported_ts_ms=np.asarray([r[2] for r in rows], dtype=np.int64), tx_ts_ms=np.full(n, -1),
        source=[r[1] for r in rows],
    )  # fmt: skip


def reference(rows: list[Label]) -> dict[tuple[str, str], Label]:
    """The winner per (transaction, source): greatest reported time, the last to arrive among equals."""
    best: dict[tuple[str, str], tuple[int, int]] = {}
    for i, r in enumerate(rows):
        key = (r[0], r[1])
        if key not in best or (r[2], i) > best[key]:
            best[key] = (r[2], i)
    return {key: rows[i] for key, (_, i) in best.items()}


@given(labels_st, st.integers(0, 12))
def test_the_state_is_the_reference_whatever_the_batches(rows: list[Label], cut: int) -> None:
    state = LabelState()
    state.take_batch(batch(rows[:cut]))
    state.take_batch(batch(rows[cut:]))
    winners = reference(rows)
    expected = {tid for (tid, _), r in winners.items() if r[3]}
    assert {t for t in ("t1", "t2", "t3") if state.fraud(t)} == expected
    assert fraud_as_of(batch(rows)) == expected
    first: dict[str, int] = {}
    for r in winners.values():
        if r[3]:
            first[r[4]] = min(first.get(r[4], r[2]), r[2])
    assert first_fraud_reports(batch(rows)) == first


def test_changes_say_what_a_label_did() -> None:
    state = LabelState()
    assert not state.take("t", "analyst", 10, True).was_fraud
    second = state.take("t", "chargeback", 20, True)
    assert second.taken and not second.flipped  # a chargeback after the verdict: counted once
    late = state.take("t", "analyst", 5, False)
    assert not late.taken and state.fraud("t")  # older than the analyst's latest: ignored
    state.take("t", "analyst", 30, False)
    assert state.fraud("t")  # the chargeback still says fraud
    reversed_ = state.take("t", "chargeback", 40, False)
    assert reversed_.flipped and not reversed_.is_fraud
    state.forget(["t"])
    assert "t" not in state and not state.fraud("t")


def test_fraud_as_of_counts_only_the_known_labels() -> None:
    rows: list[Label] = [("t1", "analyst", 1, True, "C"), ("t1", "analyst", 9, False, "C")]
    assert fraud_as_of(batch(rows), np.asarray([True, False])) == {"t1"}
    assert fraud_as_of(batch(rows)) == set()
