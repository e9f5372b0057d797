"""The producer for decisions, flags, dead letters and state: batched sends, backpressure, delivery epochs.

Every message belongs to the current *epoch*. The commit tracker (scoring/commits.py) seals an epoch when
it wants to commit, and commits that epoch's offsets only once the broker has acknowledged every message
of it and of all earlier epochs (at-least-once without flushing on the hot path). A full producer queue
means poll and retry, never an exception and never an unbounded buffer. A message the broker refuses
after all retries marks the sink failed and its epoch is never acknowledged: the loop stops without
committing past it, so the records are processed again after restart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from scorer.kafka import clients
from scorer.runtime.metrics import Metrics

logger = logging.getLogger(__name__)
Message = dict[str, Any]
RETRY_POLL_S = 0.05
PRODUCE_ATTEMPTS = 3  # a message the producer refuses outright is tried this often before it is given up
SIZE_ERRORS = (KafkaError.MSG_SIZE_TOO_LARGE,)  # the producer's refusal and the broker's share the code


class Sink:
    """Wraps one confluent-kafka Producer; not thread-safe (one loop owns it)."""

    def __init__(
        self, config: Mapping[str, Any], metrics: Metrics | None = None, producer: Producer | None = None
    ) -> None:
        self.producer = producer if producer is not None else clients.producer(config)  # tests pass a fake
        self.metrics = metrics
        self.epoch = 0
        self._in_flight: dict[int, int] = {}
        self._callbacks: dict[int, Callable[[KafkaError | None, Any], None]] = {}
        self.failure: str | None = None
        self.first_failed_epoch: int | None = None  # the oldest epoch with a refused message
        self._again: list[
            tuple[int, str, bytes | None, int | None, tuple[bytes, list[tuple[str, bytes]]]]
        ] = []

    def _callback(self, epoch: int) -> Callable[[KafkaError | None, Any], None]:
        cb = self._callbacks.get(epoch)
        if cb is None:

            def cb(err: KafkaError | None, msg: Any, epoch: int = epoch) -> None:
                self._in_flight[epoch] -= 1
                if err is not None:
                    self._failed(err, msg, epoch)

            self._callbacks[epoch] = cb
        return cb

    def _failed(self, err: KafkaError, msg: Any, epoch: int) -> None:
        if self.first_failed_epoch is None or epoch < self.first_failed_epoch:
            self.first_failed_epoch = epoch
        topic = msg.topic() if msg is not None else "?"
        if self.metrics is not None:
            self.metrics.produce_errors.labels(topic).inc()
        if self.failure is None:
            self.failure = f"delivery to {topic} failed: {err}"
            logger.error("delivery_failed", extra={"topic": topic, "error": str(err)})

    def send(self, topic: str, messages: Sequence[Message], partition: int | None = None) -> None:
        """Queue many messages ({'value', 'key'}), all to `partition` when given (else by key).

        A per-message 'partition' is not reliably honoured by produce_batch, hence the argument.
        Waits (polling) while the producer queue is full.
        """
        pending = list(messages)
        epoch = self.epoch
        cb = self._callback(epoch)
        while pending:
            try:
                if partition is None:
                    queued = self.producer.produce_batch(topic, pending, on_delivery=cb)
                else:
                    queued = self.producer.produce_batch(topic, pending, partition=partition, on_delivery=cb)
            except BufferError:
                queued = 0
                for m in pending:
                    m["_error"] = "queue full"
            self._in_flight[epoch] = self._in_flight.get(epoch, 0) + queued
            if queued == len(pending):
                break
            failed = [m for m in pending if "_error" in m]
            if failed and len(failed) == len(pending) and queued == 0:
                self._wait_for_room()
            elif failed:
                self._poll(0)
            for m in failed:
                m.pop("_error", None)
            pending = failed
        self._poll(0)

    def send_one(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
        partition: int | None = None,
        fallback: tuple[bytes, list[tuple[str, bytes]]] | None = None,
    ) -> bool:
        """Queue one message with headers (dead letters); waits while the queue is full. Never raises:
        a message the producer refuses for its size goes again as `fallback` (value and headers), here
        or when the broker refuses it; any other refusal is retried, then counted and logged (False)."""
        epoch = self.epoch
        attempts = [(value, headers)] + ([fallback] if fallback is not None else [])
        error: KafkaException | None = None
        for number, (attempt_value, attempt_headers) in enumerate(attempts):
            rest = fallback if number == 0 else None
            for _ in range(PRODUCE_ATTEMPTS):
                try:
                    self._produce_one(epoch, topic, attempt_value, key, attempt_headers, partition, rest)
                    return True
                except KafkaException as exc:
                    error = exc
                    if _size_error(exc.args[0] if exc.args else None):
                        break  # the next attempt is smaller, if there is one
                    self._poll(RETRY_POLL_S)
        self._count("dead_letter_errors")
        logger.error("dead_letter_not_written", extra={"topic": topic, "error": str(error)})
        return False

    def _produce_one(
        self,
        epoch: int,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: Sequence[tuple[str, bytes]] | None,
        partition: int | None,
        fallback: tuple[bytes, list[tuple[str, bytes]]] | None,
    ) -> None:
        callback = self._callback(epoch)
        if fallback is not None:  # a size refusal from the broker sends the fallback in the same epoch
            callback = self._with_fallback(epoch, topic, key, partition, fallback)
        kwargs: dict[str, Any] = {"value": value, "key": key, "on_delivery": callback}
        if headers:
            kwargs["headers"] = list(headers)
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                self.producer.produce(topic, **kwargs)
                break
            except BufferError:
                self._wait_for_room()
        self._in_flight[epoch] = self._in_flight.get(epoch, 0) + 1

    def _with_fallback(
        self,
        epoch: int,
        topic: str,
        key: bytes | None,
        partition: int | None,
        fallback: tuple[bytes, list[tuple[str, bytes]]],
    ) -> Callable[[KafkaError | None, Any], None]:
        def cb(err: KafkaError | None, msg: Any) -> None:
            self._in_flight[epoch] -= 1
            if err is not None and _size_error(err):
                self._again.append((epoch, topic, key, partition, fallback))
            elif err is not None:
                self._failed(err, msg, epoch)

        return cb

    def _poll(self, timeout_s: float) -> None:
        """Serve delivery reports, then send what the broker refused for its size again, cut."""
        self.producer.poll(timeout_s)
        while self._again:
            epoch, topic, key, partition, (value, headers) = self._again.pop(0)
            self._count("dead_letters_truncated")
            logger.warning("dead_letter_cut", extra={"topic": topic, "bytes": len(value)})
            try:
                self._produce_one(epoch, topic, value, key, headers, partition, None)
            except KafkaException as exc:
                self._count("dead_letter_errors")
                logger.error("dead_letter_not_written", extra={"topic": topic, "error": str(exc)})

    def _count(self, name: str) -> None:
        if self.metrics is not None:
            getattr(self.metrics, name).inc()

    def _wait_for_room(self) -> None:
        if self.metrics is not None:
            self.metrics.backpressure.inc()
        self._poll(RETRY_POLL_S)

    @property
    def in_flight(self) -> int:
        """Messages queued or sent whose delivery report has not come back yet."""
        return sum(self._in_flight.values())

    def seal(self) -> int:
        """Close the current epoch (returned); later messages belong to the next one."""
        sealed = self.epoch
        self.epoch += 1
        return sealed

    def acknowledged(self, epoch: int) -> bool:
        """True when every message of `epoch` and earlier epochs has been delivered.

        A message refused after all retries is answered too, but it was not delivered: its epoch and
        every later one are never acknowledged, so nothing is committed past it.
        """
        self._poll(0)
        if self.first_failed_epoch is not None and epoch >= self.first_failed_epoch:
            return False
        for e in [e for e, n in self._in_flight.items() if n == 0 and e <= epoch]:
            del self._in_flight[e]
            self._callbacks.pop(e, None)
        return all(e > epoch for e in self._in_flight)

    def wait(self, epoch: int, timeout_s: float) -> bool:
        """Poll until `epoch` is acknowledged (True), or cannot be (refused) or the timeout passes."""
        deadline = time.monotonic() + timeout_s
        while not self.acknowledged(epoch):
            refused = self.first_failed_epoch is not None and epoch >= self.first_failed_epoch
            if refused or time.monotonic() > deadline:
                return False
            self._poll(0.01)
        return True

    def poll(self, timeout_s: float = 0.0) -> None:
        self._poll(timeout_s)

    def close(self, timeout_s: float = 10.0) -> bool:
        """Flush everything; True when nothing is left in the queue."""
        return int(self.producer.flush(timeout_s)) == 0


def _size_error(err: Any) -> bool:
    """Is this the producer's or the broker's refusal of a message for its size?"""
    return isinstance(err, KafkaError) and err.code() in SIZE_ERRORS
