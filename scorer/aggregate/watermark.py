"""When the aggregator may close a day: once every source with unprocessed records has passed it.

A source is an input partition that feeds terminal-events (kafka/progress.py). Each terminal-events
partition keeps the event time it has seen each source reach (aggregate/partition.py), from the source's
records and from the watermarks its writer sends to every partition when the source reaches a new day.
Day D may close when, in every owned partition, every source has reached D+1 (plus `day_close_grace_s`),
except the sources that are drained: their writers have committed all of their records and this
aggregator has read terminal-events past them. So a scorer that restarts, or whose partitions move to
another scorer, holds the close for as long as its input waits for it, however long that takes, while a
partition with no input does not hold it, and a stream that stops still closes its last complete day.

Whether a source is drained costs a few broker requests, so they are made only while a close waits on
some source, at most once per `interval_s`, and each answer is used for one decision: records that arrive
after it are judged by the next one. That the aggregator "has read terminal-events past them" is known
from a fence it appends to each of its partitions right after the snapshot: once it has folded the fence,
it has folded everything written before (the end offsets the broker reports cannot say it: tansu's fall
short of the real end).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Protocol

from confluent_kafka import KafkaException

from scorer.events.timestamps import MS_PER_DAY, NEVER
from scorer.kafka.progress import Snapshot

logger = logging.getLogger(__name__)
FRESH_S = 1.0  # a snapshot speaks for its sources this long at least: time for its fence to come back


def closable_day(reached: Iterable[Mapping[str, int]], waiting: Collection[str], grace_ms: int) -> int:
    """The newest day that may close, given each owned partition's event time per source and the sources
    still `waiting` to be heard from (NEVER when none). With no source waiting, the newest event time
    folded anywhere bounds it: a day closes only once a later day has been seen."""
    marks = list(reached)
    front = max((ts for seen in marks for ts in seen.values()), default=NEVER)
    watermark = min((seen.get(s, NEVER) for seen in marks for s in waiting), default=front)
    if watermark <= NEVER:
        return NEVER
    return (watermark - grace_ms) // MS_PER_DAY - 1


class Progress(Protocol):
    """The writers' progress (kafka/progress.py's WriterProgress)."""

    def snapshot(self) -> Snapshot: ...


class IdleSources:
    """Snapshots of the writers' progress, taken only when asked and at most once per `interval_s`. With each
    one a fence (a nonce) is appended to every owned terminal-events partition (`send_fence`); the snapshot
    is handed out once every owned partition has folded its fence (`fenced`), so every record its drained
    sources wrote is folded, once, and only while it is fresh: its fence sent no more than `interval_s` ago
    (at least FRESH_S: the fence needs a produce and a fetch to come back). Fresh from the fence, not from
    the snapshot's start: reading the committed offsets takes a round trip per partition, a second or so on
    tansu, and what its writers write before the fence is folded before it anyway."""

    def __init__(
        self,
        progress: Progress,
        interval_s: float,
        clock: Callable[[], float],
        send_fence: Callable[[Collection[int], int], None],
        on_snapshot: Callable[[Snapshot], None] = lambda snapshot: None,
    ) -> None:
        self.progress = progress
        self.interval_s = interval_s
        self.clock = clock
        self.send_fence = send_fence
        self.on_snapshot = on_snapshot
        self.pending: tuple[Snapshot, int, frozenset[int]] | None = None  # snapshot, its fence, for whom
        self.taken_at = float("-inf")  # when the last snapshot was asked for
        self.fenced_at = float("-inf")  # when its fence was sent
        self.nonce = time.time_ns()  # above any fence an earlier aggregator left in the topic

    def verified(self, fenced: Callable[[int], bool], owned: Collection[int]) -> Snapshot | None:
        """A snapshot whose drained sources may be left out of the next close, or None (too soon for a new
        one, the broker did not answer, or a fence not folded yet). `fenced(nonce)`: every owned partition
        has folded the fence `nonce` (or a later one)."""
        now = self.clock()
        if self.pending is not None and self._outdated(now, owned):
            self.pending = None
        if self.pending is None and now - self.taken_at >= self.interval_s:
            self.taken_at = now
            self.pending = self._take(owned)
        if self.pending is None or not fenced(self.pending[1]):
            return None
        snapshot, self.pending = self.pending[0], None
        return snapshot

    def _outdated(self, now: float, owned: Collection[int]) -> bool:
        """Too old to speak for records that arrived since, or taken before a rebalance."""
        assert self.pending is not None  # noqa: S101 - only asked of a pending snapshot
        too_old = now - self.fenced_at > max(self.interval_s, FRESH_S)
        return too_old or self.pending[2] != frozenset(owned)

    def _take(self, owned: Collection[int]) -> tuple[Snapshot, int, frozenset[int]] | None:
        try:
            snapshot = self.progress.snapshot()
        except KafkaException as exc:  # no answer is no evidence: the close keeps waiting on every source
            logger.warning("writer_progress_unknown", extra={"error": str(exc)})
            return None
        self.on_snapshot(snapshot)
        self.nonce = max(self.nonce + 1, time.time_ns())
        self.send_fence(owned, self.nonce)  # after the snapshot: behind every record it counts as written
        self.fenced_at = self.clock()
        return snapshot, self.nonce, frozenset(owned)
