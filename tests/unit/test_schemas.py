"""The decoder and the JSON Schema files agree on a corpus of valid and invalid records."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from scorer.events.decode import REQUIRED_FIELDS, decode_labels, decode_transactions

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

LABEL = LABELS[0]
LABELS += [  # the analysts' fields (issue 26): optional, and checked when present
    {**LABEL, "source": "chargeback"},
    {**LABEL, "source": "analyst", "analyst_id": "alice", "case_id": "C0042"},
    {**LABEL, "source": "analyst"},
    {**LABEL, "source": "Analyst"},
    {**LABEL, "source": "bank"},
    {**LABEL, "source": ""},
    {**LABEL, "source": None},
    {**LABEL, "source": 1},
    {**LABEL, "analyst_id": "a" * 128, "case_id": "c" * 128},
    {**LABEL, "analyst_id": "a" * 129},
    {**LABEL, "case_id": "c" * 129},
    {**LABEL, "analyst_id": ""},
    {**LABEL, "case_id": ""},
    {**LABEL, "analyst_id": None},
    {**LABEL, "case_id": 42},
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


def test_label_corpus_covers_both_outcomes_of_the_analysts_fields() -> None:
    outcomes = [validator("label.schema.json").is_valid(d) for d in LABELS[-15:]]
    assert True in outcomes and False in outcomes


def test_the_decoder_keeps_source_analyst_and_case_defaulting_to_a_chargeback() -> None:
    docs = [LABEL, {**LABEL, "source": "analyst", "analyst_id": "alice", "case_id": "C0042"}]
    batch = decode_labels([orjson.dumps(d) for d in docs]).batch
    assert batch.source == ["chargeback", "analyst"]
    assert batch.analyst_id == [None, "alice"]
    assert batch.case_id == [None, "C0042"]
    refused = decode_labels([orjson.dumps({**LABEL, "source": "bank"})]).rejected
    assert [exc.reason for _, exc in refused] == ["invalid_source"]


def raw(text: str) -> bytes:
    """A transaction written by hand (duplicate names, escapes), BASE's fields first."""
    head = orjson.dumps(BASE)[:-1].decode()
    return (head + ", " + text + "}").encode("utf-8", "surrogatepass")


# Records as bytes, for what a dict cannot hold: what every JSON producer might send.
RAW: list[bytes] = [
    b"\xef\xbb\xbf" + orjson.dumps(BASE),  # a UTF-8 byte order mark: not JSON (RFC 8259 section 8.1)
    raw('"customer_id": "C2"'),  # duplicate names: the last one counts, as in most parsers
    raw('"amount": -5'),  # ... so a valid first value does not save an invalid last one
    raw('"customer_id": "\\ud800"'),  # a lone surrogate, escaped: no Unicode string
    raw('"customer_id": "\\ud83d\\ude00"'),  # a surrogate pair, escaped: one emoji, fine
    raw('"customer_id": "\ud800"'),  # a lone surrogate, raw (CESU-8 bytes): not UTF-8
    raw('"terminal_id": "\uff34\uff11"'),  # full-width letters and digits in an id: just text
    raw('"timestamp": "\uff12\uff10\uff12\uff16-01-01T00:00:00Z"'),  # full-width digits
    raw('"timestamp": "2\u0660\u0662\u0666-01-01T00:00:00Z"'),  # Arabic-Indic digits
    raw('"timestamp": "2026-01-01T00:00:00.\u0661\u0662\u0663Z"'),  # ... in the fraction only
    raw('"timestamp": "2026-01-0\u09e7T00:00:00Z"'),  # a Bengali digit one
    raw('"timestamp": "2026-01-01T00:00:00Z\\n"'),  # a newline after the stamp
    raw('"currency": "EUR\\n"'),
    raw('"currency": "\uff25\uff35\uff32"'),  # full-width EUR
    raw('"amount": \uff11\uff10'),  # full-width digits as a number: not JSON
    raw('"amount": 1e400'),  # not finite once parsed
    raw('"channel": "p\\u0000s"'),  # an escaped NUL inside a string is text
]


def reference_parse(value: bytes) -> Any:
    """The document as RFC 8259 defines it (strict UTF-8, no BOM, last duplicate wins), or None when
    `value` is no JSON text with Unicode strings."""
    try:
        doc = json.loads(value.decode("utf-8"))  # bytes with a BOM refused by decode + loads below
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if value.startswith(b"\xef\xbb\xbf") or not _finite(doc) or not _unicode(doc):
        return None
    return doc


def _unicode(node: Any) -> bool:
    if isinstance(node, str):
        try:
            node.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(node, dict):
        return all(_unicode(k) and _unicode(v) for k, v in node.items())
    if isinstance(node, list):
        return all(map(_unicode, node))
    return True


def _finite(node: Any) -> bool:
    if isinstance(node, float):
        return math.isfinite(node)
    if isinstance(node, dict):
        return all(map(_finite, node.values()))
    if isinstance(node, list):
        return all(map(_finite, node))
    return True


@pytest.mark.parametrize("value", RAW, ids=range(len(RAW)))
def test_decoder_and_schema_agree_on_records_only_bytes_can_show(value: bytes) -> None:
    doc = reference_parse(value)
    schema_ok = doc is not None and validator("transaction.schema.json").is_valid(doc)
    decoded = decode_transactions([value])
    assert (len(decoded.kept) == 1) == schema_ok, (value, decoded.rejected)
    labelled = decode_labels([value])
    assert not labelled.kept.size or doc is not None


def test_the_raw_corpus_covers_both_outcomes_and_the_last_duplicate_counts() -> None:
    outcomes = [len(decode_transactions([v]).kept) == 1 for v in RAW]
    assert True in outcomes and False in outcomes
    assert decode_transactions([raw('"customer_id": "C2"')]).batch.customer_id == ["C2"]


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

    from scorer.config import DEFAULT_MODEL
    from scorer.features.engine import FEATURE_NAMES
    from scorer.scoring.decisions import Explainer, ScoredBatch, encode_decisions

    batch = decode_transactions([orjson.dumps(BASE), orjson.dumps(BASE)]).batch
    X = np.ones((2, len(FEATURE_NAMES)), dtype=np.float32)
    X[:, 0] = 3000.0  # amount
    explainer = Explainer.for_model(DEFAULT_MODEL, FEATURE_NAMES)
    scored = ScoredBatch(batch, X, np.array([0.7, 0.01]), np.array([True, False]), 0.5, "m/1")
    alerted, approved = (orjson.loads(v) for v in encode_decisions(scored, explainer, 1_767_225_600_000))
    validator("decision.schema.json").validate(alerted)
    validator("decision.schema.json").validate(approved)
    assert alerted["flagged"] is True and len(alerted["reasons"]) == 3
    assert all(isinstance(r["contribution"], float) for r in alerted["reasons"])
    assert approved["reasons"] == []


def test_the_required_fields_are_the_schemas() -> None:
    assert set(REQUIRED_FIELDS) == set(load("transaction.schema.json")["required"])
