"""What `scorer run` needs from Kafka besides its records' values: the seam that lets unit tests drive the
real run loop (loop.py) with fakes (tests/unit/fakes.py) that refuse deliveries, hold acknowledgements,
revoke partitions and crash, and the Kafka implementation the command uses."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from confluent_kafka import Message, Producer, TopicPartition

from scorer.aggregate.table import TableSource
from scorer.config import Settings
from scorer.features.rows import PartitionDump
from scorer.kafka import clients
from scorer.kafka.control import control_watcher
from scorer.kafka.rules import rules_watcher
from scorer.kafka.tables import TopicReader, read_partition
from scorer.kafka.topics import check_topics
from scorer.policy.rules import RuleBook
from scorer.rollout.serving import Serving
from scorer.runtime.metrics import Metrics
from scorer.scoring.delivery import GroupConsumer

T_co = TypeVar("T_co", covariant=True)
Rebalance = Callable[[Any, list[TopicPartition]], None]


class InputConsumer(GroupConsumer, Protocol):
    """The consumer calls the loop makes (confluent-kafka's Consumer; FakeConsumer in the tests)."""

    def subscribe(
        self,
        topics: list[str],
        on_assign: Rebalance | None = ...,
        on_revoke: Rebalance | None = ...,
        on_lost: Rebalance | None = ...,
    ) -> None: ...

    def assign(self, partitions: list[TopicPartition]) -> None: ...

    def consume(self, num_messages: int = ..., timeout: float = ...) -> list[Message]: ...

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]: ...

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float = ..., cached: bool = ...
    ) -> tuple[int, int]: ...

    def consumer_group_metadata(self) -> Any: ...

    def close(self) -> None: ...


class StartableSource(TableSource, Protocol):
    """The terminal table's source, started (its partitions assigned) when the loop starts."""

    def start(self) -> object: ...


class Watcher(Protocol[T_co]):
    """Follows a compacted topic in a thread; `take()` hands out each new value once, between batches."""

    def load_current(self) -> object:
        """Read what is in force now (before the first batch); a topic it cannot read is logged and
        counted, never raised (the watcher's thread keeps trying)."""

    def start(self) -> None: ...

    def take(self) -> T_co | None: ...

    def close(self) -> None: ...


class Connections(Protocol):
    """Everything the loop opens on Kafka. Each call may raise ScorerError (a missing topic) or
    KafkaException; the loop stops in order on either."""

    def partition_counts(self) -> Mapping[str, int]:
        """Partitions per topic the loop uses, after checking they exist and agree."""

    def consumer(self) -> InputConsumer: ...

    def producer(self, config: Mapping[str, Any]) -> Producer: ...

    def table_source(self) -> StartableSource: ...

    def restore(self, partition: int) -> PartitionDump:
        """Input partition `partition`'s customer state, read from the state topic."""

    def control_watcher(self, serving: Serving, metrics: Metrics) -> Watcher[Serving]: ...

    def rules_watcher(self, metrics: Metrics) -> Watcher[RuleBook]: ...


class KafkaConnections:
    """The real thing: clients from the settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.reader_config = settings.consumer_config(group=f"{settings.group}-reader", background=True)

    def partition_counts(self) -> Mapping[str, int]:
        s = self.settings
        return check_topics(s, [(s.input_topic, s.state_topic), (s.terminal_events_topic, s.terminal_topic)])

    def consumer(self) -> InputConsumer:
        return clients.consumer(self.settings.consumer_config())

    def producer(self, config: Mapping[str, Any]) -> Producer:
        return clients.producer(config)

    def table_source(self) -> StartableSource:
        return TopicReader(self.reader_config, self.settings.terminal_topic)

    def restore(self, partition: int) -> PartitionDump:
        return read_partition(self.reader_config, self.settings.state_topic, partition)

    def control_watcher(self, serving: Serving, metrics: Metrics) -> Watcher[Serving]:
        return control_watcher(self.settings, self.settings.onnx_threads, serving, metrics)

    def rules_watcher(self, metrics: Metrics) -> Watcher[RuleBook]:
        return rules_watcher(self.settings, metrics)
