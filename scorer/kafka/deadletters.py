"""The one dead-letter record format, for the scorer (transactions) and the aggregator (labels).

The value and key are the original bytes, so a fixed producer can replay the record as it was; the
headers say why it was refused and where it came from:
`reason` (a stable snake_case string), `detail` (at most DETAIL_CHARS characters), `source.topic`,
`source.partition`, `source.offset`, `source.timestamp` (the record's Kafka timestamp, ms),
`dead_lettered_at` (ms), and each of the original record's headers as `original.<name>`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from confluent_kafka import Message

DETAIL_CHARS = 500
Headers = list[tuple[str, bytes]]


class DeadLetterSink(Protocol):
    """What sending a dead letter needs of the producer (kafka.sink.Sink)."""

    def send_one(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> None: ...


def dead_letter_headers(msg: Message, reason: str, detail: str, now_ms: int) -> Headers:
    """The headers of the dead letter for `msg`: why, where from, when, and the original headers."""
    headers = [
        ("reason", reason.encode()),
        ("detail", detail[:DETAIL_CHARS].encode("utf-8", "replace")),
        ("source.topic", (msg.topic() or "").encode()),
        ("source.partition", str(msg.partition()).encode()),
        ("source.offset", str(msg.offset()).encode()),
        ("source.timestamp", str(msg.timestamp()[1]).encode()),
        ("dead_lettered_at", str(now_ms).encode()),
    ]
    original = msg.headers() or []
    for name, value in original.items() if isinstance(original, dict) else original:
        headers.append((f"original.{name}", value if isinstance(value, bytes) else str(value).encode()))
    return headers


def send_dead_letter(
    sink: DeadLetterSink, topic: str, msg: Message, reason: str, detail: str, now_ms: int
) -> None:
    """Queue `msg`'s original key and value to the dead-letter topic with the headers above."""
    sink.send_one(topic, msg.value(), msg.key(), dead_letter_headers(msg, reason, detail, now_ms))
