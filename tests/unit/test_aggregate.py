"""The aggregator's commit path and recovery under injected faults, no broker.

The real Aggregator runs on fake consumers and a fake producer (tests/unit/fakes.py) over one simulated
history: transactions on 2 partitions and labels, arriving in event-time order. The reference is a run
without faults; after a crash, a refused delivery or a re-key stage that sends records twice, the
restarted aggregator's terminal table must equal it row for row.
"""

from __future__ import annotations

import dataclasses
import datetime
import zlib
from functools import cache

import numpy as np
import orjson
import pytest

from scorer.aggregate.aggregator import Aggregator
from scorer.aggregate.partition import TX, PartitionAgg, transaction_record
from scorer.aggregate.table import terminal_codec
from scorer.config import Settings
from scorer.events.timestamps import MS_PER_DAY
from scorer.features.engine import FeatureConfig, TerminalFeatures
from scorer.features.rows import MARKER_KEY, PartitionDump, PartitionLog
from scorer.kafka.sink import Sink
from scorer.training.simulate import SimulationParams, label_values, simulate, transaction_values
from tests.unit.fakes import Crash, FakeBroker, FakeConsumer, FakeProducer, Policy, deliver_all

SETTINGS = Settings(
    input_topic="tx", labels_topic="labels", terminal_events_topic="te", terminal_topic="tf", dlq_topic="dlq",
    batch_max=60, terminal_events_from="aggregator",  # these tests crash and refuse the re-key of transactions
)  # fmt: skip
COUNTS = {"tx": 2, "labels": 1, "te": 2, "tf": 2, "dlq": 1}
CONFIG = FeatureConfig()


@cache
def history() -> list[tuple[str, int, bytes, bytes]]:
    """(topic, partition, key, value) in arrival order: transactions at event time, labels when reported."""
    data = simulate(
        SimulationParams(customers=150, terminals=60, days=12, seed=11, start=datetime.date(2026, 2, 1))
    )
    tx = transaction_values(data, np.arange(len(data.transaction_id), dtype=np.int64))
    labels = label_values(data, np.arange(len(data.label_index), dtype=np.int64))
    events = [
        (int(t), "tx", zlib.crc32(c.encode()) % 2, c.encode(), v)
        for t, c, v in zip(data.event_ts_ms.tolist(), data.customer_id, tx, strict=True)
    ]
    events += [
        (int(t), "labels", 0, b"", v) for t, v in zip(data.label_reported_ts_ms.tolist(), labels, strict=True)
    ]
    events.sort(key=lambda e: e[0])
    return [(topic, p, k, v) for _, topic, p, k, v in events]


def new_broker() -> FakeBroker:
    broker = FakeBroker(counts=dict(COUNTS))
    for topic, p, key, value in history():
        broker.put(topic, p, key, value)
    return broker


def start(broker: FakeBroker, policy: Policy = deliver_all, settings: Settings = SETTINGS) -> Aggregator:
    """An aggregator process on the fake broker, its partitions assigned (and restored)."""
    rekey = FakeConsumer(broker, "agg-rekey", COUNTS)
    consumer = FakeConsumer(broker, "agg", COUNTS)
    agg = Aggregator(
        settings, CONFIG, sink=Sink({}, producer=FakeProducer(broker, policy)), rekey=rekey, consumer=consumer,  # type: ignore[arg-type]
        read=lambda config, topic, p: broker.dump(topic, p),
    )  # fmt: skip
    agg.subscribe()
    return agg


def drain(agg: Aggregator, steps: int = 10_000) -> int:
    """Steps until nothing is left to read (or a delivery was refused); returns the steps taken."""
    idle = 0
    for n in range(steps):
        agg.step()
        if agg.sink.failure is not None:
            return n
        idle = idle + 1 if not agg.sink.in_flight and not agg.rekey_pending and not agg.close_pending else 0
        if idle > 3 and _at_end(agg):
            return n
    return steps


def _at_end(agg: Aggregator) -> bool:
    consumers = (agg.rekey, agg.consumer)
    return all(
        position >= len(c.broker.log.get(tp, []))  # type: ignore[attr-defined]
        for c in consumers
        for tp, position in c.positions.items()  # type: ignore[attr-defined]
    )


def table(broker: FakeBroker) -> tuple[dict[bytes, bytes | None], list[int]]:
    """The terminal-features table as a scorer would load it: rows of both partitions, marker days."""
    rows: dict[bytes, bytes | None] = {}
    days = []
    for p in range(COUNTS["tf"]):
        dump = broker.dump("tf", p)
        rows.update({k: v for k, v in dump.rows.items() if v is not None})
        days.append(int(dump.marker["day"]) if dump.marker else -1)
    return rows, days


@cache
def reference() -> tuple[dict[bytes, bytes | None], list[int]]:
    broker = new_broker()
    agg = start(broker)
    drain(agg)
    agg.close()
    rows, days = table(broker)
    assert len(rows) > 20 and min(days) > 0
    return rows, days


def test_the_close_marker_records_the_sources_folded() -> None:
    codec = terminal_codec(CONFIG)
    part = PartitionAgg(TerminalFeatures(CONFIG))
    day = 20_500
    records = [
        transaction_record("T1", day * MS_PER_DAY + 5, 3, 41),
        transaction_record("T2", day * MS_PER_DAY + 9, 0, 7),
    ]
    part.fold([(i, r["key"], r["value"]) for i, r in enumerate(records)], closed_day=day - 1)
    out, replay_from, changed = part.close(day, codec)
    marker = orjson.loads(out[-1]["value"])
    assert out[-1]["key"] == MARKER_KEY
    assert marker["sources"] == {"t3": 41, "t0": 7} and marker["position"] == replay_from == 2
    assert changed == 2


def test_records_the_re_key_stage_sent_twice_count_once_across_a_restart() -> None:
    """The marker's sources survive a restart: repeats after the restored close are skipped."""
    codec = terminal_codec(CONFIG)
    day = 20_500
    events = [transaction_record(f"T{i % 3}", day * MS_PER_DAY + i * 1000, 0, i) for i in range(10)]
    log = [(i, r["key"], r["value"]) for i, r in enumerate(events)]
    first = PartitionAgg(TerminalFeatures(CONFIG))
    first.fold(log, closed_day=day - 1)
    records, _, _ = first.close(day, codec)
    dump = PartitionLog()
    for r in records:
        dump.add(r["key"], r["value"])
    restored = PartitionAgg.restore(CONFIG, codec, dump.result())
    resent = [(10 + i, key, value) for i, (_, key, value) in enumerate(log[6:])]  # the re-key stage's repeats
    next_day = [(14, b"T0", TX.pack(b"T", (day + 1) * MS_PER_DAY, 0, 10))]
    restored.fold(resent + next_day, closed_day=day)
    assert restored.sources == {"t0": 10}
    slots = restored.terminals.ring.slots(["T0", "T1", "T2"], create=False)
    counts = restored.terminals.ring.day_sums(("count",), slots, np.full((3, 1), day + 1), (2,))[:, 0, 0, 0]
    assert counts.tolist() == [5.0, 3.0, 3.0]  # 4 + 1 new for T0; nothing counted twice


def test_a_clean_run_and_a_run_restarted_at_every_few_steps_build_the_same_table() -> None:
    broker = new_broker()
    for crash in range(5):
        agg = start(broker)
        agg.rekey.crash_after = 2 + crash % 3  # type: ignore[attr-defined]
        with pytest.raises(Crash):  # the re-key stage's records are delivered, the process dies committing
            drain(agg)
    agg = start(broker)
    drain(agg)
    agg.close()
    sent = sum(len(broker.log.get(("te", p), [])) for p in range(2))
    unique = {(k, v[: TX.size]) for p in range(2) for k, v in broker.log.get(("te", p), []) if v}
    assert sent > len(unique)  # the crashed re-key stage did send records twice
    assert table(broker) == reference()


def test_a_refused_delivery_commits_nothing_past_it_and_a_restart_rebuilds_the_table() -> None:
    broker = new_broker()
    refused = {"n": 0}

    def refuse_third_close(topic: str, value: bytes | None) -> str:
        if topic == "tf" and value is not None and value.startswith(b"{") and b'"day"' in value:
            refused["n"] += 1
            return "refuse" if refused["n"] == 5 else "ok"  # a marker of the third close
        return "ok"

    agg = start(broker, refuse_third_close)
    drain(agg)
    assert agg.sink.failure is not None
    before = dict(broker.group_offsets)
    agg.close()  # the shutdown path commits only what was acknowledged before the refusal
    after = broker.group_offsets
    markers = [broker.dump("tf", p).marker for p in range(2)]
    for p, marker in enumerate(markers):
        committed = after.get(("agg", "te", p), 0)
        assert marker is not None and committed <= marker["replay_from"], (committed, marker)
    assert {k: v for k, v in after.items() if k[0] == "agg"} == {
        k: v for k, v in before.items() if k[0] == "agg"
    }
    agg = start(broker)
    drain(agg)
    agg.close()
    assert table(broker) == reference()


def test_restore_reads_rows_up_to_the_last_marker_only() -> None:
    codec = terminal_codec(CONFIG)
    part = PartitionAgg(TerminalFeatures(CONFIG))
    day = 20_500
    part.fold([(0, b"T1", TX.pack(b"T", day * MS_PER_DAY, 0, 0))], closed_day=day - 1)
    records, _, _ = part.close(day, codec)
    dump = PartitionLog()
    for r in records:
        dump.add(r["key"], r["value"])
    dump.add(b"T9", records[0]["value"])  # a snapshot cut short: a row with no marker after it
    result: PartitionDump = dump.result()
    assert set(result.rows) == {b"T1"}
    restored = PartitionAgg.restore(CONFIG, codec, result)
    assert restored.terminals.closed_day == day and restored.skip_before == 1


def test_when_the_scorers_write_terminal_events_the_aggregator_reads_only_the_labels() -> None:
    broker = new_broker()
    agg = start(broker, settings=dataclasses.replace(SETTINGS, terminal_events_from="scorer"))
    drain(agg)
    assert {topic for topic, _ in agg.rekey.positions} == {"labels"}  # type: ignore[attr-defined]
    agg.close()
    written = [v for p in range(2) for _, v in broker.log.get(("te", p), [])]
    assert written and all(v is not None and v[:1] == b"L" for v in written)  # labels only
