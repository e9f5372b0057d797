"""`scorer report` rendering: drift per day from hourly counts, quality per day and version, flag volume."""

from __future__ import annotations

import re

import numpy as np

from scorer.config import DEFAULT_MODEL, Settings
from scorer.events.batches import LabelBatch
from scorer.events.timestamps import HOUR_MS, MS_PER_DAY, rfc3339_ms
from scorer.features.engine import FEATURE_NAMES
from scorer.model.onnx import read_meta
from scorer.monitoring.drift import Bins, Drift
from scorer.monitoring.livequality import DecisionRows, LiveQuality
from scorer.monitoring.monitor import Models
from scorer.monitoring.report import DriftCounts, render
from scorer.monitoring.svgplot import line_chart

DAY0 = 20_454  # 2026-01-01


def drift_records(shift_from_day: int) -> DriftCounts:
    """Hourly records as scorers publish them: values like training, amounts x5 from `shift_from_day`."""
    meta = read_meta(DEFAULT_MODEL)
    bins = Bins.from_reference(meta.raw["reference"], FEATURE_NAMES)
    rng = np.random.default_rng(0)
    out = DriftCounts()
    for day in range(DAY0, DAY0 + 4):
        drift = Drift(bins)
        X = np.column_stack([rng.choice(e + 1e-3, 400) if len(e) else np.zeros(400) for e in bins.edges[:-1]])
        if day >= shift_from_day:
            X[:, 0] *= 5
        ts = day * MS_PER_DAY + rng.integers(0, MS_PER_DAY, 400)
        drift.observe(X.astype(np.float32), rng.choice(bins.edges[-1] + 1e-3, 400), ts)
        for hour, counts in drift.take_hours().items():
            out.add({"model_version": meta.label, "columns": list(bins.columns),
                     "bins": np.diff([*bins.offsets.tolist(), bins.size]).tolist(),
                     "hour": rfc3339_ms(np.asarray([hour * HOUR_MS]))[0], "counts": counts.tolist()})  # fmt: skip
    return out


def store_with_decisions() -> LiveQuality:
    store = LiveQuality(10_000, 30)
    rng = np.random.default_rng(1)
    n = 800
    ts = DAY0 * MS_PER_DAY + np.sort(rng.integers(0, 4 * MS_PER_DAY, n))
    scores = rng.random(n)
    ids = [f"t{i}" for i in range(n)]
    store.add(DecisionRows("default/1", ids, [f"C{i % 50}" for i in range(n)], ts, scores, scores > 0.9))
    fraud = np.flatnonzero(scores > 0.8)
    store.add_labels(
        LabelBatch(
            [ids[i] for i in fraud], [f"C{i % 50}" for i in fraud], ["T"] * len(fraud),
            np.ones(len(fraud), dtype=bool), ts[fraud] + MS_PER_DAY, ts[fraud],
        )
    )  # fmt: skip
    return store


def test_report_has_drift_quality_and_volume_for_every_day() -> None:
    html = render(store_with_decisions(), drift_records(DAY0 + 2), Models(Settings()), DAY0, DAY0 + 4)
    assert html.startswith("<!doctype html>") and "<script" not in html
    assert html.count("<svg") == 1 + 1 + 4 + 1  # score PSI, features, four quality figures, flags
    assert "Most drifted features, default/2" in html  # the drift records come from DEFAULT_MODEL
    table = re.search(r"PSI of every feature.*?</table>", html, re.S)
    assert table is not None
    first_row = re.search(r"<tr><td>([a-z_0-9]+)</td><td>([0-9.]+)</td>", table.group(0))
    assert first_row is not None and first_row.group(1) in ("amount", "log_amount")
    assert float(first_row.group(2)) > 0.25
    assert ">is_weekend<" not in html  # a day cannot match a weekly pattern
    assert "Labels may still be incomplete for" in html  # labels come one day late, the delay is 7
    assert "2026-01-05" in html  # the range's last day is drawn though it has no data


def test_empty_range_says_so() -> None:
    html = render(LiveQuality(10, 1), DriftCounts(), Models(Settings()), DAY0, DAY0)
    assert "No drift counts in this range" in html and "No decisions in this range" in html


def test_a_day_without_data_breaks_the_line() -> None:
    svg = line_chart("t", ["a", "b", "c", "d"], {"x": [0.1, None, 0.2, 0.3]})
    assert svg.count("<polyline") == 2 and svg.count("<circle") == 1
