"""Models on the real `scorer-models` topic: a scorer whose registry is empty serves a version it finds
only on the topic, and refuses one whose bundle was corrupted, deciding on with the model in use."""

from __future__ import annotations

import io
import shutil
import time
import zipfile
from pathlib import Path

import orjson
import pytest

from scorer.cli.main import main
from scorer.config import Settings
from scorer.errors import ModelError
from scorer.kafka.artefacts import MANIFEST, fetch_model, pack, publish_model
from scorer.kafka.control import publish
from scorer.rollout.deployment import Deployment
from tests.integration.conftest import Proc, consume, decisions, env_for, produce
from tests.integration.test_pipeline import metric
from tests.integration.test_rollout_live import batch, in_range, wait_for_version


def version_of(tiny_model: Path, version: str, root: Path) -> Path:
    """tiny/1 as tiny/<version>: model.json's version edited, every other byte the same."""
    out = root / "tiny" / version
    shutil.copytree(tiny_model, out)
    meta = orjson.loads((out / "model.json").read_bytes())
    meta["version"] = version
    (out / "model.json").write_bytes(orjson.dumps(meta))
    return out


def corrupted(directory: Path) -> bytes:
    """The version's bundle with one byte of model.onnx flipped (a valid zip, its manifest now wrong)."""
    with zipfile.ZipFile(io.BytesIO(pack(directory))) as zf:
        files = {n: zf.read(n) for n in zf.namelist()}
    onnx = bytearray(files["model.onnx"])
    onnx[len(onnx) // 2] ^= 0x01
    files["model.onnx"] = bytes(onnx)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    assert MANIFEST in files
    return out.getvalue()


def not_applied(scorer: Proc) -> float:
    return metric(
        scorer.metrics(), "scorer_watcher_errors_total", 'reason="not_applied",topic_kind="control"'
    )


def test_a_scorer_without_the_registry_serves_a_version_from_the_topic_and_refuses_a_corrupted_one(
    settings: Settings, tiny_model: Path, procs: list[Proc], tmp_path: Path
) -> None:
    elsewhere = tmp_path / "trainer"  # the training machine's registry: the scorer never sees it
    published = publish_model(settings, version_of(tiny_model, "2", elsewhere))
    assert published.label == "tiny/2" and len(published.onnx_sha256) == 64
    produce(settings, settings.models_topic, [(b"tiny/3", corrupted(version_of(tiny_model, "3", elsewhere)))])

    empty, cache = tmp_path / "empty-registry", tmp_path / "cache"
    empty.mkdir()
    scorer = Proc(
        "run", settings, tiny_model, tmp_path / "scorer.log",
        SCORER_REGISTRY=str(empty), SCORER_MODEL_CACHE=str(cache),
    )  # fmt: skip
    procs.append(scorer)
    produce(settings, settings.input_topic, batch(0, 20))
    first = decisions(consume(settings, settings.decisions_topic, 20))
    assert len(first) == 20 and {d["model_version"] for d in first} == {"tiny/1"}

    publish(settings, Deployment("tiny/2", None, "tiny/1", int(time.time() * 1000)))
    wait_for_version(scorer, "tiny/2")
    produce(settings, settings.input_topic, batch(20, 20))
    second = in_range(decisions(consume(settings, settings.decisions_topic, 40)), 20, 40)
    assert len(second) == 20 and {d["model_version"] for d in second} == {"tiny/2"}
    assert (cache / "tiny" / "2" / "model.onnx").read_bytes() == (tiny_model / "model.onnx").read_bytes()
    assert not_applied(scorer) == 0

    publish(settings, Deployment("tiny/3", None, "tiny/2", int(time.time() * 1000)))
    deadline = time.monotonic() + 30
    while not_applied(scorer) != 1:
        assert time.monotonic() < deadline, scorer.describe()
        time.sleep(0.2)
    assert "tiny/3: integrity: model.onnx" in scorer.log.read_text(errors="replace")
    assert not (cache / "tiny" / "3").exists()
    produce(settings, settings.input_topic, batch(40, 20))
    third = in_range(decisions(consume(settings, settings.decisions_topic, 60)), 40, 60)
    assert len(third) == 20 and {d["model_version"] for d in third} == {"tiny/2"}


def test_scorer_models_publish_puts_a_version_on_the_topic_and_again_replaces_it(
    settings: Settings,
    tiny_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for key, value in env_for(settings, tiny_model).items():
        monkeypatch.setenv(key, value)
    version = version_of(tiny_model, "4", tmp_path / "models")
    assert main(["models", "publish", str(version)]) == 0
    out = capsys.readouterr().out.strip()
    assert (
        out.startswith(f"published tiny/4 to {settings.models_topic}: model.onnx sha256 ") and "bytes" in out
    )
    (version / "MODEL_CARD.md").write_text("retired\n")  # the lead's republish after a retirement
    assert main(["models", "publish", str(version)]) == 0
    fetched = fetch_model(settings, "tiny/4", tmp_path / "cache")
    assert (fetched / "MODEL_CARD.md").read_text() == "retired\n"
    with pytest.raises(ModelError, match=r"no model 'tiny/9' in the registry nor on .*\(published: tiny/4\)"):
        fetch_model(settings, "tiny/9", tmp_path / "cache")
