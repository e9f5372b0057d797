"""Drift: PSI arithmetic, event-time windows and the per-hour counts, against the shipped model's reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scorer.config import DEFAULT_MODEL
from scorer.events.timestamps import HOUR_MS
from scorer.features.engine import FEATURE_NAMES
from scorer.model.onnx import read_meta
from scorer.monitoring.drift import Bins, Drift, Ring, psi

START = 1_767_225_600_000  # 2026-01-01T00:00Z


@pytest.fixture(scope="module")
def bins() -> Bins:
    return Bins.from_reference(read_meta(DEFAULT_MODEL).raw["reference"], FEATURE_NAMES)


def sample_like_training(bins: Bins, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Rows drawn bin by bin with the training shares: each value placed inside its training bin."""
    columns = []
    for c, edges in enumerate(bins.edges):
        share = bins.expected[bins.offsets[c] : bins.offsets[c] + len(edges) + 1]
        which = rng.choice(len(share), size=n, p=share / share.sum())
        inner = (edges[:-1] + edges[1:]) / 2  # a value well inside each bin, safe from float32 rounding
        at = np.r_[edges[:1] - 1.0, inner, edges[-1:] + 1.0] if len(edges) else np.zeros(1)
        columns.append(at[which])
    values = np.column_stack(columns)
    return values[:, :-1].astype(np.float32), values[:, -1]


def test_psi_is_zero_for_the_reference_and_grows_with_a_shift() -> None:
    expected = np.full(10, 0.1)
    assert psi(expected * 1000, expected) == pytest.approx(0.0)
    shifted = np.r_[np.zeros(5), np.full(5, 200.0)]
    assert psi(shifted, expected) > 1.0
    assert math.isnan(psi(np.zeros(10), expected))


def test_psi_matches_the_textbook_formula() -> None:
    observed, expected = np.array([30.0, 50.0, 20.0]), np.array([0.2, 0.5, 0.3])
    live = observed / observed.sum()
    assert psi(observed, expected) == pytest.approx(
        float(((live - expected) * np.log(live / expected)).sum())
    )


def test_training_like_rows_are_stable_and_shifted_amounts_are_not(bins: Bins) -> None:
    rng = np.random.default_rng(1)
    X, scores = sample_like_training(bins, 20_000, rng)
    ts = START + np.sort(rng.integers(0, HOUR_MS // 2, len(scores)))
    stable = Drift(bins)
    stable.observe(X, scores, ts)
    events, values = stable.window_psi()["1h"]
    assert events == len(scores)
    assert float(np.nanmax(values)) < 0.05
    drifted = Drift(bins)
    X2 = X.copy()
    X2[:, FEATURE_NAMES.index("amount")] *= 3
    drifted.observe(X2, scores, ts)
    _, values2 = drifted.window_psi()["24h"]
    _, values = stable.window_psi()["24h"]
    assert values2[FEATURE_NAMES.index("amount")] > 0.25
    assert values2[FEATURE_NAMES.index("hour_of_day")] == pytest.approx(
        values[FEATURE_NAMES.index("hour_of_day")]
    )


def test_calendar_features_have_no_psi_over_windows_shorter_than_their_cycle(bins: Bins) -> None:
    rng = np.random.default_rng(4)
    X, scores = sample_like_training(bins, 500, rng)
    drift = Drift(bins)
    drift.observe(X, scores, np.full(500, START, dtype=np.int64))
    psi_by_window = drift.window_psi()
    hour, weekend = FEATURE_NAMES.index("hour_of_day"), FEATURE_NAMES.index("is_weekend")
    assert np.isnan(psi_by_window["1h"][1][hour]) and not np.isnan(psi_by_window["24h"][1][hour])
    assert np.isnan(psi_by_window["24h"][1][weekend])
    assert not np.isnan(psi_by_window["1h"][1][FEATURE_NAMES.index("amount")])


def test_windows_forget_events_older_than_their_span(bins: Bins) -> None:
    rng = np.random.default_rng(2)
    X, scores = sample_like_training(bins, 1000, rng)
    drift = Drift(bins)
    drift.observe(X, scores, np.full(1000, START, dtype=np.int64))
    drift.observe(X[:10], scores[:10], np.full(10, START + 2 * HOUR_MS, dtype=np.int64))
    windows = drift.window_psi()
    assert windows["1h"][0] == 10  # the first thousand are two hours old
    assert windows["24h"][0] == 1010
    drift.observe(X[:5], scores[:5], np.full(5, START, dtype=np.int64))  # late for 1 h, not for 24 h
    assert drift.window_psi()["24h"][0] == 1015
    assert drift.too_late == 5


def test_ring_reuses_a_slot_only_for_a_newer_bucket() -> None:
    ring = Ring(60, 3, 2)
    assert ring.add(10, np.array([1, 0]))
    assert ring.add(12, np.array([0, 1]))
    assert ring.add(13, np.array([5, 5]))  # reuses bucket 10's slot
    assert not ring.add(10, np.array([9, 9]))
    assert ring.total().tolist() == [5, 6]


def test_hours_are_handed_out_once_and_sum_to_the_events(bins: Bins) -> None:
    rng = np.random.default_rng(3)
    X, scores = sample_like_training(bins, 300, rng)
    ts = START + np.repeat([0, HOUR_MS, 2 * HOUR_MS + 5], 100)
    drift = Drift(bins)
    drift.observe(X, scores, ts)
    hours = drift.take_hours()
    assert sorted(hours) == [START // HOUR_MS + h for h in range(3)]
    for counts in hours.values():  # each column's bins hold every event of the hour once
        per_column = np.add.reduceat(counts, bins.offsets)
        assert per_column.tolist() == [100] * len(bins.columns)
    assert drift.take_hours() == {}
