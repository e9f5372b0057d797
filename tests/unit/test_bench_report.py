"""The benchmark's readings of the scorer's histograms and its soak verdicts."""

from __future__ import annotations

import numpy as np

from benchmarks.harness import histogram_quantile
from benchmarks.report import _soak


def test_quantile_reads_the_bucket_of_what_was_observed_between_scrapes() -> None:
    bounds = [0.001, 0.005, 0.01, float("inf")]
    before = np.array([100.0, 100.0, 100.0, 100.0])  # warm-up: 100 fast batches, not the phase's
    after = np.array([100.0, 150.0, 199.0, 200.0])  # the phase: 50 <= 5 ms, 49 <= 10 ms, 1 slower
    assert histogram_quantile(bounds, before, after, 0.5) == 0.005
    assert histogram_quantile(bounds, before, after, 0.99) == 0.01
    assert histogram_quantile(bounds, before, after, 1.0) == float("inf")
    assert histogram_quantile(bounds, after, after, 0.99) is None  # nothing observed


def test_soak_rows_say_when_the_output_stopped_and_what_was_busy() -> None:
    samples = [{"t": 5.0, "sent": 2500, "scored": 2490}, {"t": 110.0, "sent": 55000, "scored": 47000}]
    stalled = {"profile": "passthrough", "rate": 500.0, "error": "...", "samples": samples,
               "stall": {"t": 110.0, "sent": 55000, "scored": 47000, "broker_cpu": 0.9, "profile_cpu": 0.01,
                         "probe_ms": None}}  # fmt: skip
    steady = {
        "profile": "scorer",
        "rate": 500.0,
        "rss_growth": {"scorer0": 0.004},
        "samples": samples,
        "stall": None,
    }
    rows = _soak({"soak": {"runs": [stalled, steady]}})
    assert (
        "windows never full: the output stopped first | at 110 s, 47,000 of 55,000 out | 0.90 | 0.01 | > 5 s"
        in rows[2]
    )
    assert "scorer0 +0.4% | never | - | - | -" in rows[3]
