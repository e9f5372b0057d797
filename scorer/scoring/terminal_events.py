"""What a scorer writes to `terminal-events` (terminal_events_from = "scorer"): the aggregator's input.

Why the scorer writes it: it has decoded every transaction already, while a re-key stage in the aggregator
would consume and decode each one a second time (~5 us per event) and read the whole transactions topic
again. Each valid transaction becomes a record keyed by terminal carrying its input partition and offset,
so the aggregator counts a record written twice (after a crash) once.

Why watermarks: the aggregator closes day D once every input partition with unprocessed records has
passed D (aggregate/watermark.py), and a scorer that reaches day D+1 may be waiting for that close
(`terminal_wait_s`) before it scores anything more. A partition's first records of the new day reach only
the terminal-events partitions their terminals hash to, so the scorer also writes to every partition a
watermark naming the input partition (a `W` record, no count). When the scorer itself reaches a new day it
writes one also for every input partition it owns that has nothing left to read (`owned`: its position
at the log's end): the close it is about to wait for must not wait on its own partitions that would
bring nothing before midnight. A partition with records still to read is never spoken for: one just
taken over from another scorer, behind the rest, holds the close until its own records pass midnight
(speaking for it closed days before its events arrived: they came late, and the terminal features of the
following days differed from a run without the hand-over). Skew between scorers, and a scorer that
restarts, is waited for the same way.

The records go out before the batch is scored, in the same producer epoch (or input-partition Kafka
transaction) as its decisions: offsets are committed only once they are acknowledged too.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import numpy as np
import numpy.typing as npt

from scorer.aggregate.partition import watermark_record
from scorer.events.timestamps import MS_PER_DAY, NEVER
from scorer.scoring.delivery import Delivery
from scorer.scoring.scored import Counted

I64 = npt.NDArray[np.int64]


class TerminalEventWriter:
    """Writes each batch's terminal events, and watermarks to every partition on each new event day."""

    def __init__(
        self,
        topic: str,
        partitions: int,
        delivery: Delivery,
        owned: Callable[[], Collection[int]] = frozenset,
    ) -> None:
        """`owned`: the input partitions this scorer is assigned now with nothing left to read."""
        self.topic = topic
        self.partitions = partitions  # of terminal-events
        self.delivery = delivery
        self.owned = owned
        self.newest_day = NEVER  # the newest event day this process has reached
        self.announced: dict[int, int] = {}  # the newest day written in a watermark, per input partition

    def write(self, counted: Counted, partitions: I64, offsets: I64) -> None:
        """The valid transactions of a batch; `partitions`/`offsets` are those of the consumed records."""
        records = counted.records(partitions, offsets)
        if not records:
            return
        source = partitions[counted.index]
        self.delivery.put(self.topic, records, source)
        marks = self._new_days(source, counted.event_ts_ms)
        if marks:
            self._watermark(marks, source[:1])

    def _new_days(self, source: I64, ts_ms: I64) -> dict[int, int]:
        """Input partition -> event time to announce: each partition of the batch that reached a new day,
        and every owned partition with nothing left to read when this scorer reached one (module docstring)."""
        newest = int(ts_ms.max())
        marks: dict[int, int] = {}
        if newest // MS_PER_DAY > self.newest_day:
            self.newest_day = newest // MS_PER_DAY
            marks = dict.fromkeys(self.owned(), newest)
        for p in np.unique(source).tolist():
            ts = max(int(ts_ms[source == p].max()), marks.get(p, NEVER))
            if ts // MS_PER_DAY > self.announced.get(p, NEVER):
                marks[p] = ts
        for p, ts in marks.items():
            self.announced[p] = max(self.announced.get(p, NEVER), ts // MS_PER_DAY)
        return marks

    def _watermark(self, marks: dict[int, int], via: I64) -> None:
        """The watermarks to every terminal-events partition (with the outputs of input partition `via`)."""
        records = [watermark_record(ts, f"t{p}") for p, ts in sorted(marks.items())]
        for q in range(self.partitions):
            self.delivery.put(self.topic, records, np.repeat(via, len(records)), out=q)
