"""The deployment on the compacted `scorer-control` topic: which model is champion and the plan in force.

One record, key `deployment`, holds the whole state, so the newest record is the truth and compaction
keeps exactly it. Every scorer instance reads the same record; plan weights depend on event time only
(scorer/rollout.py), so instances agree on each event's decision whenever they picked the record up.
A rollback is a new record without the plan (or with the previous champion): it reaches every instance
on its next read of the topic.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from scorer.config import Settings
from scorer.errors import ScorerError
from scorer.rollout import Plan, PlanError

DEPLOYMENT_KEY = b"deployment"


@dataclass(frozen=True, slots=True)
class Deployment:
    """The champion (model label), the changeover plan in force (if any) and the champion before it."""

    champion: str
    plan: Plan | None = None
    previous: str | None = None
    published_ms: int = 0

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "champion": self.champion,
                "plan": self.plan.to_dict() if self.plan else None,
                "previous": self.previous,
                "published_ms": self.published_ms,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> Deployment:
        try:
            doc: Mapping[str, Any] = orjson.loads(raw)
            plan = Plan.from_dict(doc["plan"]) if doc.get("plan") else None
            return cls(str(doc["champion"]), plan, doc.get("previous"), int(doc.get("published_ms", 0)))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, PlanError) as exc:
            raise ScorerError(f"unreadable deployment record on the control topic: {exc}") from exc


def publish(settings: Settings, deployment: Deployment, timeout_s: float = 10.0) -> None:
    """Write the deployment and wait for the broker to acknowledge it."""
    producer = Producer(settings.producer_config())
    failures: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    producer.produce(settings.control_topic, deployment.to_json(), DEPLOYMENT_KEY, on_delivery=delivered)
    if producer.flush(timeout_s) != 0 or failures:
        raise ScorerError(f"could not publish to {settings.control_topic}: {failures or 'timed out'}")


def read_deployment(settings: Settings, timeout_s: float = 10.0) -> Deployment | None:
    """The newest deployment on the control topic, or None when nothing was ever published."""
    config = {**settings.consumer_config(group=f"{settings.group}-control"), "enable.partition.eof": True}
    consumer = Consumer(config)
    try:
        meta = consumer.list_topics(settings.control_topic, timeout=timeout_s).topics[settings.control_topic]
        if meta.error is not None:
            raise ScorerError(f"control topic {settings.control_topic}: {meta.error}")
        parts = sorted(meta.partitions)
        consumer.assign([TopicPartition(settings.control_topic, p, OFFSET_BEGINNING) for p in parts])
        latest: bytes | None = None
        at_end: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while len(at_end) < len(parts) and time.monotonic() < deadline:
            for msg in consumer.consume(100, 0.2):
                if msg.error() is None:
                    at_end.discard(msg.partition() or 0)
                    if msg.key() == DEPLOYMENT_KEY and msg.value():
                        latest = msg.value()
                else:
                    at_end.add(msg.partition() or 0)
        return Deployment.from_json(latest) if latest is not None else None
    finally:
        consumer.close()
