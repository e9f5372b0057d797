"""Input checks against what the model was trained on: unseen categories, out-of-range features, missing
optional fields and event-time skew.

Valid JSON can still be data the model has never seen: a new currency, a channel renamed upstream, an
amount ten times the training maximum, a producer whose clock runs a day behind. None of it is an error
(the transaction is still scored), but all of it is counted per field and reason, so ops see the input
change before the model's quality does. Everything is read off the feature matrix the batch already
has: the categorical columns carry MISSING_CODE / UNSEEN_CODE, the rest are compared with the training
minimum and maximum in model.json. A new categorical value is logged once, not once per event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from scorer.events.batches import TransactionBatch
from scorer.features.engine import CATEGORICAL_FIELDS, MISSING_CODE, UNSEEN_CODE

logger = logging.getLogger(__name__)
F32 = npt.NDArray[np.float32]
MAX_LOGGED_VALUES = 1000  # per field: past this many distinct new values, stop logging them
TIMESTAMP_REASONS = ("future_timestamp", "late_timestamp")
CATEGORY_REASONS = ("unseen_category", "missing_optional")
RANGE_REASONS = ("below_training_range", "above_training_range")
Count = Callable[[str, str, int], None]  # (field, reason, how many)


def issue_labels(names: Sequence[str]) -> list[tuple[str, str]]:
    """Every (field, reason) pair the checks can report, so the counters start at zero."""
    pairs = [("timestamp", r) for r in TIMESTAMP_REASONS]
    pairs += [(f, r) for f in CATEGORICAL_FIELDS for r in CATEGORY_REASONS]
    pairs += [(n, r) for n in names if not _is_code(n) for r in RANGE_REASONS]
    return pairs


def _is_code(name: str) -> bool:
    return name.endswith("_code")


@dataclass(slots=True)
class InputChecks:
    """One model's training ranges and vocabulary checks, prepared once per model."""

    names: tuple[str, ...]
    low: npt.NDArray[np.float64]  # training minimum per range-checked column
    high: npt.NDArray[np.float64]
    ranged: npt.NDArray[np.int64]  # columns checked against the range (not categorical codes)
    codes: dict[str, int]  # categorical field -> its column
    max_future_ms: int  # 0: not checked
    max_late_ms: int
    logged: dict[str, set[str]] = field(default_factory=dict)

    @classmethod
    def from_meta(
        cls, meta: Mapping[str, Any], names: Sequence[str], max_future_skew_s: float, max_event_delay_s: float
    ) -> InputChecks:
        reference = meta["reference"]["features"]
        ranged = np.asarray([i for i, n in enumerate(names) if not _is_code(n)], dtype=np.int64)
        return cls(
            names=tuple(names),
            low=np.asarray([float(reference[names[i]]["min"]) for i in ranged], dtype=np.float64),
            high=np.asarray([float(reference[names[i]]["max"]) for i in ranged], dtype=np.float64),
            ranged=ranged,
            codes={f: list(names).index(f"{f}_code") for f in CATEGORICAL_FIELDS if f"{f}_code" in names},
            max_future_ms=int(max_future_skew_s * 1000),
            max_late_ms=int(max_event_delay_s * 1000),
        )

    def check(self, batch: TransactionBatch, X: F32, now_ms: int, count: Count, model: str) -> None:
        """Count every issue of the batch through `count`; a few numpy reductions, no per-event Python."""
        self._timestamps(batch.event_ts_ms, now_ms, count)
        for name, column in self.codes.items():
            codes = X[:, column]
            missing = int(np.count_nonzero(codes == MISSING_CODE))
            unseen = np.flatnonzero(codes == UNSEEN_CODE)
            if missing:
                count(name, "missing_optional", missing)
            if len(unseen):
                count(name, "unseen_category", len(unseen))
                self._log_new(name, getattr(batch, name), unseen, model)
        values = X[:, self.ranged]
        below, above = (values < self.low).sum(axis=0), (values > self.high).sum(axis=0)
        for i in np.flatnonzero(below).tolist():
            count(self.names[self.ranged[i]], "below_training_range", int(below[i]))
        for i in np.flatnonzero(above).tolist():
            count(self.names[self.ranged[i]], "above_training_range", int(above[i]))

    def _timestamps(self, ts: npt.NDArray[np.int64], now_ms: int, count: Count) -> None:
        if self.max_future_ms > 0:
            future = int(np.count_nonzero(ts > now_ms + self.max_future_ms))
            if future:
                count("timestamp", "future_timestamp", future)
        if self.max_late_ms > 0:
            late = int(np.count_nonzero(ts < now_ms - self.max_late_ms))
            if late:
                count("timestamp", "late_timestamp", late)

    def _log_new(
        self, name: str, values: Sequence[str | None], rows: npt.NDArray[np.int64], model: str
    ) -> None:
        """A warning the first time each unseen value turns up (bounded: a flood is not a log storm)."""
        seen = self.logged.setdefault(name, set())
        if len(seen) >= MAX_LOGGED_VALUES:
            return
        for value in sorted({str(values[i]) for i in rows.tolist()} - seen):
            seen.add(value)
            logger.warning("unseen_category", extra={"field": name, "value": value, "model": model})
            if len(seen) == MAX_LOGGED_VALUES:
                logger.warning("unseen_category_log_full", extra={"field": name, "logged": MAX_LOGGED_VALUES})
                return
