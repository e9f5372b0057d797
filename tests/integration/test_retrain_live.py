"""Continuous learning end to end (`scorer demo --retrain`): the real broker, the embedded PostgreSQL, the store,
the scorer, the aggregator, the automatic analyst and `scorer retrain` running unattended.

- Drift: card testing starts 14 days before the live days. The champion (default/2) has never seen it;
  `scorer retrain` trains on the store's window, shadows the candidate, promotes it on the live labels, and
  the scorer (whose registry directory has no such version) fetches it from the models topic and decides
  with it: recall on the pattern rises.
- Corrupted labels: a candidate trained on a history whose fraud labels are mostly lies reaches the shadow
  (the gate's tolerance is opened for the test, so the live check is what stops it) and is retired, never
  promoted: no decision is ever made by it.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import psycopg

SIZE = ["--customers", "1500", "--terminals", "3000", "--seed", "5"]


def demo(database_url: str, *args: str, duration_s: int) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "scorer", "demo", "--database-url", database_url, "--metrics-port", "0",
         "--retrain", "--shadow-days", "2", "--min-frauds", "10", "--duration", str(duration_s), *SIZE, *args],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return proc


def rows(database_url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(query, params).fetchall()


def cell(text: str, name: str) -> str:
    line = next(x for x in text.splitlines() if x.startswith(f"| {name}"))
    return line.split("|")[2].strip()


def test_after_a_drift_retrain_shadows_promotes_and_the_scorer_adopts_the_new_model(
    database_url: str,
) -> None:
    proc = demo(
        database_url, "--days", "100", "--drift-from-day", "70", "--card-testing", "15", "--live-days", "16",
        "--rate", "1500", duration_s=45,
    )  # fmt: skip
    runs = rows(database_url, "select run_id, status, candidate, reasons from retrain_runs order by run_id")
    assert runs and runs[0][1] == "promoted", proc.stdout[-3000:]
    candidate = runs[0][2]
    assert candidate == f"retrained/{runs[0][0]}" and "better by more than the margin" in runs[0][3]
    # the shadow: the store holds both models' scores of the same events
    shadowed = rows(
        database_url, "select count(*) from decisions where challenger_version = %s and challenger_score is not null "
        "and blend_weight = 0", candidate,
    )  # fmt: skip
    assert shadowed[0][0] > 1000
    # adopted: decisions made by the retrained version, fetched from the models topic (not in models/)
    adopted = rows(database_url, "select count(*) from decisions where model_version = %s", candidate)
    assert adopted[0][0] > 5000
    actions = [
        r[0]
        for r in rows(database_url, "select action from audit_log where actor = 'scorer retrain' order by id")
    ]
    assert actions[:2] == ["retrain_shadow", "retrain_promoted"]
    before, after = (
        float(x.rstrip("%"))
        for x in cell(proc.stdout, "card testing: model recall before / after").split(" / ")
    )
    assert after > before + 20, proc.stdout[-2000:]  # percentage points on the pattern the champion missed
    assert "drift start to promotion" in proc.stdout and "analysts' verdicts" in proc.stdout


def test_a_candidate_trained_on_corrupted_labels_is_retired_and_never_decides(database_url: str) -> None:
    proc = demo(
        database_url, "--days", "90", "--live-days", "10", "--corrupt-labels", "0.9", "--gate-tolerance", "1",
        "--rate", "1500", duration_s=30,
    )  # fmt: skip
    runs = rows(database_url, "select status, candidate, reasons, gate from retrain_runs order by run_id")
    assert runs and runs[0][0] == "retired", proc.stdout[-3000:]
    assert all(status != "promoted" for status, *_ in runs)
    assert "not better by the margin" in runs[0][2]
    decided = rows(database_url, "select count(*) from decisions where model_version like 'retrained/%%'")
    assert decided[0][0] == 0
    shadowed = rows(database_url, "select count(*) from decisions where challenger_version = %s", runs[0][1])
    assert shadowed[0][0] > 0  # it did reach the shadow: the live labels are what retired it
    assert "corrupted" in proc.stdout
