"""`scorer demo` end to end at a tiny size: its own embedded broker, aggregator, scorer and stream."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


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


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def read_until(proc: subprocess.Popen[bytes], needle: bytes, timeout_s: float) -> bytes:
    """stdout so far, read until it holds `needle` (status lines end in \\r, not \\n: raw reads)."""
    assert proc.stdout is not None
    seen, deadline = b"", time.monotonic() + timeout_s
    while needle not in seen and time.monotonic() < deadline and proc.poll() is None:
        if select.select([proc.stdout], [], [], 0.5)[0]:
            seen += os.read(proc.stdout.fileno(), 65536)
    assert needle in seen, seen[-2000:]
    return seen


def test_ctrl_c_to_the_demos_process_group_ends_in_a_summary_that_accounts_for_every_transaction() -> None:
    size = ["--customers", "300", "--terminals", "600", "--days", "80", "--seed", "3"]
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scorer",
            "demo",
            "--duration",
            "120",
            "--rate",
            "300",
            "--metrics-port",
            "0",
            *size,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own group, as a terminal's foreground job
    )
    children: list[int] = []
    try:
        shown = read_until(demo, b"decided ", timeout_s=180)  # streaming, decisions coming back
        children = children_of(demo.pid)
        assert len(children) == 3, children  # the broker, the aggregator and the scorer
        os.killpg(demo.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
        out, err = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:  # the test failed: leave no process behind
            children = children or children_of(demo.pid)
            demo.kill()
            demo.wait()
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    stdout, stderr = (shown + out).decode(), err.decode()
    assert demo.returncode == 0, stderr[-2000:]
    assert "Traceback" not in stderr and "stopped unexpectedly" not in stderr, stderr[-2000:]
    summary = stdout.split("| summary", 1)[1]
    sent, decided = (
        int(cell(summary, row).replace(",", "")) for row in ("transactions sent", "decisions received")
    )
    in_flight = int(cell(summary, "in flight").split()[0].replace(",", "")) if "| in flight" in summary else 0
    assert decided > 0 and decided + in_flight == sent, summary
    for pid in children:  # stopped and reaped by the demo, not left behind
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def cell(table: str, row: str) -> str:
    return table.split(f"| {row}", 1)[1].split("|")[1].strip()
