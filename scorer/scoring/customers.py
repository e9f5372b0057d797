"""Per-partition customer window state: computed locally, snapshotted to the compacted `scorer-state` topic,
restored when a partition is assigned, so a moved or restarted partition keeps its windows exactly.

Input records are keyed by customer_id, so a customer's state lives with its input partition; the state
topic has the same partition count and partition p of it holds the state of input partition p. A snapshot
is the rows of the keys changed since the last one, tombstones for expired keys, then a marker with the
input offset the state corresponds to. The commit tracker produces a snapshot only after every decision before
that offset is acknowledged, and commits the offset only after the snapshot is acknowledged; on restore
the consumer starts at the marker's offset, so state and position always agree.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from scorer.events.timestamps import MS_PER_DAY, NEVER
from scorer.features.engine import LATE_GRACE_DAYS, CustomerFeatures, FeatureConfig
from scorer.features.rows import MARKER_KEY, PartitionDump, RowCodec, encode_marker, load_rows
from scorer.features.state import RingUndo

logger = logging.getLogger(__name__)
F64 = npt.NDArray[np.float64]
Message = dict[str, Any]


@dataclass(slots=True)
class PartitionState:
    """The customer windows of one input partition and its expiry clock."""

    customers: CustomerFeatures
    today: int = NEVER

    def update_and_compute(
        self,
        customer_id: Sequence[str],
        ts_ms: npt.NDArray[np.int64],
        amount: F64,
        undo: list[Callable[[], None]] | None = None,
    ) -> F64:
        """Same as the offline engine: expire on the batch's oldest day, then update and compute.

        With `undo`, a function that reverts the update is appended (expiry is not reverted: a retry
        of the same events expires the same idle keys).
        """
        day = int(ts_ms.min()) // MS_PER_DAY
        if day > self.today:
            self.today = day
            self.customers.ring.expire_idle(day, LATE_GRACE_DAYS)
        if undo is None:
            return self.customers.update_and_compute(customer_id, ts_ms, amount)
        saved: list[RingUndo] = []
        out = self.customers.update_and_compute(customer_id, ts_ms, amount, saved)
        ring = self.customers.ring
        undo += [functools.partial(ring.restore, u) for u in saved]
        return out


class CustomerStore:
    """All assigned partitions' customer state, with snapshot encoding and restore."""

    def __init__(self, config: FeatureConfig) -> None:
        self.config = config
        self.partitions: dict[int, PartitionState] = {}
        self.codec = RowCodec(("count", "amount"), config.customer_ring_days)

    def get(self, partition: int) -> PartitionState:
        state = self.partitions.get(partition)
        if state is None:
            state = self.partitions[partition] = PartitionState(CustomerFeatures(self.config))
        return state

    def restore(self, partition: int, dump: PartitionDump) -> int | None:
        """Load partition p's snapshot (read from the state topic); returns the input offset it
        corresponds to (None: no snapshot yet)."""
        state = PartitionState(CustomerFeatures(self.config))
        rows = {k.decode("utf-8", "replace"): v for k, v in dump.rows.items()}
        keys = load_rows(state.customers.ring, self.codec, rows)
        state.customers.ring.drain_changes()  # restored rows are not changes
        self.partitions[partition] = state
        offset = None if dump.marker is None else int(dump.marker["offset"])
        if dump.marker is not None and int(dump.marker.get("ring_days", 0)) != self.codec.n_days:
            logger.warning("state_layout_changed", extra={"partition": partition})
        logger.info("state_restored", extra={"partition": partition, "keys": keys, "offset": offset})
        return offset

    def drop(self, partition: int) -> None:
        self.partitions.pop(partition, None)

    def snapshot(self, partition: int, next_offset: int) -> list[Message]:
        """Changed rows, tombstones and the marker of partition p: to be sent to partition p."""
        state = self.partitions.get(partition)
        messages: list[Message] = []
        if state is not None:
            ring = state.customers.ring
            keys, slots, expired = ring.drain_changes()
            values = self.codec.encode(ring, slots) if len(slots) else []
            messages += [{"key": k.encode(), "value": v} for k, v in zip(keys, values, strict=True)]
            messages += [{"key": k.encode(), "value": None} for k in expired]
        marker = encode_marker({"offset": next_offset, "ring_days": self.codec.n_days})
        messages.append({"key": MARKER_KEY, "value": marker})
        return messages

    @property
    def keys(self) -> int:
        return sum(len(s.customers.ring) for s in self.partitions.values())

    @property
    def nbytes(self) -> int:
        return sum(s.customers.ring.nbytes for s in self.partitions.values())
