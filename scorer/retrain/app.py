"""`scorer retrain`: the cycles of cycle.py on the store's PostgreSQL, the control topic and the models topic,
once (a CronJob) or every `poll_s` seconds until SIGTERM (a Deployment), with /metrics, /healthz, /readyz.

A cycle that fails (the database or the broker does not answer, a model cannot be fetched) is logged in one
line and counted as `failed`; the loop tries again at the next poll (a run in flight is picked up where the
database left it), and `--once` exits 1. Nothing here retries in a tight loop.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from prometheus_client import CollectorRegistry
from psycopg.rows import TupleRow

from scorer.config import Settings
from scorer.db.connect import connect
from scorer.db.migrate import migrate
from scorer.errors import ModelError, ScorerError
from scorer.kafka import artefacts
from scorer.kafka.control import publish, read_control
from scorer.model.onnx import OnnxModel
from scorer.model.registry import Registry
from scorer.retrain.candidate import CandidateSpec
from scorer.retrain.cycle import Retrainer, Schedule
from scorer.retrain.metrics import RetrainMetrics
from scorer.rollout.deployment import Deployment, RetrainSwitch
from scorer.runtime.health import serve_health

logger = logging.getLogger(__name__)
RETRAIN_NICENESS = 10


@dataclass(frozen=True, slots=True)
class RetrainOptions:
    """What `scorer retrain` was asked for."""

    once: bool = False
    poll_s: float = 60.0  # how often the loop looks at the store and the topics
    workdir: Path | None = None  # where candidates are written (None: a temporary directory)
    spec: CandidateSpec = field(default_factory=CandidateSpec)
    schedule: Schedule = field(default_factory=Schedule)


class KafkaControl:
    """The control topic, read to its end on each cycle."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def read(self) -> tuple[Deployment | None, RetrainSwitch | None]:
        return read_control(self.settings)

    def publish(self, deployment: Deployment) -> None:
        publish(self.settings, deployment)


class ModelStore:
    """Versions from the workdir (what this instance trained), the registry directory, the configured model,
    or the models topic (fetched, verified and cached), in that order; new ones go onto the models topic."""

    def __init__(self, settings: Settings, workdir: Path) -> None:
        self.settings = settings
        self.workdir = workdir
        self.registry = Registry(Path(settings.registry))
        self.configured = Path(settings.model)

    def load(self, label: str) -> OnnxModel:
        return OnnxModel(self.directory(label))

    def directory(self, label: str) -> Path:
        name, _, version = label.partition("/")
        mine = self.workdir / name / version
        if (mine / "model.json").is_file():
            return mine
        try:
            return self.registry.get(label).path
        except ModelError:
            pass
        if (self.configured / "model.json").is_file() and OnnxModel(self.configured).label == label:
            return self.configured
        return artefacts.fetch_model(self.settings, label, artefacts.cache_root(self.settings))

    def publish(self, directory: Path) -> None:
        artefacts.publish_model(self.settings, directory)


def default_champion(settings: Settings) -> str:
    """The label of the model the scorers run before any deployment was published (settings.model)."""
    return OnnxModel(settings.model).label


def run_retrain(settings: Settings, options: RetrainOptions, stop: threading.Event) -> int:
    """Migrate, then cycle once or until `stop`. Exit 0, or 1 when `--once` failed."""
    # training is a background job: on a machine it shares with scorers (the demo, a small VM), their
    # latency comes first; in a pod of its own this changes nothing
    os.nice(RETRAIN_NICENESS)
    connect_db = _connector(settings)
    with connect_db() as conn:
        migrate(conn)
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="scorer-retrain-"))
    metrics = RetrainMetrics(CollectorRegistry())
    server = serve_health(metrics.registry, settings.metrics_host, settings.metrics_port, lambda: True)
    retrainer = Retrainer(
        connect_db,
        KafkaControl(settings),
        ModelStore(settings, workdir),
        options.spec,
        options.schedule,
        workdir,
        default_champion(settings),
        metrics,
        settings.database_timeout_s,
    )
    try:
        while True:
            outcome = _cycle(retrainer, metrics)
            if options.once:
                return 1 if outcome == "failed" else 0
            if stop.wait(options.poll_s):
                return 0
    finally:
        if server is not None:
            server.stop()


def _cycle(retrainer: Retrainer, metrics: RetrainMetrics) -> str:
    """One cycle; a failure of the database, the broker or a model is one log line and `failed`."""
    try:
        return retrainer.cycle()
    except (ScorerError, psycopg.Error, OSError) as exc:
        metrics.cycles.labels("failed").inc()
        logger.error("retrain_cycle_failed", extra={"error": str(exc).strip().splitlines()[0]})
        return "failed"


def _connector(settings: Settings) -> Callable[[], psycopg.Connection[TupleRow]]:
    def open_connection() -> psycopg.Connection[TupleRow]:
        conn = connect(
            settings.database_url,
            application_name="scorer-retrain",
            connect_timeout_s=settings.database_timeout_s,
        )
        conn.autocommit = True  # each step of a run is on record as soon as it is taken
        return conn

    return open_connection
