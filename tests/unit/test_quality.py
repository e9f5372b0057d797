"""scorer.quality against scikit-learn, slow obvious references and small hand-made cases."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score

from scorer.errors import ConfigError
from scorer.model.quality import (
    Confusion,
    ThresholdPolicy,
    average_precision,
    card_precision_at_k,
    choose_threshold,
    confusion_at,
    quality_report,
    roc_auc,
)

B = npt.NDArray[np.bool_]
F64 = npt.NDArray[np.float64]

# Scores drawn from a few levels so that ties are the rule, not the exception.
labelled_scores = st.integers(1, 60).flatmap(
    lambda n: st.tuples(
        st.lists(st.booleans(), min_size=n, max_size=n),
        st.lists(st.integers(0, 6), min_size=n, max_size=n),
    )
)


def _arrays(pair: tuple[list[bool], list[int]]) -> tuple[B, F64]:
    y, levels = pair
    return np.array(y, dtype=np.bool_), np.array(levels, dtype=np.float64) / 7.0


def _random(rng: np.random.Generator, n: int, levels: int, fraud_rate: float) -> tuple[B, F64]:
    y = rng.random(n) < fraud_rate
    return y, 0.7 * rng.integers(0, levels, n) / levels + 0.3 * y * rng.random(n)  # in [0, 1), fraud higher


# --- roc_auc / average_precision -----------------------------------------------------------


@given(labelled_scores)
def test_roc_auc_matches_sklearn_with_ties(pair: tuple[list[bool], list[int]]) -> None:
    y, s = _arrays(pair)
    if y.all() or not y.any():
        assert math.isnan(roc_auc(y, s))
    else:
        assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


@given(labelled_scores)
def test_average_precision_matches_sklearn_with_ties(pair: tuple[list[bool], list[int]]) -> None:
    y, s = _arrays(pair)
    if y.any():  # sklearn warns (an error here) without positives; covered below
        assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


@pytest.mark.parametrize("seed", range(8))
def test_large_random_data_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y, s = _random(rng, 20_000, levels=[3, 50, 1000, 10**9][seed % 4], fraud_rate=0.02)
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_float32_scores_group_ties_like_sklearn() -> None:
    rng = np.random.default_rng(9)
    y, s = _random(rng, 5_000, levels=20, fraud_rate=0.1)
    s32 = s.astype(np.float32)
    assert roc_auc(y, s32) == pytest.approx(roc_auc_score(y, s32), abs=1e-12)
    assert average_precision(y, s32) == pytest.approx(average_precision_score(y, s32), abs=1e-12)


def test_all_equal_scores() -> None:
    y = np.array([True, False, False, True, False])
    s = np.full(5, 0.3)
    assert roc_auc(y, s) == 0.5
    assert average_precision(y, s) == pytest.approx(0.4)  # one step at the prevalence
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_perfect_and_reversed_ranking() -> None:
    y = np.array([False, False, True, True])
    s = np.array([0.1, 0.2, 0.3, 0.4])
    assert roc_auc(y, s) == 1.0
    assert roc_auc(y, -s) == 0.0
    assert average_precision(y, s) == 1.0


def test_one_class_only() -> None:
    s = np.array([0.1, 0.5, 0.9])
    assert math.isnan(roc_auc(np.zeros(3, np.bool_), s))
    assert math.isnan(roc_auc(np.ones(3, np.bool_), s))
    assert math.isnan(roc_auc(np.zeros(0, np.bool_), np.zeros(0)))
    assert average_precision(np.zeros(3, np.bool_), s) == 0.0  # what sklearn returns, minus its warning
    assert average_precision(np.ones(3, np.bool_), s) == 1.0


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="NaN"):
        roc_auc(np.array([True, False]), np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="equal length"):
        average_precision(np.array([True, False]), np.array([0.1]))


# --- card_precision_at_k -------------------------------------------------------------------


def _cpk(rows: list[tuple[int, int, bool, float, bool]], k: int) -> float:
    day, card, y, s, known = zip(*rows, strict=True)
    return card_precision_at_k(
        np.array(day, np.int64), np.array(card, np.int64), np.array(y), np.array(s), np.array(known), k
    )


# (day, card, fraud, score, known_compromised)
HAND = [
    (0, 1, True, 0.2, False),  # card 1 day 0: a fraud scored low ...
    (0, 1, False, 0.9, False),  # ... and a genuine scored high: card score 0.9, label fraud
    (0, 2, False, 0.5, False),
    (0, 3, False, 0.95, False),  # card 3 is known compromised on one of its rows: excluded all day
    (0, 3, False, 0.1, True),
    (1, 1, False, 0.1, False),
    (1, 2, True, 0.8, False),
    (1, 3, False, 0.7, False),  # card 3 is not known on day 1
]


def test_card_precision_hand_made() -> None:
    assert _cpk(HAND, k=1) == 1.0  # day 0: card 1 (fraud); day 1: card 2 (fraud)
    assert _cpk(HAND, k=2) == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert _cpk(HAND, k=3) == pytest.approx((1 / 3 + 1 / 3) / 2)  # day 0 has only 2 cards left


def test_card_precision_divides_by_k_when_a_day_is_short() -> None:
    assert _cpk(HAND, k=10) == pytest.approx((1 / 10 + 1 / 10) / 2)


def test_card_precision_day_with_only_known_cards_counts_zero() -> None:
    rows = [(0, 1, True, 0.9, False), (1, 1, True, 0.9, True)]
    assert _cpk(rows, k=1) == 0.5


def test_card_precision_ties_go_to_lower_card_code() -> None:
    assert _cpk([(0, 5, False, 0.5, False), (0, 7, True, 0.5, False)], k=1) == 0.0
    assert _cpk([(0, 7, False, 0.5, False), (0, 5, True, 0.5, False)], k=1) == 1.0


def test_card_precision_empty_is_nan() -> None:
    empty = np.zeros(0)
    assert math.isnan(
        card_precision_at_k(empty.astype(np.int64), empty.astype(np.int64), empty > 0, empty, empty > 0)
    )


def _reference_cpk(day: Any, card: Any, y: Any, s: Any, known: Any, k: int) -> float:
    """The handbook's recipe, row by row in plain Python."""
    per_day: dict[int, dict[int, list[Any]]] = {}
    for d, c, f, sc, kn in zip(
        day.tolist(), card.tolist(), y.tolist(), s.tolist(), known.tolist(), strict=True
    ):
        entry = per_day.setdefault(d, {}).setdefault(c, [-math.inf, False, False])
        entry[0], entry[1], entry[2] = max(entry[0], sc), entry[1] or f, entry[2] or kn
    precisions: list[float] = []
    for cards in per_day.values():
        ranked = sorted((-sc, c, f) for c, (sc, f, kn) in cards.items() if not kn)
        precisions.append(sum(f for _, _, f in ranked[:k]) / k)
    return sum(precisions) / len(precisions)


@pytest.mark.parametrize("seed", range(10))
def test_card_precision_matches_slow_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 3_000
    day = rng.integers(0, 12, n)
    card = rng.integers(0, 200, n)
    y = rng.random(n) < 0.05
    s = rng.integers(0, 30, n) / 30.0  # many tied card scores
    known = rng.random(n) < 0.02
    for k in (1, 5, 20, 100, 500):
        got = card_precision_at_k(day, card, y, s, known, k)
        assert got == pytest.approx(_reference_cpk(day, card, y, s, known, k), abs=1e-12)


# --- confusion_at --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_confusion_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y, s = _random(rng, 2_000, levels=10, fraud_rate=0.1)
    for threshold in (-1.0, 0.0, 0.3, 0.5, float(np.median(s)), 1.0, 2.0):
        got = confusion_at(y, s, threshold)
        tn, fp, fn, tp = confusion_matrix(y, s >= threshold, labels=[False, True]).ravel()
        assert (got.tp, got.fp, got.tn, got.fn) == (tp, fp, tn, fn)


def test_confusion_rates_are_zero_when_undefined() -> None:
    nothing = Confusion(tp=0, fp=0, tn=0, fn=0)
    assert (nothing.precision, nothing.recall, nothing.fpr) == (0.0, 0.0, 0.0)
    some = Confusion(tp=3, fp=1, tn=6, fn=2)
    assert (some.precision, some.recall, some.fpr) == (0.75, 0.6, 1 / 7)


def test_threshold_is_inclusive() -> None:
    got = confusion_at(np.array([True, False]), np.array([0.5, 0.4]), 0.5)
    assert (got.tp, got.fp, got.tn, got.fn) == (1, 0, 1, 0)


# --- choose_threshold ----------------------------------------------------------------------


def _alerts_per_day(s: F64, threshold: float, n_days: float) -> float:
    return float((s >= threshold).sum()) / n_days


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("budget", [0.5, 3.0, 10.0, 29.0, 1e9])
def test_alert_budget_is_respected_and_lowest(seed: int, budget: float) -> None:
    rng = np.random.default_rng(seed)
    y, s = _random(rng, 1_500, levels=[7, 1000][seed % 2], fraud_rate=0.05)
    n_days = 7.0
    t = choose_threshold(ThresholdPolicy("alert_budget", budget), s, y, n_days)
    assert _alerts_per_day(s, t, n_days) <= budget
    lower = s[s < t]
    if lower.size:  # the next candidate down would break the budget
        assert _alerts_per_day(s, float(lower.max()), n_days) > budget
    else:
        assert t == s.min()


def test_alert_budget_too_small_for_the_top_ties_flags_nothing() -> None:
    s = np.array([0.2, 0.8, 0.8, 0.8])
    t = choose_threshold(ThresholdPolicy("alert_budget", 2.0), s, np.zeros(4, np.bool_), 1.0)
    assert 0.8 < t <= 1.0
    assert _alerts_per_day(s, t, 1.0) == 0


def test_flag_nothing_is_clipped_to_one() -> None:
    """Documented edge: "above every score" cannot be represented once clipped, so 1.0 scores stay flagged."""
    s = np.array([0.2, 1.0, 1.0])
    assert choose_threshold(ThresholdPolicy("alert_budget", 1.0), s, np.zeros(3, np.bool_), 1.0) == 1.0


def test_alert_budget_respects_exact_boundary() -> None:
    s = np.arange(100) / 100.0
    t = choose_threshold(ThresholdPolicy("alert_budget", 0.29), s, np.zeros(100, np.bool_), 100.0)
    assert (s >= t).sum() == 29


def _precisions(y: B, s: F64) -> dict[float, float]:
    return {float(v): confusion_at(y, s, float(v)).precision for v in np.unique(s)}


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("target", [0.05, 0.3, 0.6, 0.9])
def test_precision_target_met_at_the_lowest_threshold(seed: int, target: float) -> None:
    rng = np.random.default_rng(seed)
    y, s = _random(rng, 800, levels=[5, 500][seed % 2], fraud_rate=0.1)
    t = choose_threshold(ThresholdPolicy("precision_target", target), s, y, 7.0)
    by_threshold = _precisions(y, s)
    reaching = [v for v, p in by_threshold.items() if p >= target]
    if reaching:
        assert confusion_at(y, s, t).precision >= target
        assert t == min(reaching)
    else:  # the most precise threshold, the lowest of those if tied
        best = max(by_threshold.values())
        assert t == min(v for v, p in by_threshold.items() if p == best)


def test_precision_target_out_of_reach_takes_the_most_precise() -> None:
    y = np.array([False, True, False, True, False])
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5])  # precision 0, 1/2, 1/3, 1/2, 2/5 going down
    t = choose_threshold(ThresholdPolicy("precision_target", 0.9), s, y, 1.0)
    assert t == 0.6  # of the two thresholds at 1/2, the lower keeps more recall
    t = choose_threshold(ThresholdPolicy("precision_target", 0.5), s, y, 1.0)
    assert t == 0.6


def test_precision_target_without_fraud_flags_nothing() -> None:
    s = np.array([0.1, 0.4])
    t = choose_threshold(ThresholdPolicy("precision_target", 0.5), s, np.zeros(2, np.bool_), 1.0)
    assert confusion_at(np.zeros(2, np.bool_), s, t).fp == 0


def test_fixed_threshold_is_clipped() -> None:
    s, y = np.array([0.1, 0.9]), np.array([False, True])
    assert choose_threshold(ThresholdPolicy("fixed", 0.42), s, y, 1.0) == 0.42
    assert choose_threshold(ThresholdPolicy("fixed", 3.0), s, y, 1.0) == 1.0
    assert choose_threshold(ThresholdPolicy("fixed", -3.0), s, y, 1.0) == 0.0


def test_choose_threshold_is_deterministic_and_order_free() -> None:
    rng = np.random.default_rng(4)
    y, s = _random(rng, 1_000, levels=9, fraud_rate=0.1)
    perm = rng.permutation(s.size)
    for policy in (ThresholdPolicy("alert_budget", 20.0), ThresholdPolicy("precision_target", 0.4)):
        assert choose_threshold(policy, s, y, 7.0) == choose_threshold(policy, s[perm], y[perm], 7.0)


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("alert_budget", -1.0),
        ("precision_target", 0.0),
        ("precision_target", 1.5),
        ("fixed", math.nan),
        ("top_k", 1.0),
    ],
)
def test_bad_policy_is_a_config_error(kind: Any, value: float) -> None:
    with pytest.raises(ConfigError):
        ThresholdPolicy(kind, value)


def test_policy_descriptions_name_their_value() -> None:
    assert "100 transactions per day" in ThresholdPolicy("alert_budget", 100.0).describe()
    assert "0.9" in ThresholdPolicy("precision_target", 0.9).describe()
    assert "0.5" in ThresholdPolicy("fixed", 0.5).describe()


# --- quality_report ------------------------------------------------------------------------


@settings(max_examples=30)
@given(st.integers(0, 2**32 - 1))
def test_quality_report_is_consistent(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 400
    y, s = _random(rng, n, levels=10, fraud_rate=0.1)
    day, card = rng.integers(0, 5, n), rng.integers(0, 50, n)
    known = rng.random(n) < 0.05
    report = quality_report(day, card, y, s, known, 0.6)
    assert set(report) == {
        "roc_auc", "average_precision", "card_precision_at_100", "card_precision_at_100_detected", "precision", "recall",
        "tp", "fp", "tn", "fn", "n_transactions", "n_fraud", "threshold",
    }  # fmt: skip
    assert report["tp"] + report["fp"] + report["tn"] + report["fn"] == report["n_transactions"] == n
    assert report["tp"] + report["fn"] == report["n_fraud"] == int(y.sum())
    assert report["card_precision_at_100"] == card_precision_at_k(day, card, y, s, known, 100)
    assert report["threshold"] == 0.6
    assert all(isinstance(report[key], int) for key in ("tp", "fp", "tn", "fn", "n_transactions", "n_fraud"))


def test_card_precision_detected_drops_only_cards_found_on_earlier_days() -> None:
    from scorer.model.quality import card_precision_at_k_detected

    # day 0: card 1 fraud (top), card 2 genuine; day 1: card 1 fraud again (dropped: detected), card 3 fraud
    day = np.array([0, 0, 1, 1], dtype=np.int64)
    card = np.array([1, 2, 1, 3], dtype=np.int64)
    y = np.array([True, False, True, True])
    score = np.array([0.9, 0.1, 0.95, 0.2])
    assert card_precision_at_k_detected(day, card, y, score, k=1) == pytest.approx((1 + 1) / 2)
    assert card_precision_at_k_detected(day, card, y, score, k=2) == pytest.approx((1 + 1) / 4)
