"""The registry lists versions; the validation gate refuses each kind of bad model with its reason."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from scorer.cli.main import main
from scorer.model.registry import Registry, passed, validate


def variant(
    tiny_model: Path, root: Path, version: str, edit: Callable[[dict[str, Any]], None] | None = None
) -> Path:
    """A copy of the tiny model as tiny/<version> under root, its model.json changed by `edit`."""
    out = root / "tiny" / version
    shutil.copytree(tiny_model, out)
    meta = orjson.loads((out / "model.json").read_bytes())
    meta["version"] = version
    if edit is not None:
        edit(meta)
    (out / "model.json").write_bytes(orjson.dumps(meta))
    return out


def failed(checks: list[Any]) -> dict[str, str]:
    return {c.name: c.detail for c in checks if not c.ok}


def test_a_good_model_passes_against_itself(tiny_model: Path, tmp_path: Path) -> None:
    path = variant(tiny_model, tmp_path, "1")
    checks = validate(path, champion=path)
    assert passed(checks), checks
    assert [c.name for c in checks] == ["loads", "reference_scores", "model_card", "metrics", "feature_state"]


def test_an_onnx_file_that_does_not_load(tiny_model: Path, tmp_path: Path) -> None:
    path = variant(tiny_model, tmp_path, "2")
    (path / "model.onnx").write_bytes(b"not a model")
    assert "onnxruntime cannot load it" in failed(validate(path))["loads"]


def test_inputs_in_another_order(tiny_model: Path, tmp_path: Path) -> None:
    path = variant(tiny_model, tmp_path, "3", lambda m: m["feature_names"].reverse())
    assert "different order" in failed(validate(path))["loads"]


def test_scores_that_differ_from_the_stored_reference(tiny_model: Path, tmp_path: Path) -> None:
    def shift(meta: dict[str, Any]) -> None:
        sample = meta["reference"]["sample"]
        sample["scores"] = [s + 0.01 for s in sample["scores"]]

    path = variant(tiny_model, tmp_path, "4", shift)
    assert "max |score - stored| = 1.00e-02" in failed(validate(path))["reference_scores"]


def test_a_card_without_known_faults(tiny_model: Path, tmp_path: Path) -> None:
    path = variant(tiny_model, tmp_path, "5", lambda m: m.update(known_faults=[]))
    (path / "MODEL_CARD.md").unlink()
    assert failed(validate(path)) == {"model_card": "missing or empty: known_faults, MODEL_CARD.md"}


def test_holdout_metrics_worse_than_the_champion(tiny_model: Path, tmp_path: Path) -> None:
    champion = variant(tiny_model, tmp_path, "1")
    worse = variant(
        tiny_model,
        tmp_path,
        "6",
        lambda m: m["metrics"]["validation"].update(roc_auc=m["metrics"]["validation"]["roc_auc"] - 0.05),
    )
    detail = failed(validate(worse, champion, tolerance=0.01))["metrics"]
    assert detail.startswith("against champion tiny/1: roc_auc") and "- 0.01" in detail
    assert passed(validate(worse, champion, tolerance=0.1))


def test_registry_lists_versions_in_number_order_and_resolves_refs(tiny_model: Path, tmp_path: Path) -> None:
    for version in ("10", "2", "1"):
        variant(tiny_model, tmp_path, version)
    registry = Registry(tmp_path)
    assert [e.label for e in registry.entries()] == ["tiny/1", "tiny/2", "tiny/10"]
    assert registry.get("tiny").version == "10"
    assert registry.get("tiny/2").path == tmp_path / "tiny" / "2"


def test_cli_refuses_with_the_reason(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    variant(tiny_model, tmp_path, "1")
    variant(tiny_model, tmp_path, "7", lambda m: m.update(limits=[]))
    assert main(["models", "--registry", str(tmp_path), "validate", "tiny/7", "--champion", "tiny/1"]) == 1
    out, err = capsys.readouterr()
    assert "FAIL model_card         missing or empty: limits" in out
    assert err.strip() == "scorer: error: tiny/7 is refused by the validation gate (model_card)"
    assert main(["models", "--registry", str(tmp_path), "list"]) == 0
    assert "tiny/1" in capsys.readouterr().out
    assert main(["models", "--registry", str(tmp_path), "show", "nope/3"]) == 1
    assert "no model 'nope/3'" in capsys.readouterr().err


def test_a_model_the_scorers_state_does_not_fit_is_refused_and_a_new_vocabulary_is_not(
    tiny_model: Path, tmp_path: Path
) -> None:
    """Windows and label delay shape the state the running scorers keep; a vocabulary does not."""
    champion = variant(tiny_model, tmp_path, "1")
    delayed = variant(tiny_model, tmp_path, "7", lambda m: m["feature_config"].update(label_delay_days=3))
    detail = failed(validate(delayed, champion))["feature_state"]
    assert "label_delay_days 3 (the running scorers keep 7)" in detail
    wider = variant(
        tiny_model,
        tmp_path,
        "8",
        lambda m: m["feature_config"]["categories"].update(currency=["EUR", "USD", "GBP"]),
    )
    assert passed(validate(wider, champion))
