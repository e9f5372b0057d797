"""The scorer's terminal events: records per valid transaction, watermarks to every partition on new days."""

from __future__ import annotations

import numpy as np

from scorer.aggregate.partition import TX, WATERMARK, PartitionAgg, transaction_record, watermark_record
from scorer.events.timestamps import MS_PER_DAY
from scorer.features.engine import FeatureConfig, TerminalFeatures
from scorer.kafka.sink import Sink
from scorer.scoring.scored import Counted
from scorer.scoring.terminal_events import TerminalEventWriter
from tests.unit.fakes import FakeBroker, FakeProducer, sink_delivery

DAY = 20_500


def counted(days: list[int], index: list[int]) -> Counted:
    ts = np.asarray([d * MS_PER_DAY + 1000 * i for i, d in enumerate(days)], dtype=np.int64)
    return Counted(np.asarray(index, dtype=np.int64), [f"T{i}" for i in index], ts)


def test_each_valid_transaction_once_and_watermarks_to_every_partition_on_new_days() -> None:
    """A new day for the scorer: a watermark for every input partition it owns (its batch may hold only
    some of them); a new day for one partition alone (taken over behind the others): that one."""
    broker = FakeBroker(counts={"te": 3})
    owned = {0, 1, 2}
    sink = Sink({}, producer=FakeProducer(broker))
    delivery = sink_delivery(sink, broker)
    writer = TerminalEventWriter("te", 3, delivery, owned=lambda: owned)
    partitions, offsets = np.asarray([1, 1, 0, 0]), np.asarray([10, 11, 20, 21])
    writer.write(counted([DAY, DAY], [0, 2]), partitions, offsets)  # records 1 and 3 were invalid
    writer.write(counted([DAY], [3]), partitions, offsets)  # same day: no new watermark
    writer.write(counted([DAY + 1], [1]), partitions, offsets)
    owned.add(3)  # assigned after a rebalance, its records still on the day before
    writer.write(counted([DAY], [0]), np.asarray([3]), np.asarray([5]))
    assert sink.wait(sink.seal(), 1.0)
    logs = {q: broker.log.get(("te", q), []) for q in range(3)}
    tx = sorted(TX.unpack(v)[2:] for log in logs.values() for _, v in log if v and v[:1] == b"T")
    assert tx == [(0, 20), (0, 21), (1, 10), (1, 11), (3, 5)]  # (source partition, offset) of each, once
    for log in logs.values():
        marks = [WATERMARK.unpack(v) for _, v in log if v and v[:1] == b"W"]
        days = [(kind + str(p).encode(), ts // MS_PER_DAY) for _, ts, kind, p in marks]
        assert days == [
            (b"t0", DAY), (b"t1", DAY), (b"t2", DAY), (b"t0", DAY + 1), (b"t1", DAY + 1), (b"t2", DAY + 1),
            (b"t3", DAY),
        ]  # fmt: skip


def test_a_watermark_moves_its_sources_event_time_and_counts_nothing() -> None:
    part = PartitionAgg(TerminalFeatures(FeatureConfig()))
    day_start = DAY * MS_PER_DAY
    records = [
        transaction_record("T1", day_start + 5, 0, 1),
        watermark_record(day_start + MS_PER_DAY + 9, "t1"),
        {"key": b"", "value": b"W" + bytes(8)},  # an older scorer's watermark names no source: ignored
    ]
    folded = part.fold([(i, r["key"], r["value"]) for i, r in enumerate(records)], closed_day=DAY - 1)
    assert folded.transactions == 1 and part.reached == {
        "t0": day_start + 5,
        "t1": day_start + MS_PER_DAY + 9,
    }
    assert len(part.terminals.ring) == 1  # T1 only: the watermark created no terminal
