"""The one dead-letter record format, for the scorer (transactions) and the aggregator (labels).

The value and key are the original bytes, so a fixed producer can replay the record as it was; the
headers say why it was refused and where it came from:
`reason` (a stable snake_case string), `detail` (at most DETAIL_CHARS characters), `source.topic`,
`source.partition`, `source.offset`, `source.timestamp` (the record's Kafka timestamp, ms),
`dead_lettered_at` (ms), and each of the original record's headers as `original.<name>`.

Every dead letter can be produced: a value over `max_value_bytes` (an oversized_value reject) keeps its
first `dead_letter_prefix_bytes`, a key its first MAX_KEY_BYTES, and the original headers at most
ORIGINAL_HEADER_BYTES; what was cut is said in `value.size` + `value.sha256` (and `key.size` +
`key.sha256`, `original.dropped`). The producer's message.max.bytes leaves room for all of it
(config.Settings.producer_max_bytes). If the broker still refuses a dead letter for its size (its own
limit is lower), the sink sends it again with the value cut to the prefix (`fallback`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from confluent_kafka import Message

DETAIL_CHARS = 500
MAX_KEY_BYTES = 1024
ORIGINAL_HEADER_BYTES = 32_768
Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Limits:
    """How large a dead letter's value may be before it is cut, and what of it is kept then."""

    max_value_bytes: int = 65_536
    prefix_bytes: int = 4096


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    """What goes to the dead-letter topic; `fallback` is the value cut to the prefix, with its headers."""

    key: bytes | None
    value: bytes | None
    headers: Headers
    fallback: tuple[bytes, Headers] | None


class DeadLetterSink(Protocol):
    """What sending a dead letter needs of the producer (kafka.sink.Sink)."""

    def send_one(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
        partition: int | None = None,
        fallback: tuple[bytes, Headers] | None = None,
    ) -> bool: ...


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
    room, dropped = ORIGINAL_HEADER_BYTES, 0
    for name, value in original.items() if isinstance(original, dict) else original:
        raw = value if isinstance(value, bytes) else str(value).encode()
        room -= len(name) + len(raw)
        if room < 0:
            dropped += 1
            continue
        headers.append((f"original.{name}", raw))
    if dropped:
        headers.append(("original.dropped", str(dropped).encode()))
    return headers


def _cut(data: bytes, keep: int, name: str) -> tuple[bytes, Headers]:
    return data[:keep], [(f"{name}.size", str(len(data)).encode()), (f"{name}.sha256", _sha256(data))]


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).hexdigest().encode()


def dead_letter(msg: Message, reason: str, detail: str, now_ms: int, limits: Limits) -> DeadLetterRecord:
    """The dead letter of `msg`, within the producer's limit whatever the record was."""
    headers = dead_letter_headers(msg, reason, detail, now_ms)
    key, value = msg.key(), msg.value()
    if key is not None and len(key) > MAX_KEY_BYTES:
        key, cut = _cut(key, MAX_KEY_BYTES, "key")
        headers += cut
    if value is None or len(value) <= limits.prefix_bytes:
        return DeadLetterRecord(key, value, headers, None)
    prefix, cut = _cut(value, limits.prefix_bytes, "value")
    if len(value) > limits.max_value_bytes:
        return DeadLetterRecord(key, prefix, headers + cut, None)
    return DeadLetterRecord(key, value, headers, (prefix, headers + cut))


def send_dead_letter(
    sink: DeadLetterSink, topic: str, msg: Message, reason: str, detail: str, now_ms: int, limits: Limits
) -> bool:
    """Queue `msg`'s dead letter; False when it could not be queued (counted and logged by the sink)."""
    record = dead_letter(msg, reason, detail, now_ms, limits)
    return sink.send_one(topic, record.value, record.key, record.headers, fallback=record.fallback)
