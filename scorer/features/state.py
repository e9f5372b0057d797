"""Per-key day-bucket window state (numpy rings): bounded memory, event-time windows, snapshot + restore.

Each key (a customer or a terminal) owns a ring of `n_days` day buckets per field. The ring position of
day `d` is `d % n_days`; which day a position holds follows from the key's newest day, so no per-bucket
day stamp is stored. Moving a key to a newer day clears the positions that fall out of its ring, and keys
whose newest day left every ring are dropped (`expire`), so memory is bounded by the active keys.

Fields that count events hold whole numbers and start as uint16 buckets (a day of one key rarely holds
more than 65,535 events); an add or a load that would pass a dtype's maximum widens that field's array to
uint32 first, so counts stay exact and cost half of float32's bytes. Amounts stay float32.

One ring can hold the keys of several owners (the scorer's input partitions): each owner has its own key
index, expiry, change list and hand-over, while the arrays are shared, so a batch that spans partitions is
one pass of numpy calls instead of one per partition (their fixed cost dominates small batches). Rings
with one owner (the offline engine, terminals) use owner 0 throughout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import numpy as np
import numpy.typing as npt

from scorer.events.timestamps import NEVER

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


def occurrence_rank(slots: I64) -> I64:
    """For each element, how many earlier elements of the array share its value (0 for the first)."""
    order = np.argsort(slots, kind="stable")
    ordered = slots[order]
    starts = np.ones(len(slots), dtype=bool)
    starts[1:] = ordered[1:] != ordered[:-1]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(len(slots)), 0))
    rank = np.empty(len(slots), dtype=np.int64)
    rank[order] = np.arange(len(slots)) - group_start
    return rank


@dataclass(slots=True)
class RingUndo:
    """The rows of the slots a batch touched as they were before it, and the slots it created."""

    slots: I64
    newest_ms: I64
    dirty: npt.NDArray[np.bool_]
    buckets: dict[str, npt.NDArray[Any]]
    created: list[int]


class DayRing:
    """Day buckets for many keys; every method is vectorised over a batch of *distinct* slots."""

    def __init__(
        self,
        n_days: int,
        fields: Sequence[str],
        ms_per_day: int,
        capacity: int = 1024,
        counts: Sequence[str] = (),
    ) -> None:
        """`counts`: the fields that hold event counts (whole, non-negative: narrow integer buckets)."""
        self.n_days = n_days
        self.ms_per_day = ms_per_day
        self.fields = tuple(fields)
        self.indexes: dict[int, dict[str, int]] = {0: {}}  # owner -> key -> slot
        self.owner = np.zeros(0, dtype=np.int32)  # owner of each slot in use
        self._keys: list[str | None] = []
        self._free: list[int] = []
        self.newest_ms = np.full(0, NEVER, dtype=np.int64)  # newest event time seen per slot
        self.dirty = np.zeros(0, dtype=bool)  # changed since the last drain_changes()
        self._expired: dict[int, list[str]] = {}  # owner -> keys dropped since its last drain_changes()
        self.buckets: dict[str, npt.NDArray[Any]] = {
            name: np.zeros((0, n_days), dtype=np.uint16 if name in counts else np.float32)
            for name in self.fields
        }
        self._grow(capacity)

    def __len__(self) -> int:
        return sum(map(len, self.indexes.values()))

    @property
    def index(self) -> dict[str, int]:
        """Owner 0's key index (the only one of a single-owner ring)."""
        return self.indexes[0]

    @property
    def nbytes(self) -> int:
        """Bytes held for the keys in use: arrays per slot plus an estimate of the key index."""
        fixed = self.newest_ms.itemsize + self.dirty.itemsize + self.owner.itemsize
        per_slot = fixed + sum(b.itemsize * self.n_days for b in self.buckets.values())
        keys = len(self)
        key_bytes = (
            sum(len(k) for ix in self.indexes.values() for k in ix) + 100 * keys
        )  # str + dict entry + int
        return per_slot * keys + key_bytes

    def _grow(self, capacity: int) -> None:
        old = len(self.newest_ms)
        if capacity <= old:
            return
        self.newest_ms = np.concatenate([self.newest_ms, np.full(capacity - old, NEVER, np.int64)])
        self.dirty = np.concatenate([self.dirty, np.zeros(capacity - old, dtype=bool)])
        self.owner = np.concatenate([self.owner, np.zeros(capacity - old, dtype=np.int32)])
        for name, arr in self.buckets.items():
            self.buckets[name] = np.concatenate([arr, np.zeros((capacity - old, self.n_days), arr.dtype)])
        self._keys.extend([None] * (capacity - old))
        self._free.extend(range(capacity - 1, old - 1, -1))

    def slots(
        self, keys: Sequence[str], create: bool = True, created: list[int] | None = None, owner: int = 0
    ) -> I64:
        """Slot of each of `owner`'s keys; unknown keys get a new slot (appended to `created`), or -1 when
        `create` is false.

        The lookup is one map() over the batch; only keys seen for the first time take a Python loop.
        """
        index = self.indexes.get(owner)
        if index is None:
            index = self.indexes[owner] = {}
        found = np.fromiter(map(index.get, keys, repeat(-1)), dtype=np.int64, count=len(keys))
        if create:
            for i in np.flatnonzero(found < 0).tolist():
                slot = index.get(keys[i])  # the same new key may come twice in a batch
                if slot is None:
                    slot = self._allocate(keys[i], owner, index)
                    if created is not None:
                        created.append(slot)
                found[i] = slot
        return found

    def save(self, slots: I64, created: list[int]) -> RingUndo:
        """What `restore` needs to undo a batch that will change `slots` (and created `created`)."""
        s = np.unique(slots)
        buckets = {name: arr[s] for name, arr in self.buckets.items()}  # fancy indexing copies
        return RingUndo(s, self.newest_ms[s], self.dirty[s], buckets, created)

    def restore(self, undo: RingUndo) -> None:
        """Put the saved rows back and forget the created keys, as if the batch had never come."""
        self.newest_ms[undo.slots] = undo.newest_ms
        self.dirty[undo.slots] = undo.dirty
        for name, arr in self.buckets.items():
            arr[undo.slots] = undo.buckets[name]
        self._free_slots(np.asarray(undo.created, dtype=np.int64))

    def _allocate(self, key: str, owner: int, index: dict[str, int]) -> int:
        if not self._free:
            self._grow(max(1024, 2 * len(self.newest_ms)))
        slot = self._free.pop()
        index[key] = slot
        self._keys[slot] = key
        self.owner[slot] = owner
        return slot

    def newest_day(self, slots: I64) -> I64:
        """The newest event day seen for each slot (far in the past for unused slots)."""
        return self.newest_ms[slots] // self.ms_per_day

    def held_days(self, slots: I64) -> I64:
        """(n, n_days): the day each ring position of each slot currently stands for."""
        newest = self.newest_day(slots)[:, None]
        return newest - ((newest - np.arange(self.n_days)) % self.n_days)

    def advance(self, slots: I64, ts_ms: I64) -> None:
        """Move keys forward to `ts_ms` (when newer), clearing positions that leave their ring.

        Slots may repeat: each key moves to the newest of its times.
        """
        unique, inverse = np.unique(slots, return_inverse=True)
        if len(unique) != len(slots):
            newest = np.full(len(unique), NEVER, dtype=np.int64)
            np.maximum.at(newest, inverse, ts_ms)
            slots, ts_ms = unique, newest
        newer = ts_ms > self.newest_ms[slots]
        if not newer.any():
            return
        s, t = slots[newer], ts_ms[newer]
        stale = self.held_days(s) <= (t // self.ms_per_day - self.n_days)[:, None]
        if stale.any():
            for arr in self.buckets.values():
                rows = arr[s]
                rows[stale] = 0.0
                arr[s] = rows
        self.newest_ms[s] = t

    def holds(self, slots: I64, days: I64) -> npt.NDArray[np.bool_]:
        """Whether each slot's ring holds its day (a slot of -1, an unknown key, holds none)."""
        newest = self.newest_day(np.maximum(slots, 0))
        held: npt.NDArray[np.bool_] = (slots >= 0) & (days > newest - self.n_days) & (days <= newest)
        return held

    def take_back(self, field: str, slots: I64, days: I64, values: F64) -> None:
        """Subtract what `add` added (a count withdrawn) from buckets the ring holds; a bucket never goes
        below zero (one cleared since, by a restore or a new key, has nothing left to take). `slots` may
        repeat."""
        held = self.holds(slots, days)
        if not held.any():
            return
        flat = slots[held] * self.n_days + days[held] % self.n_days
        where, inverse = np.unique(flat, return_inverse=True)
        total = np.bincount(inverse, weights=values[held])
        s, d = where // self.n_days, where % self.n_days
        arr = self.buckets[field]
        arr[s, d] = np.maximum(arr[s, d].astype(np.float64) - total, 0.0).astype(arr.dtype)
        self.dirty[s] = True

    def add(self, field: str, slots: I64, days: I64, values: F64) -> int:
        """Add values into each slot's bucket for `days`; returns how many were stored.

        Days outside the key's ring (too old, or newer than the key has been advanced to) are not
        stored. `slots` may repeat (np.add.at).
        """
        newest = self.newest_day(slots)
        kept = (days > newest - self.n_days) & (days <= newest)
        at, add = (slots[kept], days[kept] % self.n_days), values[kept]
        if self.buckets[field].dtype.kind == "u" and len(add):
            self._widen(field, int(self.buckets[field][at].max()) + float(add.sum()))
        arr = self.buckets[field]
        np.add.at(arr, at, add.astype(arr.dtype, copy=False))
        self.dirty[slots] = True
        return int(kept.sum())

    def _widen(self, field: str, highest: float) -> None:
        """Make a count field's buckets wide enough for `highest` (an upper bound of what they will hold)."""
        arr = self.buckets[field]
        if arr.dtype.kind == "u" and highest > np.iinfo(arr.dtype).max:
            self.buckets[field] = arr.astype(np.uint32 if highest <= np.iinfo(np.uint32).max else np.float64)

    def window_sums(self, fields: Sequence[str], slots: I64, end_ms: I64, days: Sequence[int]) -> F64:
        """(n, fields, windows): sums over (end - w, end] per window length w, the oldest day pro rata.

        The day holding `end` counts whole; the day w days before it counts by the share of it that
        lies inside the window. This keeps counts continuous across midnight with day-sized buckets.
        Every field and window in one pass: the ring layout is worked out once per call.
        """
        age = (end_ms // self.ms_per_day)[:, None] - self.held_days(slots)  # (n, n_days)
        frac = (end_ms % self.ms_per_day) / self.ms_per_day
        a, w = age[:, None, :], np.asarray(days)[None, :, None]
        weight = ((a >= 0) & (a < w)).astype(np.float64)
        weight += np.where(a == w, 1.0 - frac[:, None, None], 0.0)
        sums: F64 = np.einsum("nwd,nfd->nfw", weight, self._values(fields, slots))
        return sums

    def day_sums(self, fields: Sequence[str], slots: I64, last_day: I64, days: Sequence[int]) -> F64:
        """(n, fields, ends, windows): sums over whole days [last - w + 1, last] for each column of
        `last_day` (n, ends) and each window length w (closed-day windows), in one pass."""
        age = last_day[:, :, None] - self.held_days(slots)[:, None, :]  # (n, ends, n_days)
        a, w = age[:, :, None, :], np.asarray(days)[None, None, :, None]
        weight = ((a >= 0) & (a < w)).astype(np.float64)
        sums: F64 = np.einsum("newd,nfd->nfew", weight, self._values(fields, slots))
        return sums

    def _values(self, fields: Sequence[str], slots: I64) -> npt.NDArray[Any]:
        """(n, fields, n_days) bucket rows of `slots`."""
        return np.stack([self.buckets[f][slots] for f in fields], axis=1)

    def expire(self, before_day: int, owner: int = 0) -> int:
        """Drop `owner`'s keys whose newest day is before `before_day`; returns how many went."""
        used = (self.newest_ms != NEVER) & (self.owner == owner)
        gone = np.flatnonzero(used & (self.newest_ms // self.ms_per_day < before_day))
        if len(gone):
            self._expired.setdefault(owner, []).extend(self._free_slots(gone))
        return len(gone)

    def expire_idle(self, today: int, grace_days: int, owner: int = 0) -> int:
        """Drop keys idle for longer than the ring plus `grace_days` at `today` (no window reaches them)."""
        return self.expire(today - self.n_days - grace_days + 1, owner)

    def remove(self, keys: Sequence[str], owner: int = 0) -> None:
        """Forget keys (a tombstone from a table)."""
        slots = self.slots(keys, create=False, owner=owner)
        self._free_slots(slots[slots >= 0])

    def drop_owner(self, owner: int) -> int:
        """Forget every key of `owner` and its pending changes (a partition handed over); returns how many."""
        index = self.indexes.get(owner, {})
        slots = np.fromiter(index.values(), dtype=np.int64, count=len(index))
        self._free_slots(slots)
        self._expired.pop(owner, None)
        return len(slots)

    def _free_slots(self, slots: I64) -> list[str]:
        keys: list[str] = []
        for slot in slots.tolist():
            key = self._keys[slot]
            if key is not None:
                del self.indexes[int(self.owner[slot])][key]
                keys.append(key)
                self._free.append(slot)
            self._keys[slot] = None
        self.newest_ms[slots] = NEVER
        self.dirty[slots] = False
        for arr in self.buckets.values():
            arr[slots] = 0.0
        return keys

    def load(self, keys: Sequence[str], rows: dict[str, npt.NDArray[np.generic]], owner: int = 0) -> I64:
        """Overwrite (or create) the rows of `owner`'s `keys` (e.g. decoded from a state topic); their slots."""
        slots = self.slots(keys, owner=owner)
        self.newest_ms[slots] = rows["newest_ms"]
        for name in self.fields:
            if self.buckets[name].dtype.kind == "u" and len(slots):
                self._widen(name, float(rows[name].max()))
            self.buckets[name][slots] = rows[name]
        return slots

    def drain_changes(self, owner: int = 0) -> tuple[list[str], I64, list[str]]:
        """`owner`'s (changed keys, their slots, expired keys) since its last call: what a changelog must write."""
        dirty = np.flatnonzero(self.dirty)  # few, so the owner test runs on them alone, not on every slot
        slots = dirty[self.owner[dirty] == owner].astype(np.int64)
        self.dirty[slots] = False
        keys = [self._keys[s] for s in slots.tolist()]
        expired = self._expired.pop(owner, [])
        return [k for k in keys if k is not None], slots, expired
