"""Kafka administration: metadata that fails with the broker's own reason, topic creation and checks."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from scorer.errors import ScorerError
from scorer.kafka import clients


class Admin:
    """An AdminClient whose first metadata request fails with the broker's own reason, not a bare timeout.

    librdkafka reports an unreachable broker and authentication and TLS failures (wrong password,
    untrusted CA, wrong mechanism) to an error callback and then only times out; the callback's messages
    are kept, librdkafka's own log lines go to our logs (kafka/clients.py), and `metadata` puts the
    reasons in one ScorerError line, as soon as every broker is known to be down.
    """

    def __init__(self, bootstrap: str, kafka: Mapping[str, str] | None = None) -> None:
        self.bootstrap = bootstrap
        self.errors: list[str] = []
        self.all_down = False
        config: dict[str, Any] = {"bootstrap.servers": bootstrap, **(kafka or {})}
        config["error_cb"] = self._error
        self.client = clients.admin(config)

    def _error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            self.all_down = True  # every bootstrap broker refused or failed: no use waiting longer
            return
        text = re.sub(r" \(after \d+ms in state \w+\)", "", error.str())  # the same failure, retried
        if text not in self.errors:
            self.errors.append(text)

    def metadata(self, timeout_s: float) -> Any:
        """The cluster's metadata, or ScorerError naming why not (at once when every broker is down)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.client.list_topics(timeout=min(1.0, max(0.1, deadline - time.monotonic())))
            except KafkaException as exc:
                self.client.poll(0.2)  # serves the error callbacks queued while the request waited
                if (self.all_down and self.errors) or time.monotonic() >= deadline:
                    reasons = "; ".join(self.errors[-3:]) or str(exc.args[0] if exc.args else exc)
                    raise ScorerError(
                        f"cannot reach Kafka at {self.bootstrap}: {reasons}", reason="broker_down"
                    ) from exc


def wait_ready(bootstrap: str, timeout_s: float, kafka: Mapping[str, str] | None = None) -> None:
    """Until a metadata request answers (or ScorerError)."""
    admin = clients.admin({"bootstrap.servers": bootstrap, **(kafka or {})})
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
