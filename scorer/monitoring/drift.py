"""Drift: the Population Stability Index of every feature and of the score against the training reference.

Training stored, per feature and for the score, decile edges and the share of training rows in each bin
(model.json `reference`). Here every scored row is put in those bins (one searchsorted per column and one
bincount per batch) and the counts are added to rings of event-time buckets, one ring per window (1 h in
5-minute buckets, 24 h in hourly ones by default). PSI over a window is then a sum over its buckets,
computed when the gauges are refreshed, never per event. Windows end at the newest event time seen, so
a replayed history drifts exactly as it would have live.

PSI = sum over bins of (live - train) * ln(live / train), shares floored at 1e-4 so an empty bin is a
large finite term. The usual reading: below 0.1 stable, 0.1-0.25 a moderate shift, above 0.25 a major one.

The same binned counts, per event hour, are handed out by `take_hours()` for the monitoring topic, from
which `scorer report` draws its drift plots.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from scorer.events.timestamps import HOUR_MS
from scorer.model.reference import stored_edges

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
SHARE_FLOOR = 1e-4

DEFAULT_WINDOWS = (("1h", 3_600, 12), ("24h", 86_400, 24))  # (label, seconds, buckets)
SCORE = "score"
# calendar features repeat with these periods: over a shorter window their distribution cannot match the
# training one (an hour holds one hour_of_day, a Sunday only weekend), so their PSI there means nothing
CYCLE_S = {"hour_of_day": 86_400, "is_night": 86_400, "is_weekend": 7 * 86_400}


def comparable(columns: Sequence[str], window_s: int) -> npt.NDArray[np.bool_]:
    """Columns whose PSI over a window of `window_s` seconds is meaningful (see CYCLE_S)."""
    return np.asarray([CYCLE_S.get(c, 0) <= window_s for c in columns], dtype=np.bool_)


def psi(observed: F64, expected: F64) -> float:
    """PSI of observed counts (any scale) against expected shares; nan when nothing was observed."""
    total = observed.sum()
    if total <= 0:
        return float("nan")
    live = np.maximum(observed / total, SHARE_FLOOR)
    train = np.maximum(expected, SHARE_FLOOR)
    return float(((live - train) * np.log(live / train)).sum())


@dataclass(frozen=True, slots=True)
class Bins:
    """The training bins of every monitored column, laid end to end in one flat vector of counts."""

    columns: tuple[str, ...]  # the features, then "score"
    edges: tuple[F64, ...]
    offsets: I64  # first flat bin of each column
    expected: F64  # training share of every flat bin

    @classmethod
    def from_reference(cls, reference: Mapping[str, Any], names: Sequence[str]) -> Bins:
        parts = [reference["features"][n] for n in names] + [reference["score"]]
        edges = tuple(stored_edges(p) for p in parts)
        sizes = np.asarray([len(e) + 1 for e in edges], dtype=np.int64)
        expected = np.concatenate([np.asarray(p["share"], dtype=np.float64) for p in parts])
        if len(expected) != int(sizes.sum()):
            raise ValueError("reference shares do not match its edges")
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        return cls((*names, SCORE), edges, offsets, expected)

    @property
    def size(self) -> int:
        return len(self.expected)

    def flat(self, X: npt.NDArray[np.floating[Any]], scores: F64) -> I64:
        """(n, columns) flat bin index of every value; NaN (a failed score) falls in the top bin."""
        out = np.empty((len(scores), len(self.columns)), dtype=np.int64)
        for c, e in enumerate(self.edges[:-1]):
            out[:, c] = np.searchsorted(e, X[:, c], side="right")
        out[:, -1] = np.searchsorted(self.edges[-1], scores, side="right")
        out += self.offsets
        return out

    def column_psi(self, counts: F64) -> F64:
        """PSI of each column from one flat vector of counts."""
        bounds = [*self.offsets.tolist(), self.size]
        return np.asarray(
            [psi(counts[a:b], self.expected[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        )


class Ring:
    """Counts per event-time bucket over one window; buckets older than the window are reused."""

    def __init__(self, seconds: int, buckets: int, size: int) -> None:
        self.bucket_ms = seconds * 1000 // buckets
        self.counts = np.zeros((buckets, size), dtype=np.int64)
        self.bucket_of = np.full(buckets, -1, dtype=np.int64)
        self.newest = -1

    def add(self, bucket: int, counts: I64) -> bool:
        """Add one bucket's counts; False (ignored) when the bucket is already out of the window."""
        n = len(self.bucket_of)
        if bucket <= self.newest - n:
            return False
        self.newest = max(self.newest, bucket)
        slot = bucket % n
        if self.bucket_of[slot] != bucket:
            self.counts[slot] = 0
            self.bucket_of[slot] = bucket
        self.counts[slot] += counts
        return True

    def total(self) -> I64:
        live = self.bucket_of > self.newest - len(self.bucket_of)
        return np.asarray(self.counts[live].sum(axis=0), dtype=np.int64)


class Drift:
    """One model's drift state: the rings of every window plus the per-hour counts not yet published."""

    def __init__(self, bins: Bins, windows: Sequence[tuple[str, int, int]] = DEFAULT_WINDOWS) -> None:
        self.bins = bins
        self.rings = {label: Ring(seconds, buckets, bins.size) for label, seconds, buckets in windows}
        self.comparable = {label: comparable(bins.columns, seconds) for label, seconds, _ in windows}
        self.fine_ms = min(r.bucket_ms for r in self.rings.values())
        self.hours: dict[int, I64] = {}  # event hour -> counts, for the monitoring topic
        self.too_late = 0  # events older than a window when they came, summed over the windows

    def observe(self, X: npt.NDArray[np.floating[Any]], scores: F64, event_ts_ms: I64) -> None:
        """Bin a batch and add it to every window; one bincount over (bucket, bin) pairs."""
        flat = self.bins.flat(X, scores)
        fine, row_bucket = np.unique(event_ts_ms // self.fine_ms, return_inverse=True)
        keyed = row_bucket.reshape(-1, 1) * self.bins.size + flat
        per_bucket = np.bincount(keyed.ravel(), minlength=len(fine) * self.bins.size)
        per_bucket = per_bucket.reshape(len(fine), self.bins.size)
        for ring in self.rings.values():
            coarse = fine * self.fine_ms // ring.bucket_ms
            for bucket in np.unique(coarse).tolist():
                rows = per_bucket[coarse == bucket].sum(axis=0)
                if not ring.add(bucket, rows):
                    self.too_late += int(rows[: len(self.bins.edges[0]) + 1].sum())
        hours = fine * self.fine_ms // HOUR_MS
        for hour in np.unique(hours).tolist():
            rows = per_bucket[hours == hour].sum(axis=0)
            self.hours[hour] = self.hours.get(hour, 0) + rows

    def window_psi(self) -> dict[str, tuple[int, F64]]:
        """Per window: events in it and the PSI of every column (features then score); nan where the
        window is shorter than the column's calendar cycle (see `self.comparable`)."""
        out = {}
        for label, ring in self.rings.items():
            counts = ring.total().astype(np.float64)
            events = int(counts[: len(self.bins.edges[0]) + 1].sum())
            values = self.bins.column_psi(counts)
            values[~self.comparable[label]] = np.nan
            out[label] = (events, values)
        return out

    def take_hours(self) -> dict[int, I64]:
        """The per-hour counts gathered since the last call (then forgotten)."""
        hours, self.hours = self.hours, {}
        return hours
