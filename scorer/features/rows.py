"""Wire format of the compacted state topics: DayRing rows and per-partition marker records.

`scorer-state` (customer windows, written by the scorer) and `terminal-features` (terminal windows,
written by the aggregator at each day close) share it. A row is the key's newest event time and its
buckets, little-endian; a marker (key MARKER_KEY) carries where the partition's rows stand; keys under
LABEL_MEMORY_PREFIX (terminal-features only) are the aggregator's memory of labelled transactions.
A key's row is a tombstone (value None) once the key expired, so compaction forgets it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from scorer.features.state import DayRing

MARKER_KEY = b"\x00marker"
# `terminal-features` also holds the aggregator's memory of labelled transactions (features/frauds.py), one
# record per transaction under this prefix: not a terminal's row, and every reader of rows skips it.
LABEL_MEMORY_PREFIX = b"\x00label/"
FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class RowCodec:
    """Encodes/decodes the rows of one DayRing layout (fields and ring length are part of the format)."""

    fields: tuple[str, ...]
    n_days: int

    @property
    def row_bytes(self) -> int:
        return 8 + 4 * self.n_days * len(self.fields)

    def encode(self, ring: DayRing, slots: npt.NDArray[np.int64]) -> list[bytes]:
        """One value per slot: int64 newest_ms then each field's float32 buckets."""
        newest = ring.newest_ms[slots].astype("<i8").view(np.uint8).reshape(len(slots), 8)
        parts = [newest] + [
            ring.buckets[f][slots].astype("<f4").view(np.uint8).reshape(len(slots), -1) for f in self.fields
        ]
        packed = np.ascontiguousarray(np.hstack(parts))
        return [row.tobytes() for row in packed]

    def decode(self, values: Sequence[bytes]) -> dict[str, npt.NDArray[Any]]:
        """Rows (all of `row_bytes` length) back into DayRing.load input."""
        raw = np.frombuffer(b"".join(values), dtype=np.uint8).reshape(len(values), self.row_bytes)
        out: dict[str, npt.NDArray[Any]] = {"newest_ms": raw[:, :8].copy().view("<i8").reshape(-1)}
        width = 4 * self.n_days
        for i, f in enumerate(self.fields):
            chunk = raw[:, 8 + i * width : 8 + (i + 1) * width]
            out[f] = chunk.copy().view("<f4").reshape(len(values), self.n_days).astype(np.float32)
        return out


def encode_marker(fields: Mapping[str, Any]) -> bytes:
    return orjson.dumps({"format": FORMAT_VERSION, **fields})


def decode_marker(value: bytes) -> dict[str, Any]:
    doc = orjson.loads(value)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_VERSION:
        raise ValueError(f"unknown marker format: {doc!r}")
    return doc


def load_rows(ring: DayRing, codec: RowCodec, rows: Mapping[str, bytes | None], owner: int = 0) -> int:
    """Apply the latest value per key of `owner` (None deletes); returns how many keys were loaded."""
    live = {k: v for k, v in rows.items() if v is not None and len(v) == codec.row_bytes}
    gone = [k for k, v in rows.items() if v is None]
    if gone:
        ring.remove(gone, owner)
    if live:
        ring.load(list(live), codec.decode(list(live.values())), owner)
    return len(live)


@dataclass(slots=True)
class PartitionDump:
    """A state partition read to its end: latest value per key up to the last marker, and that marker."""

    rows: dict[bytes, bytes | None]
    marker: dict[str, Any] | None
    records: int


class PartitionLog:
    """Builds a PartitionDump from a state partition's records, read in offset order.

    Rows written after the last marker belong to a snapshot that was cut short and are ignored.
    """

    def __init__(self) -> None:
        self.rows: dict[bytes, bytes | None] = {}
        self.since_marker: dict[bytes, bytes | None] = {}
        self.marker: dict[str, Any] | None = None
        self.count = 0

    def add(self, key: bytes, value: bytes | None) -> None:
        self.count += 1
        if key == MARKER_KEY:
            self.rows.update(self.since_marker)
            self.since_marker.clear()
            self.marker = decode_marker(value or b"")
        else:
            self.since_marker[key] = value

    def result(self) -> PartitionDump:
        return PartitionDump(dict(self.rows), self.marker, self.count)
