"""`scorer demo` end to end at a tiny size: its own embedded broker, aggregator, scorer and stream."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_live_demo_runs_and_summarises(tiny_model: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "scorer", "demo", "--duration", "20", "--rate", "2000", "--metrics-port", "0",
         "--customers", "300", "--terminals", "600", "--days", "80", "--seed", "3", "--model", str(tiny_model)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    summary = proc.stdout.split("| summary", 1)[1]
    sent = int(summary.split("transactions sent")[1].split("|")[1].replace(",", ""))
    decided = int(summary.split("decisions received")[1].split("|")[1].replace(",", ""))
    assert sent > 1000 and decided > 0.5 * sent
    assert "metrics were at http://127.0.0.1:" in proc.stdout
    assert "warming the state on the first 73 days" in proc.stdout and "nan" not in proc.stdout
    precision = float(summary.split("precision of flags")[1].split("|")[1].strip().rstrip("%")) / 100
    assert 0.2 < precision <= 1.0  # the warm state: the model works from the first decision on
