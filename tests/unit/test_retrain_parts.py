"""The pieces of `scorer retrain` that need no database: the window's alarms, the card's retraining section,
the report's section, the kill switch on the control topic and the CLI's schedule."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from scorer.cli.retrain import parse_every
from scorer.config import DEFAULT_MODEL
from scorer.errors import ConfigError, ScorerError
from scorer.features.engine import FEATURE_NAMES
from scorer.kafka.control import parse_deployment
from scorer.model.card import render_card
from scorer.model.reference import build_reference
from scorer.monitoring.report import retrain_section
from scorer.retrain.alarms import MAJOR_PSI, window_alarms
from scorer.rollout.deployment import DEPLOYMENT_KEY, RETRAIN_KEY, Deployment, RetrainSwitch


def _reference(rng: np.random.Generator, n: int = 5000) -> tuple[Any, dict[str, Any]]:
    X = rng.random((n, len(FEATURE_NAMES))).astype(np.float32)
    scores = rng.random(n)
    return X, build_reference(X, scores, FEATURE_NAMES, seed=1)


def test_a_window_like_the_champions_training_raises_no_alarm_and_a_shifted_one_does() -> None:
    rng = np.random.default_rng(3)
    X, reference = _reference(rng)
    same = rng.random((4000, len(FEATURE_NAMES))).astype(np.float32)
    assert window_alarms(same, rng.random(4000), reference) == []
    moved = same.copy()
    amount = FEATURE_NAMES.index("amount")
    moved[:, amount] = moved[:, amount] * 3 + 2  # every amount outside the training range
    alarms = window_alarms(moved, rng.random(4000), reference)
    assert any(a.startswith("drift: amount PSI") for a in alarms)
    assert any("of amount outside the champion's training range" in a for a in alarms)
    scores = np.full(4000, 0.99)  # the champion's scores piled into its top bin
    assert any("score PSI" in a and f"> {MAJOR_PSI}" in a for a in window_alarms(same, scores, reference))


def test_the_card_records_the_window_labels_alarms_gate_and_decision() -> None:
    meta = orjson.loads((DEFAULT_MODEL / "model.json").read_bytes())
    meta["retrain"] = {
        "run_id": 4, "champion": "default/2", "window": ["2026-01-01", "2026-03-01"], "cutoff": "2026-03-01T00:00:00",
        "labels_by_source": {"chargeback": 900, "analyst": 300}, "alarms": ["drift: amount PSI 0.40"],
        "gate": ["passed metrics: fine"], "decision": "promoted at run 4: better",
    }  # fmt: skip
    card = render_card(meta)
    section = card.split("## Retraining", 1)[1]
    assert "run 4" in section and "2026-01-01 .. 2026-03-01" in section and "300 analyst" in section
    assert "**Trained across alarms**" in section and "drift: amount PSI 0.40" in section
    assert "Decision: promoted at run 4" in section
    meta["retrain"] |= {"alarms": [], "decision": None}
    quiet = render_card(meta).split("## Retraining", 1)[1]
    assert "No input-check or drift alarm" in quiet and "Decision: pending" in quiet
    del meta["retrain"]
    assert "## Retraining" not in render_card(meta)


def test_the_reports_retrain_section_escapes_what_it_shows() -> None:
    html = retrain_section(
        [{"run_id": 1, "cutoff": "c", "champion": "default/2", "candidate": "retrained/1", "status": "retired",
          "labels_by_source": {"analyst": 3}, "alarms": [], "reasons": "<script>x</script>"}]
    )  # fmt: skip
    assert "&lt;script&gt;" in html and "<script>" not in html and "3 analyst" in html and "retired" in html


def test_the_kill_switch_lives_on_the_control_topic_and_the_scorers_leave_it_alone() -> None:
    switch = RetrainSwitch(True, "ops", "incident", 5)
    assert RetrainSwitch.from_json(switch.to_json()) == switch
    assert parse_deployment(RETRAIN_KEY, switch.to_json()) is None
    assert parse_deployment(DEPLOYMENT_KEY, Deployment("default/2").to_json()) == Deployment("default/2")
    with pytest.raises(ScorerError, match="unknown key"):
        parse_deployment(b"other", b"{}")
    with pytest.raises(ScorerError, match="unreadable retrain switch"):
        RetrainSwitch.from_json(b"{")


def test_every_takes_days_or_hours_and_refuses_the_rest() -> None:
    assert parse_every("7d") == 7 * 86_400_000 and parse_every("12h") == 12 * 3_600_000
    assert parse_every("0.5d") == 43_200_000
    for bad in ("7", "0d", "-1d", "1w", ""):
        with pytest.raises(ConfigError, match="--every"):
            parse_every(bad)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--every", "fortnight"], "--every 'fortnight'"),
        (["--shadow-days", "0"], "--shadow-days must be positive"),
        (["--margin", "-1"], "--margin must not be negative"),
        ([], "no database"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    db = [] if not args else ["--database-url", "postgresql://u@127.0.0.1:1/x"]
    proc = subprocess.run(
        [sys.executable, "-m", "scorer", "retrain", *db, *args], capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
