"""The live demo's child processes: `scorer run`, `aggregate` and `store`, each in a process group of its own,
configured through SCORER_* variables, logging to a file of the demo's log directory, waited for until they
answer /readyz, and stopped with SIGTERM at the end."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from scorer.config import Settings
from scorer.demo.database import DemoDatabase


def child(
    command: str,
    settings: Settings,
    model: str,
    metrics_port: int,
    log: Path,
    argv: Sequence[str] = (),
    **extra: str,
) -> subprocess.Popen[bytes]:
    """A `scorer run` / `aggregate` / `store` ... child process configured through SCORER_* variables (and
    `extra`), with `argv` after the command (the flags that are not settings)."""
    env = {
        **os.environ,
        "SCORER_BROKERS": settings.brokers,
        "SCORER_MODEL": model,
        "SCORER_METRICS_PORT": str(metrics_port),
        "SCORER_FETCH_WAIT_MAX_MS": "5",
        "SCORER_KAFKA_SESSION_TIMEOUT_MS": "6000",
        "SCORER_TERMINAL_WAIT_S": "2",
        **extra,
    }
    with log.open("ab") as out:  # JSON logs go to a file so the live status line stays readable
        # A process group of its own: the terminal's Ctrl-C reaches the demo alone, which first waits for
        # the decisions in flight and then stops its children (a child stopped by the same Ctrl-C raced the
        # demo's summary and could not decide what was in flight).
        return subprocess.Popen(  # noqa: S603 - our own CLI
            [sys.executable, "-m", "scorer", command, *argv],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            process_group=0,
        )


@dataclass(slots=True)
class Running:
    """What the demo has started: its children by command (run, aggregate, store) with their metrics ports,
    where their logs go, and the database the store writes to."""

    logs: Path
    database: DemoDatabase
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def start(
        self, command: str, settings: Settings, model: str, port: int, argv: Sequence[str] = (), **extra: str
    ) -> None:
        """`scorer <command> [argv]` with its metrics on `port`, logging to <command>.log (`run`: scorer.log)."""
        log = self.logs / f"{'scorer' if command == 'run' else command}.log"
        self.children[command] = child(command, settings, model, port, log, argv, **extra)
        self.ports[command] = port


def wait_ready(
    ports: dict[str, int], children: dict[str, subprocess.Popen[bytes]], timeout_s: float = 90.0
) -> list[str]:
    """Until every child answers 200 on /readyz; the commands of those that did not (the ones that stopped,
    or those still not ready when the time is up)."""
    deadline = time.monotonic() + timeout_s
    waiting = dict(ports)
    while waiting and time.monotonic() < deadline:
        stopped = [command for command, c in children.items() if c.poll() is not None]
        if stopped:
            return stopped
        waiting = {command: port for command, port in waiting.items() if not ready(port)}
        time.sleep(0.2)
    return list(waiting)


def ready(port: int) -> bool:
    """Whether the child on `port` answers 200 on /readyz now."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:  # noqa: S310 - ours
            return int(r.status) == 200
    except OSError:
        return False


def port_free(port: int) -> bool:
    """Whether `port` can be bound on every address, as the scorer binds its metrics port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("0.0.0.0", port))  # noqa: S104 - the scorer binds the same address
        except OSError:
            return False
    return True


def last_lines(logs: Path) -> str:
    """The last line of each child's log: why it stopped."""
    lines = []
    for name in ("scorer.log", "aggregate.log", "store.log", "console.log", "retrain.log"):
        text = (
            (logs / name).read_text(errors="replace").strip().splitlines() if (logs / name).exists() else []
        )
        if text:
            lines.append(f"{name}: {text[-1][:300]}")
    return "; ".join(lines)


def stop_children(children: Iterable[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to every child still running, then wait for each (SIGKILL after 15 s)."""
    for c in children:
        if c.poll() is None:
            c.send_signal(signal.SIGTERM)
    for c in children:
        try:
            c.wait(timeout=15)
        except subprocess.TimeoutExpired:
            c.kill()
