"""The live comparison that promotes or retires a shadow challenger (retrain/compare.py)."""

from __future__ import annotations

import numpy as np

from scorer.db.history import ShadowRows
from scorer.retrain.compare import MAX_SHADOW_FACTOR, Evidence, band_precision, gather, judge


def test_band_precision_takes_each_days_top_scores() -> None:
    day = np.array([0, 0, 0, 1, 1, 1])
    score = np.array([0.9, 0.1, 0.5, 0.2, 0.8, 0.7])
    fraud = np.array([True, False, False, False, False, True])
    # day 0's top 2: 0.9 (fraud), 0.5; day 1's: 0.8, 0.7 (fraud) -> 2 of 4
    assert band_precision(day, score, fraud, 2) == 0.5
    assert band_precision(day, score, fraud, 1) == 0.5  # 0.9 (fraud) and 0.8
    assert np.isnan(band_precision(day[:0], score[:0], fraud[:0], 1))


def _rows(n_days: int, challenger_better: bool, seed: int = 1) -> ShadowRows:
    rng = np.random.default_rng(seed)
    n = 400 * n_days
    fraud = rng.random(n) < 0.03
    noise = rng.random(n)
    good = np.where(fraud, 0.6 + 0.4 * noise, 0.7 * noise)
    champion, challenger = (noise, good) if challenger_better else (good, noise)
    return ShadowRows(np.repeat(np.arange(n_days), 400), champion, challenger, champion > 0.9, fraud)


def test_a_better_challenger_is_promoted_and_a_worse_one_retired() -> None:
    better = gather(_rows(3, challenger_better=True), 3.0)
    assert better.frauds > 20 and better.challenger_ap > better.champion_ap + 0.1
    assert better.challenger_precision > better.champion_precision
    assert judge(better, 3.0, 20, 0.01).outcome == "promote"
    worse = gather(_rows(3, challenger_better=False), 3.0)
    verdict = judge(worse, 3.0, 20, 0.01)
    assert verdict.outcome == "retire" and "not better" in verdict.reason


def test_a_challenger_level_with_the_champion_is_retired_by_the_margin() -> None:
    rows = _rows(3, challenger_better=True)
    same = ShadowRows(rows.day, rows.challenger, rows.challenger.copy(), rows.alerted, rows.fraud)
    verdict = judge(gather(same, 3.0), 3.0, 20, 0.01)
    assert verdict.outcome == "retire" and "margin 0.01" in verdict.reason


def test_the_decision_waits_for_days_and_frauds_then_gives_up_for_want_of_evidence() -> None:
    evidence = gather(_rows(3, challenger_better=True), 1.0)
    assert judge(evidence, 3.0, 20, 0.01).outcome == "wait"  # too few days
    assert judge(gather(_rows(3, True), 3.0), 3.0, 10_000, 0.01).outcome == "wait"  # too few frauds
    starved = Evidence(1000, 2, MAX_SHADOW_FACTOR * 3.0, 5, 0.1, 0.9, 0.1, 0.9)
    verdict = judge(starved, 3.0, 20, 0.01)
    assert verdict.outcome == "retire" and "not enough evidence" in verdict.reason


def test_no_labelled_fraud_is_never_a_promotion() -> None:
    rows = _rows(3, challenger_better=True)
    none = ShadowRows(rows.day, rows.champion, rows.challenger, rows.alerted, np.zeros(len(rows), dtype=bool))
    evidence = gather(none, 3.0)
    assert evidence.frauds == 0 and np.isnan(evidence.challenger_ap)
    assert judge(evidence, 3.0, 0, 0.01).outcome == "retire"
