"""Deployment plans: how a challenger model takes over from the champion, decided per event.

A plan is one of
- `direct`: the challenger decides every event at or after `start`;
- `shadow`: the champion decides; the challenger scores every event for comparison only;
- `blend`: score = (1 - w) x champion + w x challenger, w ramping from 0 at `start` to 1 at `end`, linearly
  or in `steps` equal steps;
- `canary`: from `start`, the customers whose stable hash falls below `share` get the challenger.
Every weight is a function of the event's own time and customer id, never of the wall clock or of which
instance scores it, so a replay or a rebalance gives the same decision. In every plan a challenger that
failed, timed out or returned NaN falls back to the champion's score for those events, and it is counted.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from scorer.errors import ScorerError

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
STRATEGIES = ("direct", "shadow", "blend", "canary")
HASH_SPACE = 2**32


class PlanError(ScorerError):
    """A deployment plan that cannot be applied; the message says which field and why."""

    reason = "invalid_plan"


@dataclass(frozen=True, slots=True)
class Plan:
    """One changeover from `champion` to `challenger` (model labels, name/version)."""

    plan_id: str
    strategy: str
    champion: str
    challenger: str
    start_ms: int
    end_ms: int = 0  # blend: when w reaches 1
    steps: int = 0  # blend: 0 = linear ramp, n = n equal steps
    share: float = 0.0  # canary: share of customers on the challenger

    def __post_init__(self) -> None:
        problems = []
        if self.strategy not in STRATEGIES:
            problems.append(f"strategy {self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        if not self.champion or not self.challenger:
            problems.append("champion and challenger must both be named")
        if self.strategy == "blend" and self.end_ms <= self.start_ms:
            problems.append("blend needs end after start")
        if self.steps < 0:
            problems.append("steps must not be negative")
        if self.strategy == "canary" and not 0.0 < self.share <= 1.0:
            problems.append(f"canary share {self.share} is not in (0, 1]")
        if problems:
            raise PlanError(f"plan {self.plan_id!r}: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Plan:
        try:
            return cls(
                plan_id=str(doc["plan_id"]),
                strategy=str(doc["strategy"]),
                champion=str(doc["champion"]),
                challenger=str(doc["challenger"]),
                start_ms=int(doc["start_ms"]),
                end_ms=int(doc.get("end_ms", 0)),
                steps=int(doc.get("steps", 0)),
                share=float(doc.get("share", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(f"plan is missing or has a malformed field: {exc}") from exc


def customer_hash_share(customer_id: Sequence[str]) -> F64:
    """Each customer's stable position in [0, 1): CRC-32 of the id, the same on every instance and run."""
    codes = np.fromiter(map(zlib.crc32, map(str.encode, customer_id)), dtype=np.int64, count=len(customer_id))
    return codes / HASH_SPACE


def challenger_weight(plan: Plan, ts_ms: I64, customer_id: Sequence[str]) -> F64:
    """The challenger's weight per event, from the event's time and customer only."""
    started = ts_ms >= plan.start_ms
    if plan.strategy == "shadow":
        return np.zeros(len(ts_ms))
    if plan.strategy == "direct":
        return started.astype(np.float64)
    if plan.strategy == "canary":
        return (started & (customer_hash_share(customer_id) < plan.share)).astype(np.float64)
    progress = np.clip((ts_ms - plan.start_ms) / (plan.end_ms - plan.start_ms), 0.0, 1.0)
    if plan.steps:
        progress = np.floor(progress * plan.steps) / plan.steps
    weight: F64 = progress
    return weight


@dataclass(frozen=True, slots=True)
class Blended:
    """The scores that decide, the weight actually used per event, and where the challenger fell back."""

    scores: F64
    weight: F64
    fallback: npt.NDArray[np.bool_]


def combine(weight: F64, champion: F64, challenger: F64 | None) -> Blended:
    """(1 - w) x champion + w x challenger; where the challenger has no usable score, the champion alone.

    `challenger` is None when it failed or timed out for the whole batch: every event that wanted it
    falls back. NaN or infinite challenger scores fall back one by one.
    """
    wanted = weight > 0.0
    if challenger is None:
        fallback = wanted
        usable = np.zeros(len(weight), dtype=bool)
        challenger = np.zeros(len(weight))
    else:
        usable = np.isfinite(challenger)
        fallback = wanted & ~usable
    w = np.where(usable, weight, 0.0)
    scores = (1.0 - w) * champion + w * np.where(usable, challenger, 0.0)
    return Blended(scores, w, fallback)


def schedule(plan: Plan, at_ms: Sequence[int]) -> list[float]:
    """The challenger's weight at given instants for a customer outside any canary share (direct, blend:
    what `scorer models plan` prints)."""
    ts = np.asarray(at_ms, dtype=np.int64)
    return challenger_weight(plan, ts, [""] * len(ts)).tolist()  # type: ignore[no-any-return]
