"""Decision records (schemas/decision.schema.json) for a scored batch, with the reasons behind each alert.

Reasons are exact: for each review or decline decision, the three features with the largest
|contribution| to the model's margin (log-odds), from path-dependent TreeSHAP over the model's own trees
(scorer/model/shap.py), each as {feature, value as scored, contribution}. Contributions plus the model's
base margin add up to the row's margin. Approve decisions carry no reasons (an empty list): nobody acts on
them, they are about 97 % of the traffic, and the console can explain any stored decision from its feature
vector. Only alerted rows are explained, so the cost follows the alert rate (docs/models.md, "Reasons").
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from scorer.errors import ScorerError
from scorer.events.batches import TransactionBatch
from scorer.events.timestamps import rfc3339_ms
from scorer.model.onnx import OnnxModel
from scorer.model.shap import COVERS_FILE, TreeExplainer, read_covers
from scorer.model.trees import read_tree_ensemble
from scorer.rollout.serving import RolloutFields

logger = logging.getLogger(__name__)
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
N_REASONS = 3
CONTRIBUTION_DECIMALS = 6  # log-odds to 1e-6: more digits mean nothing to a reader and lengthen the record


@dataclass(frozen=True, slots=True)
class Reasons:
    """The reasons of some rows: up to N_REASONS (column, value, contribution) each, strongest first."""

    columns: list[list[int]]
    values: list[list[float]]
    contributions: list[list[float]]


class Explainer:
    """One model's reasons: its TreeSHAP, or none when the model cannot be explained (then every
    decision has an empty reason list, and the cause is logged once, when the model is loaded)."""

    def __init__(self, names: Sequence[str], shap: TreeExplainer | None) -> None:
        self.names = tuple(names)
        self.shap = shap
        self.json_names = [orjson.dumps(n) for n in self.names]

    @classmethod
    def for_model(cls, directory: Path, names: Sequence[str], label: str = "") -> Explainer:
        """The explainer of the artefact in `directory`: its model.onnx trees and covers.npz. Never
        raises: a model without covers, or not a tree ensemble we read, gets no reasons (logged)."""
        covers = directory / COVERS_FILE
        if not covers.is_file():
            logger.warning("reasons_unavailable", extra={"model": label, "reason": f"no {COVERS_FILE}"})
            return cls(names, None)
        try:
            onnx = directory / "model.onnx"
            trees = read_tree_ensemble(onnx.read_bytes(), str(onnx))
            return cls(names, TreeExplainer(trees, read_covers(covers, trees), len(names)))
        except (OSError, ScorerError) as exc:
            logger.warning("reasons_unavailable", extra={"model": label, "reason": str(exc)})
            return cls(names, None)

    def reasons(self, features: F32, k: int = N_REASONS) -> Reasons:
        """The top-k features of each row by |contribution| (ties: the earlier column), without the
        features that contribute nothing; none at all without TreeSHAP."""
        n = len(features)
        if self.shap is None or n == 0:
            return Reasons([[] for _ in range(n)], [[] for _ in range(n)], [[] for _ in range(n)])
        phi = self.shap.contributions(features).round(CONTRIBUTION_DECIMALS)
        k = min(k, phi.shape[1])
        top = np.argsort(-np.abs(phi), axis=1, kind="stable")[:, :k]
        contributions = np.take_along_axis(phi, top, axis=1)
        values = np.take_along_axis(features, top, axis=1)
        keep = (contributions != 0).tolist()
        return Reasons(
            [[c for c, ok in zip(r, m, strict=True) if ok] for r, m in zip(top.tolist(), keep, strict=True)],
            [
                [v for v, ok in zip(r, m, strict=True) if ok]
                for r, m in zip(values.tolist(), keep, strict=True)
            ],
            [
                [c for c, ok in zip(r, m, strict=True) if ok]
                for r, m in zip(contributions.tolist(), keep, strict=True)
            ],
        )


class Explainers:
    """The explainer of each model a scorer uses, by label, built once (about 0.1 s: trees and covers)."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self.known: dict[str, Explainer] = {}

    def of(self, model: OnnxModel) -> Explainer:
        explainer = self.known.get(model.label)
        if explainer is None:
            if len(self.known) > 8:  # models of past deployments: dropped now and then
                self.known.clear()
            explainer = Explainer.for_model(model.directory, self.names, model.label)
            self.known[model.label] = explainer
        return explainer

    def prepare(self, *models: OnnxModel | None) -> None:
        """Build the explainers of these models now (the scorer does it between batches)."""
        for model in models:
            if model is not None:
                self.of(model)


@dataclass(slots=True)
class ScoredBatch:
    """What the model said about a batch, ready to encode."""

    batch: TransactionBatch
    features: F32
    scores: F64
    flagged: npt.NDArray[np.bool_]
    threshold: float
    model_version: str
    extra: RolloutFields | None = None  # per-row rollout fields (challenger, weight), as columns
    actions: npt.NDArray[np.int8] | None = None  # 0 approve, 1 review, 2 decline (None: from `flagged`)
    sources: list[bytes] | None = None  # each action's source as a JSON string: "model" or a rule's id
    with_features: bool = False  # each decision carries its feature vector as scored (`features`)


def encode_decisions(scored: ScoredBatch, explainer: Explainer, scored_at_ms: int) -> list[bytes]:
    """One JSON document per transaction, in batch order, byte for byte what `encode_decisions_dicts` gives.

    Why not one dict and one `orjson.dumps` per decision: that cost 3.8 us per event, the largest step of the
    hot path. Here each column is serialised by one `orjson.dumps` call over the whole batch and split into
    its per-row pieces (a JSON array of strings splits exactly on `","`, since a quote inside a string is
    always escaped; an array of numbers splits on commas), and each document is one bytes template filled
    with its row's pieces. Under a plan, the rollout fields (`extra`, columns) are serialised the same way:
    each row's threshold replaces the document's, the rest follow `scored_at`, as `dict.update` places them.
    The feature vectors (`with_features`) are one orjson call over the float32 matrix (each value in its
    shortest float32 form), split into rows, last in each document. The reasons are explained for the
    alerted rows only (`flagged`), one TreeSHAP call for all of them; the other rows' lists are empty.
    """
    b = scored.batch
    if len(b) == 0:
        return []
    template = _template(scored.model_version, scored_at_ms)
    thresholds, tails = _rollout_fields(scored.extra, scored.threshold, len(b))
    features = _feature_pieces(scored.features) if scored.with_features else [b""] * len(b)
    actions, sources = _actions(scored)
    rows = zip(
        _strings(b.transaction_id), _strings(b.customer_id), _strings(b.terminal_id),
        _numbers(b.amount.tolist()), _strings(rfc3339_ms(b.event_ts_ms)), _numbers(scored.scores.tolist()),
        map(_BOOLEANS.__getitem__, scored.flagged.tolist()), map(_ACTIONS.__getitem__, actions), sources,
        thresholds, _reason_pieces(scored, explainer), tails, features, strict=True,
    )  # fmt: skip
    return [template % row for row in rows]


def _reason_pieces(scored: ScoredBatch, explainer: Explainer) -> list[bytes]:
    """Each row's reason objects, comma-separated, as the JSON array's inside: only alerted rows have any."""
    pieces = [b""] * len(scored.scores)
    alerted = np.flatnonzero(scored.flagged)
    if len(alerted) == 0:
        return pieces
    found = explainer.reasons(scored.features[alerted])
    values = _numbers([v for row in found.values for v in row])
    contributions = _numbers([c for row in found.contributions for c in row])
    at = 0
    for row, columns in zip(alerted.tolist(), found.columns, strict=True):
        pieces[row] = b",".join(
            _REASON % (explainer.json_names[c], values[at + j], contributions[at + j])
            for j, c in enumerate(columns)
        )
        at += len(columns)
    return pieces


_REASON = b'{"feature":%b,"value":%b,"contribution":%b}'
_BOOLEANS = (b"false", b"true")
_ACTIONS = (b"approve", b"review", b"decline")  # policy.actions.ACTIONS, by code
_MODEL = b'"model"'


def _actions(scored: ScoredBatch) -> tuple[list[int], list[bytes]]:
    """Each row's action code and JSON source; without them, review where flagged, by the model."""
    n = len(scored.scores)
    actions = scored.actions.tolist() if scored.actions is not None else scored.flagged.astype(int).tolist()
    return actions, scored.sources if scored.sources is not None else [_MODEL] * n


def _rollout_fields(extra: RolloutFields | None, threshold: float, n: int) -> tuple[list[bytes], list[bytes]]:
    """Per row: the threshold, and the fields that follow `scored_at` (with their leading comma), in the
    order `RolloutFields.rows` gives them."""
    if extra is None:
        return [orjson.dumps(threshold)] * n, [b""] * n
    head = b',"challenger_version":' + orjson.dumps(extra.challenger_version) + b',"blend_weight":'
    scores: list[bytes] = [b""] * n
    if extra.challenger_score is not None:
        usable = np.isfinite(extra.challenger_score).tolist()
        pieces = _numbers(extra.challenger_score.tolist())
        scores = [b',"challenger_score":' + p if ok else b"" for p, ok in zip(pieces, usable, strict=True)]
    fell = [b',"challenger_fallback":true' if f else b"" for f in extra.fallback.tolist()]
    weights = _numbers(extra.blend_weight.tolist())
    tails = [head + w + s + f for w, s, f in zip(weights, scores, fell, strict=True)]
    return _numbers(extra.threshold.tolist()), tails


def _feature_pieces(features: F32) -> list[bytes]:
    """Each row's `,"features":[...]` (FEATURE_NAMES order), from one orjson call over the matrix."""
    rows = orjson.dumps(np.ascontiguousarray(features), option=orjson.OPT_SERIALIZE_NUMPY)[2:-2]
    return [b',"features":[' + row + b"]" for row in rows.split(b"],[")]


def _strings(values: Sequence[str]) -> list[bytes]:
    """The JSON-escaped content (without quotes) of each string, from one orjson call."""
    return orjson.dumps(values)[2:-2].split(b'","')


def _numbers(values: Sequence[float]) -> list[bytes]:
    """Each number as orjson writes it (NaN as null), from one orjson call."""
    return orjson.dumps(values)[1:-1].split(b",")


def _template(version: str, scored_at_ms: int) -> bytes:
    """The decision document with the batch's constants written in and a %b slot per row field."""

    def constant(value: object) -> bytes:
        return orjson.dumps(value).replace(b"%", b"%%")

    scored_at = rfc3339_ms(np.asarray([scored_at_ms], dtype=np.int64))[0]
    return (
        b'{"transaction_id":"%b","customer_id":"%b","terminal_id":"%b","amount":%b,"timestamp":"%b",'
        b'"score":%b,"flagged":%b,"action":"%b","action_source":%b,"threshold":%b,"model_version":'
        + constant(version)
        + b',"reasons":[%b],"scored_at":' + constant(scored_at) + b"%b%b}"
    )  # fmt: skip


def encode_decisions_dicts(scored: ScoredBatch, explainer: Explainer, scored_at_ms: int) -> list[bytes]:
    """The same documents from one dict and one `orjson.dumps` per transaction: the reference the fast
    path is tested against (and the path for fewer features than reasons)."""
    b = scored.batch
    per_row: list[list[dict[str, Any]]] = [[] for _ in range(len(b))]
    alerted = np.flatnonzero(scored.flagged).tolist()
    found = explainer.reasons(scored.features[alerted])
    for row, top, values, contributions in zip(
        alerted, found.columns, found.values, found.contributions, strict=True
    ):
        per_row[row] = [
            {"feature": explainer.names[c], "value": v, "contribution": w}
            for c, v, w in zip(top, values, contributions, strict=True)
        ]
    event_times = rfc3339_ms(b.event_ts_ms)
    scored_at = rfc3339_ms(np.asarray([scored_at_ms], dtype=np.int64))[0]
    threshold, version = scored.threshold, scored.model_version
    codes, sources = _actions(scored)
    columns = zip(
        b.transaction_id, b.customer_id, b.terminal_id, b.amount.tolist(), event_times,
        scored.scores.tolist(), scored.flagged.tolist(), codes, sources, per_row, strict=True,
    )  # fmt: skip
    docs = [
        {
            "transaction_id": tx,
            "customer_id": customer,
            "terminal_id": terminal,
            "amount": amount,
            "timestamp": at,
            "score": score,
            "flagged": flagged,
            "action": _ACTIONS[code].decode(),
            "action_source": orjson.loads(source),
            "threshold": threshold,
            "model_version": version,
            "reasons": reasons,
            "scored_at": scored_at,
        }
        for tx, customer, terminal, amount, at, score, flagged, code, source, reasons in columns
    ]
    if scored.extra is not None:
        for doc, extra in zip(docs, scored.extra.rows(), strict=True):
            doc.update(extra)
    if scored.with_features:
        for doc, row in zip(docs, np.ascontiguousarray(scored.features), strict=True):
            doc["features"] = row
    return [orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY) for doc in docs]
