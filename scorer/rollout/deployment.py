"""The deployment on the compacted `scorer-control` topic: which model is champion, the plan in force and
the decision policy (policy/actions.py).

One record, key `deployment`, holds the whole state, so the newest record is the truth and compaction
keeps exactly it. Every scorer instance reads the same record; plan weights depend on event time only
(rollout/plans.py), so instances agree on each event's decision whenever they picked the record up.
A rollback is a new record without the plan (or with the previous champion): it reaches every instance
on its next read of the topic.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from scorer.errors import ScorerError
from scorer.policy.actions import DecisionPolicy
from scorer.rollout.plans import Plan, PlanError

DEPLOYMENT_KEY = b"deployment"


@dataclass(frozen=True, slots=True)
class Deployment:
    """The champion (model label), the changeover plan in force (if any) and the champion before it."""

    champion: str
    plan: Plan | None = None
    previous: str | None = None
    published_ms: int = 0
    policy: DecisionPolicy = field(default_factory=DecisionPolicy)  # review / decline bands

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "champion": self.champion,
                "plan": self.plan.to_dict() if self.plan else None,
                "previous": self.previous,
                "published_ms": self.published_ms,
                "policy": self.policy.to_dict(),
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> Deployment:
        try:
            doc: Mapping[str, Any] = orjson.loads(raw)
            plan = Plan.from_dict(doc["plan"]) if doc.get("plan") else None
            policy = DecisionPolicy.from_dict(doc.get("policy"))
            return cls(
                str(doc["champion"]), plan, doc.get("previous"), int(doc.get("published_ms", 0)), policy
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, PlanError) as exc:
            raise ScorerError(f"unreadable deployment record on the control topic: {exc}") from exc


RETRAIN_KEY = b"retrain"  # the retrain kill switch's key on the control topic (scorers leave it alone)


@dataclass(frozen=True, slots=True)
class RetrainSwitch:
    """`scorer retrain pause|resume`: whether retraining may train, shadow and promote, who said so and why.
    Paused, a retrain instance does nothing at all (a running shadow stays as it is, undecided)."""

    paused: bool
    by: str = ""
    reason: str = ""
    at_ms: int = 0

    def to_json(self) -> bytes:
        return orjson.dumps(
            {"paused": self.paused, "by": self.by, "reason": self.reason, "at_ms": self.at_ms}
        )

    @classmethod
    def from_json(cls, raw: bytes) -> RetrainSwitch:
        try:
            doc: Mapping[str, Any] = orjson.loads(raw)
            return cls(
                bool(doc["paused"]),
                str(doc.get("by", "")),
                str(doc.get("reason", "")),
                int(doc.get("at_ms", 0)),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ScorerError(f"unreadable retrain switch on the control topic: {exc}") from exc
