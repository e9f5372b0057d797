"""Metrics: the batch histogram exposes exactly what prometheus_client's Histogram would."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from scorer.runtime.metrics import LATENCY_BUCKETS_S, BatchHistogram, Metrics


def samples(registry: CollectorRegistry) -> list[str]:
    text = generate_latest(registry).decode().splitlines()
    return [line for line in text if not line.startswith("#") and "_created" not in line]


@given(
    st.lists(
        st.lists(st.floats(0, 30, allow_nan=False) | st.sampled_from(LATENCY_BUCKETS_S), max_size=20),
        max_size=5,
    )
)
@settings(max_examples=100, deadline=None)
def test_batch_histogram_matches_the_standard_one(batches: list[list[float]]) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    batch = BatchHistogram("lat_seconds", "d", LATENCY_BUCKETS_S, ours)
    standard = Histogram("lat_seconds", "d", buckets=LATENCY_BUCKETS_S, registry=theirs)
    for values in batches:
        batch.observe_many(np.asarray(values, dtype=np.float64))
        for v in values:
            standard.observe(v)
    mine, reference = samples(ours), samples(theirs)
    assert [s.split(" ")[0] for s in mine] == [s.split(" ")[0] for s in reference]
    np.testing.assert_allclose(
        [float(s.split(" ")[1]) for s in mine], [float(s.split(" ")[1]) for s in reference]
    )


def test_every_dead_letter_reason_is_pre_created() -> None:
    metrics = Metrics(CollectorRegistry(), reasons=["invalid_json", "missing_field"])
    text = generate_latest(metrics.registry).decode()
    assert 'scorer_dead_letters_total{reason="invalid_json"} 0.0' in text
    assert 'scorer_dead_letters_total{reason="missing_field"} 0.0' in text
