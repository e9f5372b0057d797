"""Exactly-once mode's transactions per input partition, on a fake transactional producer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException
from prometheus_client import CollectorRegistry

from scorer.aggregate.table import MemorySource, TerminalTable
from scorer.config import Settings
from scorer.features.rows import PartitionLog
from scorer.kafka.transactions import PartitionTransactions
from scorer.rollout.serving import Serving
from scorer.runtime.metrics import Metrics
from scorer.scoring.core import ScoringCore
from scorer.scoring.customers import CustomerStore
from tests.unit.test_commits import BATCH, PARTITIONS, inputs, model, reference

SETTINGS = Settings(group="g", input_topic="tx", state_topic="state", processing_guarantee="exactly_once")


class Ledger:
    """What became visible (committed transactions) and every call, per transactional id."""

    def __init__(self) -> None:
        self.visible: list[tuple[str, int | None, bytes | None]] = []  # topic, partition, value
        self.keys: list[bytes | None] = []  # the key of each visible record
        self.crash_at: tuple[str, int] | None = None  # (step, how many such calls pass first)
        self.offsets: dict[int, int] = {}
        self.calls: list[tuple[str, str]] = []
        self.fail: dict[tuple[str, str], KafkaError] = {}  # (transactional id, step) -> error
        self.mark: list[KafkaError] = []  # produce_batch marks every message `_error` with the next of these


class FakeTxnProducer:
    last: FakeTxnProducer

    def __init__(self, config: Mapping[str, Any], ledger: Ledger) -> None:
        FakeTxnProducer.last = self
        self.id = str(config["transactional.id"])
        self.ledger = ledger
        self.open: list[tuple[str, int | None, bytes | None]] = []
        self.open_keys: list[bytes | None] = []
        self.offsets: dict[int, int] = {}

    def _step(self, name: str) -> None:
        self.ledger.calls.append((self.id, name))
        crash = self.ledger.crash_at
        if crash is not None and crash[0] == name:
            if crash[1] == 0:
                self.ledger.crash_at = None
                raise Crash(name)
            self.ledger.crash_at = (name, crash[1] - 1)
        err = self.ledger.fail.get((self.id, name))
        if err is not None:
            raise KafkaException(err)

    def init_transactions(self, timeout: float) -> None:
        self._step("init")

    def begin_transaction(self) -> None:
        self._step("begin")
        self.open, self.open_keys, self.offsets = [], [], {}

    def produce_batch(self, topic: str, messages: list[dict[str, Any]], partition: int | None = None) -> int:
        self._step("produce")
        if self.ledger.mark:
            err = self.ledger.mark.pop(0)
            for m in messages:
                m["_error"] = err
            return 0
        self.open += [(topic, partition, m["value"]) for m in messages]
        self.open_keys += [m["key"] for m in messages]
        return len(messages)

    def produce(
        self, topic: str, value: bytes | None = None, key: bytes | None = None, headers: Any = None
    ) -> None:
        self._step("produce")
        self.open.append((topic, None, value))
        self.open_keys.append(key)

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        self._step("flush")
        return 0

    def send_offsets_to_transaction(self, offsets: list[Any], metadata: Any, timeout: float) -> None:
        self._step("offsets")
        assert metadata == "group-metadata"
        self.offsets.update({tp.partition: tp.offset for tp in offsets})

    def commit_transaction(self, timeout: float) -> None:
        self._step("commit")
        self.ledger.visible += self.open
        self.ledger.keys += self.open_keys
        self.ledger.offsets.update(self.offsets)

    def abort_transaction(self, timeout: float) -> None:
        self._step("abort")
        self.open, self.open_keys, self.offsets = [], [], {}


class Crash(Exception):
    """The process dies here (kill -9)."""


class Metadata:
    def consumer_group_metadata(self) -> str:
        return "group-metadata"


def transactions(ledger: Ledger) -> PartitionTransactions:
    def snapshot(p: int, offset: int) -> list[dict[str, Any]]:
        return [{"key": b"\x00marker", "value": f"p{p}@{offset}".encode()}]

    return PartitionTransactions(
        SETTINGS,
        Metadata(),
        snapshot,
        producer_factory=lambda config: FakeTxnProducer(config, ledger),  # type: ignore[arg-type,return-value]
    )


def test_each_partition_commits_its_outputs_snapshot_and_offset_in_one_transaction() -> None:
    ledger = Ledger()
    txn = transactions(ledger)
    txn.assign([0, 1])
    assert {i for i, step in ledger.calls if step == "init"} == {"g-tx-0", "g-tx-1"}
    txn.send(0, "decisions", [{"key": b"c", "value": b"d0"}])
    txn.send(1, "decisions", [{"key": b"c", "value": b"d1"}])
    txn.send_one(1, "dlq", b"bad", b"k", [("reason", b"x")])
    assert ledger.visible == []  # nothing shows before the commit
    txn.processed(0, 7)
    txn.processed(1, 3)
    txn.begin()
    assert ledger.offsets == {0: 7, 1: 3}
    assert ("state", 0, b"p0@7") in ledger.visible and ("state", 1, b"p1@3") in ledger.visible
    assert {v for _, _, v in ledger.visible} >= {b"d0", b"d1", b"bad"}
    steps = [step for i, step in ledger.calls if i == "g-tx-0"]
    assert steps == ["init", "begin", "produce", "produce", "flush", "offsets", "commit", "begin"]
    assert txn.commits == 2 and txn.failure is None


def test_a_fenced_producer_commits_nothing_and_stops_the_process() -> None:
    ledger = Ledger()
    txn = transactions(ledger)
    txn.assign([0])
    ledger.fail[("g-tx-0", "offsets")] = KafkaError(
        KafkaError._FENCED, "fenced by a newer instance", fatal=True
    )
    txn.send(0, "decisions", [{"key": b"c", "value": b"d0"}])
    txn.processed(0, 5)
    txn.begin()
    assert txn.failure is not None and "another scorer owns the partition now" in txn.failure
    assert ledger.visible == [] and ledger.offsets == {}
    assert not txn.flush(1.0)


def test_a_revoked_partition_commits_first_and_a_lost_one_is_not_aborted_here() -> None:
    ledger = Ledger()
    txn = transactions(ledger)
    txn.assign([0, 1])
    txn.send(0, "decisions", [{"key": b"c", "value": b"d0"}])
    txn.processed(0, 2)
    assert txn.flush(1.0)  # what the loop does on revocation, then forget
    txn.forget([0])
    txn.forget([1], lost=True)
    assert ledger.offsets == {0: 2} and txn.assigned == set()
    assert ("g-tx-0", "abort") in ledger.calls and ("g-tx-1", "abort") not in ledger.calls


def test_a_refused_write_fails_the_commit_and_says_why() -> None:
    ledger = Ledger()
    txn = transactions(ledger)
    txn.assign([0])
    ledger.fail[("g-tx-0", "flush")] = KafkaError(
        KafkaError.MSG_SIZE_TOO_LARGE, "Broker: Message size too large"
    )
    txn.processed(0, 1)
    txn.begin()
    assert txn.failure is not None and "Message size too large" in txn.failure
    assert ledger.offsets == {}


def test_a_full_queue_is_waited_out_and_any_other_refusal_fails_the_transaction_at_once() -> None:
    """Before: every `_error` produce_batch set was retried as if the queue were full, forever."""
    ledger = Ledger()
    txn = transactions(ledger)
    txn.assign([0])
    full = KafkaError(KafkaError._QUEUE_FULL, "Local: Queue full")
    ledger.mark = [full, full]
    txn.send(0, "decisions", [{"key": b"c", "value": b"d0"}])
    assert txn.failure is None and ("decisions", None, b"d0") in FakeTxnProducer.last.open
    ledger.mark = [KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Message size too large")] * 100
    txn.send(0, "decisions", [{"key": b"c", "value": b"x" * 5000}])
    assert txn.failure is not None and "Message size too large" in txn.failure
    assert len(ledger.mark) == 99  # tried once, not retried
    txn.processed(0, 2)
    assert not txn.flush(1.0) and ledger.offsets == {}


@pytest.mark.parametrize("prefix", ["", "payments-eu"])
def test_transactional_ids_are_stable_per_input_partition(prefix: str) -> None:
    txn = PartitionTransactions(
        Settings(group="g", input_topic="tx", transactional_id_prefix=prefix), Metadata(), lambda p, o: []
    )  # type: ignore[arg-type]
    assert txn.transactional_id(3) == f"{prefix or 'g'}-tx-3"


class EosMember:
    """A scorer process in exactly_once mode over the ledger: the real core, the real transactions."""

    def __init__(self, ledger: Ledger) -> None:
        config = model().meta.feature_config
        self.customers = CustomerStore(config)
        self.scorer = ScoringCore(
            SETTINGS, Serving(model()), self.customers, TerminalTable(config, MemorySource([0])),
            Metrics(CollectorRegistry()),
        )  # fmt: skip
        self.ledger = ledger
        self.txn = PartitionTransactions(
            SETTINGS, Metadata(), self.customers.snapshot,  # type: ignore[arg-type]
            producer_factory=lambda config: FakeTxnProducer(config, ledger),  # type: ignore[arg-type,return-value]
        )  # fmt: skip
        self.txn.assign(list(range(PARTITIONS)))  # fences the previous incarnation first, then restores
        self.position = {}
        for p in range(PARTITIONS):
            log = PartitionLog()
            for (topic, part, value), key in zip(ledger.visible, ledger.keys, strict=True):
                if topic == "state" and part == p:
                    log.add(key or b"", value)
            restored = self.customers.restore(p, log.result())
            self.position[p] = restored if restored is not None else ledger.offsets.get(p, 0)

    def run(self, commit_every: int = 3) -> None:
        turn = 0
        while True:
            busy = False
            for p, start in sorted(self.position.items()):
                values = inputs()[p][start : start + BATCH]
                if values:
                    busy = True
                    scored = self.scorer.score(values, np.full(len(values), p, dtype=np.int64))
                    self.txn.send(p, "decisions", scored.decisions)
                    self.position[p] = start + len(values)
                    self.txn.processed(p, self.position[p])
            turn += 1
            if not busy or turn % commit_every == 0:
                self.txn.begin()
                assert self.txn.failure is None
            if not busy:
                return


@pytest.mark.parametrize("step", ["produce", "flush", "offsets", "commit", "begin"])
def test_a_kill_9_at_each_step_of_a_transaction_shows_every_decision_exactly_once(step: str) -> None:
    """Each crash leaves its open transaction invisible; the restart decides those records again, so
    read_committed sees every transaction's decision once, and the state equals a clean run's."""
    ledger = Ledger()
    ledger.crash_at = (step, 7)  # somewhere in the third or fourth transaction
    with pytest.raises(Crash):
        EosMember(ledger).run()
    EosMember(ledger).run()
    decided: dict[str, list[float]] = {}
    for topic, _, value in ledger.visible:
        if topic == "decisions":
            doc = orjson.loads(value or b"")
            decided.setdefault(doc["transaction_id"], []).append(doc["score"])
    ref = reference()
    assert set(decided) == set(ref)
    assert all(
        len(scores) == 1 and scores[0] == pytest.approx(ref[t], abs=1e-6) for t, scores in decided.items()
    )
    assert ledger.offsets == {p: len(inputs()[p]) for p in range(PARTITIONS)}
