"""What a scorer writes to `terminal-events` (terminal_events_from = "scorer"): the aggregator's input.

Why the scorer writes it: it has decoded every transaction already, while a re-key stage in the aggregator
would consume and decode each one a second time (~5 us per event) and read the whole transactions topic
again. Each valid transaction becomes a record keyed by terminal carrying its input partition and offset,
so the aggregator counts a record written twice (after a crash) once.

Why watermarks: the aggregator closes day D once every active terminal-events partition has seen an event
of a later day, and a scorer that reaches day D+1 may be waiting for that close (`terminal_wait_s`) before
it scores anything more. Its first records of the new day reach only the partitions their terminals hash
to, so it also writes the new day's first event time to every partition (a `W` record, no count).

The records go out before the batch is scored, in the same producer epoch (or input-partition Kafka
transaction) as its decisions: offsets are committed only once they are acknowledged too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from scorer.aggregate.partition import watermark_record
from scorer.events.timestamps import MS_PER_DAY, NEVER
from scorer.scoring.delivery import Delivery
from scorer.scoring.scored import Counted

I64 = npt.NDArray[np.int64]


class TerminalEventWriter:
    """Writes each batch's terminal events, and a watermark to all partitions on each new event day."""

    def __init__(self, topic: str, partitions: int, delivery: Delivery) -> None:
        self.topic = topic
        self.partitions = partitions  # of terminal-events
        self.delivery = delivery
        self.newest_day = NEVER  # the newest event day this process has written a watermark for

    def write(self, counted: Counted, partitions: I64, offsets: I64) -> None:
        """The valid transactions of a batch; `partitions`/`offsets` are those of the consumed records."""
        records = counted.records(partitions, offsets)
        if not records:
            return
        source = partitions[counted.index]
        self.delivery.put(self.topic, records, source)
        newest = int(counted.event_ts_ms.max())
        if newest // MS_PER_DAY > self.newest_day:
            self.newest_day = newest // MS_PER_DAY
            self._watermark(newest, source[:1])

    def _watermark(self, ts_ms: int, via: I64) -> None:
        """`ts_ms` to every terminal-events partition (with the outputs of input partition `via`)."""
        mark: Sequence[dict[str, object]] = [watermark_record(ts_ms)]
        for q in range(self.partitions):
            self.delivery.put(self.topic, mark, via, out=q)
