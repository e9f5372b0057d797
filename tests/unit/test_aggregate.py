"""The aggregator's commit path and recovery under injected faults, no broker.

The real Aggregator runs on fake consumers and a fake producer (tests/unit/fakes.py) over one simulated
history: transactions on 2 partitions and labels, arriving in event-time order. The reference is a run
without faults; after a crash, a refused delivery or a re-key stage that sends records twice, the
restarted aggregator's terminal table must equal it row for row.

What a day close waits for: with the scorers writing terminal events (the real writer, one fake scorer per
transactions partition) and the history arriving a chunk at a time, a scorer that stops across midnight
must hold the close until it is back, and an input partition with nothing left to process must not.
"""

from __future__ import annotations

import dataclasses
import datetime
import sys
import time
import zlib
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException

from scorer.aggregate.aggregator import Aggregator
from scorer.aggregate.partition import TX, WATERMARK, PartitionAgg, transaction_record
from scorer.aggregate.table import MemorySource, TerminalTable, terminal_codec
from scorer.aggregate.watermark import IdleSources
from scorer.config import Settings
from scorer.events.decode import decode_labels, decode_transactions
from scorer.events.timestamps import MS_PER_DAY
from scorer.features.engine import FeatureConfig, TerminalFeatures
from scorer.features.rows import MARKER_KEY, PartitionDump, PartitionLog
from scorer.kafka.progress import Snapshot
from scorer.kafka.sink import Sink
from scorer.scoring.core import Counted
from scorer.scoring.terminal_events import TerminalEventWriter
from scorer.training.simulate import SimulationParams, label_values, simulate, transaction_values
from tests.unit.fakes import Crash, FakeBroker, FakeConsumer, FakeProducer, Policy, deliver_all, sink_delivery

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


def start(
    broker: FakeBroker,
    policy: Policy = deliver_all,
    settings: Settings = SETTINGS,
    clock: Callable[[], float] = time.monotonic,
) -> Aggregator:
    """An aggregator process on the fake broker, its partitions assigned (and restored)."""
    rekey = FakeConsumer(broker, "agg-rekey", COUNTS)
    consumer = FakeConsumer(broker, "agg", COUNTS)
    agg = Aggregator(
        settings, CONFIG, sink=Sink({}, producer=FakeProducer(broker, policy)), rekey=rekey, consumer=consumer,  # type: ignore[arg-type]
        writers=FakeConsumer(broker, "scorer", COUNTS), peek=FakeConsumer(broker, "peek", COUNTS),  # type: ignore[arg-type]
        read=lambda config, topic, p: broker.dump(topic, p),
        clock=clock, idle_check_interval_s=0.0,
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
    assert written and all(v is not None and v[:1] in (b"L", b"W", b"F") for v in written)  # no transaction
    marks = {WATERMARK.unpack(v)[2] for v in written if v is not None and v[:1] == b"W"}
    assert marks == {b"l"}  # the re-key stage's watermarks speak for the labels' partitions only


# -- what a day close waits for: every input partition with unprocessed records ------------------------------

SCORERS = dataclasses.replace(SETTINGS, terminal_events_from="scorer")
CHUNK = 40  # history records that arrive between two turns of the processes


class FakeScorer:
    """`scorer run` for one transactions partition, as far as terminal-events goes: the real writer sends a
    batch's terminal events (and watermarks), and the input offset is committed once they are acknowledged.
    A new one resumes at the committed offset, as a restarted scorer does."""

    def __init__(self, broker: FakeBroker, partition: int) -> None:
        self.broker = broker
        self.partition = partition
        self.sink = Sink({}, producer=FakeProducer(broker))
        delivery = sink_delivery(self.sink, broker)
        self.writer = TerminalEventWriter("te", COUNTS["te"], delivery, owned=lambda: {partition})
        self.position = broker.group_offsets.get(("scorer", "tx", partition), 0)

    def catch_up(self, batch: int = 30) -> None:
        """Batches until the partition's end, each committed once its terminal events are acknowledged."""
        log = self.broker.log.get(("tx", self.partition), [])
        while self.position < len(log):
            values = [v for _, v in log[self.position : self.position + batch]]
            decoded = decode_transactions(values)
            counted = Counted(decoded.kept, decoded.batch.terminal_id, decoded.batch.event_ts_ms)
            offsets = np.arange(self.position, self.position + len(values), dtype=np.int64)
            self.writer.write(counted, np.full(len(values), self.partition, dtype=np.int64), offsets)
            assert self.sink.wait(self.sink.seal(), 1.0)
            self.position += len(values)
            self.broker.group_offsets[("scorer", "tx", self.partition)] = self.position


class Clock:
    """Processing time, moved by the test."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@cache
def arrivals() -> list[int]:
    """When each history record arrives: a transaction at its event time, a label when it is reported."""
    return [
        int(decode_transactions([v]).batch.event_ts_ms[0])
        if topic == "tx"
        else int(decode_labels([v]).batch.reported_ts_ms[0])
        for topic, _, _, v in history()
    ]


def first_day() -> int:
    return (
        min(ms for ms, (topic, *_) in zip(arrivals(), history(), strict=True) if topic == "tx") // MS_PER_DAY
    )


class Stream:
    """The history arriving CHUNK records at a time; after each chunk the live scorers and the aggregator
    catch up, and the clock moves on."""

    def __init__(
        self,
        aggregator: Aggregator,
        broker: FakeBroker,
        clock: Clock,
        kept: Callable[[int], bool] = lambda i: True,
    ) -> None:
        """`kept(i)`: whether history record i is produced at all."""
        self.agg, self.broker, self.clock = aggregator, broker, clock
        self.scorers: dict[int, FakeScorer] = {p: FakeScorer(broker, p) for p in range(COUNTS["tx"])}
        self.kept = kept
        self.fed = 0

    def until(self, end_ms: int = sys.maxsize, seconds_per_chunk: float = 1.0) -> None:
        """Feed the records that arrive before `end_ms`."""
        events, arrived = history(), arrivals()
        while self.fed < len(events) and arrived[self.fed] < end_ms:
            chunk = [i for i in range(self.fed, min(self.fed + CHUNK, len(events))) if arrived[i] < end_ms]
            for topic, p, key, value in (events[i] for i in chunk if self.kept(i)):
                self.broker.put(topic, p, key, value)
            self.fed += len(chunk)
            for scorer in self.scorers.values():
                scorer.catch_up()
            drain(self.agg)
            self.clock.now += seconds_per_chunk


@dataclass
class Run:
    agg: Aggregator
    broker: FakeBroker
    held: dict[str, float] = field(default_factory=dict)  # the aggregator just before the restart


def scorer_run(stop: tuple[int, int] | None = None) -> Run:
    """Two scorers (one per transactions partition) and an aggregator over the whole history; with `stop`
    = (partition, day), that partition's scorer stops at 18:00 on that day and restarts at noon the next
    (15 s of processing time per chunk meanwhile, far longer than the 10 s of silence that used to drop a
    partition from the watermark)."""
    broker, clock = FakeBroker(counts=dict(COUNTS)), Clock()
    run = Run(start(broker, settings=SCORERS, clock=clock), broker)
    stream = Stream(run.agg, broker, clock)
    if stop is not None:
        partition, day = stop
        stream.until(day * MS_PER_DAY + 18 * 3_600_000)
        del stream.scorers[partition]
        stream.until((day + 1) * MS_PER_DAY + 12 * 3_600_000, seconds_per_chunk=15.0)
        lag = run.agg.registry.get_sample_value(
            "scorer_aggregator_lag_records", {"topic": "tx", "partition": str(partition)}
        )
        others = min(part.reached["t0"] for part in run.agg.parts.values())
        run.held = {"closed_day": run.agg.closed_day, "lag": lag or 0, "others_day": others // MS_PER_DAY}
        stream.scorers[partition] = FakeScorer(broker, partition)
    stream.until()
    drain(run.agg)
    return run


def seen_by_scorers(broker: FakeBroker) -> list[np.ndarray]:
    """Every terminal's features as a scorer reads them from terminal-features, for each day of the
    history (each day's as of the previous day's close)."""
    source = MemorySource(range(COUNTS["tf"]))
    for p in range(COUNTS["tf"]):
        source.add(p, [{"key": k or b"", "value": v} for k, v in broker.log.get(("tf", p), [])])
    table = TerminalTable(CONFIG, source)
    while table.poll():
        pass
    values = [v for topic, _, _, v in history() if topic == "tx"]
    batch = decode_transactions(values).batch
    terminals = sorted(set(batch.terminal_id))
    days = range(int(batch.event_ts_ms.min()) // MS_PER_DAY, int(batch.event_ts_ms.max()) // MS_PER_DAY + 1)
    return [
        table.features(terminals, np.full(len(terminals), d * MS_PER_DAY + 1, dtype=np.int64)) for d in days
    ]


def late_transactions(agg: Aggregator) -> float:
    return float(
        agg.registry.get_sample_value("scorer_aggregator_late_events_total", {"kind": "transaction"}) or 0
    )


@cache
def clean_scorer_run() -> list[np.ndarray]:
    run = scorer_run()
    assert late_transactions(run.agg) == 0
    return seen_by_scorers(run.broker)


def test_a_scorer_restart_across_midnight_holds_the_close_until_its_events_are_in() -> None:
    """The scorer of transactions partition 1 stops at 18:00 and comes back at noon the next day, while
    the other scorer and the labels go on. The close of its day waits for it (its input has unprocessed
    records), then includes its events: the scorers read the same terminal features as without the stop."""
    day = first_day() + 6
    run = scorer_run(stop=(1, day))
    assert run.held["others_day"] == day + 1 and run.held["lag"] > 0  # the other scorer was past midnight
    assert run.held["closed_day"] == day - 1  # ... and the day waited for the stopped one
    assert late_transactions(run.agg) == 0
    seen, clean = seen_by_scorers(run.broker), clean_scorer_run()
    assert len(seen) == len(clean) > 8
    for d, (got, want) in enumerate(zip(seen, clean, strict=True)):
        assert np.array_equal(got, want), f"day {d}: the terminal features differ from a run without the stop"


def test_an_input_partition_with_nothing_left_to_process_does_not_hold_the_closes() -> None:
    """Transactions partition 1 gets nothing more after day 3 (its scorer is up, with nothing to do): the
    later days still close, and once the whole stream stops its last complete day closes too."""
    broker, clock = FakeBroker(counts=dict(COUNTS)), Clock()
    agg = start(broker, settings=SCORERS, clock=clock)
    quiet_from_ms = (first_day() + 3) * MS_PER_DAY
    events, arrived = history(), arrivals()

    def kept(i: int) -> bool:
        return events[i][:2] != ("tx", 1) or arrived[i] < quiet_from_ms

    Stream(agg, broker, clock, kept).until()
    drain(agg)
    last_ms = max(ms for i, ms in enumerate(arrived) if kept(i))
    assert agg.closed_day == last_ms // MS_PER_DAY - 1
    assert late_transactions(agg) == 0


class Answers:
    """The writers' progress as the broker would answer it: a snapshot per call, or no answer."""

    def __init__(self) -> None:
        self.calls = 0
        self.down = False

    def snapshot(self) -> Snapshot:
        self.calls += 1
        if self.down:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "timed out"))
        return Snapshot(frozenset({"t0", "l0"}), frozenset({"l0"}), {("labels", 0): 0})


class Fences:
    """The fences sent to each partition, and how far each partition's fold has got through them."""

    def __init__(self) -> None:
        self.sent: list[tuple[frozenset[int], int]] = []
        self.folded: dict[int, int] = {}

    def send(self, owned: Collection[int], nonce: int) -> None:
        self.sent.append((frozenset(owned), nonce))

    def fold_all(self) -> None:
        """Every partition reads up to (and past) the last fence sent to it."""
        owned, nonce = self.sent[-1]
        self.folded.update(dict.fromkeys(owned, nonce))

    def fenced(self, nonce: int) -> bool:
        owned, _ = self.sent[-1]
        return all(self.folded.get(p, -1) >= nonce for p in owned)


def test_drained_sources_count_once_the_aggregator_has_folded_its_fence_and_only_while_fresh() -> None:
    """Before: the aggregator compared its positions with the partitions' end offsets, which tansu reports
    short of the real end: it closed a day before folding the last batch of labels (a hand-over test on the
    real broker failed about every third run). A fence sent right after the snapshot cannot be short."""
    answers, clock, fences = Answers(), Clock(), Fences()
    idle = IdleSources(answers, interval_s=1.0, clock=clock, send_fence=fences.send)
    assert idle.verified(fences.fenced, [0, 1]) is None  # the fence is sent, not folded yet
    assert len(fences.sent) == 1 and fences.sent[0][0] == {0, 1}
    fences.folded[0] = fences.sent[0][1]
    assert idle.verified(fences.fenced, [0, 1]) is None  # partition 1 has not folded it yet
    fences.fold_all()
    snapshot = idle.verified(fences.fenced, [0, 1])
    assert snapshot is not None and snapshot.drained == {"l0"} and answers.calls == 1
    assert idle.verified(fences.fenced, [0, 1]) is None  # used once; the next only after the interval
    clock.now = 1.0
    assert idle.verified(fences.fenced, [0, 1]) is None and answers.calls == 2
    assert fences.sent[1][1] > fences.sent[0][1]  # a new fence for the new snapshot
    fences.fold_all()
    assert idle.verified(fences.fenced, [0, 1]) is not None
    clock.now = 2.0
    assert idle.verified(fences.fenced, [0, 1]) is None  # its fence not folded yet...
    clock.now = 3.0
    assert idle.verified(fences.fenced, [0, 1, 2]) is None  # ... then a rebalance: outdated, retaken
    assert answers.calls == 4 and fences.sent[-1][0] == {0, 1, 2}
    answers.down, clock.now = True, 5.0
    assert idle.verified(fences.fenced, [0, 1, 2]) is None  # no answer: every source keeps the close waiting


def test_a_snapshot_that_took_its_time_is_fresh_from_its_fence() -> None:
    """Reading the writers' committed offsets takes a second or so on tansu: the snapshot's age counts from
    its fence (everything written before the fence is folded before it), else it was always stale by the time
    its fence came back and no drained source ever counted (every close then waited for them)."""
    answers, clock, fences = Answers(), Clock(), Fences()
    plain = answers.snapshot

    def slow() -> Snapshot:
        clock.now += 0.9  # the broker's answers take this long
        return plain()

    answers.snapshot = slow  # type: ignore[method-assign]
    idle = IdleSources(answers, interval_s=1.0, clock=clock, send_fence=fences.send)
    assert idle.verified(fences.fenced, [0]) is None
    clock.now += 0.5  # 1.4 s after the snapshot was asked for, 0.5 s after its fence
    fences.fold_all()
    assert idle.verified(fences.fenced, [0]) is not None


def test_a_scorer_stopped_after_its_day_was_done_does_not_hold_that_days_close() -> None:
    """Partition 1's scorer stops at midnight with every record of day D done and committed (a clean
    hand-over, before another scorer takes its partition): its unread records are of day D+1, so the close of
    D goes on without it (before, the other scorer waited for that close, and a scorer waiting cannot take the
    partition over: the close came only after its wait ran out). Its events still count in later closes."""
    broker, clock = FakeBroker(counts=dict(COUNTS)), Clock()
    agg = start(broker, settings=SCORERS, clock=clock)
    stream = Stream(agg, broker, clock)
    day = first_day() + 6
    stream.until((day + 1) * MS_PER_DAY)  # every record of day D in, and every scorer caught up
    del stream.scorers[1]
    stream.until((day + 1) * MS_PER_DAY + 12 * 3_600_000, seconds_per_chunk=15.0)
    assert agg.closed_day == day
    stream.scorers[1] = FakeScorer(broker, 1)
    stream.until()
    drain(agg)
    assert late_transactions(agg) == 0
    seen, clean = seen_by_scorers(broker), clean_scorer_run()
    for d, (got, want) in enumerate(zip(seen, clean, strict=True)):
        assert np.array_equal(got, want), f"day {d}: the terminal features differ from a run without the stop"
