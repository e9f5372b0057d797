"""In-memory fakes of the broker side, implementing the interfaces the scorer's core uses.

FakeProducer has the confluent-kafka Producer methods the Sink calls (produce_batch, produce, poll, flush)
and answers each message on poll according to a policy: delivered, refused after retries, or held (its
acknowledgement never comes). FakeBroker keeps what was delivered, per topic and partition, and the
committed offsets; FakeOffsets is the commit tracker's OffsetStore on it and can refuse commits.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from scorer.features.rows import PartitionDump, PartitionLog

# (topic, value) -> "ok", "refuse" (after retries), "hold" (never answered), "too_large" (the broker refuses
# its size), or at produce(): "too_large_here" (the producer refuses its size), "invalid_here" (any refusal),
# "full_here" (the producer's queue is full: BufferError)
Policy = Callable[[str, bytes | None], str]


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


class FakeProducer:
    """The Producer methods the Sink uses; messages are answered according to `policy`, on the second
    poll() after they were produced (as with a real broker, a report never comes back at once)."""

    def __init__(self, broker: FakeBroker, policy: Policy = deliver_all) -> None:
        self.broker = broker
        self.policy = policy
        self.queue: list[tuple[FakeMessage, Callable[[Any, Any], None]]] = []  # produced since the last poll
        self.sent: list[tuple[FakeMessage, Callable[[Any, Any], None]]] = []  # answered on the next poll
        self.held: list[tuple[FakeMessage, Callable[[Any, Any], None]]] = []  # never answered

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
        for m in messages:
            msg = FakeMessage(
                topic, self._partition(topic, m.get("key"), partition), m.get("key"), m.get("value")
            )
            self.queue.append((msg, on_delivery or (lambda err, msg: None)))
        return len(messages)

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        on_delivery: Callable[[Any, Any], None] | None = None,
        headers: Any = None,
        partition: int | None = None,
    ) -> None:
        verdict = self.policy(topic, value)
        if verdict == "too_large_here":
            raise KafkaException(refusal(KafkaError.MSG_SIZE_TOO_LARGE, "Message size too large"))
        if verdict == "invalid_here":
            raise KafkaException(refusal(KafkaError._INVALID_ARG, "Local: Invalid argument"))
        if verdict == "full_here":
            raise BufferError("Local: Queue full")
        msg = FakeMessage(topic, self._partition(topic, key, partition), key, value)
        self.queue.append((msg, on_delivery or (lambda err, msg: None)))

    def poll(self, timeout: float = 0.0) -> int:
        queue, self.sent, self.queue = self.sent, self.queue, []
        for msg, cb in queue:
            verdict = self.policy(msg.topic(), msg.value())
            if verdict == "ok":
                self.broker.append(msg)
                cb(None, msg)
            elif verdict == "refuse":
                cb(refusal(KafkaError._MSG_TIMED_OUT, "Local: Message timed out"), msg)
            elif verdict == "too_large":
                cb(refusal(KafkaError.MSG_SIZE_TOO_LARGE, "Broker: Message size too large"), msg)
            else:
                self.held.append((msg, cb))
        return len(queue)

    def flush(self, timeout: float = 0.0) -> int:
        self.poll()
        self.poll()
        return len(self.held)

    def release(self) -> None:
        """The held messages' acknowledgements arrive after all."""
        self.sent += self.held
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
    """A group member that owns every partition of its topics: the Consumer methods the aggregator calls.

    Offsets committed by `group` are kept in the broker (FakeBroker.group_offsets), so a new consumer of
    the same group (a restart) starts where the last one committed.
    """

    def __init__(self, broker: FakeBroker, group: str, partitions: Mapping[str, int]) -> None:
        self.broker = broker
        self.group = group
        self.partitions = dict(partitions)  # topic -> partition count
        self.positions: dict[tuple[str, int], int] = {}
        self.crash_after: int | None = None  # commits to let through before the process dies in one

    def subscribe(
        self, topics: Sequence[str], on_assign: Any = None, on_revoke: Any = None, **_: Any
    ) -> None:
        from confluent_kafka import TopicPartition

        assigned = [TopicPartition(t, p, -1001) for t in topics for p in range(self.partitions[t])]
        if on_assign is not None:
            on_assign(self, assigned)
        else:
            self.assign(assigned)

    def assign(self, partitions: Sequence[Any]) -> None:
        for tp in partitions:
            committed = self.broker.group_offsets.get((self.group, tp.topic, tp.partition), 0)
            self.positions[(tp.topic, tp.partition)] = tp.offset if tp.offset >= 0 else committed

    def consume(self, num_messages: int = 1, timeout: float = 0.0) -> list[FakeRecord]:
        """The next records in the order they arrived, across this consumer's partitions."""
        waiting: list[tuple[int, FakeRecord]] = []
        for (topic, p), position in self.positions.items():
            log = self.broker.log.get((topic, p), [])[position : position + num_messages]
            seq = self.broker.seq.get((topic, p), [])[position : position + num_messages]
            waiting += [
                (n, FakeRecord(topic, p, *kv, position + i))
                for i, (n, kv) in enumerate(zip(seq, log, strict=True))
            ]
        out = [r for _, r in sorted(waiting, key=lambda x: x[0])[:num_messages]]
        for r in out:
            self.positions[(r.topic(), r.partition())] = r.offset() + 1
        return out

    def commit(self, offsets: Sequence[Any] = (), asynchronous: bool = True) -> None:
        if self.crash_after is not None:
            if self.crash_after == 0:
                raise Crash
            self.crash_after -= 1
        for tp in offsets:
            self.broker.group_offsets[(self.group, tp.topic, tp.partition)] = tp.offset

    def close(self) -> None:
        self.positions = {}
