"""The whole system on the real broker: parity with the offline path, crash recovery, hand-off."""

from __future__ import annotations

from pathlib import Path

import pytest

from scorer.config import Settings
from scorer.model.onnx import OnnxModel
from scorer.training.dataset import load_history
from scorer.training.simulate import simulate
from tests.conftest import TINY
from tests.integration.conftest import Proc
from tests.integration.paced import Collector, assert_parity, offline_scores, stream_by_day

SCORER_ENV = {"SCORER_TERMINAL_WAIT_S": "10", "SCORER_COMMIT_INTERVAL_S": "0.2"}


@pytest.fixture(scope="module")
def expected(tiny_data: Path, tiny_model: Path) -> dict[str, float]:
    return offline_scores(load_history(tiny_data), OnnxModel(tiny_model))


def start(
    settings: Settings,
    model: Path,
    tmp_path: Path,
    procs: list[Proc],
    command: str,
    name: str,
    wait_s: int = 10,
) -> Proc:
    env = {**SCORER_ENV, "SCORER_TERMINAL_WAIT_S": str(wait_s)}
    proc = Proc(command, settings, model, tmp_path / f"{name}.log", **env)
    procs.append(proc)
    return proc


def test_every_transaction_is_scored_once_as_offline(
    settings: Settings, tiny_model: Path, expected: dict[str, float], procs: list[Proc], tmp_path: Path
) -> None:
    start(settings, tiny_model, tmp_path, procs, "aggregate", "aggregator")
    scorer = start(settings, tiny_model, tmp_path, procs, "run", "scorer")
    collector = Collector(settings)
    stream_by_day(settings, simulate(TINY), collector)
    collector.poll(1.0)
    assert all(len(v) == 1 for v in collector.scores.values()), "a transaction was scored twice"
    assert_parity(collector, expected)
    # the aggregator closed every previous day in time (even the empty day before the first one)
    assert metric_value(scorer, "scorer_terminal_features_stale_total") == 0
    assert scorer.terminate() == 0


def test_kill_9_of_scorer_and_aggregator_loses_nothing_and_recovers_exact_state(
    settings: Settings, tiny_model: Path, expected: dict[str, float], procs: list[Proc], tmp_path: Path
) -> None:
    # while a killed aggregator rejoins its groups (session timeout) and recovers, the scorer waits for
    # its day closes instead of scoring with one-day-old terminal features (the documented staleness)
    aggregators = [start(settings, tiny_model, tmp_path, procs, "aggregate", "aggregator")]
    scorers = [start(settings, tiny_model, tmp_path, procs, "run", "scorer", wait_s=90)]

    def crash_and_restart(day: int) -> None:
        if day in (35, 60):
            scorers[-1].kill()  # SIGKILL: no flush, no commit, no snapshot
            scorers.append(start(settings, tiny_model, tmp_path, procs, "run", f"scorer-{day}", wait_s=90))
        if day in (45, 70):  # the aggregator too: it must restore its rows and the labels still pending
            aggregators[-1].kill()
            aggregators.append(start(settings, tiny_model, tmp_path, procs, "aggregate", f"aggregator-{day}"))

    collector = Collector(settings)
    stream_by_day(settings, simulate(TINY), collector, on_day=crash_and_restart)
    # every transaction has a decision, and every decision - including those repeated after a
    # restart - equals the offline score: the restored windows are those of a run without the crash
    assert_parity(collector, expected)
    assert scorers[-1].terminate() == 0


def test_stopping_one_of_two_scorers_hands_its_partitions_and_state_over(
    settings: Settings, tiny_model: Path, expected: dict[str, float], procs: list[Proc], tmp_path: Path
) -> None:
    start(settings, tiny_model, tmp_path, procs, "aggregate", "aggregator")
    first = start(settings, tiny_model, tmp_path, procs, "run", "scorer-a")
    second = start(settings, tiny_model, tmp_path, procs, "run", "scorer-b")
    shares: list[float] = []

    def stop_second(day: int) -> None:
        if day == 40:
            shares.extend(
                [
                    metric_value(first, "scorer_assigned_partitions"),
                    metric_value(second, "scorer_assigned_partitions"),
                ]
            )
            assert second.terminate() == 0

    collector = Collector(settings)
    stream_by_day(settings, simulate(TINY), collector, on_day=stop_second)
    assert sorted(shares) == [2.0, 2.0], f"partitions were not split between the two scorers: {shares}"
    assert metric_value(first, "scorer_assigned_partitions") == 4.0
    assert_parity(collector, expected)
    assert first.terminate() == 0


def metric_value(proc: Proc, name: str) -> float:
    for line in proc.metrics().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return float("nan")
