"""A batch's actions: each event's band under the policy, unless a rule decides it (rules.py precedence)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from scorer.policy.actions import APPROVE, model_actions
from scorer.policy.rules import RuleBook

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
I8 = npt.NDArray[np.int8]


@dataclass(frozen=True, slots=True)
class Actions:
    """Per event: the action code, the rule that decided it (-1: the model) and the source as JSON."""

    codes: I8
    hit: I64
    sources: list[bytes] | None  # None: every action is the model's

    @property
    def flagged(self) -> npt.NDArray[np.bool_]:
        flagged: npt.NDArray[np.bool_] = self.codes != APPROVE
        return flagged


def decide(rules: RuleBook, hit: I64, scores: F64, review: F64 | float, decline: F64 | float) -> Actions:
    """The model's band for each event, unless a rule hit it (`hit`: `rules.apply`'s positions, found
    before the features while the batch's ids are hot in the caches): then the rule's action and id."""
    codes = model_actions(scores, review, decline)
    ruled = hit >= 0
    if not ruled.any():
        return Actions(codes, hit, None)
    codes[ruled] = rules.actions(hit)[ruled]
    return Actions(codes, hit, rules.json_sources[hit + 1].tolist())


def rescored(actions: Actions, scores: F64, review: F64 | float, decline: F64 | float) -> Actions:
    """The same rule hits with other scores and bands (a shadow challenger's decisions)."""
    codes = model_actions(scores, review, decline)
    ruled = actions.hit >= 0
    codes[ruled] = actions.codes[ruled]
    return Actions(codes, actions.hit, actions.sources)
