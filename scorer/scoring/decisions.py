"""Decision records (schemas/decision.schema.json) for a scored batch, with the reasons behind each score.

Reasons are the features that stand out most for this transaction, weighted by how much the model uses
them: importance x distance of the value from the training median (in training quantiles). It is a cheap,
vectorised explanation for reviewers, not an exact attribution like SHAP.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from scorer.events.batches import TransactionBatch
from scorer.events.timestamps import rfc3339_ms
from scorer.model.reference import quantile_edges, quantile_position
from scorer.rollout.serving import RolloutFields

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
N_REASONS = 3


@dataclass(frozen=True, slots=True)
class Explainer:
    """Importance weights and training quantiles of one model, prepared once."""

    names: tuple[str, ...]
    importance: F64
    edges: tuple[F64, ...]  # training quantile edges per feature

    @property
    def json_names(self) -> npt.NDArray[np.object_]:
        """The feature names as JSON strings (quotes included), indexable by column."""
        return np.asarray([orjson.dumps(n) for n in self.names], dtype=object)

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], names: Sequence[str]) -> Explainer:
        weights = meta.get("feature_importances", {})
        importance = np.asarray([float(weights.get(n, 0.0)) for n in names], dtype=np.float64)
        return cls(tuple(names), importance, quantile_edges(meta["reference"], names))

    def top(self, features: F32, k: int = N_REASONS) -> npt.NDArray[np.int64]:
        """(n, k) column indices of each row's strongest reasons, strongest first."""
        position = quantile_position(self.edges, features)
        weight = self.importance[None, :] * np.abs(position - 0.5)
        k = min(k, weight.shape[1])
        part = np.argpartition(-weight, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(weight, part, axis=1), axis=1, kind="stable")
        return np.take_along_axis(part, order, axis=1)


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
    shortest float32 form), split into rows, last in each document.
    """
    b = scored.batch
    if len(explainer.names) < N_REASONS:
        return encode_decisions_dicts(scored, explainer, scored_at_ms)
    if len(b) == 0:
        return []
    top = explainer.top(scored.features)
    names = explainer.json_names[top]
    values = _numbers(np.take_along_axis(scored.features, top, axis=1).ravel().tolist())
    template = _template(scored.model_version, scored_at_ms)
    thresholds, tails = _rollout_fields(scored.extra, scored.threshold, len(b))
    features = _feature_pieces(scored.features) if scored.with_features else [b""] * len(b)
    actions, sources = _actions(scored)
    rows = zip(
        _strings(b.transaction_id), _strings(b.customer_id), _strings(b.terminal_id),
        _numbers(b.amount.tolist()), _strings(rfc3339_ms(b.event_ts_ms)), _numbers(scored.scores.tolist()),
        map(_BOOLEANS.__getitem__, scored.flagged.tolist()), map(_ACTIONS.__getitem__, actions), sources,
        thresholds,
        names[:, 0].tolist(), values[0::3], names[:, 1].tolist(), values[1::3], names[:, 2].tolist(), values[2::3],
        tails, features, strict=True,
    )  # fmt: skip
    return [template % row for row in rows]


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
    reasons = ",".join(['{"feature":%b,"value":%b}'] * N_REASONS).encode()
    return (
        b'{"transaction_id":"%b","customer_id":"%b","terminal_id":"%b","amount":%b,"timestamp":"%b",'
        b'"score":%b,"flagged":%b,"action":"%b","action_source":%b,"threshold":%b,"model_version":'
        + constant(version)
        + b',"reasons":[' + reasons + b'],"scored_at":' + constant(scored_at) + b"%b%b}"
    )  # fmt: skip


def encode_decisions_dicts(scored: ScoredBatch, explainer: Explainer, scored_at_ms: int) -> list[bytes]:
    """The same documents from one dict and one `orjson.dumps` per transaction: the reference the fast
    path is tested against (and the path for fewer features than reasons)."""
    b = scored.batch
    top = explainer.top(scored.features)
    names = np.asarray(explainer.names, dtype=object)[top].tolist()
    values = np.take_along_axis(scored.features, top, axis=1).tolist()
    event_times = rfc3339_ms(b.event_ts_ms)
    scored_at = rfc3339_ms(np.asarray([scored_at_ms], dtype=np.int64))[0]
    threshold, version = scored.threshold, scored.model_version
    codes, sources = _actions(scored)
    columns = zip(
        b.transaction_id, b.customer_id, b.terminal_id, b.amount.tolist(), event_times,
        scored.scores.tolist(), scored.flagged.tolist(), codes, sources, _reasons(names, values), strict=True,
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


def _reasons(names: list[list[str]], values: list[list[float]]) -> list[list[dict[str, Any]]]:
    """Each row's reasons as {feature, value} objects; unrolled for the usual three (no loop per row)."""
    if names and len(names[0]) == N_REASONS == 3:
        return [
            [{"feature": n0, "value": v0}, {"feature": n1, "value": v1}, {"feature": n2, "value": v2}]
            for (n0, n1, n2), (v0, v1, v2) in zip(names, values, strict=True)
        ]
    return [
        [{"feature": n, "value": v} for n, v in zip(r, w, strict=True)]
        for r, w in zip(names, values, strict=True)
    ]
