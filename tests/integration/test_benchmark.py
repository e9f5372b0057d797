"""`python -m benchmarks` once at a tiny size: every implementation runs, is checked and is reported.

No timing is asserted (machines are noisy); the figures live in benchmarks/results/.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson


def test_benchmark_runs_every_workload_and_checks_exactly_once(tmp_path: Path, tiny_model: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--events", "3000", "--rates", "400", "--paced-seconds", "3",
         "--workloads", "drain,scaleout,paced,state,memory,stages", "--profiles", "passthrough,naive,scorer", "--memory-events", "400000", "--state-customers", "3000", "--state-terminals", "600",
         "--model", str(tiny_model), "--out", str(tmp_path), "--stem", "tiny", "--timeout", "240"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = orjson.loads((tmp_path / "tiny.json").read_bytes())
    drains = {r["profile"]: r for r in results["drain"]["runs"]}
    assert set(drains) == {"passthrough", "naive", "scorer", "scorer-x2"}
    for run in drains.values():
        assert run["exactly_once"] and run["events"] == 3000, run
    paced = {r["profile"]: r for r in results["paced"]["runs"]}
    assert set(paced) == {"passthrough", "naive", "scorer"}
    for run in paced.values():
        (phase,) = run["phases"]
        assert phase["rate"] == 400 and phase["kept_up"] and phase["received"] >= 0.9 * phase["sent"] > 0
        assert 0 < phase["p50_ms"] <= phase["p99_ms"] <= phase["p999_ms"]
    state = results["state"]["rss"]
    assert state["customer"]["keys"] == 3000 and state["terminal"]["keys"] == 600
    assert state["customer"]["nbytes_per_key"] > 0
    memory = results["memory"]
    assert memory["events"] == 400_000 and memory["events_after_full"] > 0
    assert set(results["stages"]["tuned"]["us_per_event"]) >= {"decode", "model", "decisions"}
    table = (tmp_path / "tiny.md").read_text()
    assert "| scorer |" in table and "| naive |" in table and "exactly once" in table
    assert (tmp_path / "tiny.png").stat().st_size > 10_000
