"""A consumed batch as one value: the records and their columns, read once, cut together.

The run loop used to carry the records, their values, partitions, offsets and requests as five parallel
sequences and reassign them halfway (when retried requests were answered again), which is how a column
of the old length met the new ones (e2f13b4). Here every column lives in one frozen batch; taking rows
out makes a new batch with every column cut by the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Message

from scorer.scoring.replies import Requests, find_requests

I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class ConsumedBatch:
    """Usable records of one consume, in the order consumed, with the columns the loop works on."""

    records: list[Message]
    values: list[bytes | None]
    partitions: I64
    offsets: I64
    requests: Requests | None  # the records that are `scorer serve` requests (None: there are none)

    @classmethod
    def of(cls, records: list[Message]) -> ConsumedBatch:
        """Read each record's fields once (map over the unbound methods: no bytecode per record)."""
        n = len(records)
        return cls(
            records,
            list(map(Message.value, records)),
            np.fromiter(map(Message.partition, records), dtype=np.int64, count=n),
            np.fromiter(map(Message.offset, records), dtype=np.int64, count=n),
            find_requests(list(map(Message.headers, records))),
        )

    def __len__(self) -> int:
        return len(self.records)

    def without(self, rows: I64) -> ConsumedBatch:
        """This batch without the records at positions `rows` (every column cut the same way)."""
        keep = np.ones(len(self), dtype=bool)
        keep[rows] = False
        kept = np.flatnonzero(keep)
        return ConsumedBatch(
            [self.records[i] for i in kept.tolist()],
            [self.values[i] for i in kept.tolist()],
            self.partitions[kept],
            self.offsets[kept],
            _requests_of(self.requests, keep),
        )

    def next_offsets(self) -> dict[int, int]:
        """Per partition, one past the newest offset of the batch: what may commit once it is handled."""
        out: dict[int, int] = {}
        for p in np.unique(self.partitions).tolist():
            out[p] = int(self.offsets[self.partitions == p].max()) + 1
        return out

    def produced_ms(self) -> I64:
        """Each record's Kafka timestamp in ms (0 when it has none)."""
        stamps = map(Message.timestamp, self.records)
        return np.fromiter(
            (ms if kind != TIMESTAMP_NOT_AVAILABLE else 0 for kind, ms in stamps),
            dtype=np.int64,
            count=len(self),
        )


def _requests_of(requests: Requests | None, keep: npt.NDArray[np.bool_]) -> Requests | None:
    """The requests among the kept records, at their new positions."""
    if requests is None:
        return None
    still = keep[requests.index]
    if not still.any():
        return None
    position = np.cumsum(keep) - 1  # a kept record's position in the cut batch
    rows = np.flatnonzero(still).tolist()
    return Requests(
        position[requests.index[still]].astype(np.int64),
        [requests.reply_to[j] for j in rows],
        [requests.correlation_id[j] for j in rows],
        [requests.transaction_id[j] for j in rows],
    )
