"""OnnxModel: load a model artefact, check it fits FEATURE_NAMES, predict a whole batch in one call.

An artefact is a directory with `model.onnx` and `model.json` (the metadata training wrote: feature names
and order, feature config, threshold and its policy, reference distributions, metrics, known faults).
A model that does not fit the feature engine is refused at load time, never at the first event.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from scorer.errors import ModelError
from scorer.features.engine import FEATURE_NAMES, FeatureConfig
from scorer.model.curve import Curve

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
INPUT_NAME = "features"


@dataclass(frozen=True, slots=True)
class ModelMeta:
    """The parts of model.json the scorer relies on at run time; `raw` keeps the rest."""

    name: str
    version: str
    threshold: float
    feature_names: tuple[str, ...]
    feature_config: FeatureConfig
    raw: Mapping[str, Any]

    @property
    def label(self) -> str:
        """`name/version`, the model_version written into every decision."""
        return f"{self.name}/{self.version}"


def resolve_artefact(path: Path) -> Path:
    """Accept the artefact directory or its model.onnx / model.json file; a relative path is read from
    the current directory. ModelError naming the path (and, when relative, where it was looked for)."""
    directory = path if path.is_dir() else path.parent
    if not (directory / "model.onnx").is_file() or not (directory / "model.json").is_file():
        where = "" if path.is_absolute() else f" ({path.absolute()}: relative to the current directory)"
        raise ModelError(
            f"{path}{where}: not a model artefact (expected a directory with model.onnx and model.json)"
        )
    return directory


def read_meta(directory: Path) -> ModelMeta:
    """Parse model.json with clear errors for every missing or malformed part."""
    try:
        raw = orjson.loads((directory / "model.json").read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ModelError(f"{directory / 'model.json'}: unreadable ({exc})") from exc
    try:
        fc = raw["feature_config"]
        meta = ModelMeta(
            name=str(raw["name"]),
            version=str(raw["version"]),
            threshold=float(raw["threshold"]),
            feature_names=tuple(raw["feature_names"]),
            feature_config=FeatureConfig(
                label_delay_days=int(fc["label_delay_days"]),
                customer_ring_days=int(fc["customer_ring_days"]),
                categories={k: list(v) for k, v in fc["categories"].items()},
            ),
            raw=raw,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{directory / 'model.json'}: missing or malformed field {exc}") from exc
    if not 0.0 <= meta.threshold <= 1.0 or math.isnan(meta.threshold):
        raise ModelError(f"{directory / 'model.json'}: threshold {meta.threshold} is not in [0, 1]")
    return meta


def _curve(meta: ModelMeta) -> Curve | None:
    """The validation curve stored at training (None for artefacts from before it was stored)."""
    doc = meta.raw.get("validation_curve")
    if doc is None:
        return None
    try:
        return Curve.from_dict(doc)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{meta.label}: malformed validation_curve ({exc})") from exc


def check_features(meta: ModelMeta) -> None:
    """Refuse a model trained on other features, in another order, than this engine computes."""
    if meta.feature_names != FEATURE_NAMES:
        missing = sorted(set(FEATURE_NAMES) - set(meta.feature_names))
        extra = sorted(set(meta.feature_names) - set(FEATURE_NAMES))
        detail = f"missing {missing}, unknown {extra}" if missing or extra else "same names, different order"
        raise ModelError(f"model {meta.label} does not match this scorer's features: {detail}")


class OnnxModel:
    """One loaded model: an onnxruntime session plus its metadata; `predict` is one call per batch."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        import onnxruntime as ort  # imported here so feature-only tools do not pay for it

        self.directory = resolve_artefact(Path(path))
        self.meta = read_meta(self.directory)
        check_features(self.meta)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(self.directory / "model.onnx"), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors for any bad file
            raise ModelError(f"{self.directory / 'model.onnx'}: onnxruntime cannot load it ({exc})") from exc
        self._output = self._check_session()
        self.curve = _curve(self.meta)

    def _check_session(self) -> str:
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME or inputs[0].type != "tensor(float)":
            found = [(i.name, i.type) for i in inputs]
            raise ModelError(f"{self.meta.label}: expected one float input '{INPUT_NAME}', found {found}")
        width = inputs[0].shape[-1]
        if isinstance(width, int) and width != len(FEATURE_NAMES):
            raise ModelError(
                f"{self.meta.label}: input has {width} columns, the engine makes {len(FEATURE_NAMES)}"
            )
        outputs = [o.name for o in self.session.get_outputs()]
        if "probabilities" not in outputs:
            raise ModelError(f"{self.meta.label}: no 'probabilities' output (found {outputs})")
        return "probabilities"

    @property
    def label(self) -> str:
        return self.meta.label

    @property
    def threshold(self) -> float:
        return self.meta.threshold

    def predict(self, features: F32) -> F64:
        """Fraud probability of every row; one onnxruntime call for the whole batch."""
        if len(features) == 0:
            return np.zeros(0)
        (proba,) = self.session.run([self._output], {INPUT_NAME: np.ascontiguousarray(features, np.float32)})
        return np.asarray(proba, dtype=np.float64)[:, 1]
