"""Deployments on the real control topic: the gate guards promote, plans and rollbacks are read back, and
a scorer started before its control topic existed follows the topic once it is created."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from scorer.cli.main import main
from scorer.config import DEFAULT_MODEL, Settings
from scorer.kafka.admin import TopicSpec, ensure_topics
from scorer.kafka.control import control_watcher, publish, read_deployment
from scorer.model.onnx import OnnxModel
from scorer.rollout.deployment import Deployment
from scorer.rollout.serving import Serving
from scorer.runtime.metrics import Metrics
from tests.integration.conftest import env_for


def registry_with(tiny_model: Path, root: Path) -> Path:
    for version in ("1", "2", "3"):
        out = root / "tiny" / version
        shutil.copytree(tiny_model, out)
        meta = orjson.loads((out / "model.json").read_bytes())
        meta["version"] = version
        if version == "3":
            meta["known_faults"] = []
        (out / "model.json").write_bytes(orjson.dumps(meta))
    return root


def test_promote_plan_finish_and_rollback(
    settings: Settings,
    tiny_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    registry = registry_with(tiny_model, tmp_path / "models")
    for key, value in env_for(settings, registry / "tiny" / "1").items():
        monkeypatch.setenv(key, value)
    models = ["models", "--registry", str(registry)]

    assert main([*models, "plan"]) == 0
    assert "champion  tiny/1" in capsys.readouterr().out
    assert read_deployment(settings) is None

    assert main([*models, "promote", "tiny/3", "--strategy", "direct"]) == 1
    assert "refused by the validation gate (model_card)" in capsys.readouterr().err
    assert read_deployment(settings) is None  # nothing published

    blend = ["--strategy", "blend", "--start", "2026-01-01T00:00:00Z", "--end", "2026-01-15T00:00:00Z"]
    assert main([*models, "promote", "tiny/2", *blend]) == 0
    deployment = read_deployment(settings)
    assert deployment is not None and deployment.plan is not None
    assert (deployment.champion, deployment.plan.strategy, deployment.plan.challenger) == (
        "tiny/1",
        "blend",
        "tiny/2",
    )
    capsys.readouterr()
    assert main([*models, "plan"]) == 0
    out = capsys.readouterr().out
    assert "from 2026-01-08T00:00:00+00:00  challenger weight 0.50" in out

    assert main([*models, "promote", "tiny/2", "--strategy", "direct"]) == 1
    assert "is in force" in capsys.readouterr().err

    assert main([*models, "rollback"]) == 0
    deployment = read_deployment(settings)
    assert deployment is not None and deployment.plan is None and deployment.champion == "tiny/1"

    assert main([*models, "promote", "tiny/2", "--strategy", "canary", "--share", "0.1"]) == 0
    assert main([*models, "finish"]) == 0
    deployment = read_deployment(settings)
    assert deployment is not None and (deployment.champion, deployment.previous) == ("tiny/2", "tiny/1")
    assert main([*models, "rollback"]) == 0
    deployment = read_deployment(settings)
    assert deployment is not None and (deployment.champion, deployment.previous) == ("tiny/1", "tiny/2")


def test_a_control_topic_created_after_the_watcher_started_is_followed(settings: Settings) -> None:
    late = dataclasses.replace(
        settings, control_topic=f"{settings.control_topic}-late", registry=str(DEFAULT_MODEL.parent.parent)
    )
    registry = CollectorRegistry()
    watcher = control_watcher(late, 1, Serving(OnnxModel(DEFAULT_MODEL)), Metrics(registry))

    def missing() -> float:
        labels = {"topic_kind": "control", "reason": "topic_missing"}
        return registry.get_sample_value("scorer_watcher_errors_total", labels) or 0.0

    assert not watcher.load_current() and missing() == 1
    watcher.start()
    try:
        deadline = time.monotonic() + 30
        while missing() < 2:  # the thread has retried at least once
            assert time.monotonic() < deadline
            time.sleep(0.05)
        ensure_topics(late.brokers, [TopicSpec(late.control_topic, 1, compacted=True)])
        publish(late, Deployment("default/2"))
        serving = watcher.take()
        while serving is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
            serving = watcher.take()
        assert serving.champion.label == "default/2"
        assert registry.get_sample_value("scorer_watcher_topic_readable", {"topic_kind": "control"}) == 1
    finally:
        watcher.close()
