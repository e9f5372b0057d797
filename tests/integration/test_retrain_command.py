"""`scorer retrain` as a command on the real broker and PostgreSQL: the kill switch on the control topic stops a
cycle, `status` shows it, an empty store is nothing to do, and a database it cannot reach is one line, exit 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
from conftest import env_for

from scorer.config import Settings
from scorer.kafka.control import read_control
from scorer.rollout.deployment import Deployment


def retrain(
    settings: Settings, model: Path, *args: str, database_url: str = ""
) -> subprocess.CompletedProcess[str]:
    env = env_for(settings, model, SCORER_DATABASE_URL=database_url, SCORER_METRICS_PORT="0")
    return subprocess.run(
        [sys.executable, "-m", "scorer", "retrain", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_pause_stops_every_cycle_resume_lets_them_run_and_status_shows_both(
    settings: Settings, database_url: str, tiny_model: Path, tmp_path: Path
) -> None:
    paused = retrain(settings, tiny_model, "pause", "--reason", "incident 42")
    assert paused.returncode == 0 and "retraining paused" in paused.stdout, paused.stderr
    deployment, switch = read_control(settings)
    assert deployment is None and switch is not None and switch.paused and switch.reason == "incident 42"
    once = retrain(settings, tiny_model, "--once", "--workdir", str(tmp_path), database_url=database_url)
    assert once.returncode == 0, once.stderr
    assert '"event":"retrain_cycle"' in once.stderr and '"outcome":"paused"' in once.stderr
    status = retrain(settings, tiny_model, "status", database_url=database_url)
    assert status.returncode == 0, status.stderr
    first, *runs = status.stdout.splitlines()
    assert orjson.loads(first)["paused"] is True and runs == []  # nothing ran
    assert retrain(settings, tiny_model, "resume").returncode == 0
    once = retrain(settings, tiny_model, "--once", "--workdir", str(tmp_path), database_url=database_url)
    assert (
        once.returncode == 0 and '"outcome":"no_data"' in once.stderr
    )  # running: an empty store has nothing
    assert (
        orjson.loads(
            retrain(settings, tiny_model, "status", database_url=database_url).stdout.splitlines()[0]
        )["paused"]
        is False
    )


def test_the_scorers_deployment_survives_the_switch_beside_it(settings: Settings, tiny_model: Path) -> None:
    from scorer.kafka.control import publish

    publish(settings, Deployment("tiny/1"))
    assert retrain(settings, tiny_model, "pause").returncode == 0
    deployment, switch = read_control(settings)
    assert deployment == Deployment("tiny/1") and switch is not None and switch.paused


def test_a_database_it_cannot_reach_is_one_line_and_exit_1(settings: Settings, tiny_model: Path) -> None:
    once = retrain(settings, tiny_model, "--once", database_url="postgresql://postgres:x@127.0.0.1:1/none")
    assert once.returncode == 1 and "Traceback" not in once.stderr
    assert len(once.stderr.strip().splitlines()) == 1 and "127.0.0.1:1" in once.stderr
