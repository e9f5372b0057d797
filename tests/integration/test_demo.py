"""`scorer demo` end to end at a tiny size: its own embedded broker and PostgreSQL (or the user's), aggregator,
scorer, store and stream."""

from __future__ import annotations

import contextlib
import os
import re
import select
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import Future
from pathlib import Path

import psycopg
import pytest
from consolekit import Client

from scorer.db.embedded import EmbeddedPostgres
from scorer.demo.broker import EmbeddedBroker
from scorer.demo.database import EmbeddedDatabase

SIZE = ["--customers", "300", "--terminals", "600", "--days", "80", "--seed", "3"]


def test_the_live_demo_on_your_own_kafka_and_postgresql_stores_what_it_decided(
    broker: EmbeddedBroker, database_url: str, tiny_model: Path
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "scorer", "demo", "--brokers", broker.bootstrap, "--database-url", database_url,
         "--duration", "10", "--rate", "2000", "--metrics-port", "0", *SIZE, "--model", str(tiny_model)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "embedded" not in proc.stdout  # neither a broker nor a PostgreSQL of its own
    summary = proc.stdout.split("| summary", 1)[1]
    sent, decided = (
        int(cell(summary, row).replace(",", "")) for row in ("transactions sent", "decisions received")
    )
    assert sent > 1000 and decided > 0.5 * sent
    assert cell(summary, "decisions in PostgreSQL") == f"{decided:,} of {decided:,} decided"
    assert "metrics were at http://127.0.0.1:" in proc.stdout
    assert "warming the state on the first 73 days" in proc.stdout and "nan" not in proc.stdout
    precision = float(cell(summary, "precision of flags").rstrip("%")) / 100
    assert 0.2 < precision <= 1.0  # the warm state: the model works from the first decision on
    with psycopg.connect(database_url) as conn:  # the store stopped after the count: it may have written more
        stored = conn.execute("select count(distinct transaction_id) from decisions").fetchone()
    assert stored is not None and decided <= stored[0] <= sent
    # the database is the user's: the summary's one-liner works after the demo, as printed
    query = proc.stdout.split("query them with:\n", 1)[1].splitlines()[0]
    assert_query_works(query)


def assert_query_works(one_liner: str) -> None:
    """The printed `scorer sql` one-liner, run as a shell would split it, prints daily_alerts' columns."""
    done = subprocess.run(shlex.split(one_liner), capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[:3] == ["event_day", "action", "decisions"] and " row" in done.stdout


def test_a_store_that_cannot_write_ends_the_demo_in_one_line_naming_it(
    postgres: EmbeddedPostgres, database_url: str, tiny_model: Path
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:  # may connect, may not create tables
        conn.execute("create role demo_reader login password 'reader-pw'")
    reader_url = (
        f"postgresql://demo_reader:reader-pw@127.0.0.1:{postgres.port}/{database_url.rsplit('/', 1)[1]}"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "scorer", "demo", "--database-url", reader_url, "--duration", "60",
         "--metrics-port", "0", *SIZE, "--model", str(tiny_model)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr and "streaming" not in proc.stdout
    (line,) = proc.stderr.splitlines()
    assert line.startswith("scorer demo: scorer store did not get ready: ") and "permission denied" in line, (
        line
    )


def test_the_embedded_database_starts_in_the_background_and_a_second_ctrl_c_cannot_orphan_it(
    tmp_path: Path,
) -> None:
    database = EmbeddedDatabase(tmp_path / "postgres.log")
    starting = database.starting
    interrupted: list[bool] = []

    class SecondCtrlC(Future[None]):
        """The start's future, but a Ctrl-C arrives during the first wait for it."""

        def exception(self, timeout: float | None = None) -> BaseException | None:
            if not interrupted:
                interrupted.append(True)
                raise KeyboardInterrupt
            return starting.exception(timeout)

    try:
        with psycopg.connect(database.url(), connect_timeout=10) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        assert "embedded PostgreSQL on 127.0.0.1:" in database.describe() and not database.kept
        pid, directory = database.server.pid, database.server.directory
    finally:
        database.starting = SecondCtrlC()
        database.close()
    assert interrupted and directory is not None and not directory.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped and reaped


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


def assert_console_signs_in(shown: str) -> None:
    """The console's URL and sign-in the demo printed open its queue."""
    match = re.search(r"analysts' console: http://127.0.0.1:(\d+)/  sign in as (\S+) / (\S+);", shown)
    assert match is not None, shown[-2000:]
    client = Client(int(match[1]))
    assert client.sign_in(match[2], match[3]) == 303
    status, _, page = client.request("GET", "/")
    assert status == 200 and 'id="queue"' in page


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
            *SIZE,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own group, as a terminal's foreground job
    )
    children: list[int] = []
    try:
        shown = read_until(demo, b"decided ", timeout_s=180)  # streaming, decisions coming back
        children = children_of(demo.pid)
        assert len(children) == 6, (
            children
        )  # the broker, PostgreSQL, the aggregator, the scorer, the store, the console
        # while the demo runs, the one-liner it printed at the start queries its database, as printed
        assert_query_works(shown.split(b"another terminal:\n", 1)[1].split(b"\n", 1)[0].decode())
        assert_console_signs_in(shown.decode(errors="replace"))
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
    assert cell(summary, "decisions in PostgreSQL") == f"{decided:,} of {decided:,} decided"
    assert "PostgreSQL stops with the demo and its data goes with it" in stdout
    for pid in children:  # stopped and reaped by the demo, not left behind
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def cell(table: str, row: str) -> str:
    return table.split(f"| {row}", 1)[1].split("|")[1].strip()
