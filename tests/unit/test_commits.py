"""The commit sequence (decisions -> state snapshot -> offset commit) under injected faults, no broker.

A small run loop drives the real scoring core, the real Sink and the real CommitTracker over a fake
producer and offset store (tests/unit/fakes.py). A "crash" drops the process's objects (whatever the fake
producer still holds is lost); a restart restores each partition from the fake state topic the way
`scorer run` does. The reference is one clean run: every transaction must end with a delivered decision,
and every delivered decision must carry the score of the clean run (state neither lost nor counted twice).
"""

from __future__ import annotations

import datetime
import zlib
from collections.abc import Callable, Sequence
from functools import cache

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry

from scorer.aggregate.partition import PartitionAgg, transaction_record
from scorer.aggregate.table import MemorySource, TerminalTable, terminal_codec
from scorer.config import DEFAULT_MODEL, Settings
from scorer.events.decode import decode_transactions
from scorer.events.timestamps import MS_PER_DAY, NEVER
from scorer.features.engine import TerminalFeatures
from scorer.features.rows import MARKER_KEY
from scorer.kafka.sink import Sink
from scorer.model.onnx import OnnxModel
from scorer.rollout.serving import Serving
from scorer.runtime.metrics import Metrics
from scorer.scoring.commits import CommitTracker
from scorer.scoring.core import ScoringCore
from scorer.scoring.customers import CustomerStore
from scorer.scoring.scored import Counted
from scorer.training.simulate import SimulationParams, simulate, transaction_values
from tests.unit.fakes import Crash, FakeBroker, FakeOffsets, FakeProducer, Policy, deliver_all

DECISIONS, STATE, TERMINAL_EVENTS = "decisions", "state", "terminal-events"
PARTITIONS = 2
BATCH = 40


@cache
def model() -> OnnxModel:
    return OnnxModel(DEFAULT_MODEL)


@cache
def inputs() -> dict[int, list[bytes]]:
    """~1,000 simulated transactions in event-time order, keyed by customer to 2 partitions."""
    data = simulate(
        SimulationParams(customers=200, terminals=100, days=10, seed=5, start=datetime.date(2026, 3, 1))
    )
    values = transaction_values(data, np.arange(len(data.transaction_id), dtype=np.int64))
    out: dict[int, list[bytes]] = {p: [] for p in range(PARTITIONS)}
    for customer, value in zip(data.customer_id, values, strict=True):
        out[zlib.crc32(customer.encode()) % PARTITIONS].append(value)
    return out


def tx_id(value: bytes | None) -> str:
    return str(orjson.loads(value or b"")["transaction_id"])


class Member:
    """One scorer process over the fakes: the steps of scoring/loop.py, minus the consumer."""

    def __init__(self, broker: FakeBroker, partitions: Sequence[int], policy: Policy = deliver_all) -> None:
        config = model().meta.feature_config
        self.customers = CustomerStore(config)
        table = TerminalTable(config, MemorySource([0]))
        registry = CollectorRegistry()
        self.scorer = ScoringCore(Settings(), Serving(model()), self.customers, table, Metrics(registry))
        self.producer = FakeProducer(broker, policy)
        self.sink = Sink({}, producer=self.producer)
        self.offsets = FakeOffsets(broker)
        self.commits = CommitTracker(self.sink, self.offsets, self.customers.snapshot, STATE)
        self.broker = broker
        self.position: dict[int, int] = {}
        self.assign(partitions)

    def assign(self, partitions: Sequence[int]) -> None:
        for p in partitions:
            restored = self.customers.restore(p, self.broker.dump(STATE, p))
            self.position[p] = restored if restored is not None else self.broker.committed.get(p, 0)
        self.commits.assign(partitions)

    def revoke(self, partitions: Sequence[int], flush_timeout_s: float = 0.5) -> bool:
        flushed = self.commits.flush(flush_timeout_s)
        self.commits.forget(partitions)
        for p in partitions:
            self.customers.drop(p)
            self.position.pop(p)
        return flushed

    def step(self) -> bool:
        """One batch from each assigned partition; False when every partition is at its end."""
        busy = False
        for p, start in sorted(self.position.items()):
            values = inputs()[p][start : start + BATCH]
            if not values:
                continue
            busy = True
            partitions = np.full(len(values), p, dtype=np.int64)
            offsets = np.arange(start, start + len(values), dtype=np.int64)

            def write(counted: Counted) -> None:  # as the loop does, before the batch is scored
                self.sink.send(TERMINAL_EVENTS, counted.records(partitions, offsets))  # noqa: B023

            scored = self.scorer.score(values, partitions, write)
            self.sink.send(DECISIONS, scored.decisions)
            self.position[p] = start + len(values)
            self.commits.processed(p, self.position[p])
        return busy

    def run(self, batches: int | None = None, commit_every: int = 3) -> None:
        """`batches` loop turns (None: to the end), a commit begun every `commit_every` turns."""
        turn = 0
        while (batches is None or turn < batches) and self.step():
            turn += 1
            if self.sink.failure is not None:
                return  # the loop's rule: nothing moves past a refused delivery
            self.commits.advance()
            if turn % commit_every == 0:
                self.commits.begin()

    def finish(self) -> bool:
        return self.commits.flush(0.5)


def decided(broker: FakeBroker) -> dict[str, list[float]]:
    """Every delivered decision's score, per transaction id."""
    out: dict[str, list[float]] = {}
    for _, value in broker.records(DECISIONS):
        doc = orjson.loads(value or b"")
        out.setdefault(doc["transaction_id"], []).append(doc["score"])
    return out


@cache
def reference() -> dict[str, float]:
    broker = FakeBroker()
    member = Member(broker, range(PARTITIONS))
    member.run()
    assert member.finish()
    scores = decided(broker)
    assert all(len(s) == 1 for s in scores.values())
    return {t: s[0] for t, s in scores.items()}


def all_ids() -> set[str]:
    return {tx_id(v) for values in inputs().values() for v in values}


def assert_complete_and_exact(broker: FakeBroker) -> dict[str, list[float]]:
    """Every transaction decided at least once, every decision equal to the clean run's."""
    got = decided(broker)
    assert set(got) == all_ids()
    ref = reference()
    wrong = {
        t: (s, ref[t]) for t, scores in got.items() for s in scores if s != pytest.approx(ref[t], abs=1e-6)
    }
    assert not wrong, list(wrong.items())[:5]
    return got


def markers(broker: FakeBroker, partition: int) -> list[int]:
    """The input offsets of every snapshot marker written to the state partition, in order."""
    return [
        orjson.loads(value or b"")["offset"]
        for key, value in broker.log.get((STATE, partition), [])
        if key == b"\x00marker"
    ]


def on_decisions(verdict: str, pred: Callable[[str], bool]) -> Policy:
    """`verdict` ("refuse" or "hold") for the decisions whose transaction id matches; deliver the rest."""

    def policy(topic: str, value: bytes | None) -> str:
        return verdict if topic == DECISIONS and pred(tx_id(value)) else "ok"

    return policy


def offset_of(partition: int, tid: str) -> int:
    return [tx_id(v) for v in inputs()[partition]].index(tid)


def test_a_clean_run_decides_everything_once_and_commits_to_the_end() -> None:
    broker = FakeBroker()
    member = Member(broker, range(PARTITIONS))
    member.run()
    assert member.finish()
    got = assert_complete_and_exact(broker)
    assert all(len(s) == 1 for s in got.values())
    for p in range(PARTITIONS):
        assert broker.committed[p] == len(inputs()[p])
        assert markers(broker, p)[-1] == len(inputs()[p])


def test_a_refused_delivery_stops_snapshot_and_commit_and_a_restart_decides_it_again() -> None:
    """The loss of issue 13: a refused decision must not be followed by a snapshot or commit past it."""
    broker = FakeBroker()
    victim = tx_id(inputs()[0][5 * BATCH + 7])  # a decision in partition 0's sixth batch
    member = Member(broker, range(PARTITIONS), on_decisions("refuse", lambda t: t == victim))
    member.run(commit_every=1)
    assert member.sink.failure is not None and "timed out" in member.sink.failure
    member.commits.begin()  # the refused decision's epoch is sealed, as a commit interval would
    for _ in range(3):  # whatever else the loop did, no step may follow the refusal
        member.commits.advance()
    assert not member.finish()
    member.producer.flush()  # shutdown flushes the producer: nothing queued may carry the position further
    at = offset_of(0, victim)
    assert all(m <= at for m in markers(broker, 0)), (markers(broker, 0), at)
    assert broker.committed.get(0, 0) <= at
    assert victim not in decided(broker)
    restarted = Member(broker, range(PARTITIONS))
    assert restarted.position[0] <= at
    restarted.run()
    assert restarted.finish()
    assert_complete_and_exact(broker)


def test_an_acknowledgement_that_never_comes_blocks_the_commit_until_a_crash_then_nothing_is_lost() -> None:
    broker = FakeBroker()
    stuck = tx_id(inputs()[1][2 * BATCH])
    member = Member(broker, range(PARTITIONS), on_decisions("hold", lambda t: t == stuck))
    member.run()
    assert not member.finish()  # shutdown waits, then reports the commit incomplete
    at = offset_of(1, stuck)
    assert all(m <= at for m in markers(broker, 1))
    assert broker.committed.get(1, 0) <= at
    # crash: the held message is lost with the process
    restarted = Member(broker, range(PARTITIONS))
    restarted.run()
    assert restarted.finish()
    assert_complete_and_exact(broker)


def test_a_revocation_mid_commit_flushes_then_the_new_owner_continues_exactly() -> None:
    broker = FakeBroker()
    first = Member(broker, range(PARTITIONS))
    first.run(batches=4, commit_every=2)
    assert first.commits.pending  # a commit is in flight when the rebalance comes
    assert first.revoke([1])
    assert broker.committed[1] == markers(broker, 1)[-1] == 4 * BATCH
    second = Member(broker, [1])
    assert second.position[1] == 4 * BATCH
    first.run()
    second.run()
    assert first.finish() and second.finish()
    got = assert_complete_and_exact(broker)
    assert all(len(s) == 1 for s in got.values())  # the handover repeated nothing


def test_a_revocation_whose_flush_times_out_drops_the_partitions_pending_steps() -> None:
    """Acknowledgements arriving after the revocation must not write the old owner's state over the new."""
    broker = FakeBroker()
    holding = {"on": True}

    def policy(topic: str, value: bytes | None) -> str:
        return "hold" if topic == DECISIONS and holding["on"] else "ok"

    first = Member(broker, range(PARTITIONS), policy)
    first.run(batches=3, commit_every=3)
    assert first.commits.pending
    assert not first.revoke([1], flush_timeout_s=0.05)
    before = markers(broker, 1)
    holding["on"] = False
    first.producer.release()
    first.run()
    assert first.finish()
    assert markers(broker, 1) == before  # nothing written for partition 1 after it was revoked
    assert 1 not in broker.committed


def test_a_failed_offset_commit_is_covered_by_the_snapshot_and_the_next_commit() -> None:
    broker = FakeBroker()
    member = Member(broker, range(PARTITIONS))
    member.offsets.refuse = 2
    member.run(batches=6, commit_every=2)
    assert member.commits.failed_commits == 2
    member.run()
    assert member.finish()
    assert broker.committed == {p: len(inputs()[p]) for p in range(PARTITIONS)}
    got = assert_complete_and_exact(broker)
    assert all(len(s) == 1 for s in got.values())


def test_a_crash_between_snapshot_and_commit_restarts_at_the_snapshot() -> None:
    broker = FakeBroker()
    member = Member(broker, range(PARTITIONS))
    member.offsets.crash = True
    with pytest.raises(Crash):  # the snapshot was acknowledged; the process dies committing the offsets
        member.run(commit_every=3)
    assert member.commits.pending and member.commits.pending[0].stage == 2
    assert broker.committed == {}
    assert markers(broker, 0) == markers(broker, 1) == [3 * BATCH]
    restarted = Member(broker, range(PARTITIONS))
    assert restarted.position == {p: 3 * BATCH for p in range(PARTITIONS)}
    restarted.run()
    assert restarted.finish()
    got = assert_complete_and_exact(broker)
    repeated = {t for t, s in got.items() if len(s) > 1}
    before_snapshot = {tx_id(v) for p in range(PARTITIONS) for v in inputs()[p][: 3 * BATCH]}
    assert not repeated & before_snapshot  # state and position agreed: only records after it repeat


def test_a_crash_before_any_snapshot_repeats_only_uncommitted_records() -> None:
    broker = FakeBroker()
    member = Member(broker, range(PARTITIONS))
    member.run(batches=5, commit_every=2)
    member.producer.flush()  # what was sent is delivered; the crash comes before the next snapshot
    restarted = Member(broker, range(PARTITIONS))
    restarted.run()
    assert restarted.finish()
    got = assert_complete_and_exact(broker)
    repeated = {t for t, s in got.items() if len(s) > 1}
    assert repeated  # the records since the last snapshot were decided again (at-least-once)
    assert len(repeated) <= PARTITIONS * 3 * BATCH


# -- the scorer writes terminal-events (terminal_events_from = "scorer") ------------------------------------


def terminal_table(broker: FakeBroker) -> dict[bytes, bytes | None]:
    """The terminal rows an aggregator folds from what the scorers wrote to terminal-events (its real
    fold: a record sent twice counts once), closed at the last day."""
    config = model().meta.feature_config
    codec, rows = terminal_codec(config), {}
    for p in range(PARTITIONS):
        part = PartitionAgg(TerminalFeatures(config))
        log = broker.log.get((TERMINAL_EVENTS, p), [])
        part.fold([(i, k or b"", v or b"") for i, (k, v) in enumerate(log)], closed_day=NEVER)
        records, _, _ = part.close(part.watermark_ms // MS_PER_DAY, codec)
        rows.update({r["key"]: r["value"] for r in records if r["key"] != MARKER_KEY})
    return rows


@cache
def re_keyed_table() -> dict[bytes, bytes | None]:
    """The same rows from the aggregator's own re-key of every input record, once each (the reference)."""
    broker = FakeBroker()
    for p, values in inputs().items():
        batch = decode_transactions(values).batch
        for offset, (terminal, ts) in enumerate(
            zip(batch.terminal_id, batch.event_ts_ms.tolist(), strict=True)
        ):
            record = transaction_record(terminal, ts, p, offset)
            broker.put(
                TERMINAL_EVENTS, zlib.crc32(record["key"]) % PARTITIONS, record["key"], record["value"]
            )
    rows = terminal_table(broker)
    assert len(rows) > 50
    return rows


def test_the_terminal_events_a_clean_run_writes_fold_into_the_re_key_stages_table() -> None:
    broker = FakeBroker()
    member = Member(broker, range(PARTITIONS))
    member.run()
    assert member.finish()
    assert terminal_table(broker) == re_keyed_table()


def test_terminal_events_written_twice_across_crashes_count_once() -> None:
    broker = FakeBroker()
    for crash in range(3):
        member = Member(broker, range(PARTITIONS))
        member.offsets.crash = True
        with pytest.raises(Crash):  # terminal events and decisions delivered, the process dies committing
            member.run(commit_every=2 + crash)
    member = Member(broker, range(PARTITIONS))
    member.run()
    assert member.finish()
    sent = sum(len(broker.log.get((TERMINAL_EVENTS, p), [])) for p in range(PARTITIONS))
    assert sent > sum(map(len, inputs().values()))  # the restarts did write records twice
    assert terminal_table(broker) == re_keyed_table()


def test_a_refused_terminal_event_stops_the_commit_like_a_refused_decision() -> None:
    """A refused record stops the scorer; the records queued behind it fail with it (modelled here: every
    later terminal event is refused), so the restart's repeats fill exactly the hole. A gap (a later record
    of the same partition delivered after an earlier one was refused) would lose the earlier one's count:
    the aggregator skips source offsets not newer than the newest it has seen (docs/guarantees.md)."""
    broker = FakeBroker()
    stopped = {"at": False}

    def refuse_one(topic: str, value: bytes | None) -> str:
        if topic == TERMINAL_EVENTS and value is not None and value.endswith(b"\x07" + bytes(7)):
            stopped["at"] = True  # the terminal event of input offset 7: refused, and the producer stops
        return "refuse" if stopped["at"] and topic == TERMINAL_EVENTS else "ok"

    member = Member(broker, range(PARTITIONS), refuse_one)
    member.run(commit_every=1)
    assert member.sink.failure is not None
    member.commits.begin()
    for _ in range(3):
        member.commits.advance()
    assert all(broker.committed.get(p, 0) <= 7 for p in range(PARTITIONS))
    member = Member(broker, range(PARTITIONS))
    member.run()
    assert member.finish()
    assert terminal_table(broker) == re_keyed_table()
