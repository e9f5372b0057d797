"""Integration fixtures: the real tansu broker on a free port, per-test topics, scorer child processes; the
embedded PostgreSQL, a database per test."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import fields
from pathlib import Path

import orjson
import psycopg
import pytest
from confluent_kafka import Consumer, Producer
from psycopg import sql

from scorer.config import Settings
from scorer.db.embedded import EmbeddedPostgres
from scorer.demo.broker import EmbeddedBroker, free_port
from scorer.kafka.topics import create_topics

PARTITIONS = 4
FAST = {"session.timeout.ms": "6000", "fetch.wait.max.ms": "5"}
_counter = itertools.count()
_databases = itertools.count()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with EmbeddedBroker(log_path=log) as b:
        yield b


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """One embedded PostgreSQL for the session (temporary directory, fsync off); each test takes a database."""
    log = tmp_path_factory.mktemp("postgres") / "postgres.log"
    with EmbeddedPostgres(log_path=log) as server:
        yield server


@pytest.fixture
def database_url(postgres: EmbeddedPostgres) -> str:
    """The URL of a fresh, empty database t<N> of the session's server, for one test (the superuser's)."""
    name = f"t{next(_databases)}"
    with psycopg.connect(postgres.uri, autocommit=True) as conn:  # CREATE DATABASE refuses a transaction
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return postgres.url_for(name)


@pytest.fixture
def settings(broker: EmbeddedBroker) -> Settings:
    """Fresh topic names and groups for one test, created with PARTITIONS partitions."""
    n = next(_counter)
    defaults = Settings()
    names = {
        f.name: f"t{n}-{getattr(defaults, f.name)}" for f in fields(Settings) if f.name.endswith("_topic")
    }
    s = Settings(
        brokers=broker.bootstrap,
        group=f"g{n}-scorer",
        aggregator_group=f"g{n}-aggregator",
        store_group=f"g{n}-store",
        kafka={"session.timeout.ms": "6000"},
        fetch_wait_max_ms=5,
        commit_interval_s=0.3,
        **names,
    )
    create_topics(s, PARTITIONS)
    return s


def env_for(settings: Settings, model: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCORER_")}
    for f in fields(Settings):
        value = getattr(settings, f.name)
        if f.name != "kafka":
            env[f"SCORER_{f.name.upper()}"] = str(value)
    for key, value in settings.kafka.items():
        env[f"SCORER_KAFKA_{key.replace('.', '_').upper()}"] = value
    env["SCORER_MODEL"] = str(model)
    env.update(extra)
    return env


class Proc:
    """A `scorer run`/`scorer aggregate` child with its metrics port; stopped by PID."""

    def __init__(self, command: str, settings: Settings, model: Path, log: Path, **extra: str) -> None:
        self.metrics_port = free_port()
        env = env_for(settings, model, SCORER_METRICS_PORT=str(self.metrics_port), **extra)
        self.log = log
        with log.open("ab") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "scorer", command], env=env, stdout=out, stderr=subprocess.STDOUT
            )

    def terminate(self, timeout_s: float = 20.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(timeout_s)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)

    def metrics(self) -> str:
        """The /metrics text. Unreachable, it raises URLError (an OSError: callers waiting for a child to
        start retry on it) whose reason adds the process's state and its log's tail, for a failure's message."""
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:  # noqa: S310
                return str(r.read().decode())
        except urllib.error.URLError as exc:
            raise urllib.error.URLError(f"{exc.reason}; {self.describe()}") from exc

    def describe(self) -> str:
        """Exit code (or running) and the last lines of the log, for a failing assertion's message."""
        code = self.popen.poll()
        state = "still running" if code is None else f"exited with {code}"
        tail = self.log.read_text(errors="replace").splitlines()[-15:] if self.log.exists() else []
        return state + "; log tail:\n" + "\n".join(tail)


def stop_gracefully(proc: subprocess.Popen[str], timeout_s: float) -> None:
    """SIGTERM first (a command that started a server stops it too), SIGKILL if it is not gone in time;
    for a test's `finally` (nothing when it has exited)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        p.kill()


def produce(settings: Settings, topic: str, records: Sequence[tuple[bytes | None, bytes | None]]) -> None:
    producer = Producer({"bootstrap.servers": settings.brokers, "linger.ms": 5})
    for key, value in records:
        producer.produce(topic, value=value, key=key)
        producer.poll(0)
    assert producer.flush(30) == 0


def consume(
    settings: Settings, topic: str, until: int, timeout_s: float = 60.0, group: str | None = None
) -> list[dict[str, object]]:
    """Read `topic` from the beginning until `until` records arrived (or the timeout); JSON values."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.brokers,
            "group.id": group or f"reader-{time.monotonic_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **FAST,
        }  # fmt: skip
    )
    consumer.subscribe([topic])
    out: list[dict[str, object]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < until and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.2):
                if msg.error() is None:
                    headers = dict(msg.headers() or [])
                    out.append(
                        {
                            "key": msg.key(),
                            "value": msg.value(),
                            "headers": headers,
                            "partition": msg.partition(),
                        }
                    )
    finally:
        consumer.close()
    return out


def decisions(records: list[dict[str, object]]) -> list[dict[str, object]]:
    return [orjson.loads(r["value"]) for r in records]  # type: ignore[arg-type]
