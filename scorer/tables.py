"""Wire format of the compacted state topics: DayRing rows and per-partition marker records.

`scorer-state` (customer windows, written by the scorer) and `terminal-features` (terminal windows,
written by the aggregator at each day close) share it. A row is the key's newest event time and its
buckets, little-endian; a marker (key MARKER_KEY) carries where the partition's rows stand.
A key's row is a tombstone (value None) once the key expired, so compaction forgets it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from scorer.state import DayRing

MARKER_KEY = b"\x00marker"
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


def load_rows(ring: DayRing, codec: RowCodec, rows: Mapping[str, bytes | None]) -> int:
    """Apply the latest value per key (None deletes); returns how many keys were loaded."""
    live = {k: v for k, v in rows.items() if v is not None and len(v) == codec.row_bytes}
    gone = [k for k, v in rows.items() if v is None]
    if gone:
        ring.remove(gone)
    if live:
        ring.load(list(live), codec.decode(list(live.values())))
    return len(live)


@dataclass(slots=True)
class PartitionDump:
    """A state partition read to its end: latest value per key up to the last marker, and that marker."""

    rows: dict[bytes, bytes | None]
    marker: dict[str, Any] | None
    records: int


def read_partition(
    consumer_config: Mapping[str, Any], topic: str, partition: int, timeout_s: float = 30.0
) -> PartitionDump:
    """Read one partition from the beginning to its high watermark (no group, no commits).

    Rows written after the last marker belong to a snapshot that was cut short and are ignored.
    Reading goes on past the high watermark until a poll comes back empty: tansu reports the base offset
    of the last record batch plus one as the high watermark, short of the real end (Kafka does not).
    Only the partition's owner writes to it while this runs, so the end is final.
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({**consumer_config, "enable.auto.commit": False})
    try:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
        rows: dict[bytes, bytes | None] = {}
        since_marker: dict[bytes, bytes | None] = {}
        marker: dict[str, Any] | None = None
        count = 0
        if high > 0:
            consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
            deadline = time.monotonic() + timeout_s
            position = 0
            while True:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"reading {topic}[{partition}] timed out at offset {position} of {high}"
                    )
                msgs = consumer.consume(1000, 0.2)
                if not msgs and position >= high:
                    break  # past the high watermark and nothing more: the end (see the docstring)
                for msg in msgs:
                    if msg.error():
                        continue
                    position = (msg.offset() or 0) + 1
                    count += 1
                    key = msg.key() or b""
                    if key == MARKER_KEY:
                        rows.update(since_marker)
                        since_marker.clear()
                        marker = decode_marker(msg.value() or b"")
                    else:
                        since_marker[key] = msg.value()
        return PartitionDump(rows, marker, count)
    finally:
        consumer.close()
