"""Model variants made from a trained artefact, for the tests of what a deployment may change.

`currency_aware` knows one more currency than its source and scores it visibly higher: its ONNX graph is the
source's with the fraud probability raised by 0.5 where the currency column holds that currency's code (a
model for which "unseen" and "known" differ, which the default model, trained on one currency, is not).
`with_feature_config` changes what shapes the scorers' state (windows, label delay).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from scorer.features.engine import FEATURE_NAMES
from scorer.model.onnx import INPUT_NAME, OnnxModel

RAISE = 0.5


def _rewrite_meta(directory: Path, change: dict[str, Any]) -> None:
    meta = orjson.loads((directory / "model.json").read_bytes())
    for key, value in change.items():
        target = meta
        *path, last = key.split(".")
        for part in path:
            target = target[part]
        target[last] = value
    (directory / "model.json").write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))


def currency_aware(source: Path, out: Path, currency: str, version: str) -> Path:
    """A copy of `source` as `<name>/<version>` whose vocabulary adds `currency` (the last code) and whose
    score for it is the source's + 0.5 (clipped); the reference scores are recomputed so it passes the gate."""
    import onnx
    from onnx import TensorProto, helper

    shutil.copytree(source, out)
    meta = orjson.loads((out / "model.json").read_bytes())
    vocab = [*meta["feature_config"]["categories"].get("currency", []), currency]
    code = len(vocab) - 1
    model = onnx.load(str(source / "model.onnx"))
    graph = model.graph
    for node in graph.node:
        node.output[:] = ["raw_probabilities" if o == "probabilities" else o for o in node.output]
    column = FEATURE_NAMES.index("currency_code")
    graph.initializer.extend(
        [
            helper.make_tensor("currency_column", TensorProto.INT64, [1], [column]),
            helper.make_tensor("currency_below", TensorProto.FLOAT, [], [code - 0.5]),
            helper.make_tensor("raise_by", TensorProto.FLOAT, [1, 2], [-RAISE, RAISE]),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Gather", [INPUT_NAME, "currency_column"], ["currency"], axis=1),
            helper.make_node("Greater", ["currency", "currency_below"], ["is_new"]),  # codes above: none
            helper.make_node("Cast", ["is_new"], ["is_new_f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["is_new_f", "raise_by"], ["shift"]),
            helper.make_node("Add", ["raw_probabilities", "shift"], ["shifted"]),
            helper.make_node("Clip", ["shifted"], ["probabilities"], min=0.0, max=1.0),
        ]
    )
    onnx.save(model, str(out / "model.onnx"))
    name = meta["name"]
    _rewrite_meta(out, {"version": version, "feature_config.categories.currency": vocab})
    sample = np.asarray(meta["reference"]["sample"]["features"], dtype=np.float32)
    scores = OnnxModel(out).predict(sample).tolist()
    _rewrite_meta(out, {"reference.sample.scores": scores})
    assert OnnxModel(out).label == f"{name}/{version}"
    return out


def with_feature_config(source: Path, out: Path, version: str, **config: int) -> Path:
    """A copy of `source` as `<name>/<version>` with other state-shaping feature settings."""
    shutil.copytree(source, out)
    _rewrite_meta(out, {"version": version, **{f"feature_config.{k}": v for k, v in config.items()}})
    return out
