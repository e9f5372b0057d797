"""The deployment record on the compacted `scorer-control` topic: publish it, read it once, or follow it
in a thread that loads the models of each new deployment (ControlWatcher), ready to swap in."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

from scorer.config import Settings
from scorer.errors import ScorerError
from scorer.kafka import clients
from scorer.model.onnx import OnnxModel
from scorer.model.registry import Registry
from scorer.policy.actions import PolicyError
from scorer.rollout.deployment import DEPLOYMENT_KEY, Deployment
from scorer.rollout.serving import Serving

logger = logging.getLogger(__name__)
CONTROL_POLL_S = 0.5


def publish(settings: Settings, deployment: Deployment, timeout_s: float = 10.0) -> None:
    """Write the deployment and wait for the broker to acknowledge it."""
    producer = clients.producer(settings.producer_config())
    failures: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    producer.produce(settings.control_topic, deployment.to_json(), DEPLOYMENT_KEY, on_delivery=delivered)
    if producer.flush(timeout_s) != 0 or failures:
        raise ScorerError(f"could not publish to {settings.control_topic}: {failures or 'timed out'}")


def read_deployment(settings: Settings, timeout_s: float = 10.0) -> Deployment | None:
    """The newest deployment on the control topic, or None when nothing was ever published."""
    latest = read_compacted(settings, settings.control_topic, timeout_s).get(DEPLOYMENT_KEY)
    return Deployment.from_json(latest) if latest else None


def read_compacted(settings: Settings, topic: str, timeout_s: float = 10.0) -> dict[bytes, bytes]:
    """The newest value of every key of a compacted topic, read to its end (tombstoned keys left out)."""
    config = {**settings.consumer_config(group=f"{settings.group}-control"), "enable.partition.eof": True}
    consumer = clients.consumer(config)
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics[topic]
        if meta.error is not None:
            raise ScorerError(f"topic {topic}: {meta.error} (create it with `scorer topics`)")
        parts = sorted(meta.partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        table: dict[bytes, bytes | None] = {}
        at_end: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while len(at_end) < len(parts) and time.monotonic() < deadline:
            for msg in consumer.consume(100, 0.2):
                if msg.error() is None:
                    at_end.discard(msg.partition() or 0)
                    table[msg.key() or b""] = msg.value()
                else:
                    at_end.add(msg.partition() or 0)
        if len(at_end) < len(parts):
            raise ScorerError(f"topic {topic} could not be read to its end within {timeout_s:.0f} s")
        return {k: v for k, v in table.items() if v}
    finally:
        consumer.close()


def follow_deployments(settings: Settings, stop: threading.Event, apply: Callable[[bytes], None]) -> None:
    """Call `apply` with each new deployment record (the newest of every poll) until `stop` is set."""
    s = settings
    consumer = clients.consumer(s.consumer_config(group=f"{s.group}-control", background=True))
    seen: bytes | None = None
    try:
        meta = consumer.list_topics(s.control_topic, timeout=10).topics[s.control_topic]
        consumer.assign([TopicPartition(s.control_topic, p, OFFSET_BEGINNING) for p in meta.partitions])
        while not stop.is_set():
            latest = None
            for msg in consumer.consume(100, CONTROL_POLL_S):
                if msg.error() is None and msg.key() == DEPLOYMENT_KEY and msg.value():
                    latest = msg.value()
            if latest is not None and latest != seen:
                seen = latest
                apply(latest)
    finally:
        consumer.close()


class ControlWatcher:
    """Reads `scorer-control` in a thread; builds the Serving of each new deployment, ready to swap in."""

    def __init__(self, settings: Settings, threads: int, initial: Serving) -> None:
        self.settings = settings
        self.threads = threads
        self.registry = Registry(Path(settings.registry))
        self.models: dict[str, OnnxModel] = {initial.champion.label: initial.champion}
        self.ready: Serving | None = None
        self.errors = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="control-watcher", daemon=True)
        self._seen: bytes | None = None  # kept across reconnections: a re-read record is not new

    def start(self) -> None:
        self.thread.start()

    def take(self) -> Serving | None:
        """The newest deployment's Serving once loaded (then None until the next one)."""
        ready, self.ready = self.ready, None
        return ready

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)

    def load_current(self) -> None:
        """Load the deployment in force now (before the first batch: a restarted scorer must not decide
        with its configured model and no policy until the thread catches up); `take()` then gives it."""
        raw = read_compacted(self.settings, self.settings.control_topic).get(DEPLOYMENT_KEY)
        if raw:
            self._apply(raw)

    def _run(self) -> None:
        """Follow the control topic until closed; a broker error is logged and retried, never fatal here."""
        while not self.stop.is_set():
            try:
                follow_deployments(self.settings, self.stop, self._apply)
            except KafkaException as exc:
                self.errors += 1
                logger.error("control_topic_unreadable", extra={"error": str(exc)})
                self.stop.wait(5.0)

    def _apply(self, raw: bytes) -> None:
        if raw == self._seen:
            return
        self._seen = raw
        try:
            deployment = Deployment.from_json(raw)
            champion = self._load(deployment.champion)
            challenger = self._load(deployment.plan.challenger) if deployment.plan else None
            serving = Serving(champion, challenger, deployment.plan, deployment.policy)
            for model in (champion, challenger):
                if model is not None:
                    serving.bands(model)  # a band this model cannot resolve is refused here, not mid-batch
        except (ScorerError, OSError, PolicyError) as exc:
            self.errors += 1
            logger.error("deployment_not_applied", extra={"error": str(exc)})
            return
        self.ready = serving
        logger.info("deployment_loaded", extra={"serving": self.ready.label})

    def _load(self, label: str) -> OnnxModel:
        if label not in self.models:
            self.models[label] = OnnxModel(self.registry.get(label).path, threads=self.threads)
        return self.models[label]
