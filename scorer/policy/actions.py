"""The decision policy: which scores are approved, sent to review, or declined.

A policy has two bands above approve: `review` from its threshold up, `decline` from a higher one. Each is
stated as a threshold, an alert budget per day or a precision target, and turned into a threshold per
model on that model's validation curve (model/curve.py), so the same policy means the same workload for
every model of a changeover. Without a policy, review starts at the model's own flag threshold and
nothing is declined by score: `flagged` (action is not approve) is then exactly what it always was.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from scorer.model.curve import Curve

F64 = npt.NDArray[np.float64]
I8 = npt.NDArray[np.int8]
ACTIONS = ("approve", "review", "decline")  # codes 0, 1, 2: a higher code is the stronger action
APPROVE, REVIEW, DECLINE = 0, 1, 2
BAND_KINDS = ("threshold", "alert_budget", "precision_target")
NEVER_SCORE = float(np.nextafter(1.0, 2.0))  # a threshold no score reaches


class PolicyError(ValueError):
    """A band that cannot be applied: unknown kind, a value out of range, or no curve to resolve it on."""


@dataclass(frozen=True, slots=True)
class Band:
    """Where an action starts: `threshold` (a score), `alert_budget` (alerts per day at most) or
    `precision_target` (the lowest threshold whose validation precision reaches it)."""

    kind: str
    value: float

    def __post_init__(self) -> None:
        if self.kind not in BAND_KINDS:
            raise PolicyError(f"unknown band kind {self.kind!r}: one of {', '.join(BAND_KINDS)}")
        if not np.isfinite(self.value):
            raise PolicyError(f"{self.kind} must be a finite number, got {self.value}")
        if self.kind == "threshold" and not 0.0 <= self.value <= 1.0:
            raise PolicyError(f"a threshold is a score in [0, 1], got {self.value}")
        if self.kind == "alert_budget" and self.value < 0:
            raise PolicyError(f"an alert budget is >= 0 alerts per day, got {self.value}")
        if self.kind == "precision_target" and not 0.0 < self.value <= 1.0:
            raise PolicyError(f"a precision target is in (0, 1], got {self.value}")

    @classmethod
    def parse(cls, text: str) -> Band:
        """`KIND:VALUE`, e.g. `alert_budget:50`, `precision_target:0.8`, `threshold:0.3`."""
        kind, sep, value = text.partition(":")
        if not sep:
            raise PolicyError(f"{text!r}: expected KIND:VALUE with KIND one of {', '.join(BAND_KINDS)}")
        try:
            number = float(value)
        except ValueError as exc:
            raise PolicyError(f"{text!r}: {value!r} is not a number") from exc
        return cls(kind.strip(), number)

    def describe(self) -> str:
        return f"{self.kind}:{self.value:g}"

    def resolve(self, curve: Curve | None) -> float:
        """This band's threshold for a model with validation curve `curve`."""
        if self.kind == "threshold":
            return self.value
        if curve is None:
            raise PolicyError(
                f"{self.describe()} needs the model's validation curve (retrain it with this version)"
            )
        if self.kind == "alert_budget":
            found = curve.lowest(curve.alerts_per_day <= self.value)
        else:
            found = curve.lowest(curve.precision >= self.value)
        return NEVER_SCORE if found is None else found


@dataclass(frozen=True, slots=True)
class DecisionPolicy:
    """The two bands (None: review from the model's threshold; no decline by score)."""

    review: Band | None = None
    decline: Band | None = None

    def to_dict(self) -> dict[str, Any]:
        return {name: None if b is None else {"kind": b.kind, "value": b.value}
                for name, b in (("review", self.review), ("decline", self.decline))}  # fmt: skip

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any] | None) -> DecisionPolicy:
        if not doc:
            return cls()
        bands = [
            None if doc.get(k) is None else Band(str(doc[k]["kind"]), float(doc[k]["value"]))
            for k in ("review", "decline")
        ]
        return cls(*bands)

    def thresholds(self, flag_threshold: float, curve: Curve | None) -> tuple[float, float]:
        """(review, decline) thresholds for one model; decline is never below review."""
        review = flag_threshold if self.review is None else self.review.resolve(curve)
        decline = NEVER_SCORE if self.decline is None else self.decline.resolve(curve)
        return review, max(review, decline)

    def describe(self) -> str:
        review = self.review.describe() if self.review else "the model's threshold"
        decline = self.decline.describe() if self.decline else "never (by score)"
        return f"review from {review}, decline from {decline}"


def model_actions(scores: F64, review: F64 | float, decline: F64 | float) -> I8:
    """Per score: 0 approve, 1 review (score >= review), 2 decline (score >= decline); one pass."""
    actions: I8 = (scores >= review).astype(np.int8)
    actions += scores >= decline
    return actions
