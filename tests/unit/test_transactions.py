"""Exactly-once mode's transactions per input partition, on a fake transactional producer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from scorer.config import Settings
from scorer.kafka.transactions import PartitionTransactions

SETTINGS = Settings(group="g", input_topic="tx", state_topic="state", processing_guarantee="exactly_once")


class Ledger:
    """What became visible (committed transactions) and every call, per transactional id."""

    def __init__(self) -> None:
        self.visible: list[tuple[str, int | None, bytes | None]] = []  # topic, partition, value
        self.offsets: dict[int, int] = {}
        self.calls: list[tuple[str, str]] = []
        self.fail: dict[tuple[str, str], KafkaError] = {}  # (transactional id, step) -> error


class FakeTxnProducer:
    def __init__(self, config: Mapping[str, Any], ledger: Ledger) -> None:
        self.id = str(config["transactional.id"])
        self.ledger = ledger
        self.open: list[tuple[str, int | None, bytes | None]] = []
        self.offsets: dict[int, int] = {}

    def _step(self, name: str) -> None:
        self.ledger.calls.append((self.id, name))
        err = self.ledger.fail.get((self.id, name))
        if err is not None:
            raise KafkaException(err)

    def init_transactions(self, timeout: float) -> None:
        self._step("init")

    def begin_transaction(self) -> None:
        self._step("begin")
        self.open, self.offsets = [], {}

    def produce_batch(self, topic: str, messages: list[dict[str, Any]], partition: int | None = None) -> int:
        self._step("produce")
        self.open += [(topic, partition, m["value"]) for m in messages]
        return len(messages)

    def produce(
        self, topic: str, value: bytes | None = None, key: bytes | None = None, headers: Any = None
    ) -> None:
        self._step("produce")
        self.open.append((topic, None, value))

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
        self.ledger.offsets.update(self.offsets)

    def abort_transaction(self, timeout: float) -> None:
        self._step("abort")
        self.open, self.offsets = [], {}


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


@pytest.mark.parametrize("prefix", ["", "payments-eu"])
def test_transactional_ids_are_stable_per_input_partition(prefix: str) -> None:
    txn = PartitionTransactions(
        Settings(group="g", input_topic="tx", transactional_id_prefix=prefix), Metadata(), lambda p, o: []
    )  # type: ignore[arg-type]
    assert txn.transactional_id(3) == f"{prefix or 'g'}-tx-3"
