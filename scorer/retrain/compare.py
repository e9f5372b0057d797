"""The live evidence that decides a shadow challenger's fate: champion and challenger on the same events,
judged by the labels that arrived (the monitor's figures).

- Average precision of each model's scores over the shadow window's events (a label-free event counts as
  genuine, for both models alike).
- The review band's precision at the alert budget: each day, the analysts can look at as many events as
  the champion alerted on that day on average; each model's top that-many events of the day are its
  alerts, and their share of frauds is its precision. Both models get the same budget, so the one that
  puts more fraud in front of the analysts wins.
The challenger is promoted when its AP beats the champion's by `margin` and its band precision is no
lower; otherwise it is retired. The decision waits for `shadow_days` of event time and `min_frauds` labelled
frauds; a challenger that has not gathered them after MAX_SHADOW_FACTOR times `shadow_days` is retired for
want of evidence.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

from scorer.db.history import ShadowRows
from scorer.model.quality import average_precision

F64 = npt.NDArray[np.float64]
MAX_SHADOW_FACTOR = 4


@dataclass(frozen=True, slots=True)
class Evidence:
    """Both models' live figures over one shadow window."""

    events: int
    frauds: int
    days: float  # event time the shadow has covered
    alerts_per_day: int  # the budget both models are judged at
    champion_ap: float
    challenger_ap: float
    champion_precision: float
    challenger_precision: float

    def to_dict(self) -> dict[str, float | int | None]:
        """JSON-ready: a figure without labelled fraud to compute it from (nan) is null."""
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in asdict(self).items()}


@dataclass(frozen=True, slots=True)
class Judgement:
    """`wait`, `promote` or `retire`, and why, in a sentence."""

    outcome: str
    reason: str


def gather(rows: ShadowRows, days: float) -> Evidence:
    """The figures of `rows` (a shadow window `days` of event time long)."""
    n_days = max(1, len(np.unique(rows.day)))
    budget = max(1, round(int(rows.alerted.sum()) / n_days))
    frauds = int(rows.fraud.sum())
    return Evidence(
        events=len(rows),
        frauds=frauds,
        days=days,
        alerts_per_day=budget,
        champion_ap=_ap(rows, rows.champion),
        challenger_ap=_ap(rows, rows.challenger),
        champion_precision=band_precision(rows.day, rows.champion, rows.fraud, budget),
        challenger_precision=band_precision(rows.day, rows.challenger, rows.fraud, budget),
    )


def _ap(rows: ShadowRows, scores: F64) -> float:
    return average_precision(rows.fraud, scores) if rows.fraud.any() else float("nan")


def band_precision(
    day: npt.NDArray[np.int64], score: F64, fraud: npt.NDArray[np.bool_], per_day: int
) -> float:
    """The share of frauds among each day's `per_day` highest scores (all days together); nan without events."""
    if len(day) == 0:
        return float("nan")
    order = np.lexsort((-score, day))  # by day, highest score first within a day
    sorted_day = day[order]
    first_of_day = np.searchsorted(sorted_day, sorted_day, side="left")
    rank = np.arange(len(order)) - first_of_day
    picked = order[rank < per_day]
    return float(fraud[picked].mean())


def judge(evidence: Evidence, shadow_days: float, min_frauds: int, margin: float) -> Judgement:
    """What the evidence allows: wait for more, promote or retire the challenger."""
    enough_time = evidence.days >= shadow_days
    if not enough_time or evidence.frauds < min_frauds:
        if evidence.days >= MAX_SHADOW_FACTOR * shadow_days:
            return Judgement(
                "retire",
                f"not enough evidence: {evidence.frauds} labelled frauds after {evidence.days:.1f} days "
                f"(needs {min_frauds})",
            )
        return Judgement(
            "wait",
            f"{evidence.days:.1f} of {shadow_days:g} days, {evidence.frauds} of {min_frauds} labelled frauds",
        )
    figures = (
        f"AP {evidence.challenger_ap:.4f} vs the champion's {evidence.champion_ap:.4f}, review-band precision "
        f"{evidence.challenger_precision:.3f} vs {evidence.champion_precision:.3f} at {evidence.alerts_per_day} "
        f"alerts a day, {evidence.frauds} frauds over {evidence.days:.1f} days"
    )
    values = (evidence.challenger_ap, evidence.champion_ap, evidence.challenger_precision)
    better = (
        not any(math.isnan(v) for v in values)
        and evidence.challenger_ap >= evidence.champion_ap + margin
        and evidence.challenger_precision >= evidence.champion_precision
    )
    if better:
        return Judgement("promote", f"better by more than the margin {margin:g}: {figures}")
    return Judgement("retire", f"not better by the margin {margin:g}: {figures}")
