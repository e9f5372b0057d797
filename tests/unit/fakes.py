"""In-memory fakes of the broker side, implementing the interfaces the scorer's core uses.

FakeProducer has the confluent-kafka Producer methods the Sink calls (produce_batch, produce, poll, flush)
and answers each message on poll according to a policy: delivered, refused after retries, or held (its
acknowledgement never comes). FakeBroker keeps what was delivered, per topic and partition, and the
committed offsets; FakeOffsets is the commit tracker's OffsetStore on it and can refuse commits.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    OFFSET_INVALID,
    TIMESTAMP_CREATE_TIME,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from scorer.aggregate.table import MemorySource
from scorer.features.rows import PartitionDump, PartitionLog

# (topic, value) -> "ok", "refuse" (after retries), "hold" (never answered), "too_large" (the broker refuses
# its size), or at produce time (produce() and produce_batch): "too_large_here" (the producer refuses its
# size), "unknown_partition_here" (a topic recreated with fewer partitions), "invalid_here" (any refusal),
# or at produce() only: "full_here" (the producer's queue is full: BufferError)
Policy = Callable[[str, bytes | None], str]
PRODUCE_ERRORS = {
    "too_large_here": (KafkaError.MSG_SIZE_TOO_LARGE, "Message size too large"),
    "unknown_partition_here": (KafkaError._UNKNOWN_PARTITION, "Local: Unknown partition"),
    "invalid_here": (KafkaError._INVALID_ARG, "Local: Invalid argument"),
}


def deliver_all(topic: str, value: bytes | None) -> str:
    return "ok"


def refusal(code: int, text: str) -> KafkaError:
    """The error a delivery report or produce() carries."""
    return KafkaError(code, text)


@dataclass
class FakeMessage:
    """A delivery report's message."""

    _topic: str
    _partition: int
    _key: bytes | None
    _value: bytes | None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value


@dataclass
class FakeBroker:
    """Delivered records per (topic, partition), in order, and the group's committed offsets."""

    partitions: int = 2
    log: dict[tuple[str, int], list[tuple[bytes | None, bytes | None]]] = field(default_factory=dict)
    committed: dict[int, int] = field(default_factory=dict)
    group_offsets: dict[tuple[str, str, int], int] = field(default_factory=dict)  # (group, topic, p)
    counts: dict[str, int] = field(default_factory=dict)  # partitions per topic (default: `partitions`)

    seq: dict[tuple[str, int], list[int]] = field(default_factory=dict)  # arrival order across partitions
    headers: dict[tuple[str, int, int], list[tuple[str, bytes]]] = field(default_factory=dict)  # by offset

    def append(self, msg: FakeMessage) -> None:
        self.put(msg.topic(), msg.partition(), msg.key(), msg.value())

    def put(self, topic: str, partition: int, key: bytes | None, value: bytes | None) -> None:
        self.log.setdefault((topic, partition), []).append((key, value))
        self.seq.setdefault((topic, partition), []).append(sum(map(len, self.seq.values())))

    def records(self, topic: str) -> list[tuple[bytes | None, bytes | None]]:
        return [r for (t, _), records in sorted(self.log.items()) if t == topic for r in records]

    def dump(self, topic: str, partition: int) -> PartitionDump:
        """A state partition as kafka.tables.read_partition would read it."""
        log = PartitionLog()
        for key, value in self.log.get((topic, partition), []):
            log.add(key or b"", value)
        return log.result()


Produced = tuple[FakeMessage, Callable[[Any, Any], None], str | None]


class FakeProducer:
    """The Producer methods the Sink uses; messages are answered according to `policy`, on the second
    poll() after they were produced (as with a real broker, a report never comes back at once). With
    `full` > 0 its queue is full for that many produce calls (BufferError, or `_QUEUE_FULL` per message)."""

    def __init__(self, broker: FakeBroker, policy: Policy = deliver_all) -> None:
        self.broker = broker
        self.policy = policy
        self.full = 0
        self.capacity: int | None = None  # messages it holds unanswered before its queue is full
        self.produce_calls = 0
        self.flushes = 0
        # (message, callback, the policy's verdict at produce time; None: ask it again when answering)
        self.queue: list[Produced] = []  # produced since the last poll
        self.sent: list[Produced] = []  # answered on the next poll
        self.held: list[Produced] = []  # never answered

    def _partition(self, topic: str, key: bytes | None, partition: int | None) -> int:
        if partition is not None:
            return partition
        return zlib.crc32(key or b"") % self.broker.counts.get(topic, self.broker.partitions)

    def produce_batch(
        self,
        topic: str,
        messages: Sequence[dict[str, Any]],
        partition: int | None = None,
        on_delivery: Callable[[Any, Any], None] | None = None,
    ) -> int:
        """Queue what the policy lets through; the rest get `_error`, as confluent-kafka marks them."""
        full, queued = self._take_full(), 0
        for m in messages:
            verdict = self.policy(topic, m.get("value"))  # asked once per message: policies may count
            refused = PRODUCE_ERRORS.get(verdict)
            if full or self._at_capacity():
                refused = (KafkaError._QUEUE_FULL, "Local: Queue full")
            if refused is not None:
                m["_error"] = refusal(*refused)
                continue
            msg = FakeMessage(
                topic, self._partition(topic, m.get("key"), partition), m.get("key"), m.get("value")
            )
            self.queue.append((msg, on_delivery or (lambda err, msg: None), verdict))
            queued += 1
        return queued

    def _at_capacity(self) -> bool:
        return self.capacity is not None and len(self.queue) + len(self.sent) >= self.capacity

    def _take_full(self) -> bool:
        self.produce_calls += 1
        if self.full:
            self.full -= 1
            return True
        return False

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        on_delivery: Callable[[Any, Any], None] | None = None,
        headers: Any = None,
        partition: int | None = None,
    ) -> None:
        if self._take_full() or self._at_capacity():
            raise BufferError("Local: Queue full")
        verdict = self.policy(topic, value)
        if verdict == "full_here":
            raise BufferError("Local: Queue full")
        refused = PRODUCE_ERRORS.get(verdict)
        if refused is not None:
            raise KafkaException(refusal(*refused))
        msg = FakeMessage(topic, self._partition(topic, key, partition), key, value)
        self.queue.append((msg, on_delivery or (lambda err, msg: None), verdict))

    def poll(self, timeout: float = 0.0) -> int:
        queue, self.sent, self.queue = self.sent, self.queue, []
        for msg, cb, asked in queue:
            verdict = asked if asked is not None else self.policy(msg.topic(), msg.value())
            if verdict == "ok":
                self.broker.append(msg)
                cb(None, msg)
            elif verdict == "refuse":
                cb(refusal(KafkaError._MSG_TIMED_OUT, "Local: Message timed out"), msg)
            elif verdict == "too_large":
                cb(refusal(KafkaError.MSG_SIZE_TOO_LARGE, "Broker: Message size too large"), msg)
            else:
                self.held.append((msg, cb, None))
        return len(queue)

    def flush(self, timeout: float = 0.0) -> int:
        self.flushes += 1
        self.poll()
        self.poll()
        return len(self.held)

    def release(self) -> None:
        """The held messages' acknowledgements arrive after all."""
        self.sent += self.held  # answered by the policy as it is then
        self.held = []


class Crash(Exception):
    """The process dies here."""


class FakeOffsets:
    """The commit tracker's OffsetStore on the fake broker; refuses the next `refuse` commits, and with
    `crash` set the process dies as it is about to commit."""

    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self.refuse = 0
        self.crash = False
        self.calls: list[dict[int, int]] = []

    def commit(self, offsets: Mapping[int, int], asynchronous: bool) -> bool:
        if self.crash:
            raise Crash
        self.calls.append(dict(offsets))
        if self.refuse:
            self.refuse -= 1
            return False
        self.broker.committed.update(offsets)
        return True


@dataclass
class FakeRecord(FakeMessage):
    """A consumed record, with the confluent-kafka Message methods the loops call."""

    _offset: int = 0

    def offset(self) -> int:
        return self._offset

    def error(self) -> None:
        return None

    def headers(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (1, 0)


class FakeConsumer:
    """A group member that owns every partition of its topics: the Consumer methods the run loop and the
    aggregator call. consume() gives real confluent-kafka Messages, with the headers the broker holds.

    Offsets committed by `group` are kept in the broker (FakeBroker.group_offsets), so a new consumer of
    the same group (a restart) starts where the last one committed. `rebalance()` makes the next consume()
    run the revoke or lost callback first, as librdkafka runs them inside poll (what they raise comes out
    of consume()); `idle` is set once a consume() finds nothing, so a test can stop a loop that drained.
    """

    def __init__(self, broker: FakeBroker, group: str, partitions: Mapping[str, int]) -> None:
        self.broker = broker
        self.group = group
        self.partitions = dict(partitions)  # topic -> partition count
        self.positions: dict[tuple[str, int], int] = {}
        self.crash_after: int | None = None  # commits to let through before the process dies in one
        self.callbacks: dict[str, Any] = {}
        self.rebalances: list[tuple[str, list[TopicPartition]]] = []
        self.failing: dict[str, Exception] = {}  # method name -> what it raises (position, consume, ...)
        self.closed = False
        self.idle = threading.Event()

    def subscribe(
        self, topics: Sequence[str], on_assign: Any = None, on_revoke: Any = None, on_lost: Any = None
    ) -> None:
        """Every partition is assigned at the next consume(), as librdkafka does."""
        self.callbacks = {"assign": on_assign, "revoke": on_revoke, "lost": on_lost}
        assigned = [TopicPartition(t, p, -1001) for t in topics for p in range(self.partitions[t])]
        self.rebalances.append(("assign", assigned))

    def rebalance(self, kind: str, topic: str, partitions: Sequence[int]) -> None:
        """Revoke ("revoke") or lose ("lost") partitions at the next consume()."""
        self.rebalances.append((kind, [TopicPartition(topic, p) for p in partitions]))

    def assign(self, partitions: Sequence[Any]) -> None:
        """The assignment becomes `partitions` (what was assigned before is dropped, as confluent-kafka does)."""
        self.positions = {}
        for tp in partitions:
            committed = self.broker.group_offsets.get((self.group, tp.topic, tp.partition), 0)
            self.positions[(tp.topic, tp.partition)] = tp.offset if tp.offset >= 0 else committed

    def _fail(self, name: str) -> None:
        if name in self.failing:
            raise self.failing[name]

    def consume(self, num_messages: int = 1, timeout: float = 0.0) -> list[Message]:
        """The next records in the order they arrived, across this consumer's partitions."""
        self._fail("consume")
        while self.rebalances:
            kind, tps = self.rebalances.pop(0)
            callback = self.callbacks.get(kind)
            if callback is not None:
                callback(self, tps)
            elif kind == "assign":
                self.assign(tps)
            if kind != "assign":
                for tp in tps:
                    self.positions.pop((tp.topic, tp.partition), None)
        waiting: list[tuple[int, Message]] = []
        for (topic, p), position in self.positions.items():
            log = self.broker.log.get((topic, p), [])[position : position + num_messages]
            seq = self.broker.seq.get((topic, p), [])[position : position + num_messages]
            for i, (n, (key, value)) in enumerate(zip(seq, log, strict=True)):
                headers = self.broker.headers.get((topic, p, position + i))
                record = Message(
                    topic=topic,
                    partition=p,
                    offset=position + i,
                    key=key,
                    value=value,
                    headers=headers,
                    timestamp=(TIMESTAMP_CREATE_TIME, 0),
                )
                waiting.append((n, record))
        out = [r for _, r in sorted(waiting, key=lambda x: x[0])[:num_messages]]
        for r in out:
            self.positions[(r.topic() or "", r.partition() or 0)] = (r.offset() or 0) + 1
        if not out:
            self.idle.set()
        return out

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in self.positions]

    def position(self, partitions: Sequence[TopicPartition]) -> list[TopicPartition]:
        self._fail("position")
        return [
            TopicPartition(tp.topic, tp.partition, self.positions.get((tp.topic, tp.partition), -1001))
            for tp in partitions
        ]

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float = 0.0, cached: bool = False
    ) -> tuple[int, int]:
        return 0, len(self.broker.log.get((partition.topic, partition.partition), []))

    def consumer_group_metadata(self) -> str:
        return "group-metadata"  # what a transaction sends with its offsets (test_transactions checks it)

    def commit(self, offsets: Sequence[Any] = (), asynchronous: bool = True) -> list[TopicPartition] | None:
        if self.crash_after is not None:
            if self.crash_after == 0:
                raise Crash
            self.crash_after -= 1
        for tp in offsets:
            self.broker.group_offsets[(self.group, tp.topic, tp.partition)] = tp.offset
        return None if asynchronous else list(offsets)

    def list_topics(self, topic: str, timeout: float = 0.0) -> FakeMetadata:
        partitions = self.broker.counts.get(topic, self.broker.partitions)
        return FakeMetadata({topic: FakeTopicMetadata(dict.fromkeys(range(partitions)))})

    def committed(self, partitions: Sequence[Any], timeout: float = 0.0) -> list[Any]:
        """The group's committed offsets (OFFSET_INVALID where it has none)."""
        return [
            TopicPartition(
                tp.topic,
                tp.partition,
                self.broker.group_offsets.get((self.group, tp.topic, tp.partition), OFFSET_INVALID),
            )
            for tp in partitions
        ]

    def close(self) -> None:
        self.positions = {}
        self.closed = True


@dataclass
class FakeTopicMetadata:
    """A topic's metadata, as list_topics() describes it."""

    partitions: dict[int, None]
    error: None = None


@dataclass
class FakeMetadata:
    topics: dict[str, FakeTopicMetadata]


class StaticWatcher:
    """A control or rules watcher whose topic holds `value` (None: nothing published) and never changes;
    `load_current` raises `failure` when given (an unreadable topic)."""

    def __init__(self, value: Any = None, failure: Exception | None = None) -> None:
        self.value = value
        self.failure = failure
        self.ready: Any = None
        self.closed = False

    def load_current(self) -> bool:
        if self.failure is not None:
            raise self.failure
        self.ready = self.value
        return True

    def start(self) -> None:
        return None

    def take(self) -> Any:
        ready, self.ready = self.ready, None
        return ready

    def close(self) -> None:
        self.closed = True


class FakeConnections:
    """What the run loop opens on Kafka (scoring/connections.py), on the fake broker: the consumer, the
    producers (answering by `policy`), the terminal table's source, the state topic, fixed watchers.
    Every consumer it makes shares `idle`, set when one found nothing left to read."""

    def __init__(self, broker: FakeBroker, settings: Any, policy: Policy = deliver_all) -> None:
        s = settings
        self.broker = broker
        self.settings = settings
        self.policy = policy
        n = broker.partitions
        self.counts = {s.input_topic: n, s.state_topic: n, s.terminal_events_topic: 2, s.terminal_topic: 2}
        broker.counts.update(self.counts)
        self.consumers: list[FakeConsumer] = []
        self.producers: list[FakeProducer] = []
        self.table = MemorySource([0])
        self.restore_failure: Exception | None = None
        self.idle = threading.Event()

    def partition_counts(self) -> dict[str, int]:
        return self.counts

    def consumer(self) -> FakeConsumer:
        consumer = FakeConsumer(
            self.broker, self.settings.group, {self.settings.input_topic: self.broker.partitions}
        )
        consumer.idle = self.idle
        self.consumers.append(consumer)
        return consumer

    def producer(self, config: Mapping[str, Any]) -> FakeProducer:
        producer = FakeProducer(self.broker, self.policy)
        self.producers.append(producer)
        return producer

    def table_source(self) -> MemorySource:
        return self.table

    def restore(self, partition: int) -> PartitionDump:
        if self.restore_failure is not None:
            raise self.restore_failure
        return self.broker.dump(self.settings.state_topic, partition)

    def control_watcher(self, serving: Any, metrics: Any) -> StaticWatcher:
        return StaticWatcher()

    def rules_watcher(self, metrics: Any) -> StaticWatcher:
        return StaticWatcher()


class FakeTopic:
    """A one-partition compacted topic: records the test puts, read by FakeTopicReaders (the watchers'
    CompactedSource). It exists only once created; `fail_reads` makes the next reads raise as a broker
    connection that broke would."""

    def __init__(self, exists: bool = True) -> None:
        self.exists = exists
        self.records: list[tuple[bytes, bytes | None]] = []
        self.fail_reads = 0
        self.readers: list[FakeTopicReader] = []

    def put(self, key: bytes, value: bytes | None) -> None:
        self.records.append((key, value))

    def reader(self) -> FakeTopicReader:
        self.readers.append(FakeTopicReader(self))
        return self.readers[-1]


class FakeTopicReader:
    """kafka.tables.TopicReader on a FakeTopic: from the beginning, caught up once every record was read."""

    def __init__(self, topic: FakeTopic) -> None:
        self.topic = topic
        self.position = 0
        self.closed = False

    def start(self, timeout_s: float = 10.0) -> FakeTopicReader:
        from scorer.kafka.tables import TopicMissing

        if not self.topic.exists:
            raise TopicMissing("topic 'fake' is missing: create it with `scorer topics`")
        return self

    def read(self, timeout_s: float, max_records: int) -> list[tuple[int, bytes, bytes | None]]:
        if self.topic.fail_reads:
            self.topic.fail_reads -= 1
            raise KafkaException(refusal(KafkaError._TRANSPORT, "Local: Broker transport failure"))
        records = self.topic.records[self.position : self.position + max_records]
        self.position += len(records)
        return [(0, key, value) for key, value in records]

    def caught_up(self) -> bool:
        return self.position == len(self.topic.records)

    def close(self) -> None:
        self.closed = True


def sink_delivery(sink: Any, broker: FakeBroker) -> Any:
    """The at-least-once Delivery over `sink`, committing to the fake broker (no state snapshots)."""
    from scorer.scoring.commits import CommitTracker
    from scorer.scoring.delivery import AtLeastOnce

    return AtLeastOnce(sink, CommitTracker(sink, FakeOffsets(broker), lambda p, o: [], "state"))
