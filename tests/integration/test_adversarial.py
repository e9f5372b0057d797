"""Tried as an adversary would, on the real broker and bounded in time: a fuzz corpus with values over
1 MiB, a broker frozen longer than the session timeout, and group members killed again and again."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from benchmarks.fuzz import corpus, run_fuzz
from scorer.config import Settings
from scorer.demo.broker import EmbeddedBroker
from scorer.kafka.topics import create_topics
from tests.integration.conftest import Proc, produce
from tests.integration.test_delivery_failure import decided_ids
from tests.integration.test_pipeline import _status, good, wait_for


def test_a_fuzz_corpus_comes_out_exactly_once_and_the_scorer_never_exits(
    tiny_model: Path, tmp_path: Path
) -> None:
    records = corpus(20_000, seed=7, big=4)
    result = run_fuzz(records, tiny_model, tmp_path, timeout_s=240)
    assert result.valid > 12_000 and result.records - result.valid > 4_000  # ~30 % mutated, some stay valid
    assert not result.missing_decisions and not result.missing_dead_letters, (
        len(result.missing_decisions), len(result.missing_dead_letters),
    )  # fmt: skip
    assert not result.wrong_reasons, result.wrong_reasons[:5]
    assert result.decisions == result.expected_decisions  # each valid record decided once
    assert max(result.dead_letters.values()) == 1
    assert result.big_dead_letters == 4  # each value over 1 MiB came out as a cut dead letter
    assert result.alive and result.exit_code == 0


def own_broker(tmp_path: Path) -> tuple[EmbeddedBroker, Settings]:
    broker = EmbeddedBroker(log_path=tmp_path / "tansu.log")
    broker.start()
    settings = Settings(
        brokers=broker.bootstrap, group="adversary", kafka={"session.timeout.ms": "6000"},
        fetch_wait_max_ms=5, commit_interval_s=0.3,
    )  # fmt: skip
    create_topics(settings, 4)
    return broker, settings


def test_a_broker_frozen_longer_than_the_session_timeout_loses_nothing_and_readiness_says_so(
    tiny_model: Path, procs: list[Proc], tmp_path: Path
) -> None:
    broker, settings = own_broker(tmp_path)
    try:
        produce(settings, settings.input_topic, [good(i, customers=17) for i in range(300)])
        scorer = Proc("run", settings, tiny_model, tmp_path / "scorer.log")
        procs.append(scorer)
        ready = f"http://127.0.0.1:{scorer.metrics_port}/readyz"
        assert decided_ids(settings, {f"ok-{i}" for i in range(300)}, 60) == {f"ok-{i}" for i in range(300)}
        assert wait_for(lambda: _status(ready) == 200)
        os.kill(broker.pid, signal.SIGSTOP)
        try:
            assert wait_for(lambda: _status(ready) == 503, timeout_s=20)  # the group is lost: not ready
            time.sleep(3)  # frozen for longer than the 6 s session timeout in all
            assert scorer.popen.poll() is None
        finally:
            os.kill(broker.pid, signal.SIGCONT)
        produce(settings, settings.input_topic, [good(i, customers=17) for i in range(300, 600)])
        every = {f"ok-{i}" for i in range(600)}
        assert decided_ids(settings, every, 90) == every
        assert wait_for(lambda: _status(ready) == 200, timeout_s=30)
        assert scorer.terminate() == 0
    finally:
        broker.stop()


def test_members_killed_and_started_again_and_again_decide_every_transaction(
    tiny_model: Path, procs: list[Proc], tmp_path: Path
) -> None:
    broker, settings = own_broker(tmp_path)
    n = 3000
    stop = threading.Event()

    def stream() -> None:  # 100 transactions every 0.2 s while the group churns
        for start in range(0, n, 100):
            if stop.is_set():
                return
            produce(
                settings, settings.input_topic, [good(i, customers=97) for i in range(start, start + 100)]
            )
            time.sleep(0.2)

    try:
        members = [Proc("run", settings, tiny_model, tmp_path / f"m{i}.log") for i in range(2)]
        procs.extend(members)
        feeder = threading.Thread(target=stream)
        feeder.start()
        for turn in range(5):  # kill one member (SIGKILL), start a new one, every ~2.5 s
            time.sleep(2.5)
            members[turn % len(members)].kill()
            members[turn % len(members)] = Proc("run", settings, tiny_model, tmp_path / f"m{turn + 2}.log")
            procs.append(members[turn % len(members)])
        feeder.join(60)
        every = {f"ok-{i}" for i in range(n)}
        assert decided_ids(settings, every, 120) == every
        assert all(m.terminate() == 0 for m in members)
    finally:
        stop.set()
        broker.stop()
