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


def test_the_store_and_database_benchmarks_run_and_check_what_they_stored(
    tmp_path: Path, tiny_model: Path
) -> None:
    """The store workload (one store process, and two splitting the partitions) and the database benchmark
    at a tiny size: every decision read back once, the queries timed and explained."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--events", "30000", "--workloads", "store",
         "--store-phases", "decisions,decisions-2", "--profiles", "scorer", "--model", str(tiny_model),
         "--out", str(tmp_path), "--stem", "store", "--timeout", "240"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = orjson.loads((tmp_path / "store.json").read_bytes())["store"]
    assert results["scorer"]["events_per_s"] > 0
    phases = {p["phase"]: p for p in results["phases"]}
    assert set(phases) == {"decisions", "decisions-2"}
    for phase in phases.values():
        assert "error" not in phase, phase
        assert phase["rows"] == 30000 and phase["exactly_once"] and phase["store_cores"] > 0, phase
    assert phases["decisions-2"]["instances"] == 2
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.database", "--decisions", "20000", "--days", "40", "--customers", "300",
         "--repetitions", "30", "--warmup", "3", "--out", str(tmp_path), "--stem", "database"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    database = orjson.loads((tmp_path / "database.json").read_bytes())
    assert database["sizes"]["rows"] == 20000
    for name in ("card", "alerts"):
        latency = database["latency"][name]
        assert latency["n"] == 30 and 0 < latency["p50_ms"] <= latency["p99_ms"], latency
        assert "Index" in database["plans"][name]  # the console's queries use the indexes made for them
    for name in ("queue page", "case page"):
        assert 0 < database["pages"][name]["p50_ms"] <= database["pages"][name]["p99_ms"], database["pages"]
