"""The whole system on the real broker: parity with the offline path, crash recovery, hand-off."""

from __future__ import annotations

from pathlib import Path

import pytest

from scorer.config import Settings
from scorer.dataset import load_history
from scorer.model import OnnxModel
from scorer.simulate import simulate
from tests.conftest import TINY
from tests.integration.conftest import Proc
from tests.integration.paced import Collector, assert_parity, offline_scores, stream_by_day

SCORER_ENV = {"SCORER_TERMINAL_WAIT_S": "10", "SCORER_COMMIT_INTERVAL_S": "0.2"}


@pytest.fixture(scope="module")
def expected(tiny_data: Path, tiny_model: Path) -> dict[str, float]:
    return offline_scores(load_history(tiny_data), OnnxModel(tiny_model))


def start(settings: Settings, model: Path, tmp_path: Path, procs: list[Proc], command: str, name: str) -> Proc:
    proc = Proc(command, settings, model, tmp_path / f"{name}.log", **SCORER_ENV)
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
    assert scorer.terminate() == 0
