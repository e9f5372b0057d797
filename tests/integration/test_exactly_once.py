"""Exactly-once mode on the real broker: transactions per input partition commit outputs, state and
offsets together; a restart resumes where the last transaction stood; a zombie is fenced.

What tansu cannot show (README): a read_committed consumer there still sees aborted records, so these
tests check offsets, state markers and that every transaction is decided, not the absence of
duplicates downstream.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from scorer.config import Settings
from tests.integration.conftest import PARTITIONS, Proc, produce
from tests.integration.test_delivery_failure import decided_ids
from tests.integration.test_pipeline import good, metric, wait_for

EOS = {"SCORER_PROCESSING_GUARANTEE": "exactly_once"}


def gauge(proc: Proc, name: str) -> float:
    """A metric of a child that may not serve yet (nan until it does)."""
    try:
        return metric(proc.metrics(), name)
    except OSError:
        return float("nan")


def committed(settings: Settings) -> dict[int, int]:
    """The scorer group's committed input offsets."""
    consumer = Consumer({"bootstrap.servers": settings.brokers, "group.id": settings.group})
    try:
        tps = [TopicPartition(settings.input_topic, p) for p in range(PARTITIONS)]
        return {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=10)}
    finally:
        consumer.close()


def markers(settings: Settings) -> dict[int, int]:
    """The newest snapshot marker's input offset per state partition."""
    consumer = Consumer(
        {"bootstrap.servers": settings.brokers, "group.id": "markers", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(settings.state_topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    out: dict[int, int] = {}
    try:
        for _ in range(20):
            for msg in consumer.consume(1000, 0.3):
                if msg.error() is None and msg.key() == b"\x00marker":
                    out[msg.partition() or 0] = orjson.loads(msg.value() or b"")["offset"]
    finally:
        consumer.close()
    return out


def test_outputs_state_and_offsets_commit_together_and_a_restart_resumes_there(
    settings: Settings, tiny_model: Path, procs: list[Proc], tmp_path: Path
) -> None:
    n = 400
    produce(settings, settings.input_topic, [good(i, customers=23) for i in range(n)])
    scorer = Proc("run", settings, tiny_model, tmp_path / "scorer.log", **EOS)
    procs.append(scorer)
    every = {f"ok-{i}" for i in range(n)}
    assert decided_ids(settings, every, 60) == every
    assert wait_for(lambda: gauge(scorer, "scorer_commits_total") >= 1)
    assert scorer.terminate() == 0
    offsets = committed(settings)
    assert sum(offsets.values()) == n
    assert markers(settings) == {p: o for p, o in offsets.items() if o > 0}  # state stands where offsets do
    again = Proc("run", settings, tiny_model, tmp_path / "again.log", **EOS)
    procs.append(again)
    assert wait_for(lambda: gauge(again, "scorer_assigned_partitions") == PARTITIONS, timeout_s=60)
    time.sleep(2)
    assert metric(again.metrics(), "scorer_events_consumed_total") == 0
    assert again.terminate() == 0


def test_kill_9_in_the_middle_of_transactions_then_every_transaction_is_decided(
    settings: Settings, tiny_model: Path, procs: list[Proc], tmp_path: Path
) -> None:
    n = 1500
    env = {**EOS, "SCORER_COMMIT_INTERVAL_S": "0.5"}
    scorer = Proc("run", settings, tiny_model, tmp_path / "s0.log", **env)
    procs.append(scorer)
    for part in range(3):  # a third of the stream, then SIGKILL with a transaction open, then a restart
        produce(
            settings,
            settings.input_topic,
            [good(i, customers=41) for i in range(part * 500, (part + 1) * 500)],
        )
        time.sleep(1.5)
        scorer.kill()
        assert markers(settings).keys() <= committed(settings).keys()
        scorer = Proc("run", settings, tiny_model, tmp_path / f"s{part + 1}.log", **env)
        procs.append(scorer)
    every = {f"ok-{i}" for i in range(n)}
    assert decided_ids(settings, every, 120) == every
    assert scorer.terminate() == 0
    offsets = committed(settings)
    assert sum(offsets.values()) == n
    assert markers(settings) == {p: o for p, o in offsets.items() if o > 0}


def test_a_paused_member_whose_partitions_moved_never_commits_for_them_again(
    settings: Settings, tiny_model: Path, procs: list[Proc], tmp_path: Path
) -> None:
    produce(settings, settings.input_topic, [good(i, customers=19) for i in range(200)])
    env = {**EOS, "SCORER_COMMIT_INTERVAL_S": "3"}  # its transactions stay open for seconds
    zombie = Proc("run", settings, tiny_model, tmp_path / "zombie.log", **env)
    procs.append(zombie)
    assert wait_for(lambda: gauge(zombie, "scorer_events_consumed_total") == 200, timeout_s=60)
    os.kill(zombie.popen.pid, signal.SIGSTOP)  # paused with an open transaction: it will not know it lost
    try:
        produce(settings, settings.input_topic, [good(i, customers=19) for i in range(200, 400)])
        heir = Proc("run", settings, tiny_model, tmp_path / "heir.log", **env)
        procs.append(heir)
        assert wait_for(lambda: gauge(heir, "scorer_assigned_partitions") == PARTITIONS, timeout_s=60)
    finally:
        os.kill(zombie.popen.pid, signal.SIGCONT)
    # Back, the paused member either tries to commit and is fenced (exit 1), or first learns that its
    # partitions were lost, drops their open transactions and joins again as a new member.
    log = tmp_path / "zombie.log"
    assert wait_for(
        lambda: '"fenced"' in log.read_text() or "partitions_lost" in log.read_text(), timeout_s=60
    )
    if '"fenced"' in log.read_text():
        assert zombie.popen.wait(30) == 1
    every = {f"ok-{i}" for i in range(400)}
    assert decided_ids(settings, every, 90) == every
    # no stale commit of the paused member after the heir's: the offsets end where the input does
    assert wait_for(lambda: sum(committed(settings).values()) == 400, timeout_s=30)
    assert markers(settings) == {p: o for p, o in committed(settings).items() if o > 0}
    assert heir.terminate() == 0


def test_a_newer_producer_for_the_same_partitions_fences_a_paused_one_which_stops(
    settings: Settings, tiny_model: Path, procs: list[Proc], tmp_path: Path
) -> None:
    """The fencing itself, made certain: the newer owner of the transactional ids is a scorer of another
    group (same prefix), so the paused one keeps its partitions and only learns of it when it commits."""
    produce(settings, settings.input_topic, [good(i, customers=19) for i in range(100)])
    env = {**EOS, "SCORER_COMMIT_INTERVAL_S": "3", "SCORER_TRANSACTIONAL_ID_PREFIX": "fence-test"}
    # a session long enough that the pause below never costs the old one its partitions, however slow the
    # newer one is to join: it must learn of the newer producer only when it commits
    old = Proc(
        "run", settings, tiny_model, tmp_path / "old.log", SCORER_KAFKA_SESSION_TIMEOUT_MS="45000", **env
    )
    procs.append(old)
    assert wait_for(lambda: gauge(old, "scorer_events_consumed_total") == 100, timeout_s=60)
    os.kill(old.popen.pid, signal.SIGSTOP)
    try:
        newer = Proc(
            "run", settings, tiny_model, tmp_path / "newer.log", SCORER_GROUP=f"{settings.group}-2", **env
        )
        procs.append(newer)
        started = time.monotonic()
        assert wait_for(lambda: gauge(newer, "scorer_assigned_partitions") == PARTITIONS, timeout_s=40)
        assert time.monotonic() - started < 40  # the pause stays inside the old one's session
    finally:
        os.kill(old.popen.pid, signal.SIGCONT)
    # new records give the old one something to commit (it may have committed the first ones before)
    produce(settings, settings.input_topic, [good(i, customers=19) for i in range(100, 200)])
    assert old.popen.wait(60) == 1
    text = (tmp_path / "old.log").read_text()
    assert '"fenced"' in text and "another scorer owns the partition now" in text
    assert sum(max(0, o) for o in committed(settings).values()) <= 100  # nothing after the fence
    assert newer.terminate() == 0
