"""Live quality: decisions joined with delayed labels give the figures `scorer evaluate` gives offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scorer.events.batches import LabelBatch
from scorer.events.timestamps import MS_PER_DAY
from scorer.model.onnx import OnnxModel
from scorer.monitoring.livequality import DecisionRows, LiveQuality
from scorer.training.dataset import load_history
from scorer.training.evaluate import evaluate

TEST_DAYS = 5


def label_slice(labels: LabelBatch, idx: np.ndarray) -> LabelBatch:
    return LabelBatch(
        transaction_id=[labels.transaction_id[i] for i in idx], customer_id=[labels.customer_id[i] for i in idx],
        terminal_id=[labels.terminal_id[i] for i in idx], is_fraud=labels.is_fraud[idx],
        reported_ts_ms=labels.reported_ts_ms[idx], tx_ts_ms=labels.tx_ts_ms[idx],
    )  # fmt: skip


@pytest.fixture(scope="module")
def offline(tiny_data: Path, tiny_model: Path) -> Any:
    history = load_history(tiny_data)
    model = OnnxModel(tiny_model)
    return history, model, evaluate(history, model, TEST_DAYS)


def rows_of(history: Any, model: OnnxModel, evaluation: Any, idx: np.ndarray) -> DecisionRows:
    tx = history.transactions
    position = {t: i for i, t in enumerate(tx.transaction_id)}
    ids = [evaluation.transaction_ids[i] for i in idx]
    at = np.asarray([position[t] for t in ids])
    scores = evaluation.scores[idx]
    return DecisionRows(
        model.label,
        ids,
        [tx.customer_id[i] for i in at],
        tx.event_ts_ms[at],
        scores,
        scores >= model.threshold,
    )


def test_live_figures_equal_scorer_evaluate(offline: Any) -> None:
    history, model, evaluation = offline
    labels = history.labels
    n = len(evaluation.transaction_ids)
    store = LiveQuality(max_rows=10**6, keep_days=60)
    half = len(labels.transaction_id) // 2
    store.add_labels(label_slice(labels, np.arange(half)))  # some labels before their decisions
    order = np.random.default_rng(0).permutation(n)
    for chunk in np.array_split(order, 7):
        store.add(rows_of(history, model, evaluation, chunk))
    store.add(rows_of(history, model, evaluation, order[:500]))  # redelivered decisions replace, not add
    store.add_labels(label_slice(labels, np.arange(half, len(labels.transaction_id))))
    days = store.days(model.label)
    assert len(days) == TEST_DAYS
    live = store.figures(model.label, days)
    report = evaluation.report
    assert live["decisions"] == report["n_transactions"]
    assert live["frauds"] == report["n_fraud"]
    for metric in ("precision", "recall", "average_precision", "card_precision_at_100"):
        assert live[metric] == pytest.approx(report[metric], abs=1e-12), metric


def test_mature_days_wait_for_the_label_delay(offline: Any) -> None:
    history, model, evaluation = offline
    store = LiveQuality(max_rows=10**6, keep_days=60)
    store.add(rows_of(history, model, evaluation, np.arange(len(evaluation.transaction_ids))))
    days = store.days(model.label)
    assert store.mature_days(model.label, 7, 3) == []
    labels = history.labels
    store.add_labels(label_slice(labels, np.arange(len(labels.transaction_id))))
    last_complete = (store.label_watermark_ms - 7 * MS_PER_DAY) // MS_PER_DAY
    mature = store.mature_days(model.label, 7, 3)
    assert mature == [d for d in days if d < last_complete][-3:]


def test_the_store_keeps_only_the_newest_days_when_full(offline: Any) -> None:
    history, model, evaluation = offline
    n = len(evaluation.transaction_ids)
    store = LiveQuality(max_rows=n // 2, keep_days=60)
    store.add(rows_of(history, model, evaluation, np.arange(n)))
    days = store.days(model.label)
    assert store.size <= n // 2
    assert len(days) < TEST_DAYS and days[-1] == store.newest_day
    kept = store.figures(model.label, days)
    assert kept["decisions"] == store.size
    assert len(store.index) == store.size


def test_a_report_store_keeps_only_its_days_however_old(offline: Any) -> None:
    history, model, evaluation = offline
    n = len(evaluation.transaction_ids)
    everything = LiveQuality(max_rows=10**6, keep_days=60)
    everything.add(rows_of(history, model, evaluation, np.arange(n)))
    first = everything.days(model.label)[0]
    store = LiveQuality(max_rows=10**6, keep_days=10**6, only_days=(first, first + 1))
    store.add(rows_of(history, model, evaluation, np.arange(n)))
    assert store.days(model.label) == [first, first + 1]
    assert (
        store.figures(model.label, [first])["decisions"]
        == everything.figures(model.label, [first])["decisions"]
    )


def test_each_action_band_gets_its_precision_and_recall() -> None:
    store = LiveQuality(max_rows=100, keep_days=60)
    day_ms = 20_000 * MS_PER_DAY
    ids = [f"t{i}" for i in range(10)]
    action = np.asarray([0, 0, 0, 0, 1, 1, 1, 2, 2, 2], dtype=np.int8)
    store.add(
        DecisionRows("m/1", ids, ["C"] * 10, np.full(10, day_ms), np.linspace(0, 1, 10), action > 0, action)
    )
    frauds = [3, 5, 8, 9]  # one approved, one of three reviews, two of three declines
    store.add_labels(LabelBatch(
        transaction_id=[ids[i] for i in frauds], customer_id=["C"] * 4, terminal_id=["T"] * 4,
        is_fraud=np.ones(4, dtype=bool), reported_ts_ms=np.full(4, day_ms + 5), tx_ts_ms=np.full(4, day_ms),
    ))  # fmt: skip
    bands = store.bands("m/1", [20_000])
    assert bands["review"] == {"decisions": 3, "precision": pytest.approx(1 / 3), "recall": 0.25}
    assert bands["decline"] == {"decisions": 3, "precision": pytest.approx(2 / 3), "recall": 0.5}
    assert store.bands("other/1", [20_000]) == {}


def verdicts(rows: list[tuple[str, str, bool, int]], day_ms: int) -> LabelBatch:
    """Labels (transaction id, source, is_fraud, reported ms after day_ms) of card C, terminal T."""
    n = len(rows)
    return LabelBatch(
        transaction_id=[r[0] for r in rows], customer_id=["C"] * n, terminal_id=["T"] * n,
        is_fraud=np.asarray([r[2] for r in rows], dtype=bool),
        reported_ts_ms=np.asarray([day_ms + r[3] for r in rows], dtype=np.int64),
        tx_ts_ms=np.full(n, day_ms), source=[r[1] for r in rows],
    )  # fmt: skip


def band_store(day_ms: int) -> LiveQuality:
    store = LiveQuality(max_rows=100, keep_days=60)
    ids = [f"t{i}" for i in range(4)]
    action = np.asarray([0, 1, 1, 2], dtype=np.int8)
    store.add(
        DecisionRows("m/1", ids, ["C"] * 4, np.full(4, day_ms), np.linspace(0, 1, 4), action > 0, action)
    )
    return store


def test_a_second_label_for_a_transaction_never_counts_twice() -> None:
    day_ms = 20_000 * MS_PER_DAY
    store = band_store(day_ms)
    store.add_labels(verdicts([("t1", "analyst", True, 10), ("t1", "chargeback", True, 20)], day_ms))
    store.add_labels(verdicts([("t1", "chargeback", True, 30), ("t1", "analyst", True, 10)], day_ms))
    figures = store.figures("m/1", [20_000])
    assert figures["frauds"] == 1
    assert store.bands("m/1", [20_000])["review"]["precision"] == 0.5


def test_a_reversed_verdict_changes_the_counts_and_a_chargeback_still_stands() -> None:
    day_ms = 20_000 * MS_PER_DAY
    store = band_store(day_ms)
    store.add_labels(verdicts([("t1", "analyst", True, 10), ("t3", "analyst", True, 10)], day_ms))
    assert store.figures("m/1", [20_000])["frauds"] == 2
    store.add_labels(verdicts([("t1", "analyst", False, 50)], day_ms))  # reversed
    assert store.figures("m/1", [20_000])["frauds"] == 1
    assert store.bands("m/1", [20_000])["review"]["precision"] == 0.0
    store.add_labels(verdicts([("t1", "analyst", True, 40)], day_ms))  # older than the reversal: no effect
    assert store.figures("m/1", [20_000])["frauds"] == 1
    store.add_labels(verdicts([("t3", "chargeback", True, 60), ("t3", "analyst", False, 70)], day_ms))
    assert store.figures("m/1", [20_000])["frauds"] == 1  # the chargeback still says fraud
    assert store.bands("m/1", [20_000])["decline"]["precision"] == 1.0


def test_decisions_that_come_after_a_reversal_are_genuine() -> None:
    day_ms = 20_000 * MS_PER_DAY
    store = LiveQuality(max_rows=100, keep_days=60)
    store.add_labels(verdicts([("t1", "analyst", True, 10), ("t1", "analyst", False, 20)], day_ms))
    store.add(DecisionRows("m/1", ["t1"], ["C"], np.full(1, day_ms), np.ones(1), np.ones(1, dtype=bool)))
    assert store.figures("m/1", [20_000])["frauds"] == 0
    assert store.first_report.data[store.cards["C"]] < 0  # a reversed verdict dates no compromise


def test_a_card_is_dated_by_its_standing_fraud_labels() -> None:
    day_ms = 20_000 * MS_PER_DAY
    store = LiveQuality(max_rows=100, keep_days=60)
    store.add_labels(verdicts([("t1", "analyst", True, 10), ("t2", "chargeback", True, 30)], day_ms))
    card = store.cards["C"]
    assert store.first_report.data[card] == day_ms + 10
    store.add_labels(verdicts([("t1", "analyst", False, 40)], day_ms))
    assert store.first_report.data[card] == day_ms + 30
