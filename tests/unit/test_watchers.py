"""The watcher of the control and rules topics on a fake topic: a value built while the loop takes the
last one is handed out next, a missing topic is retried until it appears, errors are counted by reason,
and the deployment loader keeps only the models of the newest deployment."""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from scorer.config import DEFAULT_MODEL
from scorer.errors import ScorerError
from scorer.kafka.compacted import REASONS, CompactedWatcher
from scorer.kafka.control import DeploymentLoader, parse_deployment
from scorer.model.onnx import OnnxModel
from scorer.model.registry import Registry
from scorer.rollout.deployment import DEPLOYMENT_KEY, Deployment
from scorer.rollout.plans import Plan
from scorer.rollout.serving import Serving
from scorer.runtime.metrics import Metrics
from tests.unit.fakes import FakeTopic
from tests.variants import with_feature_config

Table = dict[bytes, str]


def parse(key: bytes, value: bytes) -> str:
    if value == b"bad":
        raise ScorerError("unreadable")
    return value.decode()


def watcher(topic: FakeTopic, **kw: Any) -> tuple[CompactedWatcher[str, Table], CollectorRegistry]:
    registry = CollectorRegistry()
    return CompactedWatcher("rules", topic.reader, parse, dict, Metrics(registry), **kw), registry


def errors(registry: CollectorRegistry, reason: str, kind: str = "rules") -> float | None:
    return registry.get_sample_value("scorer_watcher_errors_total", {"topic_kind": kind, "reason": reason})


def readable(registry: CollectorRegistry, kind: str = "rules") -> float | None:
    return registry.get_sample_value("scorer_watcher_topic_readable", {"topic_kind": kind})


class PausingLock:
    """A lock that runs `while_held` once, in the first thread to take it after it is set, while held;
    `contended` is set when another thread finds it held and waits."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.contended = threading.Event()
        self.while_held: Callable[[], None] | None = None

    def __enter__(self) -> None:
        if not self.lock.acquire(blocking=False):
            self.contended.set()
            self.lock.acquire()
        hook, self.while_held = self.while_held, None
        if hook is not None:
            hook()

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def test_a_value_built_while_the_loop_takes_the_last_one_is_handed_out_next() -> None:
    topic, lock = FakeTopic(), PausingLock()
    rules, _ = watcher(topic, lock=lock)
    topic.put(b"r", b"1")
    rules.turn()
    topic.put(b"r", b"2")
    thread = threading.Thread(target=rules.turn)  # the watcher's thread, building {r: 2}

    def land_while_taking() -> None:  # take() holds the lock: {r: 1} is being handed out
        thread.start()
        assert lock.contended.wait(10)  # the thread has built {r: 2} and waits to hand it out

    lock.while_held = land_while_taking
    assert rules.take() == {b"r": "1"}
    assert thread.ident is not None, "take() did not hold the lock the value is handed out under"
    thread.join(10)
    assert rules.take() == {b"r": "2"}  # not lost: a take without the lock would have cleared it
    assert rules.take() is None


def test_a_missing_topic_is_retried_with_a_growing_wait_logged_once_and_followed_once_created(
    caplog: pytest.LogCaptureFixture,
) -> None:
    topic = FakeTopic(exists=False)
    rules, registry = watcher(topic)
    caplog.set_level(logging.INFO, logger="scorer.kafka.compacted")
    assert [rules.turn() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
    assert errors(registry, "topic_missing") == 6 and readable(registry) == 0
    assert rules.take() is None and all(reader.closed for reader in topic.readers)
    topic.exists = True
    topic.put(b"r", b"1")
    assert rules.turn() == 0 and rules.take() == {b"r": "1"}
    assert readable(registry) == 1
    assert [r.message for r in caplog.records] == ["watcher_topic_unreadable", "watcher_topic_readable"]
    topic.fail_reads = 1  # the wait starts again from the first step after a recovery
    assert rules.turn() == 0.5 and errors(registry, "broker_error") == 1


def test_what_is_read_again_after_a_reconnection_is_not_handed_out_again() -> None:
    topic = FakeTopic()
    rules, registry = watcher(topic)
    topic.put(b"r", b"1")
    topic.put(b"s", b"1")
    assert rules.load_current() and rules.take() == {b"r": "1", b"s": "1"}
    topic.put(b"r", b"2")
    topic.put(b"r", b"1")  # changed and changed back while the reader was disconnected
    topic.fail_reads = 1
    assert rules.turn() > 0 and errors(registry, "broker_error") == 1 and readable(registry) == 0
    assert rules.turn() == 0 and len(topic.readers) == 2  # reconnected, read from the beginning
    assert rules.take() is None
    topic.put(b"s", None)  # a tombstone
    rules.turn()
    assert rules.take() == {b"r": "1"}


def test_an_unreadable_record_is_left_out_counted_and_logged_and_every_reason_is_pre_created(
    caplog: pytest.LogCaptureFixture,
) -> None:
    topic = FakeTopic()
    rules, registry = watcher(topic)
    assert {reason: errors(registry, reason) for reason in REASONS} == dict.fromkeys(REASONS, 0.0)
    topic.put(b"r", b"1")
    topic.put(b"s", b"bad")
    rules.turn()
    assert rules.take() == {b"r": "1"} and errors(registry, "unreadable_record") == 1
    assert [(r.message, getattr(r, "key", None)) for r in caplog.records] == [("watcher_record_refused", "s")]
    rules.turn()  # nothing new: not counted again
    assert errors(registry, "unreadable_record") == 1


# -- the control topic's loader ------------------------------------------------------------------------


def registry_of(root: Path, versions: list[str]) -> Registry:
    for version in versions:
        out = root / "default" / version
        shutil.copytree(DEFAULT_MODEL, out)
        meta = orjson.loads((out / "model.json").read_bytes())
        meta["version"] = version
        (out / "model.json").write_bytes(orjson.dumps(meta))
    return Registry(root)


def deploy(champion: str, challenger: str | None = None) -> Mapping[bytes, Deployment]:
    plan = Plan("p", "blend", champion, challenger, 0, end_ms=1) if challenger else None
    return {DEPLOYMENT_KEY: Deployment(champion, plan)}


def test_the_loader_keeps_only_the_newest_deployments_models_and_reloads_a_dropped_one(
    tmp_path: Path,
) -> None:
    initial = OnnxModel(DEFAULT_MODEL)  # default/2, the configured model
    loader = DeploymentLoader(registry_of(tmp_path, ["1", "3"]), 1, Serving(initial))
    first = loader.build(deploy("default/2", "default/1"))
    assert (
        first is not None and first.champion is initial and set(loader.models) == {"default/2", "default/1"}
    )
    old_challenger = first.challenger
    with pytest.raises(ScorerError, match="no model 'default/9'"):
        loader.build(deploy("default/1", "default/9"))
    assert set(loader.models) == {"default/2", "default/1"}  # a refused deployment changes nothing
    third = loader.build(deploy("default/3"))
    assert third is not None and set(loader.models) == {"default/3"}
    again = loader.build(deploy("default/1"))
    assert again is not None and set(loader.models) == {"default/1"}
    assert again.champion is not old_challenger and again.champion.label == "default/1"  # from the registry


def test_a_deployment_that_cannot_be_loaded_is_counted_and_the_next_one_applies(tmp_path: Path) -> None:
    topic, registry = FakeTopic(), CollectorRegistry()
    loader = DeploymentLoader(registry_of(tmp_path, ["1"]), 1, Serving(OnnxModel(DEFAULT_MODEL)))
    control = CompactedWatcher("control", topic.reader, parse_deployment, loader.build, Metrics(registry))
    topic.put(DEPLOYMENT_KEY, Deployment("default/9").to_json())
    topic.put(b"other", b"{}")
    control.turn()
    assert control.take() is None
    assert (
        errors(registry, "not_applied", "control") == 1
        and errors(registry, "unreadable_record", "control") == 1
    )
    topic.put(DEPLOYMENT_KEY, Deployment("default/1").to_json())
    control.turn()
    serving = control.take()
    assert serving is not None and serving.champion.label == "default/1"
    updated = registry.get_sample_value(
        "scorer_watcher_last_update_timestamp_seconds", {"topic_kind": "control"}
    )
    assert updated is not None and updated > 0


def test_a_fault_of_our_own_in_build_is_counted_and_not_retried_on_the_same_records() -> None:
    topic = FakeTopic()

    def broken(table: Mapping[bytes, str]) -> Table:
        raise RuntimeError("a bug")

    registry = CollectorRegistry()
    rules = CompactedWatcher("rules", topic.reader, parse, broken, Metrics(registry))
    topic.put(b"r", b"1")
    assert not rules.load_current()  # no traceback out of the scorer's start
    assert errors(registry, "internal_error") == 1
    assert rules.turn() == 0 and rules.take() is None  # read again: the same records build nothing


def test_the_loader_refuses_a_model_whose_windows_or_label_delay_the_scorers_state_does_not_fit(
    tmp_path: Path,
) -> None:
    registry = registry_of(tmp_path, ["1"])
    with_feature_config(Path(DEFAULT_MODEL), tmp_path / "default" / "9", "9", customer_ring_days=40)
    loader = DeploymentLoader(registry, 1, Serving(OnnxModel(DEFAULT_MODEL)))
    with pytest.raises(ScorerError, match=r"default/9 cannot be served .* customer_ring_days 40"):
        loader.build(deploy("default/2", "default/9"))
    assert loader.build(deploy("default/1")) is not None
