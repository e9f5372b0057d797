"""Fraud-detection quality metrics and the threshold policy, in plain numpy.

Training, `scorer evaluate` and (later) the live scorer fed by delayed labels all use these, and the
live scorer does not ship scikit-learn, so nothing here imports it; the tests check the results
against scikit-learn instead. Every metric works on whole arrays grouped by distinct score, never
row by row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from scorer.errors import ConfigError

B = npt.NDArray[np.bool_]
I64 = npt.NDArray[np.int64]
Scores = npt.NDArray[np.floating[Any]]
PolicyKind = Literal["alert_budget", "precision_target", "fixed"]
POLICY_KINDS: tuple[PolicyKind, ...] = ("alert_budget", "precision_target", "fixed")


@dataclass(frozen=True, slots=True)
class _Groups:
    """Distinct scores in descending order, with how many rows and positives share each one."""

    value: npt.NDArray[np.float64]
    total: I64
    pos: I64


def _check(y_true: B, score: Scores) -> tuple[B, npt.NDArray[np.float64]]:
    """Validate once so every metric can assume 1-D, equal lengths and finite scores."""
    y = np.asarray(y_true, dtype=np.bool_)
    s = np.asarray(score, dtype=np.float64)  # float32 -> float64 is exact, so ties are kept
    if y.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"y_true and score must be 1-D of equal length, got {y.shape} and {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("score contains NaN or infinity")
    return y, s


def _groups(y: B, s: npt.NDArray[np.float64]) -> _Groups:
    """Group rows by distinct score: tied scores are one step of every curve, as in scikit-learn."""
    value, inverse = np.unique(s, return_inverse=True)
    total = np.bincount(inverse, minlength=value.size).astype(np.int64)
    pos = np.bincount(inverse[y], minlength=value.size).astype(np.int64)
    return _Groups(value[::-1], total[::-1], pos[::-1])


def roc_auc(y_true: B, score: Scores) -> float:
    """Area under the ROC curve, ties counting one half (average ranks); nan unless both classes occur.

    Computed as the Mann-Whitney statistic in exact integer arithmetic, so it equals
    `sklearn.metrics.roc_auc_score` to rounding without building the curve.
    """
    y, s = _check(y_true, score)
    g = _groups(y, s)
    n_pos = int(g.pos.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    neg = g.total - g.pos
    neg_below = neg[::-1].cumsum()[::-1] - neg  # negatives strictly below each distinct score
    twice_wins = int((g.pos * (2 * neg_below + neg)).sum())
    return twice_wins / (2 * n_pos * n_neg)


def average_precision(y_true: B, score: Scores) -> float:
    """Step-wise area under the precision-recall curve, ties grouped: `sklearn.metrics.average_precision_score`.

    With no positive at all it is 0.0, as scikit-learn returns, so that a model selection loop that
    maximises it still gets a number (roc_auc, by contrast, is nan there).
    """
    y, s = _check(y_true, score)
    g = _groups(y, s)
    n_pos = int(g.pos.sum())
    if n_pos == 0:
        return 0.0
    precision = g.pos.cumsum() / g.total.cumsum()
    return float((g.pos * precision).sum() / n_pos)


def card_precision_at_k(
    day: I64, card: I64, y_true: B, score: Scores, known_compromised: B, k: int = 100
) -> float:
    """Mean over days of the share of frauds among the day's k most suspicious cards (Fraud Detection Handbook).

    Investigators review cards, not transactions, and a limited number per day, so each card gets one
    score per day (the max over its transactions that day) and one label (fraud if any transaction
    is); cards already known to be compromised that day (flag on any of their rows) are left out, as
    they are blocked already. Each day's count of frauds in its top k is divided by k even when the
    day has fewer than k cards, as the handbook does, so a thin day cannot look better than it is.
    Equal card scores are ordered by card code, ascending, so the result is deterministic. The days
    are those present in `day`; a day whose cards are all known compromised scores 0. nan if empty.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    y, s = _check(y_true, score)
    d, c = np.asarray(day, dtype=np.int64), np.asarray(card, dtype=np.int64)
    known = np.asarray(known_compromised, dtype=np.bool_)
    if d.shape != y.shape or c.shape != y.shape or known.shape != y.shape:
        raise ValueError("day, card and known_compromised must have the same length as y_true")
    if y.size == 0:
        return float("nan")
    n_days = np.unique(d).size
    return _frauds_in_top_k(*_card_days(d, c, y, s, known), k=k) / (k * n_days)


def card_precision_at_k_detected(day: I64, card: I64, y_true: B, score: Scores, k: int = 100) -> float:
    """Card Precision@k as the handbook's own code computes it, for comparison with its published figures.

    Instead of dropping cards with a fraud label already received, it drops only the cards that were
    *detected* (a fraud among the day's top k) on an earlier day of the same test period.
    """
    y, s = _check(y_true, score)
    d, c = np.asarray(day, dtype=np.int64), np.asarray(card, dtype=np.int64)
    if y.size == 0:
        return float("nan")
    g_day, g_card, g_score, g_fraud = _card_days(d, c, y, s, np.zeros(y.size, dtype=np.bool_))
    detected = np.zeros(0, dtype=np.int64)
    found = 0
    for today in np.unique(g_day).tolist():
        rows = (g_day == today) & ~np.isin(g_card, detected)
        order = np.lexsort((g_card[rows], -g_score[rows]))[:k]
        top_cards, top_fraud = g_card[rows][order], g_fraud[rows][order]
        found += int(top_fraud.sum())
        detected = np.union1d(detected, top_cards[top_fraud])
    return found / (k * np.unique(g_day).size)


def _card_days(
    d: I64, c: I64, y: B, s: npt.NDArray[np.float64], known: B
) -> tuple[I64, I64, npt.NDArray[np.float64], B]:
    """One row per (day, card) not known compromised: day, card, max score and max label."""
    order = np.lexsort((c, d))
    d, c, y, s, known = d[order], c[order], y[order], s[order], known[order]
    starts = np.flatnonzero(np.r_[True, (d[1:] != d[:-1]) | (c[1:] != c[:-1])])
    keep = ~np.logical_or.reduceat(known, starts)
    return (
        d[starts][keep],
        c[starts][keep],
        np.maximum.reduceat(s, starts)[keep],
        np.logical_or.reduceat(y, starts)[keep],
    )


def _frauds_in_top_k(g_day: I64, g_card: I64, g_score: npt.NDArray[np.float64], g_fraud: B, k: int) -> int:
    """Frauds among each day's k highest-scoring cards, summed over days; ties go to the lower card code."""
    order = np.lexsort((g_card, -g_score, g_day))
    g_day, g_fraud = g_day[order], g_fraud[order]
    first = np.flatnonzero(np.r_[True, g_day[1:] != g_day[:-1]])
    rank = np.arange(g_day.size) - np.repeat(first, np.diff(np.r_[first, g_day.size]))
    return int(g_fraud[rank < k].sum())


@dataclass(frozen=True, slots=True)
class Confusion:
    """Counts at one threshold; the rates are 0.0 when their denominator is zero, never nan or a warning."""

    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def fpr(self) -> float:
        return _ratio(self.fp, self.fp + self.tn)


def _ratio(num: int, den: int) -> float:
    return num / den if den else 0.0


def confusion_at(y_true: B, score: Scores, threshold: float) -> Confusion:
    """Confusion counts when every transaction with score >= threshold is flagged."""
    y, s = _check(y_true, score)
    flagged = s >= threshold
    tp = int((flagged & y).sum())
    fp = int(flagged.sum()) - tp
    fn = int(y.sum()) - tp
    return Confusion(tp=tp, fp=fp, tn=y.size - tp - fp - fn, fn=fn)


@dataclass(frozen=True, slots=True)
class ThresholdPolicy:
    """How training turns validation scores into the alert threshold stored with the model.

    `value` is alerts per day (alert_budget), a precision in (0, 1] (precision_target) or the
    threshold itself (fixed). Checked on construction, so a bad CLI value fails before training.
    """

    kind: PolicyKind
    value: float

    def __post_init__(self) -> None:
        if self.kind not in POLICY_KINDS:
            raise ConfigError(f"unknown threshold policy {self.kind!r}; expected one of {POLICY_KINDS}")
        if not np.isfinite(self.value):
            raise ConfigError(f"threshold policy value must be finite, got {self.value}")
        if self.kind == "alert_budget" and self.value < 0:
            raise ConfigError(f"alert budget must be >= 0 alerts per day, got {self.value}")
        if self.kind == "precision_target" and not 0 < self.value <= 1:
            raise ConfigError(f"precision target must be in (0, 1], got {self.value}")

    def describe(self) -> str:
        """One sentence for model.json and the model card, so readers know where the threshold came from."""
        if self.kind == "alert_budget":
            return (
                f"lowest threshold that flags at most {self.value:g} transactions per day "
                "on average over the validation days"
            )
        if self.kind == "precision_target":
            return (
                f"lowest threshold whose precision on the validation days is at least {self.value:g} "
                "(the most precise threshold if none reaches it)"
            )
        return f"fixed threshold {self.value:g}"


def choose_threshold(policy: ThresholdPolicy, score: Scores, y_true: B, n_days: float) -> float:
    """The threshold the policy asks for on validation data, clipped to [0, 1].

    Candidates are the distinct validation scores (flagging is score >= threshold), so the result is
    deterministic and "lowest" means the lowest observed score that satisfies the policy. When no
    score does (a budget below the number of rows tied at the top score, or no fraud caught at any
    threshold), the result is the next float above the highest score, which flags nothing on the
    validation data (after clipping, a score of exactly 1.0 would still be flagged).
    """
    if policy.kind == "fixed":
        return _clip(policy.value)
    y, s = _check(y_true, score)
    if s.size == 0:
        raise ValueError("no validation scores to choose a threshold from")
    g = _groups(y, s)
    if policy.kind == "alert_budget":
        if not n_days > 0:
            raise ValueError(f"n_days must be positive, got {n_days}")
        ok = g.total.cumsum() / n_days <= policy.value  # alerts per day at each candidate
    else:
        ok = _precision_ok(g, policy.value)
    hits = np.flatnonzero(ok)
    if hits.size == 0:
        return _clip(float(np.nextafter(g.value[0], np.inf)))
    return _clip(float(g.value[hits[-1]]))  # candidates descend, so the last hit is the lowest


def _precision_ok(g: _Groups, target: float) -> B:
    """Candidates meeting the precision target; failing that, those of maximal (non-zero) precision."""
    precision = g.pos.cumsum() / g.total.cumsum()
    ok: B = precision >= target
    if not ok.any() and precision.max() > 0:
        ok = precision == precision.max()  # the lowest of these keeps the most recall
    return ok


def _clip(threshold: float) -> float:
    return float(min(max(threshold, 0.0), 1.0))


def quality_report(
    day: I64, card: I64, y_true: B, score: Scores, known_compromised: B, threshold: float
) -> dict[str, float | int]:
    """Every number training and `scorer evaluate` report, in one flat JSON-ready dict."""
    y = np.asarray(y_true, dtype=np.bool_)
    confusion = confusion_at(y, score, threshold)
    return {
        "roc_auc": roc_auc(y, score),
        "average_precision": average_precision(y, score),
        "card_precision_at_100": card_precision_at_k(day, card, y, score, known_compromised, k=100),
        "card_precision_at_100_detected": card_precision_at_k_detected(day, card, y, score, k=100),
        "precision": confusion.precision,
        "recall": confusion.recall,
        "tp": confusion.tp,
        "fp": confusion.fp,
        "tn": confusion.tn,
        "fn": confusion.fn,
        "n_transactions": int(y.size),
        "n_fraud": int(y.sum()),
        "threshold": float(threshold),
    }
