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
from typing import Any

import numpy as np
import numpy.typing as npt

from scorer.events.batches import pick
from scorer.events.timestamps import MS_PER_DAY, NEVER
from scorer.features.engine import LATE_GRACE_DAYS, CustomerFeatures, FeatureConfig
from scorer.features.rows import MARKER_KEY, PartitionDump, RowCodec, encode_marker, load_rows
from scorer.features.state import RingUndo

logger = logging.getLogger(__name__)
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Message = dict[str, Any]


class CustomerStore:
    """All assigned partitions' customer state, with snapshot encoding and restore.

    One ring holds every partition's customers, each partition the owner of its keys (its own key index,
    expiry clock, snapshot and hand-over), so a batch spanning partitions is scored in one pass.
    """

    def __init__(self, config: FeatureConfig) -> None:
        self.config = config
        self.customers = CustomerFeatures(config)
        self.today: dict[int, int] = {}  # partition -> newest day its expiry ran for
        self.codec = RowCodec(("count", "amount"), config.customer_ring_days)

    def update_and_compute(
        self,
        customer_id: Sequence[str],
        ts_ms: I64,
        amount: F64,
        partitions: I64,
        undo: list[Callable[[], None]] | None = None,
    ) -> F64:
        """Same as the offline engine per partition: expire on the partition's oldest day in the batch,
        then update and compute (all partitions in one pass).

        With `undo`, a function that reverts the update is appended (expiry is not reverted: a retry
        of the same events expires the same idle keys).
        """
        parts = np.unique(partitions).tolist()
        picks = None if len(parts) == 1 else [np.flatnonzero(partitions == p) for p in parts]
        self._expire(parts, picks, ts_ms)
        created: list[int] = []
        slots = self._slots(customer_id, parts, picks, created)
        if undo is None:
            return self.customers.update_slots(slots, ts_ms, amount, created)
        saved: list[RingUndo] = []
        out = self.customers.update_slots(slots, ts_ms, amount, created, saved)
        undo += [functools.partial(self.customers.ring.restore, u) for u in saved]
        return out

    def _expire(self, parts: list[int], picks: list[I64] | None, ts_ms: I64) -> None:
        """Each partition's expiry on its oldest day in the batch, before any key is looked up."""
        stamps = [ts_ms] if picks is None else [ts_ms[idx] for idx in picks]
        for p, ts in zip(parts, stamps, strict=True):
            day = int(ts.min()) // MS_PER_DAY
            if day > self.today.get(p, NEVER):
                self.today[p] = day
                self.customers.ring.expire_idle(day, LATE_GRACE_DAYS, owner=p)

    def _slots(
        self, customer_id: Sequence[str], parts: list[int], picks: list[I64] | None, created: list[int]
    ) -> I64:
        """Each event's slot among its partition's keys (new keys appended to `created`)."""
        ring = self.customers.ring
        if picks is None:  # one partition: no gather
            return ring.slots(customer_id, created=created, owner=parts[0])
        slots = np.empty(len(customer_id), dtype=np.int64)
        for p, idx in zip(parts, picks, strict=True):
            slots[idx] = ring.slots(pick(customer_id, idx), created=created, owner=p)
        return slots

    def restore(self, partition: int, dump: PartitionDump) -> int | None:
        """Load partition p's snapshot (read from the state topic); returns the input offset it
        corresponds to (None: no snapshot yet)."""
        self.drop(partition)
        rows = {k.decode("utf-8", "replace"): v for k, v in dump.rows.items()}
        ring = self.customers.ring
        keys = load_rows(ring, self.codec, rows, owner=partition)
        ring.drain_changes(partition)  # restored rows are not changes
        offset = None if dump.marker is None else int(dump.marker["offset"])
        if dump.marker is not None and int(dump.marker.get("ring_days", 0)) != self.codec.n_days:
            logger.warning("state_layout_changed", extra={"partition": partition})
        logger.info("state_restored", extra={"partition": partition, "keys": keys, "offset": offset})
        return offset

    def drop(self, partition: int) -> None:
        """Forget a partition's customers (revoked or lost: its next owner restores them)."""
        self.customers.ring.drop_owner(partition)
        self.today.pop(partition, None)

    def snapshot(self, partition: int, next_offset: int) -> list[Message]:
        """Changed rows, tombstones and the marker of partition p: to be sent to partition p."""
        ring = self.customers.ring
        keys, slots, expired = ring.drain_changes(partition)
        values = self.codec.encode(ring, slots) if len(slots) else []
        messages: list[Message] = [{"key": k.encode(), "value": v} for k, v in zip(keys, values, strict=True)]
        messages += [{"key": k.encode(), "value": None} for k in expired]
        marker = encode_marker({"offset": next_offset, "ring_days": self.codec.n_days})
        messages.append({"key": MARKER_KEY, "value": marker})
        return messages

    @property
    def keys(self) -> int:
        return len(self.customers.ring)

    @property
    def nbytes(self) -> int:
        return self.customers.ring.nbytes
