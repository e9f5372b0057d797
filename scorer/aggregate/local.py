"""Terminal state kept in the scoring process: the aggregator's closes and the table's lookups in one place.

`scorer run` reads terminal features from the table the aggregator publishes, because a terminal's
transactions arrive on every input partition. A single process that sees every transaction itself
(`scorer score`, the embedded Scorer) makes the same closes locally: before events of day D are looked
up, day D-1 is closed (the labels reported before D are applied, idle terminals expire, as the
aggregator does at its close); the caller counts each run of transactions after it has been looked up.
Looking up has no effect on the counts, so the core can retry a failed batch without counting twice.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from scorer.events.batches import LabelBatch, pick
from scorer.events.timestamps import MS_PER_DAY
from scorer.features.engine import LATE_GRACE_DAYS, TERMINAL_NAMES, FeatureConfig, TerminalFeatures

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


def day_runs(ts_ms: I64) -> list[tuple[int, int]]:
    """(start, stop) of each run of consecutive events on the same day: the units counted in turn, so an
    event never sees a transaction of its own day or after it, whatever the batch boundaries."""
    if not len(ts_ms):
        return []
    day = ts_ms // MS_PER_DAY
    cuts = (np.flatnonzero(day[1:] != day[:-1]) + 1).tolist()
    bounds = [0, *cuts, len(ts_ms)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


class InProcessTerminals:
    """A TerminalLookup (scoring.core) whose closes are made here rather than read from Kafka."""

    def __init__(self, config: FeatureConfig) -> None:
        self.state = TerminalFeatures(config)

    def features(self, terminal_id: Sequence[str], ts_ms: I64) -> F64:
        """Terminal features of a batch, each day as of the previous day's close (closing it if needed)."""
        day = ts_ms // MS_PER_DAY
        out = np.zeros((len(day), len(TERMINAL_NAMES)), dtype=np.float64)
        for d in np.unique(day).tolist():
            if d - 1 > self.state.closed_day:
                self.state.close(d - 1)
                self.state.ring.expire_idle(d, LATE_GRACE_DAYS)
            idx = np.flatnonzero(day == d)
            slots = self.state.ring.slots(pick(terminal_id, idx), create=False)
            known = slots >= 0
            if known.any():  # a terminal with no history has all-zero features
                out[idx[known]] = self.state.compute(slots[known], day[idx[known]])
        return out

    def count(self, terminal_id: Sequence[str], ts_ms: I64) -> None:
        """Count looked-up transactions into their terminal's day (a later day's lookups see them)."""
        if len(ts_ms):
            self.state.add_transactions(terminal_id, ts_ms)

    def labels(self, labels: LabelBatch) -> None:
        """Fraud labels, applied at the close of the day they were reported on."""
        self.state.buffer_labels(labels)

    @property
    def keys(self) -> int:
        return len(self.state.ring)

    @property
    def nbytes(self) -> int:
        return self.state.ring.nbytes
