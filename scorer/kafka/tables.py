"""Compacted state topics read from Kafka: a partition read to its end (restore), or followed as it grows."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from scorer.features.rows import MARKER_KEY, decode_marker


@dataclass(slots=True)
class PartitionDump:
    """A state partition read to its end: latest value per key up to the last marker, and that marker."""

    rows: dict[bytes, bytes | None]
    marker: dict[str, Any] | None
    records: int


def read_partition(
    consumer_config: Mapping[str, Any], topic: str, partition: int, timeout_s: float = 30.0
) -> PartitionDump:
    """Read one partition from the beginning to its high watermark (no group, no commits).

    Rows written after the last marker belong to a snapshot that was cut short and are ignored.
    Reading goes on past the high watermark until a poll comes back empty: tansu reports the base offset
    of the last record batch plus one as the high watermark, short of the real end (Kafka does not).
    Only the partition's owner writes to it while this runs, so the end is final.
    """
    consumer = Consumer({**consumer_config, "enable.auto.commit": False})
    try:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
        rows: dict[bytes, bytes | None] = {}
        since_marker: dict[bytes, bytes | None] = {}
        marker: dict[str, Any] | None = None
        count = 0
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
                if not msgs and position >= high:
                    break  # past the high watermark and nothing more: the end (see the docstring)
                for msg in msgs:
                    if msg.error():
                        continue
                    position = (msg.offset() or 0) + 1
                    count += 1
                    key = msg.key() or b""
                    if key == MARKER_KEY:
                        rows.update(since_marker)
                        since_marker.clear()
                        marker = decode_marker(msg.value() or b"")
                    else:
                        since_marker[key] = msg.value()
        return PartitionDump(rows, marker, count)
    finally:
        consumer.close()
