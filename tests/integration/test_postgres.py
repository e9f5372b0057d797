"""The embedded PostgreSQL and scorer/db against the real server binaries: start, connect, a database per test,
every connection failure and mid-run error as the server really raises it, pause (a frozen server) under a
deadline, restart and kill -9 with the data kept."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import TupleRow

from scorer.db import embedded
from scorer.db.connect import ConnectFailed, Failure, classify, connect
from scorer.db.deadline import Deadline, DeadlineExceeded
from scorer.db.embedded import PASSWORD_FILE, EmbeddedPostgres
from scorer.db.processes import child_pids
from scorer.errors import ScorerError

GUARD_S = 60.0  # a test's own limit on a call that must return: far above any deadline it sets


def open_conn(url: str) -> psycopg.Connection[TupleRow]:
    return connect(url, application_name="test", connect_timeout_s=5)


def state(pid: int) -> str:
    """The process's state letter (R, S, T: stopped...), from /proc."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def poll_until(condition: Callable[[], bool], timeout_s: float = GUARD_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def failure_of(url: str, *statements: str) -> Failure:
    """What classify() makes of the error the last statement raises (on a fresh connection)."""
    with open_conn(url) as conn:
        for statement in statements[:-1]:
            conn.execute(statement)
        with pytest.raises(psycopg.Error) as info:
            conn.execute(statements[-1])
    return classify(info.value)


@pytest.fixture
def own() -> Iterator[EmbeddedPostgres]:
    """A server of the test's own, for what would disturb the session's (pause, kill, restart)."""
    with EmbeddedPostgres() as server:
        yield server


def test_each_test_gets_a_fresh_empty_database(postgres: EmbeddedPostgres, database_url: str) -> None:
    with open_conn(database_url) as conn:
        name, tables = conn.execute(
            "select current_database(), (select count(*) from pg_tables where schemaname = 'public')"
        ).fetchone() or ("", -1)
        assert name.startswith("t") and tables == 0 and database_url == postgres.url_for(name)
        conn.execute("create table decisions (transaction_id text primary key, score real)")
        conn.execute("insert into decisions values ('tx1', 0.5)")
        conn.commit()
    with open_conn(database_url) as conn:
        assert conn.execute("select * from decisions").fetchall() == [("tx1", 0.5)]
        assert conn.execute("show fsync").fetchone() == ("off",)  # a temporary directory: not durable
        assert conn.execute(
            "select application_name from pg_stat_activity where pid = pg_backend_pid()"
        ).fetchone() == ("test",)


def test_connection_failures_are_one_line_each_with_their_reason(
    postgres: EmbeddedPostgres, database_url: str
) -> None:
    wrong_password = database_url.replace(postgres.password, "not-the-password")
    with pytest.raises(ConnectFailed, match="password authentication failed for user") as info:
        open_conn(wrong_password)
    assert info.value.reason == "database_auth_failed" and "not-the-password" not in str(info.value)
    assert classify(info.value) == Failure("fatal", "database_auth_failed")
    with pytest.raises(
        ConnectFailed, match=r'postgres@127.0.0.1:\d+/nosuchdb: database "nosuchdb" does not exist'
    ) as info:
        open_conn(postgres.url_for("nosuchdb"))
    assert info.value.reason == "database_missing" and postgres.password not in str(info.value)
    with open_conn(database_url) as conn:  # a role that may not connect to the test's database
        conn.execute("create role outsider login password 'outsider-pw'")
        conn.execute(
            sql.SQL("revoke connect on database {} from public").format(sql.Identifier(conn.info.dbname))
        )
        conn.commit()
    outsider = database_url.replace(f"postgres:{postgres.password}@", "outsider:outsider-pw@")
    with pytest.raises(ConnectFailed, match="permission denied for database") as info:
        open_conn(outsider)
    assert info.value.reason == "database_permission_denied" and "outsider-pw" not in str(info.value)
    assert "\n" not in str(info.value)  # the server's DETAIL line is left out


def test_mid_run_errors_from_the_real_server_are_classified(
    postgres: EmbeddedPostgres, database_url: str
) -> None:
    with open_conn(database_url) as conn:
        conn.execute("create table decisions (transaction_id text primary key)")
        conn.execute("create role reader login password 'reader-pw'")
        conn.execute("grant select on decisions to reader")
        conn.commit()
    reader = database_url.replace(f"postgres:{postgres.password}@", "reader:reader-pw@")
    assert failure_of(database_url, "set statement_timeout = '20ms'", "select pg_sleep(30)") == Failure(
        "fatal", "statement_timeout"
    )
    assert failure_of(
        database_url, "set transaction read only", "insert into decisions values ('x')"
    ) == Failure("fatal", "read_only")
    assert failure_of(reader, "insert into decisions values ('x')") == Failure(
        "fatal", "insufficient_privilege"
    )
    assert failure_of(database_url, "select * from nosuchtable") == Failure("fatal", "unexpected")


def test_a_terminated_or_canceled_backend_is_classified(database_url: str) -> None:
    victim, admin = open_conn(database_url), open_conn(database_url)
    admin.autocommit = True
    caught: list[BaseException] = []

    def sleep() -> None:
        try:
            victim.execute("select pg_sleep(30)")
        except psycopg.Error as exc:
            caught.append(exc)

    sleeper = threading.Thread(target=sleep)
    sleeper.start()
    waiting = "select count(*) from pg_stat_activity where pid = %s and query like 'select pg_sleep%%' and state = 'active'"
    poll_until(lambda: (admin.execute(waiting, [victim.info.backend_pid]).fetchone() or (0,))[0] == 1)
    admin.execute("select pg_cancel_backend(%s)", [victim.info.backend_pid])
    sleeper.join(GUARD_S)
    assert not sleeper.is_alive() and classify(caught[0]) == Failure("fatal", "query_canceled")
    victim.rollback()
    admin.execute("select pg_terminate_backend(%s)", [victim.info.backend_pid])
    with pytest.raises(psycopg.Error) as info:
        victim.execute("select 1")
    assert classify(info.value) == Failure("transient", "admin_shutdown")
    victim.close()
    admin.close()


def test_a_write_to_a_frozen_server_ends_at_its_deadline(own: EmbeddedPostgres) -> None:
    conn = open_conn(own.uri)
    conn.execute("create table decisions (transaction_id text primary key)")
    conn.commit()
    own.pause()
    outcome: list[BaseException] = []

    def write() -> None:
        try:
            with Deadline(conn, 1.0, what="the batch write"):
                conn.execute("insert into decisions values ('tx1')")
                conn.commit()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    writer = threading.Thread(target=write)
    try:
        writer.start()
        writer.join(GUARD_S)  # the test's own guard: the deadline, not this, must end the write
        assert not writer.is_alive(), "the write to the frozen server did not return"
    finally:
        own.resume()
    assert len(outcome) == 1 and isinstance(outcome[0], DeadlineExceeded), outcome
    assert classify(outcome[0]) == Failure("transient", "deadline_exceeded") and conn.closed
    with pytest.raises(psycopg.OperationalError) as lost:  # a deadline on a dead connection: lost at once
        Deadline(conn, 1.0).__enter__()
    assert classify(lost.value) == Failure("transient", "connection_lost")
    with open_conn(own.uri) as fresh:  # once the server runs again, a new connection works
        assert fresh.execute("select count(*) from decisions").fetchone() == (0,)  # nothing half-written


def test_pause_freezes_every_server_process_and_resume_thaws_them(own: EmbeddedPostgres) -> None:
    processes = [own.pid, *child_pids(own.pid)]
    assert len(processes) > 3  # the postmaster, its checkpointer, writers and workers
    own.pause()
    try:
        assert {state(pid) for pid in processes} == {"T"}  # pause() returns once they all are
    finally:
        own.resume()
    poll_until(lambda: "T" not in {state(pid) for pid in processes})
    with open_conn(own.uri) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_restart_and_kill_keep_the_data(own: EmbeddedPostgres) -> None:
    with open_conn(own.uri) as conn:
        conn.execute("create table decisions (transaction_id text primary key)")
        conn.execute("insert into decisions values ('before-restart')")
        conn.commit()
    first, port = own.pid, own.port
    own.restart()
    assert own.pid not in (first, -1) and own.port == port
    with open_conn(own.uri) as conn:
        conn.execute("insert into decisions values ('before-kill')")
        conn.commit()
    killed, children = own.pid, child_pids(own.pid)
    own.kill()
    for pid in (killed, *children):
        assert (
            not Path(f"/proc/{pid}").exists() or state(pid) == "Z"
        )  # every server process, not the postmaster only
    with pytest.raises(ConnectFailed, match="Connection refused") as info:
        open_conn(own.uri)
    assert classify(info.value) == Failure("transient", "database_unreachable")
    own.start()  # crash recovery on the same directory and port
    with open_conn(own.uri) as conn:
        rows = conn.execute("select transaction_id from decisions order by 1").fetchall()
    assert rows == [("before-kill",), ("before-restart",)]


def test_a_kept_directory_starts_again_with_its_password_and_data(open_dir: Path) -> None:
    kept = open_dir / "pgdata"
    with EmbeddedPostgres(kept) as server:
        assert server.durable and server.log_file == kept / "postgres.log"
        with open_conn(server.uri) as conn:
            assert conn.execute("show fsync").fetchone() == ("on",)  # a directory you keep is durable
            conn.execute("create table kept (x int)")
            conn.commit()
        uri = server.uri
    assert (kept / "PG_VERSION").exists() and (kept / PASSWORD_FILE).stat().st_mode & 0o777 == 0o600
    again = EmbeddedPostgres(kept, port=int(uri.rsplit(":", 1)[1].split("/")[0]))
    assert again.uri == uri  # its password, read back
    with again, open_conn(again.uri) as conn:
        assert conn.execute("select count(*) from kept").fetchone() == (0,)
    assert kept.is_dir()  # close() leaves a kept directory


def test_a_server_that_cannot_start_says_why_in_one_line(open_dir: Path) -> None:
    server = EmbeddedPostgres(log_path=open_dir / "postgres.log", settings={"shared_buffers": "plenty"})
    with pytest.raises(
        ScorerError, match=r'exit code 1\): FATAL:  invalid value for parameter "shared_buffers"'
    ) as info:
        server.start()
    assert "\n" not in str(info.value) and info.value.reason == "postgres_down" and server.pid == -1
    server.close()
    slow = EmbeddedPostgres()
    try:
        with pytest.raises(ScorerError, match="did not accept connections on 127.0.0.1:.* within 0 s"):
            slow.start(timeout_s=0)  # no server is ready the instant it is spawned
        assert slow.pid == -1  # killed, not left behind
        temporary = slow.directory
    finally:
        slow.close()
    assert temporary is not None and not temporary.exists()  # close() removes a temporary directory


def test_initdb_failing_or_hanging_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "SUPERUSER", "pg_reserved")  # initdb refuses role names starting pg_
    server = EmbeddedPostgres()
    try:
        with pytest.raises(
            ScorerError,
            match='initdb failed in .*: initdb: error: superuser name "pg_reserved" is disallowed',
        ) as info:
            server.start()
        assert info.value.reason == "postgres_down" and server.pid == -1
    finally:
        server.close()
    monkeypatch.setattr(embedded, "INITDB_TIMEOUT_S", 0.001)  # no initdb finishes in a millisecond
    server = EmbeddedPostgres()
    try:
        with pytest.raises(ScorerError, match="initdb did not finish in 0.001 s"):
            server.start()
    finally:
        server.close()
