"""One consumed batch of the store: each topic's records as its table's rows, and where to read from next."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from confluent_kafka import Message

from scorer.config import Settings
from scorer.store.rows import Rows, dead_letter_rows, decision_rows, label_rows, transaction_rows


@dataclass(frozen=True, slots=True)
class StoreBatch:
    """The rows of every table a batch touches, and the next offset of each (topic, partition) it read:
    written together in one database transaction, so the rows and the position never disagree."""

    tables: list[Rows]
    offsets: dict[tuple[str, int], int]
    records: int  # consumed, stored or not

    def __len__(self) -> int:
        """Rows to write."""
        return sum(len(rows) for rows in self.tables)

    def days(self, table: str) -> list[int]:
        """The days (since the epoch) a day-partitioned table's rows fall on."""
        found: set[int] = set()
        for rows in self.tables:
            if rows.table == table and "day" in rows.columns:
                found.update(rows.columns["day"])
        return sorted(found)


def read_batch(msgs: Sequence[Message], settings: Settings) -> StoreBatch:
    """Each record to its table by topic (a topic the store does not read: ignored, its offset kept)."""
    s = settings
    by_topic: dict[str, list[Message]] = {}
    offsets: dict[tuple[str, int], int] = {}
    for msg in msgs:
        topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
        by_topic.setdefault(topic, []).append(msg)
        offsets[(topic, partition)] = max(offsets.get((topic, partition), 0), offset + 1)
    tables = [_rows(s, topic, records) for topic, records in by_topic.items()]
    return StoreBatch([t for t in tables if t is not None], offsets, len(msgs))


def _rows(s: Settings, topic: str, records: Sequence[Message]) -> Rows | None:
    """The table rows of one topic's records (None: a topic the store does not read)."""
    if topic == s.input_topic:
        return transaction_rows(records, s.max_value_bytes)
    if topic == s.decisions_topic:
        return decision_rows(records)
    if topic == s.labels_topic:
        return label_rows(records, s.max_value_bytes)
    if topic == s.dlq_topic:
        return dead_letter_rows(records, s.dlq_topic)
    return None


def topics(settings: Settings) -> list[str]:
    """The topics the store reads."""
    s = settings
    return [s.input_topic, s.decisions_topic, s.labels_topic, s.dlq_topic]
