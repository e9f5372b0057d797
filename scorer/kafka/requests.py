"""`scorer serve`'s Kafka side: publish a request's transaction with its reply address, read the replies.

The transaction goes to the transactions topic keyed by customer, as a producer would publish it, so the
log stays complete and the customer's windows keep one writer (the scorer that owns the partition). Its
headers carry the reply address (scoring/replies.py). Each serve instance reads its own reply topic
(`reply_topic`, one partition, created at start with a one-hour retention) from its end: replies are
keyed by correlation id and a reply nobody waits for is ignored, so two instances sharing a topic by
mistake still answer correctly, each reading the other's replies for nothing. After a restart the
instance starts again at the end: replies to requests of its previous life are skipped (those clients
lost their connection anyway; the decisions are on the decisions topic).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from scorer.config import Settings
from scorer.errors import ScorerError
from scorer.kafka import clients
from scorer.kafka.admin import TopicSpec, ensure_topics

logger = logging.getLogger(__name__)
REPLY_TO = "scorer-reply-to"  # the headers of a request's transaction (read by scoring/replies.py)
CORRELATION_ID = "scorer-correlation-id"
TRANSACTION_ID = "scorer-transaction-id"
REPLY_RETENTION_MS = 3_600_000  # replies matter for seconds; an hour is ample for a restarted instance
EXPIRE_EVERY_S = 5.0
LOG_EVERY_S = 10.0  # a callback failing again and again: one line per this, with the count


def reply_topic(settings: Settings) -> str:
    """This instance's reply topic: the setting, or scorer-replies-<hostname> (a pod's name on Kubernetes,
    stable across its container's restarts)."""
    return settings.reply_topic or f"scorer-replies-{socket.gethostname()}"


class Publisher:
    """A producer of request transactions (acks=all, idempotent, no linger)."""

    def __init__(self, settings: Settings, reply_to: str, producer: Any = None) -> None:
        # no linger: each request goes at once; delivery reports for failures only (a success needs none:
        # the reply is the acknowledgement that matters), so the poll thread wakes only when one fails
        config = {**settings.producer_config(), "linger.ms": 0, "delivery.report.only.error": True}
        self.producer = producer if producer is not None else clients.producer(config)  # tests: a fake
        self.topic = settings.input_topic
        self.reply_to = reply_to.encode()

    def publish(
        self,
        customer_id: str,
        value: bytes,
        transaction_id: str,
        correlation_id: bytes,
        on_failure: Callable[[str], object],
    ) -> None:
        """Queue the transaction; `on_failure(detail)` if the broker refuses it (nothing to wait for)."""
        headers: list[tuple[str, str | bytes | None]] = [
            (REPLY_TO, self.reply_to),
            (CORRELATION_ID, correlation_id),
            (TRANSACTION_ID, transaction_id.encode()),
        ]

        def delivered(err: KafkaError | None, msg: Any) -> None:
            if err is not None:
                on_failure(str(err))

        try:
            self.producer.produce(
                self.topic, value=value, key=customer_id.encode(), headers=headers, on_delivery=delivered
            )
        except BufferError as exc:  # the producer's queue is full: not published, the client may retry
            on_failure(f"the producer's queue is full: {exc}")
        except KafkaException as exc:  # refused before sending (a fatal producer state, an unknown topic)
            on_failure(f"Kafka: {exc.args[0].str() if exc.args else exc}")
        # anything else is a bug of ours, not the broker's answer: it propagates (HTTP 500, logged)
        self.producer.poll(0)  # failed deliveries of earlier requests (the only reports asked for)

    def poll(self) -> None:
        """Serve failed deliveries when no request comes to do it (the reply listener calls this)."""
        self.producer.poll(0)

    def close(self, timeout_s: float = 5.0) -> None:
        self.producer.flush(timeout_s)


class ReplyListener:
    """Reads the reply topic from its end on a thread and hands each (correlation id, value) on.

    The thread outlives any failure of the callbacks it runs (a reply's completion, the producer's
    delivery reports, the expiry) and of its consumer: each is logged (at most once per LOG_EVERY_S per
    callback, with the count since) and counted through `on_error(callback)`; the next reply is read as
    usual. Only close() ends it.
    """

    def __init__(
        self,
        settings: Settings,
        topic: str,
        on_reply: Callable[[bytes, bytes], object],
        on_tick: Callable[[], object] | None = None,
        on_turn: Callable[[], object] | None = None,
        on_error: Callable[[str], object] | None = None,
    ) -> None:
        self.settings = settings
        self.topic = topic
        self.on_reply = on_reply
        self.on_tick = on_tick  # every EXPIRE_EVERY_S
        self.on_turn = on_turn  # every turn of the loop (at most 50 ms apart)
        self.on_error = on_error  # the callback's name (reply, turn, tick, consume) after each failure
        self.broker_ok = True  # the last metadata request (every EXPIRE_EVERY_S) was answered
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="serve-replies", daemon=True)
        self._last_tick = time.monotonic()
        self._logged: dict[str, tuple[float, int]] = {}  # callback -> (last logged, failures since)

    def start(self, timeout_s: float = 15.0) -> ReplyListener:
        """Create the topic if needed and start reading it at its end."""
        security = {k: str(v) for k, v in self.settings.admin_config().items() if k != "bootstrap.servers"}
        spec = TopicSpec(self.topic, 1, config={"retention.ms": str(REPLY_RETENTION_MS)})
        ensure_topics(self.settings.brokers, [spec], kafka=security, timeout_s=timeout_s)
        group = f"scorer-serve-{uuid.uuid4().hex[:8]}"  # assign() only: the group id is never used
        consumer = clients.consumer(
            {**self.settings.consumer_config(group=group), "enable.auto.commit": False}
        )
        try:  # from the end as it is now: a reply to a request published after this cannot be missed
            _, high = consumer.get_watermark_offsets(TopicPartition(self.topic, 0), timeout=timeout_s)
        except KafkaException as exc:
            consumer.close()
            raise ScorerError(f"cannot read the reply topic {self.topic}: {exc}") from exc
        consumer.assign([TopicPartition(self.topic, 0, high)])  # older replies (if any) are ignored
        return self.run_on(consumer)

    def run_on(self, consumer: Any) -> ReplyListener:
        """Start the thread on `consumer`, already assigned to the reply topic (start() makes it)."""
        self.consumer = consumer
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.turn()
            except Exception as exc:  # the consumer itself failed: reported, read again
                self._failed("consume", exc)
                self._stop.wait(1.0)
        self.consumer.close()

    def turn(self) -> None:
        """One turn: the replies that have arrived (waiting at most 50 ms), then the periodic work."""
        for msg in clients.take_available(self.consumer, 500, 0.05):
            if msg.error() is None:
                self._call("reply", self.on_reply, msg.key() or b"", msg.value() or b"")
        if self.on_turn is not None:
            self._call("turn", self.on_turn)
        if time.monotonic() - self._last_tick >= EXPIRE_EVERY_S:
            self._last_tick = time.monotonic()
            self._check_broker()
            if self.on_tick is not None:
                self._call("tick", self.on_tick)

    def _call(self, name: str, callback: Callable[..., object], *args: Any) -> None:
        try:
            callback(*args)
        except Exception as exc:  # a bug in a callback must not stop the replies
            self._failed(name, exc)

    def _failed(self, callback: str, exc: Exception) -> None:
        if self.on_error is not None:
            self._call_quietly(self.on_error, callback)
        now = time.monotonic()
        last, since = self._logged.get(callback, (-LOG_EVERY_S, 0))
        if now - last < LOG_EVERY_S:
            self._logged[callback] = (last, since + 1)
            return
        self._logged[callback] = (now, 0)
        logger.error(
            "reply_listener_callback_failed",
            extra={"callback": callback, "error": f"{type(exc).__name__}: {exc}", "failures_since": since},
            exc_info=exc,
        )

    @staticmethod
    def _call_quietly(callback: Callable[[str], object], name: str) -> None:
        with contextlib.suppress(Exception):  # the counter itself failing: the log line still says it
            callback(name)

    def _check_broker(self) -> None:
        try:
            self.consumer.list_topics(self.topic, timeout=2.0)
            self.broker_ok = True
        except KafkaException:
            self.broker_ok = False

    def alive(self) -> bool:
        return self._thread.is_alive() and self.broker_ok

    def close(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
