"""How a scorer's outputs reach Kafka and when its input offsets commit: at-least-once or exactly-once.

The run loop writes every output through one interface, `Delivery`, and never asks which mode it is in:
- `AtLeastOnce`: everything goes through the sink; the commit tracker (commits.py) commits a partition's
  offsets once the sink's delivery epochs holding its outputs, then its state snapshot, are acknowledged.
- `ExactlyOnce`: each output goes into its input partition's Kafka transaction (kafka/transactions.py),
  which commits the offsets with it; only monitoring records go through the sink, outside any transaction.

Every record put here carries its input partition (`sources`), which only exactly-once uses. A refused
delivery shows in `failure`; the loop then stops without committing past it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Protocol, overload

import numpy as np
import numpy.typing as npt
from confluent_kafka import KafkaException, TopicPartition

from scorer.kafka.deadletters import DeadLetterRecord
from scorer.kafka.sink import Sink
from scorer.kafka.transactions import PartitionTransactions
from scorer.scoring.commits import Commits, CommitTracker, SnapshotFn

logger = logging.getLogger(__name__)
I64 = npt.NDArray[np.int64]
Record = dict[str, Any]


class Delivery(Commits, Protocol):
    """Where the loop's records go, and the commit strategy that goes with it."""

    def put(self, topic: str, records: Sequence[Record], sources: I64, out: int | None = None) -> None:
        """Queue records ({"key", "value"}); record i comes from input partition `sources[i]`; all to
        partition `out` of `topic` when given, else by key. A refusal shows in `failure`, never raises."""

    def put_dead_letter(self, topic: str, letter: DeadLetterRecord, source: int) -> None:
        """Queue one dead letter of input partition `source` (a refusal shows in `failure`)."""

    def put_monitoring(self, topic: str, records: Sequence[Record]) -> None:
        """Queue monitoring records (drift counts): they belong to no input record."""

    def close(self) -> None:
        """Abort what is uncommitted (exactly-once) and flush the producer."""


class _Forwarding:
    """The Commits methods of a delivery, forwarded to the strategy that does them (`commits`)."""

    commits: Commits

    @property
    def assigned(self) -> set[int]:
        return self.commits.assigned

    def assign(self, partitions: Sequence[int]) -> None:
        self.commits.assign(partitions)

    def processed(self, partition: int, next_offset: int) -> None:
        self.commits.processed(partition, next_offset)

    def begin(self) -> None:
        self.commits.begin()

    def advance(self, asynchronous: bool = True) -> None:
        self.commits.advance(asynchronous)

    def flush(self, timeout_s: float) -> bool:
        return self.commits.flush(timeout_s)

    def forget(self, partitions: Sequence[int], lost: bool = False) -> None:
        self.commits.forget(partitions, lost)


class AtLeastOnce(_Forwarding):
    """Outputs through the sink; offsets commit after their outputs and state snapshot (commits.py)."""

    def __init__(self, sink: Sink, tracker: CommitTracker) -> None:
        self.sink = sink
        self.commits = tracker

    @property
    def failure(self) -> str | None:
        return self.sink.failure

    def put(self, topic: str, records: Sequence[Record], sources: I64, out: int | None = None) -> None:
        self.sink.send(topic, records, partition=out)

    def put_dead_letter(self, topic: str, letter: DeadLetterRecord, source: int) -> None:
        self.sink.send_one(topic, letter.value, letter.key, letter.headers, fallback=letter.fallback)

    def put_monitoring(self, topic: str, records: Sequence[Record]) -> None:
        self.sink.send(topic, records)

    def close(self) -> None:
        self.sink.close()


class ExactlyOnce(_Forwarding):
    """Outputs into their input partition's transaction; monitoring records through the sink."""

    def __init__(self, transactions: PartitionTransactions, sink: Sink) -> None:
        self.transactions = transactions
        self.commits = transactions
        self.sink = sink

    @property
    def failure(self) -> str | None:
        return self.transactions.failure or self.sink.failure

    def put(self, topic: str, records: Sequence[Record], sources: I64, out: int | None = None) -> None:
        if not len(records):
            return
        first = int(sources[0])
        if (sources == first).all():  # the common case: one input partition, no grouping
            self.transactions.send(first, topic, records, out)
            return
        for p in np.unique(sources).tolist():
            rows = np.flatnonzero(sources == p).tolist()
            self.transactions.send(p, topic, [records[i] for i in rows], out)

    def put_dead_letter(self, topic: str, letter: DeadLetterRecord, source: int) -> None:
        # No cut-down fallback here: a broker that refuses its size fails the transaction (README).
        self.transactions.send_one(source, topic, letter.value, letter.key, letter.headers)

    def put_monitoring(self, topic: str, records: Sequence[Record]) -> None:
        self.sink.send(topic, records)

    def close(self) -> None:
        self.transactions.close()  # aborts what a failed run still holds
        self.sink.close()


class GroupConsumer(Protocol):
    """The consumer calls a commit of the group's offsets makes (confluent-kafka's Consumer)."""

    @overload
    def commit(self, *, offsets: list[TopicPartition], asynchronous: Literal[True] = ...) -> None: ...

    @overload
    def commit(
        self, *, offsets: list[TopicPartition], asynchronous: Literal[False]
    ) -> list[TopicPartition]: ...


class KafkaOffsets:
    """The OffsetStore of the commit tracker: the input topic's offsets in the consumer group."""

    def __init__(self, consumer: GroupConsumer, topic: str) -> None:
        self.consumer = consumer
        self.topic = topic

    def commit(self, offsets: Mapping[int, int], asynchronous: bool) -> bool:
        partitions = [TopicPartition(self.topic, p, o) for p, o in offsets.items()]
        try:
            if asynchronous:  # a failure shows in the next synchronous commit or the next commit's offsets
                self.consumer.commit(offsets=partitions, asynchronous=True)
                return True
            refused = [tp for tp in self.consumer.commit(offsets=partitions, asynchronous=False) if tp.error]
        except KafkaException as exc:
            logger.warning("commit_failed", extra={"error": str(exc)})
            return False
        if refused:
            logger.warning("commit_failed", extra={"error": str(refused[0].error)})
        return not refused


def at_least_once(
    sink: Sink,
    consumer: GroupConsumer,
    input_topic: str,
    state_topic: str,
    snapshot: SnapshotFn,
    on_commit: Callable[[], object],
) -> AtLeastOnce:
    """The at-least-once delivery: the sink, and the tracker committing to the consumer group."""
    offsets = KafkaOffsets(consumer, input_topic)
    return AtLeastOnce(sink, CommitTracker(sink, offsets, snapshot, state_topic, on_commit))
