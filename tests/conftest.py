"""Shared fixtures: a tiny simulated history and a model trained on it (built once per session), and a
directory the embedded PostgreSQL's user may enter."""

from __future__ import annotations

import datetime
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from scorer.training.simulate import SimulationParams, simulate, write_jsonl

TINY = SimulationParams(customers=300, terminals=600, days=80, seed=3, start=datetime.date(2026, 1, 1))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-data")
    write_jsonl(simulate(TINY), out)
    return out


@pytest.fixture(scope="session")
def tiny_model(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from scorer.training.dataset import load_history
    from scorer.training.train import TrainParams, train, write_artefact

    out = tmp_path_factory.mktemp("models") / "tiny" / "1"
    params = TrainParams(
        name="tiny", holdout_days=7, grid=({"n_estimators": 30, "num_leaves": 7, "learning_rate": 0.2},)
    )
    result = train(load_history(tiny_data), tiny_data, params, say=lambda _: None)
    return write_artefact(out, result)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory the server's user may enter when the tests run as root (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="scorer-test-"))
    path.chmod(0o755)  # noqa: S103 - a test directory, removed below
    yield path
    shutil.rmtree(path)
