"""The scorer's terminal events: records per valid transaction, a watermark per partition on a new day."""

from __future__ import annotations

import numpy as np

from scorer.aggregate.partition import TX, WATERMARK, PartitionAgg, transaction_record, watermark_record
from scorer.events.timestamps import MS_PER_DAY
from scorer.features.engine import FeatureConfig, TerminalFeatures
from scorer.kafka.sink import Sink
from scorer.scoring.commits import CommitTracker
from scorer.scoring.delivery import AtLeastOnce
from scorer.scoring.scored import Counted
from scorer.scoring.terminal_events import TerminalEventWriter
from tests.unit.fakes import FakeBroker, FakeProducer

DAY = 20_500


def counted(days: list[int], index: list[int]) -> Counted:
    ts = np.asarray([d * MS_PER_DAY + 1000 * i for i, d in enumerate(days)], dtype=np.int64)
    return Counted(np.asarray(index, dtype=np.int64), [f"T{i}" for i in index], ts)


def test_each_valid_transaction_once_and_a_watermark_to_every_partition_per_new_day() -> None:
    broker = FakeBroker(counts={"te": 3})
    sink = Sink({}, producer=FakeProducer(broker))
    writer = TerminalEventWriter("te", 3, AtLeastOnce(sink, CommitTracker(sink, None, None, "state")))  # type: ignore[arg-type]
    partitions, offsets = np.asarray([1, 1, 0, 0]), np.asarray([10, 11, 20, 21])
    writer.write(counted([DAY, DAY], [0, 2]), partitions, offsets)  # records 1 and 3 were invalid
    writer.write(counted([DAY], [3]), partitions, offsets)  # same day: no new watermark
    writer.write(counted([DAY + 1], [1]), partitions, offsets)
    assert sink.wait(sink.seal(), 1.0)
    logs = {q: broker.log.get(("te", q), []) for q in range(3)}
    tx = sorted(TX.unpack(v)[2:] for log in logs.values() for _, v in log if v and v[:1] == b"T")
    assert tx == [(0, 20), (0, 21), (1, 10), (1, 11)]  # (source partition, offset) of each, once
    for log in logs.values():  # the first event of each new day, in every partition
        marks = [WATERMARK.unpack(v)[1] // MS_PER_DAY for _, v in log if v and v[:1] == b"W"]
        assert marks == [DAY, DAY + 1]


def test_a_watermark_moves_the_aggregators_watermark_and_counts_nothing() -> None:
    part = PartitionAgg(TerminalFeatures(FeatureConfig()))
    day_start = DAY * MS_PER_DAY
    records = [transaction_record("T1", day_start + 5, 0, 1), watermark_record(day_start + MS_PER_DAY + 9)]
    folded = part.fold([(i, r["key"], r["value"]) for i, r in enumerate(records)], closed_day=DAY - 1)
    assert folded.transactions == 1 and part.watermark_ms == day_start + MS_PER_DAY + 9
    assert len(part.terminals.ring) == 1  # T1 only: the watermark created no terminal
