"""The benchmark's naive scorer computes the shipped features, so the comparison is like for like."""

from __future__ import annotations

import numpy as np
import orjson

from benchmarks.naive import NaiveFeatures, check, parse_ms
from scorer.events.decode import decode_transactions
from scorer.features.engine import FeatureConfig, FeatureEngine
from scorer.training.simulate import SimulationParams, simulate, transaction_values


def test_naive_features_equal_the_engine_on_a_simulated_stream() -> None:
    data = simulate(SimulationParams(customers=150, terminals=300, days=30, seed=5))
    values = transaction_values(data, np.arange(len(data.transaction_id), dtype=np.int64))
    config = FeatureConfig(categories={"currency": ["EUR"], "channel": ["pos", "ecom"]})
    engine = FeatureEngine(config)
    want = np.vstack(
        [
            engine.update_and_compute(decode_transactions(values[i : i + 500]).batch)
            for i in range(0, len(values), 500)
        ]
    )
    naive = NaiveFeatures(dict(config.categories), config.label_delay_days, config.customer_ring_days)  # type: ignore[arg-type]
    docs = [orjson.loads(v) for v in values]
    got = np.asarray([naive.compute(d, parse_ms(d["timestamp"])) for d in docs], dtype=np.float32)
    assert got.shape == want.shape and len(got) > 5000
    assert np.count_nonzero(want[:, 17:20]) > 1000  # terminal counts are exercised
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)


def test_naive_check_names_the_problem() -> None:
    assert check([1]) == "not_an_object"
    assert check({"transaction_id": "t"}) == "missing_field: customer_id"
    doc = {"transaction_id": "t", "customer_id": "c", "terminal_id": "x", "amount": True, "timestamp": "z"}
    assert check(doc) == "bad_amount"
    assert check({**doc, "amount": 3.5}) is None
