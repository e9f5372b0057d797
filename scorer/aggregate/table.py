"""TerminalTable: the aggregator's compacted `terminal-features` topic read as a local table.

The aggregator publishes, when it closes day X, the rows of every terminal that changed, then a marker
{"day": X} on every partition it owns. Rows that arrive between two markers of a partition belong to the
later close. An event on day D must see the table as of close D-1 (see features.TerminalFeatures), so
closes are applied in day order, just before the first event of the following day is scored; closes
of later days wait in `pending`. If close D-1 has not arrived, the scorer waits up to `wait_s` for it and
otherwise scores with the older table, counting the event as stale: that is the staleness bound.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from scorer.events.batches import pick
from scorer.events.timestamps import MS_PER_DAY, NEVER
from scorer.features.engine import TERMINAL_NAMES, FeatureConfig, TerminalFeatures
from scorer.features.rows import LABEL_MEMORY_PREFIX, MARKER_KEY, RowCodec, decode_marker, load_rows

logger = logging.getLogger(__name__)
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
TableRecord = tuple[int, bytes, bytes | None]  # partition, key, value (None: tombstone)


class TableSource(Protocol):
    """Where the table's records come from: every partition of the topic, from its beginning."""

    partitions: list[int]

    def read(self, timeout_s: float, max_records: int) -> list[TableRecord]: ...

    def close(self) -> None: ...


class MemorySource:
    """A TableSource fed in-process (tests, the benchmark, scoring without Kafka): records go in with
    `add` and come out of `read` in order."""

    def __init__(self, partitions: Sequence[int]) -> None:
        self.partitions = sorted(partitions)
        self.records: list[TableRecord] = []

    def add(self, partition: int, records: Sequence[Mapping[str, bytes | None]]) -> None:
        """Append records ({"key", "value"}, as the aggregator produces them) to `partition`."""
        self.records += [(partition, r["key"] or b"", r["value"]) for r in records]

    def start(self) -> MemorySource:
        return self

    def read(self, timeout_s: float, max_records: int) -> list[TableRecord]:
        out, self.records = self.records[:max_records], self.records[max_records:]
        return out

    def close(self) -> None:
        self.records = []


def terminal_codec(config: FeatureConfig) -> RowCodec:
    """The row layout shared by the aggregator (writer) and every scorer (reader)."""
    return RowCodec(("count", "fraud"), config.terminal_ring_days)


class TerminalTable:
    """Reads every partition of the terminal table; `features()` applies closes in day order."""

    def __init__(
        self,
        config: FeatureConfig,
        source: TableSource,
        wait_s: float = 0.0,
        on_stale: Callable[[int], None] | None = None,
        on_ahead: Callable[[int], None] | None = None,
    ) -> None:
        self.terminals = TerminalFeatures(config)
        self.codec = terminal_codec(config)
        self.source = source
        self.wait_s = wait_s
        self.on_stale = on_stale
        self.on_ahead = on_ahead
        self._open: dict[int, dict[str, bytes | None]] = {}  # rows after the last marker, per partition
        self._closed: dict[int, int] = {}  # last marker day per partition
        self.pending: dict[int, dict[str, bytes | None]] = {}  # close day -> rows, not yet applied
        self.applied_day = NEVER

    @property
    def closed_day(self) -> int:
        """Newest day closed on every partition (NEVER until every partition has a marker)."""
        partitions = self.source.partitions
        if not partitions or any(p not in self._closed for p in partitions):
            return NEVER
        return min(self._closed[p] for p in partitions)

    def poll(self, timeout_s: float = 0.0, max_records: int = 10_000) -> int:
        """Read what has arrived; returns the number of records read."""
        records = self.source.read(timeout_s, max_records)
        for p, key, value in records:
            if key == MARKER_KEY:
                day = int(decode_marker(value or b"")["day"])
                self.pending.setdefault(day, {}).update(self._open.pop(p, {}))
                self._closed[p] = max(self._closed.get(p, NEVER), day)
            elif not key.startswith(LABEL_MEMORY_PREFIX):  # the aggregator's own memory, no terminal's row
                self._open.setdefault(p, {})[key.decode("utf-8", "replace")] = value
        return len(records)

    def catch_up(self, timeout_s: float) -> None:
        """Read until nothing more arrives (startup): the table then holds everything published so far."""
        deadline = time.monotonic() + timeout_s
        while self.poll(0.2) and time.monotonic() < deadline:
            pass

    def _apply_until(self, day: int) -> None:
        for close_day in sorted(d for d in self.pending if d <= day):
            rows = self.pending.pop(close_day)
            load_rows(self.terminals.ring, self.codec, rows)
            self.applied_day = max(self.applied_day, close_day)

    def _wait_for_close(self, day: int) -> None:
        deadline = time.monotonic() + self.wait_s
        while self.closed_day < day and time.monotonic() < deadline:
            self.poll(0.05)

    def features(self, terminal_id: Sequence[str], ts_ms: I64) -> F64:
        """Terminal features of a batch, day by day, from the table as of each day's previous close."""
        day = ts_ms // MS_PER_DAY
        out = np.empty((len(day), len(TERMINAL_NAMES)), dtype=np.float64)
        for d in np.unique(day).tolist():
            idx = np.flatnonzero(day == d)
            if self.closed_day < d - 1 and self.wait_s > 0:
                self._wait_for_close(d - 1)
            self._apply_until(d - 1)
            if self.applied_day < d - 1 and self.on_stale is not None:
                self.on_stale(len(idx))
            elif self.applied_day > d - 1 and self.on_ahead is not None:
                self.on_ahead(len(idx))  # a late event, or partitions more than a day apart
            slots = self.terminals.ring.slots(pick(terminal_id, idx), create=False)
            out[idx] = self._compute(slots, day[idx])
        return out

    def _compute(self, slots: I64, day: I64) -> F64:
        """Unknown terminals (-1) get the features of a terminal with no history."""
        out = np.zeros((len(slots), len(TERMINAL_NAMES)), dtype=np.float64)
        known = slots >= 0
        if known.any():
            out[known] = self.terminals.compute(slots[known], day[known])
        return out

    def close(self) -> None:
        self.source.close()

    @property
    def keys(self) -> int:
        return len(self.terminals.ring)

    @property
    def nbytes(self) -> int:
        return self.terminals.ring.nbytes
