"""What the store needs of its database (scorer/db/postgres.py implements it; the unit tests, a fake).

Every call either succeeds, raises DatabaseUnavailable (the database cannot be reached now: lost, paused,
restarting; the store waits and tries again, nothing was committed that it relies on), or raises
ScorerError (it answered no: a statement timeout, a full disk, a permission; the store stops, exit 1).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from scorer.errors import ScorerError
from scorer.store.batch import StoreBatch


class DatabaseUnavailable(ScorerError):
    """The database cannot be reached now; `reason` is a stable word for the metric."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class StoreTarget(Protocol):
    """The store's database."""

    def write(self, batch: StoreBatch) -> None:
        """The batch's rows and its offsets, in one transaction (a day's partition made first if new)."""

    def offsets(self, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """The stored next offsets of these (topic, partition)s; absent: nothing stored yet."""

    def drop_before(self, day: int) -> int:
        """Drop every day before `day` (days since the epoch) from the tables; how many partitions went."""

    def reconnect(self) -> None:
        """A new connection (DatabaseUnavailable while it cannot be made)."""

    def close(self) -> None: ...
