"""Decisions the broker refuses after all retries, end to end on the real broker: the scorer stops with exit 1
without committing past it, and a restart decides every transaction (the loss issue 13 found)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from scorer.config import Settings
from scorer.demo.broker import EmbeddedBroker, free_port
from scorer.kafka.topics import create_topics
from tests.integration.conftest import Proc, consume, produce
from tests.integration.kafka_proxy import KafkaProxy
from tests.integration.test_pipeline import good, metric, wait_for

FIRST, SECOND = 200, 300


def test_a_refused_delivery_stops_the_scorer_and_a_restart_decides_every_transaction(
    tiny_model: Path, procs: list[Proc], tmp_path: Path
) -> None:
    proxy_port = free_port()
    with EmbeddedBroker(log_path=tmp_path / "tansu.log", advertised=f"127.0.0.1:{proxy_port}") as broker:
        proxy = KafkaProxy(proxy_port, broker.port).start()
        try:
            run(tiny_model, procs, tmp_path, proxy)
        finally:
            proxy.stop()


def run(model: Path, procs: list[Proc], tmp_path: Path, proxy: KafkaProxy) -> None:
    settings = Settings(
        brokers=f"127.0.0.1:{proxy.port}", group="refused", kafka={"session.timeout.ms": "6000"},
        fetch_wait_max_ms=5, commit_interval_s=0.3,
    )  # fmt: skip
    create_topics(settings, 2)
    produce(settings, settings.input_topic, [good(i, customers=11) for i in range(FIRST)])
    scorer = Proc("run", settings, model, tmp_path / "scorer.log", SCORER_KAFKA_MESSAGE_TIMEOUT_MS="2000")
    procs.append(scorer)
    assert len(consume(settings, settings.decisions_topic, FIRST)) == FIRST
    assert wait_for(lambda: metric(scorer.metrics(), "scorer_commits_total") > 0)
    os.kill(scorer.popen.pid, signal.SIGSTOP)  # while it sleeps, the second part arrives ...
    try:
        produce(settings, settings.input_topic, [good(i, customers=11) for i in range(FIRST, FIRST + SECOND)])
        proxy.hold_produce = True  # ... and the broker stops acknowledging writes
    finally:
        os.kill(scorer.popen.pid, signal.SIGCONT)
    # the pause outlasts message.timeout.ms: the decisions are refused, then the broker answers again
    assert wait_for(lambda: "delivery_failed" in (tmp_path / "scorer.log").read_text(), timeout_s=30)
    proxy.release()
    assert proxy.held > 0
    assert scorer.popen.wait(60) == 1
    assert "stopped_on_fatal_error" in (tmp_path / "scorer.log").read_text()
    every = {f"ok-{i}" for i in range(FIRST + SECOND)}
    assert decided_ids(settings, every, timeout_s=5) == {f"ok-{i}" for i in range(FIRST)}  # none of the rest
    again = Proc("run", settings, model, tmp_path / "again.log")
    procs.append(again)
    assert decided_ids(settings, every, timeout_s=90) == every
    assert again.terminate() == 0


def decided_ids(settings: Settings, want: set[str], timeout_s: float) -> set[str]:
    """Transaction ids on the decisions topic, read (without a group) until `want` is covered or time is up."""
    consumer = Consumer(
        {"bootstrap.servers": settings.brokers, "group.id": "check", "enable.auto.commit": False}
    )
    topic = settings.decisions_topic
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    try:
        while not want <= seen and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.2):
                if msg.error() is None:
                    seen.add(orjson.loads(msg.value() or b"")["transaction_id"])
    finally:
        consumer.close()
    return seen
