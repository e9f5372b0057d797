"""The producer for decisions, flags, dead letters and state: batched sends, backpressure, delivery epochs.

Every message belongs to the current *epoch*. The commit tracker (scoring/commits.py) seals an epoch when
it wants to commit, and commits that epoch's offsets only once the broker has acknowledged every message
of it and of all earlier epochs (at-least-once without flushing on the hot path). A full producer queue
means poll and retry, never an exception and never an unbounded buffer. Any other refusal is never
retried here: the broker's (after librdkafka's own retries) or the producer's at produce time (a record
over its size limit, an unknown partition after a topic was recreated smaller, a fatal producer state).
It marks the sink failed and its epoch is never acknowledged, so the loop stops without committing past
it and the records are processed again after restart. The one exception is a dead letter refused for its
size: it goes again cut to its prefix first (kafka/deadletters.py).
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
SIZE_ERRORS = (KafkaError.MSG_SIZE_TOO_LARGE,)  # the producer's refusal and the broker's share the code
Fallback = tuple[bytes, list[tuple[str, bytes]]]


def produce_all(
    producer: Producer,
    topic: str,
    messages: Sequence[Message],
    wait: Callable[[], None],
    queued: Callable[[int], object] = lambda n: None,
    **kwargs: Any,
) -> Any:
    """Queue `messages` with produce_batch, calling `wait` (which must poll the producer) while its queue
    is full; `queued(n)` is told how many each call queued before any wait (a poll may serve their delivery
    reports). Returns the refusal that stopped it, a KafkaError (None: all were queued).

    Only a full queue is retried: any other error produce_batch reports for a message (its size, an
    unknown partition, a fatal producer state) or raises is returned at once, with the messages after it
    possibly unqueued, because retrying it would loop forever while the process still looks healthy.
    """
    pending = list(messages)
    while pending:
        try:
            queued(producer.produce_batch(topic, pending, **kwargs))
        except BufferError:  # produce_batch reports a full queue per message; a raise means the same
            wait()
            continue
        except KafkaException as exc:
            return _kafka_error(exc)
        full: list[Message] = []
        for m in pending:
            err = m.pop("_error", None)
            if err is None:
                continue
            if not _queue_full(err):
                return err
            full.append(m)
        if full:
            wait()
        pending = full
    return None


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
        self._again: list[tuple[int, str, bytes | None, int | None, Fallback]] = []

    def _callback(self, epoch: int) -> Callable[[KafkaError | None, Any], None]:
        cb = self._callbacks.get(epoch)
        if cb is None:

            def cb(err: KafkaError | None, msg: Any, epoch: int = epoch) -> None:
                self._in_flight[epoch] -= 1
                if err is not None:
                    self._failed(err, msg.topic() if msg is not None else "?", epoch)

            self._callbacks[epoch] = cb
        return cb

    def _failed(self, err: Any, topic: str, epoch: int) -> None:
        """A message of `epoch` was refused: nothing of this epoch or later is ever acknowledged."""
        if self.first_failed_epoch is None or epoch < self.first_failed_epoch:
            self.first_failed_epoch = epoch
        if self.metrics is not None:
            self.metrics.produce_errors.labels(topic).inc()
        if self.failure is None:
            self.failure = f"delivery to {topic} failed: {err}"
            logger.error("delivery_failed", extra={"topic": topic, "error": str(err)})

    def send(self, topic: str, messages: Sequence[Message], partition: int | None = None) -> None:
        """Queue many messages ({'value', 'key'}), all to `partition` when given (else by key).

        A per-message 'partition' is not reliably honoured by produce_batch, hence the argument.
        Waits (polling) while the producer queue is full; any other refusal fails the sink (`failure`).
        """
        epoch = self.epoch
        where = {} if partition is None else {"partition": partition}

        def queued(n: int) -> None:  # counted before the next poll serves their delivery reports
            self._in_flight[epoch] = self._in_flight.get(epoch, 0) + n

        refused = produce_all(
            self.producer,
            topic,
            messages,
            self._wait_for_room,
            queued,
            on_delivery=self._callback(epoch),
            **where,
        )
        if refused is not None:
            self._failed(refused, topic, epoch)
        self._poll(0)

    def send_one(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
        partition: int | None = None,
        fallback: Fallback | None = None,
    ) -> bool:
        """Queue one message with headers (dead letters); waits while the queue is full. Never raises:
        a message the producer refuses for its size goes again as `fallback` (value and headers), here
        or when the broker refuses it; any other refusal, or one with no smaller fallback left, fails the
        sink like a refused delivery (False): a dead letter that was not written must stop the commits."""
        epoch = self.epoch
        attempts = [(value, headers)] + ([fallback] if fallback is not None else [])
        error: KafkaException | None = None
        for number, (attempt_value, attempt_headers) in enumerate(attempts):
            rest = fallback if number == 0 else None
            try:
                self._produce_one(epoch, topic, attempt_value, key, attempt_headers, partition, rest)
                return True
            except KafkaException as exc:
                error = exc
                if not _size_error(_kafka_error(exc)):
                    break  # only a smaller attempt can succeed where this one failed
        self._not_written(topic, error, epoch)
        return False

    def _not_written(self, topic: str, error: Any, epoch: int) -> None:
        self._count("dead_letter_errors")
        logger.error("dead_letter_not_written", extra={"topic": topic, "error": str(error)})
        self._failed(error, topic, epoch)

    def _produce_one(
        self,
        epoch: int,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: Sequence[tuple[str, bytes]] | None,
        partition: int | None,
        fallback: Fallback | None,
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
        self, epoch: int, topic: str, key: bytes | None, partition: int | None, fallback: Fallback
    ) -> Callable[[KafkaError | None, Any], None]:
        def cb(err: KafkaError | None, msg: Any) -> None:
            self._in_flight[epoch] -= 1
            if err is not None and _size_error(err):
                self._again.append((epoch, topic, key, partition, fallback))
            elif err is not None:
                self._failed(err, topic, epoch)

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
                self._not_written(topic, _kafka_error(exc), epoch)

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


def _kafka_error(exc: KafkaException) -> Any:
    """The KafkaError a KafkaException carries (or the exception itself when it carries none)."""
    return exc.args[0] if exc.args else exc


def _queue_full(err: Any) -> bool:
    return isinstance(err, KafkaError) and err.code() == KafkaError._QUEUE_FULL


def _size_error(err: Any) -> bool:
    """Is this the producer's or the broker's refusal of a message for its size?"""
    return isinstance(err, KafkaError) and err.code() in SIZE_ERRORS
