"""The quix benchmark profile does the scorer's work: same decisions, same scores (the equal-work check).

Needs the optional extra `peer` (Quix Streams); skipped without it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.__main__ import PROFILES
from benchmarks.drain import equal_work, preload
from benchmarks.harness import Launcher
from scorer.config import DEFAULT_MODEL
from scorer.demo.broker import EmbeddedBroker
from scorer.training.simulate import SimulationParams, simulate

pytestmark = pytest.mark.integration
EVENTS = 6_000  # about ten days of the simulation below: every customer window fills


@pytest.mark.filterwarnings(
    "ignore:The httpx module is deprecated"
)  # authlib, via Quix's confluent-kafka extras
def test_quix_profile_decides_like_the_scorer(tmp_path: Path) -> None:
    pytest.importorskip("quixstreams")
    data = simulate(SimulationParams(customers=500, terminals=1000, days=20, seed=11))
    assert len(data.transaction_id) > EVENTS
    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as broker:  # its own, on a free port
        launcher = Launcher(broker.bootstrap, DEFAULT_MODEL, tmp_path, fetch_wait_ms=5)
        preload(broker.bootstrap, "sample", data, EVENTS)
        # scorer-solo: no aggregator, so both read an empty terminal table (see benchmarks/quix.py)
        result = equal_work(launcher, PROFILES["scorer-solo"], PROFILES["quix"], "sample", EVENTS)
    assert result["compared"] == EVENTS, result
    assert result["ok"], result
    print(result)  # pytest -s: the largest score difference, for the README
