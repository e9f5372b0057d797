"""`scorer stream`: the simulated source the compose stack runs, against the real broker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from scorer.config import Settings
from scorer.training.simulate import SimulationParams, simulate
from tests.integration.conftest import consume, env_for


def test_stream_sends_every_transaction_and_label(settings: Settings, tiny_model: Path) -> None:
    flags = ["--customers", "50", "--terminals", "100", "--days", "12", "--seed", "4"]
    data = simulate(SimulationParams(customers=50, terminals=100, days=12, seed=4))
    done = subprocess.run(
        [sys.executable, "-m", "scorer", "stream", "--rate", "20000", *flags],
        env=env_for(settings, tiny_model), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    sent = consume(settings, settings.input_topic, len(data.transaction_id))
    assert sorted(orjson.loads(r["value"])["transaction_id"] for r in sent) == sorted(data.transaction_id)  # type: ignore[arg-type]
    assert all(r["key"] == orjson.loads(r["value"])["customer_id"].encode() for r in sent)  # type: ignore[arg-type]
    labels = consume(settings, settings.labels_topic, len(data.label_index))
    assert len(labels) == len(data.label_index)
    assert '"event": "stream_finished"' in done.stderr or '"event":"stream_finished"' in done.stderr


def test_stream_refuses_a_bad_rate(settings: Settings, tiny_model: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "scorer", "stream", "--rate", "0"],
        env=env_for(settings, tiny_model), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == "scorer: error: --rate must be positive, got 0.0"
