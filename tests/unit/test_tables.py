"""The state-topic wire format: rows round-trip exactly; tombstones delete; markers carry their fields."""

from __future__ import annotations

import numpy as np
import pytest

from scorer.events.timestamps import MS_PER_DAY
from scorer.features.rows import RowCodec, decode_marker, encode_marker, load_rows
from scorer.features.state import DayRing


def filled_ring() -> DayRing:
    ring = DayRing(8, ("count", "amount"), MS_PER_DAY, counts=("count",))
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
    copy = DayRing(8, ("count", "amount"), MS_PER_DAY, counts=("count",))
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


def test_counts_widen_past_uint16_and_stay_exact() -> None:
    """A key with more than 65,535 events in a day (a card-testing burst): the count is exact, not wrapped."""
    ring = DayRing(8, ("count", "amount"), MS_PER_DAY, counts=("count",))
    assert ring.buckets["count"].dtype == np.uint16 and ring.buckets["amount"].dtype == np.float32
    slots = ring.slots(["burst", "quiet"])
    day = np.array([4, 4], dtype=np.int64)
    ring.advance(slots, day * MS_PER_DAY)
    burst = np.zeros(70_000, dtype=np.int64)
    ring.add("count", burst, np.full(70_000, 4), np.ones(70_000))  # one batch past 65,535
    ring.add("count", slots, day, np.ones(2))
    assert ring.buckets["count"].dtype == np.uint32
    sums = ring.day_sums(("count",), slots, np.full((2, 1), 4), (1,))[:, 0, 0, 0]
    assert sums.tolist() == [70_001.0, 1.0]


def test_loading_rows_past_uint16_widens_the_counts() -> None:
    source = DayRing(8, ("count", "amount"), MS_PER_DAY, counts=("count",))
    slot = source.slots(["T"])
    source.advance(slot, np.array([2 * MS_PER_DAY]))
    source.add("count", np.zeros(66_000, dtype=np.int64), np.full(66_000, 2), np.ones(66_000))
    codec = RowCodec(("count", "amount"), 8)
    keys, slots, _ = source.drain_changes()
    copy = DayRing(8, ("count", "amount"), MS_PER_DAY, counts=("count",))
    load_rows(copy, codec, dict(zip(keys, codec.encode(source, slots), strict=True)))
    assert int(copy.buckets["count"][copy.index["T"], 2]) == 66_000


def test_owners_share_the_arrays_but_not_their_keys_changes_expiry_or_hand_over() -> None:
    """Two input partitions in one ring: the same customer id is two keys; each owner drains, expires and
    drops only its own."""
    ring = DayRing(8, ("count", "amount"), MS_PER_DAY, counts=("count",))
    a, b = ring.slots(["C1", "C2"], owner=0), ring.slots(["C1"], owner=3)
    assert a[0] != b[0] and len(ring) == 3
    ts = np.array([1, 1, 6], dtype=np.int64) * MS_PER_DAY
    both = np.concatenate([a, b])
    ring.advance(both, ts)
    ring.add("count", both, ts // MS_PER_DAY, np.ones(3))
    keys0, _, _ = ring.drain_changes(0)
    keys3, slots3, _ = ring.drain_changes(3)
    assert sorted(keys0) == ["C1", "C2"] and keys3 == ["C1"] and slots3.tolist() == b.tolist()
    assert ring.expire(5, owner=3) == 0 and ring.expire(5, owner=0) == 2  # owner 3's C1 is newer
    assert sorted(ring.drain_changes(0)[2]) == ["C1", "C2"] and ring.drain_changes(3)[2] == []
    assert ring.drop_owner(3) == 1 and len(ring) == 0
    assert ring.slots(["C1"], create=False, owner=3).tolist() == [-1]
    again = ring.slots(["C9"], owner=3)  # freed slots are reused, clean
    keys, _, expired = ring.drain_changes(3)
    assert int(ring.buckets["count"][again[0]].sum()) == 0 and keys == [] and expired == []
