"""Input checks: unseen categories, training ranges, missing optional fields and clock skew, counted per field."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pytest

from scorer.config import DEFAULT_MODEL
from scorer.events.batches import TransactionBatch
from scorer.features.engine import FEATURE_NAMES, stateless_features
from scorer.model.onnx import read_meta
from scorer.monitoring.inputs import InputChecks, issue_labels

NOW = 1_767_225_600_000 + 12 * 3_600_000  # noon: inside the training hours


def batch(amounts: list[float], currency: list[str | None], ts: list[int] | None = None) -> TransactionBatch:
    n = len(amounts)
    return TransactionBatch(
        transaction_id=[f"t{i}" for i in range(n)], customer_id=["C1"] * n, terminal_id=["T1"] * n,
        amount=np.asarray(amounts, dtype=np.float64),
        event_ts_ms=np.asarray(ts if ts is not None else [NOW] * n, dtype=np.int64),
        currency=currency, channel=["pos"] * n, merchant_category=[None] * n,
    )  # fmt: skip


def run(b: TransactionBatch, now: int = NOW) -> Counter[tuple[str, str]]:
    meta = read_meta(DEFAULT_MODEL)
    checks = InputChecks.from_meta(meta.raw, FEATURE_NAMES, 300.0, 3600.0)
    stateless = stateless_features(b, meta.feature_config.codes())
    X = np.zeros((len(b), len(FEATURE_NAMES)), dtype=np.float32)
    X[:, : stateless.shape[1]] = stateless
    rest = slice(stateless.shape[1], None)  # window features: inside the training range
    X[:, rest] = [meta.raw["reference"]["features"][n]["min"] for n in FEATURE_NAMES[rest]]
    seen: Counter[tuple[str, str]] = Counter()

    def count(field: str, reason: str, n: int) -> None:
        seen[field, reason] += n

    checks.check(b, X, now, count, "default/1")
    return seen


def test_a_batch_like_training_has_no_issue_but_missing_optional_fields() -> None:
    seen = run(batch([20.0, 30.0], ["EUR", "EUR"]))
    assert seen == Counter({("merchant_category", "missing_optional"): 2})


def test_unseen_currency_and_amount_beyond_training_are_counted() -> None:
    seen = run(batch([20.0, 5000.0, 30.0], ["USD", "EUR", None]))
    assert seen["currency", "unseen_category"] == 1
    assert seen["currency", "missing_optional"] == 1
    assert seen["amount", "above_training_range"] == 1
    assert seen["log_amount", "above_training_range"] == 1


def test_clock_skew_both_ways() -> None:
    ts = [NOW + 3_600_000, NOW - 2 * 3_600_000, NOW]
    seen = run(batch([20.0] * 3, ["EUR"] * 3, ts))
    assert seen["timestamp", "future_timestamp"] == 1
    assert seen["timestamp", "late_timestamp"] == 1


def test_a_new_value_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    meta = read_meta(DEFAULT_MODEL)
    checks = InputChecks.from_meta(meta.raw, FEATURE_NAMES, 0.0, 0.0)
    b = batch([20.0] * 4, ["USD", "USD", "GBP", "EUR"])
    X = np.zeros((4, len(FEATURE_NAMES)), dtype=np.float32)
    X[:, : len(FEATURE_NAMES)] = 0
    X[:, :8] = stateless_features(b, meta.feature_config.codes())
    with caplog.at_level(logging.WARNING, logger="scorer.inputs"):
        for _ in range(3):
            checks.check(b, X, NOW, lambda *_: None, "default/1")
    logged = [r.__dict__["value"] for r in caplog.records if r.getMessage() == "unseen_category"]
    assert sorted(logged) == ["GBP", "USD"]


def test_every_reported_pair_is_pre_created() -> None:
    labels = set(issue_labels(FEATURE_NAMES))
    seen = run(batch([20.0, 5000.0, -0.0], ["USD", None, "EUR"], [NOW, NOW + 10**9, 0]))
    assert set(seen) <= labels
    assert ("currency_code", "above_training_range") not in labels
