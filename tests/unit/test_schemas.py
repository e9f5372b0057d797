"""The decoder and the JSON Schema files agree on a corpus of valid and invalid records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from scorer.events.decode import decode_labels, decode_transactions

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
BASE = {
    "transaction_id": "t1",
    "timestamp": "2026-01-01T00:00:00Z",
    "customer_id": "C1",
    "terminal_id": "T1",
    "amount": 10.0,
}


def load(name: str) -> dict[str, Any]:
    return orjson.loads((SCHEMAS / name).read_bytes())  # type: ignore[no-any-return]


def validator(name: str) -> Draft202012Validator:
    resources = [
        (s["$id"], Resource.from_contents(s))
        for s in (load(n) for n in sorted(p.name for p in SCHEMAS.glob("*.json")))
    ]
    return Draft202012Validator(
        load(name),
        registry=Registry().with_resources(resources),
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


def with_(**changes: Any) -> dict[str, Any]:
    doc = {**BASE, **changes}
    return {k: v for k, v in doc.items() if v is not DROP}


DROP = object()
TRANSACTIONS: list[Any] = [
    BASE,
    with_(amount=0),
    with_(amount=1e9),
    with_(amount=1e9 + 1),
    with_(amount=-0.01),
    with_(amount=True),
    with_(amount="10"),
    with_(amount=None),
    with_(amount=7),
    with_(amount=DROP),
    with_(transaction_id=""),
    with_(transaction_id="x" * 128),
    with_(transaction_id="x" * 129),
    with_(transaction_id=5),
    with_(transaction_id=DROP),
    with_(customer_id=DROP),
    with_(terminal_id=None),
    with_(terminal_id=""),
    with_(timestamp="2024-02-29T23:59:59.999Z"),
    with_(timestamp="2026-02-29T00:00:00Z"),
    with_(timestamp="2026-02-30T00:00:00Z"),
    with_(timestamp="2026-01-01T00:00:00+00:00"),
    with_(timestamp="2026-01-01T00:00:00-00:00"),
    with_(timestamp="2026-01-01t00:00:00z"),
    with_(timestamp="2026-01-01T00:00:00+01:00"),
    with_(timestamp="2026-01-01T00:00:00"),
    with_(timestamp="2026-01-01 00:00:00Z"),
    with_(timestamp="2026-13-01T00:00:00Z"),
    with_(timestamp="2026-01-01T24:00:00Z"),
    with_(timestamp="2026-01-01T23:60:00Z"),
    with_(timestamp="1969-12-31T23:59:59Z"),
    with_(timestamp="2026-01-01T00:00:00.123456789Z"),
    with_(timestamp=1767225600000),
    with_(timestamp=DROP),
    with_(currency="EUR"),
    with_(currency="eur"),
    with_(currency="EURO"),
    with_(currency=None),
    with_(channel="pos"),
    with_(channel=""),
    with_(channel="x" * 65),
    with_(merchant_category="5411"),
    with_(merchant_category=5411),
    with_(extra={"nested": [1, 2, {"junk": None}]}),
    with_(note="extra fields are fine"),
    [BASE],
    "a string",
    42,
    None,
]
LABELS: list[Any] = [
    {
        "transaction_id": "t",
        "customer_id": "c",
        "terminal_id": "x",
        "is_fraud": True,
        "reported_at": "2026-01-05T00:00:00Z",
    },
    {
        "transaction_id": "t",
        "customer_id": "c",
        "terminal_id": "x",
        "is_fraud": False,
        "reported_at": "2026-01-05T00:00:00Z",
        "timestamp": "2026-01-01T10:00:00Z",
    },
    {
        "transaction_id": "t",
        "customer_id": "c",
        "terminal_id": "x",
        "is_fraud": 1,
        "reported_at": "2026-01-05T00:00:00Z",
    },
    {"transaction_id": "t", "customer_id": "c", "terminal_id": "x", "is_fraud": True},
    {
        "transaction_id": "t",
        "customer_id": "c",
        "terminal_id": "x",
        "is_fraud": True,
        "reported_at": "2026-01-05",
    },
    {
        "transaction_id": "t",
        "customer_id": "c",
        "terminal_id": "x",
        "is_fraud": True,
        "reported_at": "2026-01-05T00:00:00Z",
        "timestamp": "yesterday",
    },
    {
        "transaction_id": "",
        "customer_id": "c",
        "terminal_id": "x",
        "is_fraud": True,
        "reported_at": "2026-01-05T00:00:00Z",
    },
]


@pytest.mark.parametrize("doc", TRANSACTIONS, ids=range(len(TRANSACTIONS)))
def test_decoder_accepts_exactly_what_the_transaction_schema_accepts(doc: Any) -> None:
    schema_ok = validator("transaction.schema.json").is_valid(doc)
    decoded = decode_transactions([orjson.dumps(doc)])
    assert (len(decoded.kept) == 1) == schema_ok, decoded.rejected


@pytest.mark.parametrize("doc", LABELS, ids=range(len(LABELS)))
def test_decoder_accepts_exactly_what_the_label_schema_accepts(doc: Any) -> None:
    schema_ok = validator("label.schema.json").is_valid(doc)
    assert (len(decode_labels([orjson.dumps(doc)]).kept) == 1) == schema_ok


def test_corpus_covers_both_outcomes() -> None:
    outcomes = {validator("transaction.schema.json").is_valid(d) for d in TRANSACTIONS}
    assert outcomes == {True, False}


@pytest.mark.parametrize("name", ["transaction.schema.json", "decision.schema.json", "label.schema.json"])
def test_schemas_are_valid_and_their_examples_pass(name: str) -> None:
    schema = load(name)
    Draft202012Validator.check_schema(schema)
    assert schema["examples"]
    for example in schema["examples"]:
        validator(name).validate(example)


def test_a_decision_made_by_the_scorer_matches_its_schema() -> None:
    import numpy as np

    from scorer.features.engine import FEATURE_NAMES
    from scorer.scoring.decisions import Explainer, ScoredBatch, encode_decisions

    batch = decode_transactions([orjson.dumps(BASE)]).batch
    X = np.ones((1, len(FEATURE_NAMES)), dtype=np.float32)
    reference = {"features": {n: {"edges": [0.5, 2.0]} for n in FEATURE_NAMES}}
    explainer = Explainer.from_meta(
        {"reference": reference, "feature_importances": dict(zip(FEATURE_NAMES, range(26), strict=True))},
        FEATURE_NAMES,
    )
    scored = ScoredBatch(batch, X, np.array([0.7]), np.array([True]), 0.5, "m/1")
    (value,) = encode_decisions(scored, explainer, 1_767_225_600_000)
    doc = orjson.loads(value)
    validator("decision.schema.json").validate(doc)
    assert doc["flagged"] is True and len(doc["reasons"]) == 3
