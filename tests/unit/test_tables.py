"""The state-topic wire format: rows round-trip exactly; tombstones delete; markers carry their fields."""

from __future__ import annotations

import numpy as np
import pytest

from scorer.events.timestamps import MS_PER_DAY
from scorer.features.rows import RowCodec, decode_marker, encode_marker, load_rows
from scorer.features.state import DayRing


def filled_ring() -> DayRing:
    ring = DayRing(8, ("count", "amount"), MS_PER_DAY)
    slots = ring.slots(["a", "b", "c"])
    ts = np.array([3, 5, 9], dtype=np.int64) * MS_PER_DAY + 123
    ring.advance(slots, ts)
    ring.add("count", slots, ts // MS_PER_DAY, np.ones(3))
    ring.add("amount", slots, ts // MS_PER_DAY, np.array([1.5, 2.25, 1e6]))
    return ring


def test_rows_round_trip_exactly() -> None:
    ring = filled_ring()
    codec = RowCodec(("count", "amount"), 8)
    keys, slots, expired = ring.drain_changes()
    values = codec.encode(ring, slots)
    assert all(len(v) == codec.row_bytes for v in values) and not expired
    copy = DayRing(8, ("count", "amount"), MS_PER_DAY)
    assert load_rows(copy, codec, dict(zip(keys, values, strict=True))) == 3
    for key in keys:
        a, b = ring.index[key], copy.index[key]
        assert ring.newest_ms[a] == copy.newest_ms[b]
        for field in ("count", "amount"):
            np.testing.assert_array_equal(ring.buckets[field][a], copy.buckets[field][b])
    assert not copy.drain_changes()[0]  # loading is not a change to write back


def test_tombstones_delete_and_expiry_reports_keys() -> None:
    ring = filled_ring()
    codec = RowCodec(("count", "amount"), 8)
    load_rows(ring, codec, {"a": None})
    assert "a" not in ring.index and len(ring) == 2
    ring.drain_changes()
    assert ring.expire(8) == 1  # "b" (day 5) is older than day 8
    assert ring.drain_changes()[2] == ["b"]


def test_markers_round_trip_and_reject_other_formats() -> None:
    assert decode_marker(encode_marker({"offset": 42}))["offset"] == 42
    with pytest.raises(ValueError, match="marker format"):
        decode_marker(b'{"format": 99}')
