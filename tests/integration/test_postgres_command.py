"""`scorer postgres`: the embedded PostgreSQL in the foreground, as the README offers it to someone with none."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from scorer.db.connect import connect
from tests.integration.conftest import stop_gracefully


def run_until_sigterm(*args: str, work: str) -> tuple[str, Path]:
    """Start `scorer postgres ARGS`, run the SQL `work` on the URL it prints, SIGTERM it; the URL and the
    data directory it printed. Asserts the command's own output and exit: two lines, then `postgres stopped`, exit 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "scorer", "postgres", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first, second = proc.stdout.readline(), proc.stdout.readline()  # printed once the server is ready
        found = re.match(
            r"postgres on 127\.0\.0\.1:(\d+): point the commands at it with --database-url (\S+)$", first
        )
        assert found and found.group(2).startswith("postgresql://postgres:"), first + second
        url, pid = found.group(2), int(re.findall(r"postgres pid (\d+)", second)[0])
        data = Path(re.findall(r"^data in (\S+) ", second)[0])
        with connect(url, application_name="test", connect_timeout_s=5) as conn:
            conn.execute(work)
            conn.commit()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        stop_gracefully(proc, 60)  # the test failed: SIGTERM first, so that the server is stopped too
    assert proc.returncode == 0 and out == "postgres stopped\n" and err == "", (out, err)
    with pytest.raises(ProcessLookupError):  # postgres stopped with it, not left behind
        os.kill(pid, 0)
    return url, data


def test_scorer_postgres_serves_until_sigterm_and_a_kept_directory_keeps_its_data(open_dir: Path) -> None:
    kept = open_dir / "pgdata"
    url, data = run_until_sigterm("--port", "0", "--dir", str(kept), work="create table kept (x int)")
    password = url.split(":")[2].split("@")[0]
    assert data == kept and (kept / "PG_VERSION").exists()
    again, _ = run_until_sigterm(
        "--port", "0", "--dir", str(kept), work="insert into kept select 1 from kept"
    )
    assert again.split(":")[2].split("@")[0] == password  # the same password: a URL saved earlier still works


def test_scorer_postgres_without_a_directory_leaves_nothing_behind() -> None:
    _, data = run_until_sigterm("--port", "0", work="create table gone (x int)")
    assert data.name.startswith("scorer-postgres-") and not data.exists()  # it went with the server
