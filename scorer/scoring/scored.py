"""What the scoring core hands back for a batch: decisions (bytes and columns), flags, shadow decisions and
dead letters by input position; and the valid transactions a batch counted, for terminal-events."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from scorer.aggregate.partition import transaction_records
from scorer.features.engine import FEATURE_NAMES
from scorer.scoring.decisions import ScoredBatch

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
Record = dict[str, Any]  # {"key": bytes, "value": bytes}, as confluent-kafka's produce_batch takes it


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Input record `index` (position in the batch) breaks the event contract: why, in a stable word."""

    index: int
    reason: str
    detail: str


@dataclass(slots=True)
class Scored:
    """A batch's outputs, in input order, ready to produce."""

    decisions: list[Record]
    flags: list[Record] = field(default_factory=list)
    flag_rows: I64 = field(
        default_factory=lambda: np.zeros(0, dtype=np.int64)
    )  # each flag's decision position
    shadow: list[Record] = field(default_factory=list)  # the challenger's decisions under a shadow plan
    dead_letters: list[DeadLetter] = field(default_factory=list)
    kept: I64 = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # input index per decision
    scored_at_ms: int = 0
    features: F32 = field(default_factory=lambda: np.zeros((0, len(FEATURE_NAMES)), dtype=np.float32))
    # The decisions as columns (transactions, features, scores, actions, model), for a sink that is not
    # Kafka: one part per scored sub-batch, in decision order (one part unless records failed alone).
    columns: list[ScoredBatch] = field(default_factory=list)
    shadow_columns: list[ScoredBatch] = field(default_factory=list)

    def followed_by(self, other: Scored, offset: int) -> Scored:
        """This batch's outputs, then those of the `offset` records after it."""
        return Scored(
            self.decisions + other.decisions,
            self.flags + other.flags,
            np.concatenate([self.flag_rows, other.flag_rows + len(self.decisions)]),
            self.shadow + other.shadow,
            self.dead_letters
            + [DeadLetter(d.index + offset, d.reason, d.detail) for d in other.dead_letters],
            np.concatenate([self.kept, other.kept + offset]),
            max(self.scored_at_ms, other.scored_at_ms),
            np.vstack([self.features, other.features]),
            self.columns + other.columns,
            self.shadow_columns + other.shadow_columns,
        )


@dataclass(frozen=True, slots=True)
class Counted:
    """The valid transactions of a batch, for terminal-events: input position, terminal and event time."""

    index: I64
    terminal_id: list[str]
    event_ts_ms: I64

    def records(self, partitions: I64, offsets: I64) -> list[Record]:
        """terminal-events records keyed by terminal, with each transaction's input partition and offset
        (the aggregator counts a record sent twice once); `partitions` and `offsets` are those of the input
        records the core was given."""
        if not len(self.index):
            return []
        p, o = partitions[self.index], offsets[self.index]
        return transaction_records(self.terminal_id, self.event_ts_ms, p, o)
