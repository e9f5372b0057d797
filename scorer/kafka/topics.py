"""The topics the scorer needs, with their partition counts and compaction, derived from Settings.

State topics must have as many partitions as the topic they shadow (scorer-state as transactions,
terminal-features as terminal-events), because partition p of one holds the state of partition p of
the other. `scorer topics` creates them; `scorer run` checks them at start.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scorer.config import Settings
from scorer.errors import ScorerError
from scorer.kafka.admin import Admin, TopicSpec, ensure_topics


def topic_specs(settings: Settings, partitions: int) -> list[TopicSpec]:
    """Every topic of the system; `partitions` for the keyed data topics."""
    return [
        TopicSpec(settings.input_topic, partitions),
        TopicSpec(settings.decisions_topic, partitions),
        TopicSpec(settings.flags_topic, partitions),
        TopicSpec(settings.dlq_topic, 1),
        TopicSpec(settings.labels_topic, partitions),
        TopicSpec(settings.state_topic, partitions, compacted=True),
        TopicSpec(settings.terminal_events_topic, partitions),
        TopicSpec(settings.terminal_topic, partitions, compacted=True),
        TopicSpec(settings.control_topic, 1, compacted=True),
        TopicSpec(settings.rules_topic, 1, compacted=True),
        TopicSpec(settings.models_topic, 1, compacted=True),  # kafka/artefacts.py: key name/version
        TopicSpec(f"{settings.decisions_topic}-shadow", partitions),
        TopicSpec(settings.monitoring_topic, 1),
    ]


def create_topics(settings: Settings, partitions: int) -> None:
    security = {k: str(v) for k, v in settings.admin_config().items() if k != "bootstrap.servers"}
    ensure_topics(settings.brokers, topic_specs(settings, partitions), kafka=security)


def reach(settings: Settings, timeout_s: float = 10.0) -> Any:
    """The cluster's metadata, or ScorerError: one line saying why the brokers cannot be reached.
    Every command that needs Kafka calls this first."""
    kafka = {k: str(v) for k, v in settings.admin_config().items() if k != "bootstrap.servers"}
    return Admin(settings.brokers, kafka).metadata(timeout_s)


def partition_counts(settings: Settings, topics: list[str], timeout_s: float = 10.0) -> Mapping[str, int]:
    meta = reach(settings, timeout_s)
    return {
        t: len(meta.topics[t].partitions) for t in topics if t in meta.topics and meta.topics[t].error is None
    }


def require_topics(settings: Settings, names: list[str], timeout_s: float = 10.0) -> Mapping[str, int]:
    """The topics must exist (ScorerError naming the missing ones); returns their partition counts."""
    counts = partition_counts(settings, names, timeout_s)
    missing = [t for t in names if t not in counts]
    if missing:
        raise ScorerError(f"missing topics {missing} on {settings.brokers}: create them with `scorer topics`")
    return counts


def check_topics(
    settings: Settings, pairs: list[tuple[str, str]], timeout_s: float = 10.0
) -> Mapping[str, int]:
    """Each (data topic, state topic) pair must exist with equal partition counts; returns the counts."""
    counts = require_topics(settings, [t for pair in pairs for t in pair], timeout_s)
    for data, state in pairs:
        if counts[data] != counts[state]:
            raise ScorerError(
                f"{state} has {counts[state]} partitions but {data} has {counts[data]}: they must match "
                "(partition p of the state topic holds the state of partition p)"
            )
    return counts
