"""The commit sequence of `scorer run`: decisions -> state snapshot -> offset commit, never out of order.

At-least-once with state that always agrees with the input position, in three steps per commit:
1. seal the producer epoch holding every output of the records processed so far;
2. once the broker acknowledged that epoch (and every earlier one), send the customer-state snapshot
   of those partitions (changed rows, tombstones, a marker with the next input offset) and seal again;
3. once the snapshot is acknowledged, commit the input offsets.
None of it blocks the loop; on revocation and shutdown `flush` runs the same steps synchronously.
On restart a partition starts at its snapshot's marker, so a crash anywhere repeats at most the records
since the last snapshot and never skips one whose outputs were not delivered: a refused delivery stops
the sequence where it is (no snapshot, no commit after it), and a revoked partition's pending steps are
dropped, since its new owner writes its state from now on.

The producer and the consumer are interfaces (Outbox, OffsetStore) so tests drive the sequence with fakes
that refuse deliveries, never acknowledge them, fail commits or revoke partitions mid-way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

logger = logging.getLogger(__name__)
Record = dict[str, Any]  # {"key": bytes | None, "value": bytes | None}, as produce_batch takes it
SnapshotFn = Callable[[int, int], list[Record]]  # (partition, next offset) -> the state topic's records


class Outbox(Protocol):
    """What the commit sequence needs of the producer (kafka.sink.Sink implements it)."""

    @property
    def failure(self) -> str | None:
        """Why a delivery was refused after all retries (None: none was)."""

    def send(self, topic: str, messages: Sequence[Record], partition: int | None = None) -> None: ...

    def seal(self) -> int:
        """Close the current epoch and return it; later sends belong to the next one."""

    def acknowledged(self, epoch: int) -> bool:
        """True when every message of `epoch` and earlier epochs was delivered (never after a refusal)."""

    def wait(self, epoch: int, timeout_s: float) -> bool:
        """Poll until `epoch` is acknowledged, a delivery is refused or the timeout passes."""


class OffsetStore(Protocol):
    """Where input offsets are committed (the consumer group); False when the broker refused."""

    def commit(self, offsets: Mapping[int, int], asynchronous: bool) -> bool: ...


class Commits(Protocol):
    """What the run loop needs of a commit strategy: this at-least-once tracker, or the transactions of
    exactly-once mode (kafka/transactions.py)."""

    @property
    def assigned(self) -> set[int]: ...

    @property
    def failure(self) -> str | None: ...

    def assign(self, partitions: Sequence[int]) -> None: ...

    def processed(self, partition: int, next_offset: int) -> None: ...

    def begin(self) -> None: ...

    def advance(self, asynchronous: bool = True) -> None: ...

    def flush(self, timeout_s: float) -> bool: ...

    def forget(self, partitions: Sequence[int], lost: bool = False) -> None: ...


@dataclass(slots=True)
class PendingCommit:
    """Offsets waiting for their outputs (stage 1) and then for their state snapshot (stage 2)."""

    epoch: int
    offsets: dict[int, int]
    snapshot: dict[int, list[Record]] = field(default_factory=dict)
    stage: int = 1


class CommitTracker:
    """Progress per assigned partition and the commits in flight, oldest first."""

    def __init__(
        self,
        outbox: Outbox,
        offsets: OffsetStore,
        snapshot: SnapshotFn,
        state_topic: str,
        on_commit: Callable[[], object] = lambda: None,
    ) -> None:
        self.outbox = outbox
        self.on_commit = on_commit
        self.offsets = offsets
        self.snapshot = snapshot
        self.state_topic = state_topic
        self.assigned: set[int] = set()
        self.progress: dict[int, int] = {}  # next offset to commit, per assigned partition
        self.pending: list[PendingCommit] = []
        self.commits = 0
        self.failed_commits = 0

    @property
    def failure(self) -> str | None:
        return self.outbox.failure

    def assign(self, partitions: Sequence[int]) -> None:
        self.assigned.update(partitions)

    def processed(self, partition: int, next_offset: int) -> None:
        """Every record of `partition` before `next_offset` has its outputs queued."""
        self.progress[partition] = next_offset

    def begin(self) -> None:
        """Seal the outputs so far and remember the state that goes with them (step 1)."""
        offsets = {p: o for p, o in self.progress.items() if p in self.assigned}
        self.progress = {}
        if not offsets:
            return
        snapshot = {p: self.snapshot(p, o) for p, o in offsets.items()}
        self.pending.append(PendingCommit(self.outbox.seal(), offsets, snapshot))

    def advance(self, asynchronous: bool = True) -> None:
        """Take every step whose outputs are acknowledged (steps 2 and 3); never past a refusal."""
        while (
            self.pending and self.outbox.failure is None and self.outbox.acknowledged(self.pending[0].epoch)
        ):
            head = self.pending[0]
            if head.stage == 1:
                for partition, records in head.snapshot.items():
                    self.outbox.send(self.state_topic, records, partition=partition)
                head.snapshot, head.stage, head.epoch = {}, 2, self.outbox.seal()
                continue
            self._commit(head.offsets, asynchronous)
            self.pending.pop(0)

    def _commit(self, offsets: dict[int, int], asynchronous: bool) -> None:
        live = {p: o for p, o in offsets.items() if p in self.assigned}
        if not live:
            return
        if self.offsets.commit(live, asynchronous):
            self.commits += 1
            self.on_commit()
        else:  # the snapshot's marker already holds these offsets; the next commit covers them
            self.failed_commits += 1

    def flush(self, timeout_s: float) -> bool:
        """Every step for everything processed, now (revocation, shutdown); False if some could not be."""
        self.begin()
        deadline = time.monotonic() + timeout_s
        while self.pending and self.outbox.failure is None and time.monotonic() < deadline:
            self.outbox.wait(self.pending[0].epoch, max(0.0, deadline - time.monotonic()))
            self.advance(asynchronous=False)
        if self.pending:
            logger.error(
                "commit_incomplete",
                extra={
                    "partitions": sorted({p for c in self.pending for p in c.offsets}),
                    "error": self.outbox.failure,
                },
            )
        return not self.pending

    def forget(self, partitions: Sequence[int], lost: bool = False) -> None:
        """Partitions revoked or lost: their progress and pending steps go (the new owner writes their state)."""
        gone = set(partitions)
        self.assigned -= gone
        for p in gone:
            self.progress.pop(p, None)
        for commit in self.pending:
            for p in gone:
                commit.offsets.pop(p, None)
                commit.snapshot.pop(p, None)
        self.pending = [c for c in self.pending if c.offsets]
