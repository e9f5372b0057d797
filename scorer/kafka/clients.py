"""Every Kafka client the project creates, with librdkafka's own log lines in our JSON logs.

librdkafka writes its log lines (`%3|1700000000.123|FAIL|rdkafka#consumer-1| ... Connection refused`) to
stderr by default, hundreds of them while a broker is down. Here they go to the logger
`scorer.kafka.librdkafka` instead: at DEBUG, unless librdkafka calls them critical (WARNING then), and
each distinct line (numbers aside) at most once per REPEAT_S, with how often it repeated since. What a
user must know about a broker is said once, by the command that needs it (kafka.admin.Admin).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol

from confluent_kafka import Consumer, Message, Producer
from confluent_kafka.admin import AdminClient

LIBRDKAFKA = logging.getLogger("scorer.kafka.librdkafka")
REPEAT_S = 30.0
_NUMBERS = re.compile(r"\d+")


class LibrdkafkaLog:
    """The `logger` librdkafka's lines are handed to (confluent-kafka calls `log(level, fmt, *args)`)."""

    def __init__(self, repeat_s: float = REPEAT_S) -> None:
        self.repeat_s = repeat_s
        self.seen: dict[str, tuple[float, int]] = {}  # line without numbers -> (last logged, repeats since)
        self.lock = threading.Lock()

    def log(self, level: int, fmt: str, *args: Any) -> None:
        text = fmt % args if args else fmt
        key = _NUMBERS.sub("#", text)[:300]
        now = time.monotonic()
        with self.lock:
            last, repeats = self.seen.get(key, (-self.repeat_s, 0))
            if now - last < self.repeat_s:
                self.seen[key] = (last, repeats + 1)
                return
            if len(self.seen) > 10_000:
                self.seen.clear()
            self.seen[key] = (now, 0)
        to = logging.WARNING if level >= logging.CRITICAL else logging.DEBUG
        LIBRDKAFKA.log(to, "librdkafka", extra={"line": text, "repeats": repeats})


LOG = LibrdkafkaLog()


def quiet(config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` with librdkafka's lines routed to our logs."""
    return {**config, "logger": LOG}


def consumer(config: Mapping[str, Any]) -> Consumer:
    return Consumer(quiet(config))


class Consuming(Protocol):
    """The consumer call `take_available` makes."""

    def consume(self, num_messages: int = ..., timeout: float = ...) -> list[Message]: ...


def take_available(consumer: Consuming, max_records: int, wait_s: float) -> list[Message]:
    """Up to `max_records` once the first one arrives (waiting at most `wait_s` for it), without waiting
    to fill the batch: consume(n, timeout) returns only when n records or the timeout have come."""
    msgs: list[Message] = consumer.consume(1, wait_s)
    if msgs and max_records > 1:
        msgs += consumer.consume(max_records - 1, 0)
    return msgs


def producer(config: Mapping[str, Any]) -> Producer:
    return Producer(quiet(config))


def admin(config: Mapping[str, Any]) -> AdminClient:
    return AdminClient(quiet(config))
