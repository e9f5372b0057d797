"""The models that decide a batch: the champion alone, or champion and challenger under a plan.

`Serving` is immutable (but for the thread its challenger scores in); a new deployment builds a new one
(models loaded in the control watcher's thread) and the run loop swaps it in between batches, so a batch is
never scored by a half-applied change.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from scorer.events.batches import TransactionBatch
from scorer.model.onnx import OnnxModel
from scorer.policy.actions import NEVER_SCORE, DecisionPolicy
from scorer.rollout.plans import Plan, challenger_weight, combine

logger = logging.getLogger(__name__)
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class RolloutFields:
    """What each decision under a plan carries besides, as columns (decisions.py writes them without a dict
    per row): the challenger's version, its weight, its score where usable, the blended threshold, and
    whether the challenger was wanted but fell back."""

    challenger_version: str
    blend_weight: F64
    challenger_score: F64 | None  # None when the challenger gave nothing; NaN rows are left out
    threshold: F64
    fallback: npt.NDArray[np.bool_]

    def rows(self) -> list[dict[str, Any]]:
        """The same fields as one dict per decision (the reference encoder and the tests read these)."""
        n = len(self.blend_weight)
        scores = self.challenger_score.tolist() if self.challenger_score is not None else [None] * n
        rows = []
        weights, thresholds, fallbacks = (
            self.blend_weight.tolist(),
            self.threshold.tolist(),
            self.fallback.tolist(),
        )
        columns = zip(weights, scores, thresholds, fallbacks, strict=True)
        for w, s, t, f in columns:
            row: dict[str, Any] = {
                "challenger_version": self.challenger_version,
                "blend_weight": w,
                "threshold": t,
            }
            if s is not None and math.isfinite(s):
                row["challenger_score"] = s
            if f:  # the challenger was wanted for this event and had no usable score
                row["challenger_fallback"] = True
            rows.append(row)
        return rows


@dataclass(frozen=True, slots=True)
class Outcome:
    """What decides each event of a batch, and what the decision records carry besides."""

    scores: F64
    flagged: npt.NDArray[np.bool_]
    extra: RolloutFields | None  # challenger fields per row (None without a plan)
    shadow_scores: F64 | None  # shadow plan: the challenger's scores, for the shadow topic only
    fallbacks: int
    champion_scores: F64  # each model's own scores, for the per-version metrics
    challenger_scores: F64 | None = None
    review: F64 | float = NEVER_SCORE  # where the review band starts (per row under a blend)
    decline: F64 | float = NEVER_SCORE  # where the decline band starts
    challenger_skipped: bool = False  # the challenger was still busy with an earlier batch: not asked


class ChallengerThread:
    """The thread a challenger scores in beside the champion, holding at most one batch.

    A challenger slower than its timeout is still scoring when the next batch comes: that batch goes
    without it (submit returns None) rather than waiting in a queue that would grow with every batch.
    """

    def __init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="challenger")
        self._running: concurrent.futures.Future[F64] | None = None
        self._lock = threading.Lock()  # the embedded scorer may score from several threads

    def submit(
        self, model: OnnxModel, X: F32, timed: Callable[[str, float], None]
    ) -> concurrent.futures.Future[F64] | None:
        """The challenger's scores to come, or None when its previous batch is still running."""
        with self._lock:
            if self._running is not None and not self._running.done():
                return None
            self._running = self._pool.submit(_timed_predict, model, X, timed)
            return self._running


@dataclass(frozen=True, slots=True)
class Serving:
    """The loaded models of one deployment: the champion, and the plan's challenger when there is one
    (with the thread it scores in, the one part that changes)."""

    champion: OnnxModel
    challenger: OnnxModel | None = None
    plan: Plan | None = None
    policy: DecisionPolicy = field(default_factory=DecisionPolicy)
    thread: ChallengerThread = field(default_factory=ChallengerThread, compare=False, repr=False)

    def bands(self, model: OnnxModel) -> tuple[float, float]:
        """(review, decline) thresholds of `model` under the policy (policy/actions.py)."""
        return self.policy.thresholds(model.threshold, model.curve)

    def score(
        self,
        X: F32,
        batch: TransactionBatch,
        timed: Callable[[str, float], None],
        timeout_s: float = 1.0,
        challenger_X: F32 | None = None,
    ) -> Outcome:
        """Champion scores; under a plan also the challenger's, blended per event. `challenger_X`: the
        challenger's own features when they differ from the champion's (its vocabulary), else X.

        The challenger runs in its own thread beside the champion (onnxruntime releases the GIL), so it
        costs little latency; if it fails or has not answered `timeout_s` after the champion, the champion
        decides those events and they are counted as fallbacks. While it is still scoring an earlier
        batch it is not asked at all (`challenger_skipped`): the same fallback, and no shadow scores.
        """
        review, decline = self.bands(self.champion)
        if self.plan is None or self.challenger is None:
            champion = _timed_predict(self.champion, X, timed)  # its failure is the batch's (DLQ path)
            return Outcome(champion, champion >= review, None, None, 0, champion, None, review, decline)
        pending = self.thread.submit(self.challenger, X if challenger_X is None else challenger_X, timed)
        champion = _timed_predict(self.champion, X, timed)
        challenger = None if pending is None else _wait_for(pending, self.challenger.label, timeout_s)
        skipped = pending is None
        if self.plan.strategy == "shadow":
            # the decisions carry the shadow score too (weight 0), so the store's decisions table holds both
            # models' scores of every event: `scorer retrain` compares them there once the labels arrive
            n = len(champion)
            zero = np.zeros(n)
            extra = RolloutFields(
                self.challenger.label, zero, challenger, zero + review, np.zeros(n, dtype=bool)
            )
            flagged = champion >= review
            return Outcome(
                champion, flagged, extra, challenger, 0, champion, challenger, review, decline, skipped
            )
        weight = challenger_weight(self.plan, batch.event_ts_ms, batch.customer_id)
        mixed = combine(weight, champion, challenger)
        other_review, other_decline = self.bands(self.challenger)
        threshold = (1.0 - mixed.weight) * review + mixed.weight * other_review  # each model's band, blended
        declines = (1.0 - mixed.weight) * decline + mixed.weight * other_decline
        extra = RolloutFields(self.challenger.label, mixed.weight, challenger, threshold, mixed.fallback)
        fallbacks = int(mixed.fallback.sum())
        return Outcome(
            mixed.scores,
            mixed.scores >= threshold,
            extra,
            None,
            fallbacks,
            champion,
            challenger,
            threshold,
            declines,
            skipped,
        )

    @property
    def label(self) -> str:
        if self.plan is None:
            return self.champion.label
        return f"{self.champion.label} -> {self.plan.challenger} ({self.plan.strategy})"


def _wait_for(pending: concurrent.futures.Future[F64], label: str, timeout_s: float) -> F64 | None:
    """The challenger's scores, or None when it failed or is still running `timeout_s` from now."""
    try:
        return pending.result(timeout=timeout_s)
    except concurrent.futures.TimeoutError:
        logger.warning("challenger_timed_out", extra={"model": label, "timeout_s": timeout_s})
    except Exception:  # a failing challenger must not fail the batch: the champion decides
        logger.exception("challenger_failed", extra={"model": label})
    return None


def _timed_predict(model: OnnxModel, X: F32, timed: Callable[[str, float], None]) -> F64:
    started = time.perf_counter()
    scores = model.predict(X)
    timed(model.label, time.perf_counter() - started)
    return scores
