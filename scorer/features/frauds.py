"""Which labelled transactions the terminals' fraud buckets count: the memory that makes terminal risk take
each fraud once and take back a reversed one.

Terminal risk counts a transaction as a fraud on its terminal and day when its labels make it fraud
(scorer/events/labelstate.py: the latest label per source, fraud when any says so). Each labelled
transaction remembers its terminal, the day it counts on and whether its +1 is in that bucket, so a second
label that keeps it fraud adds nothing and one that makes it genuine takes the +1 back from the same bucket.

Labels without a transaction id (terminal-events records written before labels carried one) cannot be told
apart: each fraud one counts, as it always did, and a genuine one changes nothing.

Memory is bounded: a transaction is forgotten once no terminal's ring can hold its day any more (see
`horizon`); a label for it after that is taken as its first, and lands on a day no ring holds. The entries
changed since the last `drain` (and those forgotten) are what a snapshot writes (aggregate/partition.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from scorer.events.labelstate import LabelState


@dataclass(slots=True)
class Counted:
    """Where a labelled transaction counts (or would count) as a fraud, and whether its +1 is there."""

    terminal: str
    day: int
    counted: bool = False


def horizon(closed_day: int, ring_days: int, grace_days: int) -> int:
    """The oldest event day a terminal's ring may still hold once `closed_day` is closed: a key holds day d
    only while its newest day is below d + ring_days, and a key idle longer than ring_days + grace_days is
    expired at each close, so no ring holds a day older than this (barring a transaction later than that)."""
    return closed_day - 2 * ring_days - grace_days


class TransactionFrauds:
    """Labelled transactions: their labels (LabelState) and where each counts."""

    def __init__(self) -> None:
        self.labels = LabelState()
        self.where: dict[str, Counted] = {}
        self.changed: set[str] = set()
        self.forgotten: set[str] = set()

    def __len__(self) -> int:
        return len(self.where)

    def take(
        self, transaction_id: str, source: str, reported_ms: int, is_fraud: bool, terminal: str, day: int
    ) -> None:
        """One label. A transaction not counted yet moves to the terminal and day of its latest label."""
        change = self.labels.take(transaction_id, source, reported_ms, is_fraud)
        if not change.taken:
            return
        held = self.where.get(transaction_id)
        if held is None:
            self.where[transaction_id] = Counted(terminal, day)
        elif not held.counted:
            held.terminal, held.day = terminal, day
        self.changed.add(transaction_id)
        self.forgotten.discard(transaction_id)

    def forget_before(self, day: int) -> None:
        """Forget the transactions whose day is before `day`."""
        old = [tid for tid, c in self.where.items() if c.day < day]
        for tid in old:
            del self.where[tid]
        self.labels.forget(old)
        self.changed.difference_update(old)
        self.forgotten.update(old)

    def drain(self) -> tuple[dict[str, bytes], list[str]]:
        """The entries changed (encoded) and the transactions forgotten since the last call."""
        changed = {tid: self.encode(tid) for tid in sorted(self.changed) if tid in self.where}
        forgotten = sorted(self.forgotten)
        self.changed.clear()
        self.forgotten.clear()
        return changed, forgotten

    def encode(self, transaction_id: str) -> bytes:
        c = self.where[transaction_id]
        labels = {source: [ms, fraud] for source, (ms, fraud) in self.labels.dump(transaction_id).items()}
        return orjson.dumps(
            {"terminal": c.terminal, "event_day": c.day, "counted": c.counted, "labels": labels}
        )

    def load(self, transaction_id: str, value: bytes) -> None:
        """An entry as `encode` wrote it; a value that is not one raises ValueError (a corrupt snapshot)."""
        try:
            doc: Any = orjson.loads(value)
            self.where[transaction_id] = Counted(
                str(doc["terminal"]), int(doc["event_day"]), bool(doc["counted"])
            )
            labels = {str(s): (int(ms), bool(fraud)) for s, (ms, fraud) in doc["labels"].items()}
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"unreadable label memory for {transaction_id!r}: {exc}") from exc
        self.labels.load(transaction_id, labels)
