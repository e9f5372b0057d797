"""A verdict's labels and rules on Kafka (kafka/verdicts.py), through the fake producer: the records as the
consumers read them, and every way a publish fails (refused, never acknowledged, malformed, contradicted)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from fakes import FakeBroker, FakeProducer
from test_schemas import validator

from scorer.cases.model import UNBLOCK, LabelOut, RuleRequest
from scorer.config import Settings
from scorer.errors import ScorerError
from scorer.events.decode import decode_labels
from scorer.kafka.rules import parse_rule, rule_record
from scorer.kafka.verdicts import KafkaVerdictPublisher, RuleRefused, rule_for, rule_id_for
from scorer.policy.rules import EXEMPTION, RULE_ID, Rule

S = Settings(labels_topic="labels", rules_topic="rules")
NOW_S = 1_772_452_800.5  # 2026-03-02T12:00:00.500Z
TX_TIME = datetime(2026, 3, 1, 10, 30, tzinfo=UTC)
UNTIL = datetime(2026, 3, 9, tzinfo=UTC)


def label(tid: str, fraud: bool = True) -> LabelOut:
    return LabelOut(tid, "C1", "T7", fraud, TX_TIME, case_id="C1", analyst_id="ana")


BLOCK = RuleRequest("block_customer", "C1", UNTIL, case_id="C1", analyst_id="ana", note="stolen at T7")
PAST = RuleRequest(EXEMPTION, "C1", UNTIL, case_id="C1", analyst_id="ana", past_rule_id="cap")


def publisher(
    broker: FakeBroker, policy: str = "ok", in_force: dict[str, Rule] | None = None
) -> tuple[KafkaVerdictPublisher, FakeProducer]:
    producer = FakeProducer(broker, lambda topic, value: policy if topic == "labels" else "ok")
    pub = KafkaVerdictPublisher(
        S,
        timeout_s=0.05,
        producer=producer,
        rules_in_force=lambda: in_force or {},
        clock=lambda: NOW_S,
        grace_s=0,
    )
    return pub, producer


def test_labels_and_rules_land_as_their_consumers_read_them() -> None:
    broker = FakeBroker()
    pub, _ = publisher(broker)
    pub.publish([label("tx1"), label("tx2", fraud=False)], [BLOCK, PAST])
    labels = broker.records("labels")
    assert sorted(k for k, _ in labels) == [b"C1", b"C1"]  # keyed by card: one partition, in order
    docs = sorted((orjson.loads(v or b"") for _, v in labels), key=lambda d: d["transaction_id"])
    assert docs[0] == {
        "transaction_id": "tx1", "customer_id": "C1", "terminal_id": "T7", "is_fraud": True,
        "reported_at": "2026-03-02T12:00:00.500Z", "timestamp": "2026-03-01T10:30:00.000Z",
        "source": "analyst", "analyst_id": "ana", "case_id": "C1",
    }  # fmt: skip
    assert docs[1]["is_fraud"] is False
    check = validator("label.schema.json")
    assert all(check.is_valid(d) for d in docs)
    decoded = decode_labels([v for _, v in labels])
    assert len(decoded.batch) == 2 and decoded.batch.tx_ts_ms.tolist() == [1_772_361_000_000] * 2

    rules = {r.rule_id: r for r in (parse_rule(k or b"", v or b"") for k, v in broker.records("rules"))}
    assert set(rules) == {"case-C1-block", "case-C1-past-cap"}
    block, past = rules["case-C1-block"], rules["case-C1-past-cap"]
    assert (block.kind, block.action, block.values) == ("block_customer", "decline", ("C1",))
    assert block.expires_ms == 1_773_014_400_000 and block.note == "case C1, analyst ana: stolen at T7"
    assert (past.kind, past.action, past.past_rule, past.note) == (
        EXEMPTION,
        "approve",
        "cap",
        "case C1, analyst ana",
    )
    assert rule_record(block.rule_id, block) in broker.records("rules")  # what `scorer rules add` writes

    pub.publish([], [BLOCK])  # retried: the same id, so compaction keeps one rule
    keys = sorted(k or b"" for k, _ in broker.records("rules"))
    assert keys == [b"case-C1-block", b"case-C1-block", b"case-C1-past-cap"]


@pytest.mark.parametrize(
    ("policy", "why"),
    [
        ("refuse", "Message timed out"),
        ("hold", "not acknowledged within 0.05 s"),
        ("too_large_here", "too large"),
    ],
)
def test_a_refused_or_unacknowledged_record_fails_the_publish(policy: str, why: str) -> None:
    pub, _ = publisher(FakeBroker(), policy)
    with pytest.raises(ScorerError, match=f"verdict not published: .* of 3 records failed .*{why}"):
        pub.publish([label("tx1"), label("tx2")], [BLOCK])


def test_a_full_queue_is_waited_for_and_close_delivers_then_refuses() -> None:
    broker = FakeBroker()
    pub, producer = publisher(broker)
    producer.full = 3  # BufferError on the first three tries
    pub.publish([label("tx1")], [])
    assert len(broker.records("labels")) == 1
    pub.close()
    assert producer.flushes == 1
    with pytest.raises(ScorerError, match="closed"):
        pub.publish([label("tx2")], [])


def test_a_malformed_or_contradicted_rule_sends_nothing() -> None:
    vip = Rule("vip", "allow_customer", "approve", ("C1",))
    broker = FakeBroker()
    pub, _ = publisher(broker, in_force={"vip": vip})
    with pytest.raises(RuleRefused, match="'C1' is already allowed and blocked in rule vip"):
        pub.publish([label("tx1")], [BLOCK])  # a refusal retrying cannot fix: the console answers 409
    naive = RuleRequest("block_customer", "C1", datetime(2026, 3, 9), case_id="C1", analyst_id="ana")
    for bad, why in [(naive, "no time zone"), (replace(PAST, past_rule_id=None), "needs past_rule"),
                     (RuleRequest("block_card", "C1", UNTIL, "C1", "ana"), "kind 'block_card'")]:  # fmt: skip
        with pytest.raises(RuleRefused, match=why):
            pub.publish([label("tx1")], [bad])
    assert broker.log == {}


def test_rule_ids_come_from_the_request_alone_and_are_always_valid() -> None:
    assert rule_id_for(BLOCK) == "case-C1-block" and rule_id_for(PAST) == "case-C1-past-cap"
    odd = RuleRequest("block_customer", "C 1/ü", UNTIL, case_id="C 1/ü", analyst_id="ana")
    long_past = RuleRequest(
        EXEMPTION, "C1", UNTIL, case_id="C1" * 20, analyst_id="ana", past_rule_id="r" * 64
    )
    for request in (odd, long_past):
        assert RULE_ID.fullmatch(rule_id_for(request)) and rule_id_for(request) == rule_id_for(request)
    assert rule_id_for(odd) != rule_id_for(BLOCK)
    assert rule_for(BLOCK, 5).expires_ms - rule_for(BLOCK, 5).created_ms > 0
    assert (
        rule_for(PAST, 0).expires_ms
        == rule_for(BLOCK, 0).expires_ms
        == (UNTIL - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    )


def test_a_reversed_fraud_verdict_removes_its_block_and_labels_can_carry_their_report_time() -> None:
    broker = FakeBroker()
    pub, _ = publisher(broker)
    pub.publish([label("tx1")], [BLOCK])
    unblock = RuleRequest(UNBLOCK, "C1", UNTIL, case_id="C1", analyst_id="lena")
    pub.publish([label("tx1", fraud=False)], [unblock], reported_at=datetime(2026, 3, 5, 8, tzinfo=UTC))
    assert broker.records("rules")[-1] == (rule_id_for(BLOCK).encode(), None)  # the block's tombstone
    reported = [orjson.loads(v or b"")["reported_at"] for _, v in broker.records("labels")]
    assert reported == ["2026-03-02T12:00:00.500Z", "2026-03-05T08:00:00.000Z"]
