"""Compacted state topics read from Kafka: a partition read to its end (restore), or followed as it grows."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from scorer.errors import ScorerError
from scorer.features.rows import PartitionDump, PartitionLog
from scorer.kafka import clients


def read_partition(
    consumer_config: Mapping[str, Any], topic: str, partition: int, timeout_s: float = 30.0
) -> PartitionDump:
    """Read one partition from the beginning to its high watermark (no group, no commits).

    Rows written after the last marker belong to a snapshot that was cut short and are ignored.
    Reading goes on past the high watermark until a poll comes back empty: tansu reports the base offset
    of the last record batch plus one as the high watermark, short of the real end (Kafka does not).
    Only the partition's owner writes to it while this runs, so the end is final.
    """
    consumer = clients.consumer({**consumer_config, "enable.auto.commit": False})
    try:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
        dump = PartitionLog()
        if high > 0:
            consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
            deadline = time.monotonic() + timeout_s
            position = 0
            while True:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"reading {topic}[{partition}] timed out at offset {position} of {high}"
                    )
                msgs = consumer.consume(1000, 0.2)
                if not msgs:  # the position also moves past transaction markers, which are no messages
                    at = consumer.position([TopicPartition(topic, partition)])[0].offset
                    if max(position, at) >= high:
                        break  # past the high watermark and nothing more: the end (see the docstring)
                for msg in msgs:
                    if msg.error() is None:
                        position = (msg.offset() or 0) + 1
                        dump.add(msg.key() or b"", msg.value())
        return dump.result()
    finally:
        consumer.close()


class TopicMissing(ScorerError):
    """The topic does not exist (yet): `scorer topics` creates it."""

    reason = "topic_missing"


class TopicReader:
    """Every partition of a compacted topic followed from its beginning (no group, no commits): the
    TableSource of the terminal table in each scorer, and the reader of the control and rules topics."""

    def __init__(self, consumer_config: Mapping[str, Any], topic: str) -> None:
        conf = {
            **consumer_config,
            "group.id": f"scorer-table-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,  # tells caught_up() where each partition ends
        }
        self.consumer = clients.consumer(conf)
        self.topic = topic
        self.partitions: list[int] = []
        self.at_end: set[int] = set()  # partitions read to their end (until a record arrives on them)

    def start(self, timeout_s: float = 10.0) -> TopicReader:
        """Assign every partition from the beginning; TopicMissing when the topic does not exist,
        KafkaException when the broker does not answer within `timeout_s`."""
        meta = self.consumer.list_topics(self.topic, timeout=timeout_s)
        topic = meta.topics.get(self.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            raise TopicMissing(f"topic {self.topic!r} is missing: create it with `scorer topics`")
        self.partitions = sorted(topic.partitions)
        self.consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in self.partitions])
        return self

    def read(self, timeout_s: float, max_records: int) -> list[tuple[int, bytes, bytes | None]]:
        """What has arrived, as (partition, key, value); consume errors are skipped (librdkafka retries
        them itself), the end of a partition is noted for caught_up()."""
        out = []
        for m in self.consumer.consume(max_records, timeout_s):
            err, partition = m.error(), m.partition() or 0
            if err is None:
                self.at_end.discard(partition)
                out.append((partition, m.key() or b"", m.value()))
            elif err.code() == KafkaError._PARTITION_EOF:
                self.at_end.add(partition)
        return out

    def caught_up(self) -> bool:
        """True once every partition has been read to its end and nothing arrived since."""
        return bool(self.partitions) and self.at_end.issuperset(self.partitions)

    def close(self) -> None:
        self.consumer.close()
