"""The stream side of request-reply on the real broker: a request's decision also reaches its reply topic,
byte for byte as on the decisions topic; a retried request is answered with its first decision and its
customer's windows count it once; a dead-lettered request is answered with its error."""

from __future__ import annotations

from pathlib import Path

import orjson
from confluent_kafka import Producer

from scorer import Scorer
from scorer.config import Settings
from scorer.kafka.admin import TopicSpec, ensure_topics
from scorer.kafka.requests import CORRELATION_ID, REPLY_TO, TRANSACTION_ID
from tests.integration.conftest import Proc, consume, decisions, produce

TX = {"terminal_id": "T1", "amount": 30.0, "timestamp": "2026-03-01T10:00:00Z"}


def publish_requests(settings: Settings, reply_topic: str, requests: list[tuple[str, bytes, bytes]]) -> None:
    """(customer, correlation id, value) published as scorer serve does: keyed, with the reply headers."""
    producer = Producer({"bootstrap.servers": settings.brokers})
    for customer, correlation, value in requests:
        tid = correlation.decode().replace("corr", "req").removesuffix("-retry")
        headers = [
            (REPLY_TO, reply_topic.encode()),
            (CORRELATION_ID, correlation),
            (TRANSACTION_ID, tid.encode()),
        ]
        producer.produce(settings.input_topic, value=value, key=customer.encode(), headers=headers)
    assert producer.flush(30) == 0


def tx(tid: str, customer: str, amount: float = 30.0) -> bytes:
    return orjson.dumps({**TX, "transaction_id": tid, "customer_id": customer, "amount": amount})


def test_requests_get_their_decisions_on_their_reply_topic(
    settings: Settings, tiny_model: Path, procs: list[Proc], tmp_path: Path
) -> None:
    reply_topic = f"{settings.input_topic}-replies"
    ensure_topics(settings.brokers, [TopicSpec(reply_topic, 1)])
    scorer = Proc("run", settings, tiny_model, tmp_path / "scorer.log", SCORER_BATCH_WAIT_S="0.02")
    procs.append(scorer)
    produce(settings, settings.input_topic, [(b"C1", tx("plain-1", "C1"))])  # a plain record: no reply
    publish_requests(settings, reply_topic, [
        ("C1", b"corr-1", tx("req-1", "C1", 10.0)),
        ("C2", b"corr-2", tx("req-2", "C2", 20.0)),
        ("C3", b"corr-3", b'{"transaction_id": "req-3", '),  # serve validates first; a producer may not
    ])  # fmt: skip
    replies = {r["key"]: r["value"] for r in consume(settings, reply_topic, 3)}
    assert set(replies) == {b"corr-1", b"corr-2", b"corr-3"}
    first = consume(settings, settings.decisions_topic, 3)
    by_tid = {orjson.loads(r["value"])["transaction_id"]: r["value"] for r in first}  # type: ignore[arg-type]
    assert replies[b"corr-1"] == by_tid["req-1"] and replies[b"corr-2"] == by_tid["req-2"]  # byte for byte
    assert orjson.loads(replies[b"corr-3"])["error"] == "invalid_json"

    # the client retries req-1 (another serve instance, or after a restart) and C1 buys again, published
    # together so that both land in one batch: the retry is answered and taken out of a batch that goes on
    publish_requests(settings, reply_topic, [
        ("C1", b"corr-1-retry", tx("req-1", "C1", 10.0)),
        ("C1", b"corr-4", tx("req-4", "C1", 40.0)),
    ])  # fmt: skip
    replies = {r["key"]: r["value"] for r in consume(settings, reply_topic, 5)}
    assert replies[b"corr-1-retry"] == by_tid["req-1"]  # the first decision, scored_at included
    got = decisions(consume(settings, settings.decisions_topic, 5, timeout_s=8))
    assert sorted(str(d["transaction_id"]) for d in got) == ["plain-1", "req-1", "req-2", "req-4"]
    req_4 = next(d for d in got if d["transaction_id"] == "req-4")
    once = [tx("plain-1", "C1"), tx("req-1", "C1", 10.0), tx("req-2", "C2", 20.0), tx("req-4", "C1", 40.0)]
    assert req_4["score"] == Scorer.load(tiny_model).score(once)[-1]["score"]  # req-1 in C1's windows once
    text = scorer.metrics()
    assert "scorer_replies_total 5.0" in text
    assert scorer.terminate() == 0
