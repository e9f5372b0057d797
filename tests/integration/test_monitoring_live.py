"""Drift, input checks, live quality, alert rules and the report on the real broker.

The same simulated history streams twice through aggregate + run + monitor: once as it is (stable) and
once with drift in its last two days (amounts x3, a new terminal population, a new currency, a new fraud
pattern). The scorer's own gauges are scraped and replayed into `promtool test rules` with the shipped
alert rules: the drifted stream must fire the drift alerts, the stable one must not.
"""

from __future__ import annotations

import dataclasses
import datetime
import subprocess
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from scorer.cli.main import main
from scorer.config import Settings
from scorer.events.timestamps import MS_PER_DAY
from scorer.model.onnx import OnnxModel
from scorer.monitoring.monitor import REFRESH_S
from scorer.training.dataset import load_history
from scorer.training.evaluate import evaluate
from scorer.training.simulate import (
    Drift,
    SimulatedData,
    SimulationParams,
    label_values,
    simulate,
    write_jsonl,
)
from tests.integration.conftest import Proc, env_for, produce
from tests.integration.paced import Collector, stream_by_day

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"
STREAM = SimulationParams(customers=300, terminals=600, days=40, seed=8, start=datetime.date(2026, 1, 1))
DRIFT = Drift(from_day=38, amount_factor=3.0, new_terminals=200, currency="USD", card_testing=5)
PSI_ALERT = 0.25
VERSION = "tiny/1"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def validation_recall(model: Path) -> float:
    return float(orjson.loads((model / "model.json").read_bytes())["metrics"]["validation"]["recall"])


def offline_last_day(data: SimulatedData, model: Path, tmp_path: Path) -> dict[str, float | int]:
    """`scorer evaluate --test-days 1` on the streamed history, every label known."""
    write_jsonl(data, tmp_path / "history")
    return evaluate(load_history(tmp_path / "history"), OnnxModel(model), test_days=1).report


def stream(settings: Settings, data: SimulatedData) -> None:
    """Day by day, each day once the previous one is decided (so the scores are the offline replay's),
    then the labels reported after the history ends."""
    collector = Collector(settings)
    try:
        stream_by_day(settings, data, collector)
    finally:
        collector.close()
    days = data.event_ts_ms // MS_PER_DAY
    late = np.flatnonzero(data.label_reported_ts_ms // MS_PER_DAY > days.max())
    terminals = [data.terminal_id[data.label_index[k]].encode() for k in late.tolist()]
    produce(settings, settings.labels_topic, list(zip(terminals, label_values(data, late), strict=True)))


def scrape(proc: Proc) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(proc.metrics()):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, tuple(sorted(labels.items()))]


def wait_for(
    proc: Proc, name: str, labels: dict[str, str], target: float, timeout_s: float = 60.0
) -> Samples:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            samples = scrape(proc)
        except OSError:
            samples = {}
        if samples.get((name, tuple(sorted(labels.items()))), -1) >= target:
            return samples
        time.sleep(0.5)
    raise AssertionError(f"{name}{labels} never reached {target}")


def series(samples: Samples, names: tuple[str, ...], job: str, instance: str) -> list[str]:
    """promtool input series: each scraped value of `names`, held for two hours."""
    lines = []
    for (name, labels), v in samples.items():
        if name in names and np.isfinite(v):
            label_text = ",".join(
                [f'{k}="{val}"' for k, val in labels] + [f'job="{job}"', f'instance="{instance}"']
            )
            lines.append(f"      - series: '{name}{{{label_text}}}'\n        values: '{v}+0x120'")
    return lines


def promtool_case(lines: list[str], tmp_path: Path, expected: dict[str, list[dict[str, str]]]) -> str:
    """Run the shipped rules (texts stripped) on `lines`; promtool's complaint, or "" when all matched."""
    checks = []
    for alert, alerts in expected.items():
        listed = "".join(
            "\n          - exp_labels: {" + ", ".join(f'{k}: "{v}"' for k, v in a.items()) + "}"
            for a in alerts
        )
        checks.append(
            f"      - eval_time: 90m\n        alertname: {alert}\n        exp_alerts:{listed or ' []'}"
        )
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:  # the expressions are under test here; alerts.test.yml checks the texts
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules))
    case = tmp_path / "live.test.yml"
    case.write_text(
        "rule_files: [alerts.yml]\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n"
        + "\n".join(lines) + "\n    alert_rule_test:\n" + "\n".join(checks) + "\n"
    )  # fmt: skip
    done = subprocess.run(
        ["promtool", "test", "rules", str(case)], capture_output=True, text=True, check=False
    )
    return done.stdout + done.stderr if done.returncode else ""


@pytest.mark.parametrize("drifted", [False, True], ids=["stable", "drifted"])
def test_drift_gauges_alerts_quality_and_report(
    drifted: bool, settings: Settings, tiny_model: Path, procs: list[Proc], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    data = simulate(dataclasses.replace(STREAM, drift=DRIFT if drifted else None))
    n = len(data.transaction_id)
    fast = {"SCORER_MONITORING_INTERVAL_S": "0.5", "SCORER_TERMINAL_WAIT_S": "10"}
    for command in ("aggregate", "run", "monitor"):
        procs.append(Proc(command, settings, tiny_model, tmp_path / f"{command}.log", **fast))
    scorer, monitor = procs[1], procs[2]
    stream(settings, data)
    samples = wait_for(scorer, "scorer_events_scored_total", {}, n)
    time.sleep(2.5)  # one more gauge refresh after the last batch
    samples = scrape(scorer)

    in_window = value(samples, "scorer_drift_window_events", window="24h")
    assert 300 < in_window < 2000  # the newest day of event time
    psi = {
        dict(labels)["feature"]: v
        for (name, labels), v in samples.items()
        if name == "scorer_feature_psi" and dict(labels)["window"] == "24h"
    }
    worst = max(psi, key=lambda f: psi[f])
    unseen = value(samples, "scorer_input_issues_total", field="currency", reason="unseen_category")
    expected: dict[str, list[dict[str, str]]]
    if drifted:
        assert psi["amount"] > PSI_ALERT and psi["log_amount"] > PSI_ALERT
        assert unseen > 0.2 * in_window  # USD on 30% of the drifted days
        assert value(samples, "scorer_input_issues_total", field="amount", reason="above_training_range") > 0
        expected = {"ScorerFeatureDrift": [{"severity": "warning", "job": "scorer", "instance": "a:1",
                                            "feature": worst, "window": "24h"}]}  # fmt: skip
    else:
        assert max(psi.values()) < PSI_ALERT, psi
        assert unseen == 0
        expected = {"ScorerFeatureDrift": [], "ScorerScoreDrift": []}

    wait_for(monitor, "scorer_monitor_records_total", {"topic": settings.decisions_topic}, n)
    wait_for(monitor, "scorer_monitor_records_total", {"topic": settings.labels_topic}, len(data.label_index))
    time.sleep(REFRESH_S + 1)  # the figures are recomputed every REFRESH_S
    quality = scrape(monitor)
    per_day = {
        dict(labels)["day"]: v
        for (name, labels), v in quality.items()
        if name == "scorer_live_decisions" and dict(labels)["model_version"] == VERSION
    }
    event_day = (data.event_ts_ms // MS_PER_DAY).astype(np.int64)
    kept = event_day >= event_day.max() - (7 + 2 * 7)  # quality_window_days + twice the label delay
    assert sum(per_day.values()) == int(kept.sum())
    assert len(per_day) == len(np.unique(event_day[kept]))
    card = ("scorer_model_validation_quality", (("metric", "recall"), ("model_version", VERSION)))
    assert quality[card] == pytest.approx(validation_recall(tiny_model))
    mature = {m: quality.get(("scorer_live_quality_mature", (("metric", m), ("model_version", VERSION))))
              for m in ("precision", "recall", "average_precision", "card_precision_at_100")}  # fmt: skip
    assert all(v is not None and 0 <= v <= 1 for v in mature.values()), mature
    assert value(samples, "scorer_terminal_features_stale_total") == 0
    last_day = str(np.datetime64(int(event_day.max()), "D"))
    offline = offline_last_day(data, tiny_model, tmp_path)
    for m in ("precision", "recall", "average_precision", "card_precision_at_100"):
        live = quality[
            ("scorer_live_quality", (("day", last_day), ("metric", m), ("model_version", VERSION)))
        ]
        assert live == pytest.approx(offline[m], abs=1e-9), m
    drops = {
        dict(labels)["metric"]: v
        for (name, labels), v in quality.items()
        if name == "scorer_live_quality_drop"
    }
    if drifted:  # the new fraud pattern: precision and AP far below the card (recall holds: amounts x3)
        assert drops["average_precision"] == drops["precision"] == 1, (mature, drops)
    else:
        assert set(drops.values()) == {0}, (mature, drops)
    expected["ScorerQualityDrop"] = [
        {"severity": "critical", "job": "scorer-monitor", "instance": "m:1", "metric": m, "model_version": VERSION}
        for m, v in sorted(drops.items()) if v == 1
    ]  # fmt: skip
    lines = series(
        samples, ("scorer_feature_psi", "scorer_score_psi", "scorer_drift_window_events"), "scorer", "a:1"
    )
    lines += series(quality, ("scorer_live_quality_drop",), "scorer-monitor", "m:1")
    failure = promtool_case(lines, tmp_path, expected)
    assert failure == "", failure

    if drifted:
        env = env_for(settings, tiny_model)
        for key, val in env.items():
            if key.startswith("SCORER_"):
                monkeypatch.setenv(key, val)
        out = tmp_path / "report.html"
        assert main(["report", "--from", "2026-02-01", "--to", "2026-02-09", "--out", str(out)]) == 0
        html = out.read_text()
        assert html.count("<svg") >= 7  # score drift, features, 4 quality figures, flag volume
        assert "Most drifted features, tiny/1" in html and ">amount<" in html
        assert "Card Precision@100" in html and "Flagged per day, tiny/1" in html
