"""scorer serve's Kafka side under faults: a delivery error racing the reply, callbacks that raise on the
reply listener's thread, and what publish() reports as the broker's refusal (503) or lets through as ours
(500). Fakes at the confluent boundary (tests/unit/fakes.py); no broker."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from scorer.config import Settings
from scorer.kafka.requests import CORRELATION_ID, Publisher, ReplyListener
from scorer.serve.pending import Pending, ScoringFailed
from tests.unit.fakes import FakeBroker, FakeProducer
from tests.unit.test_serve_http import build, call, tx

DECISION = b'{"transaction_id":"t1","score":0.5}'


def test_a_delivery_error_racing_its_reply_resolves_the_request_once() -> None:
    """The reply's completion and a delivery error report for the same (in fact written) transaction, on
    two threads: whichever takes the request first resolves it, the other does nothing."""
    pending: Pending
    failed: list[bool] = []

    def delivery_error_meanwhile() -> None:  # runs inside complete(), after the lock, before the result
        failed.append(pending.fail(request, "unavailable", "Local: Message timed out"))

    pending = Pending(10, on_late=delivery_error_meanwhile)
    request, _ = pending.begin("t1")  # type: ignore[misc]
    pending.gave_up(request)  # its waiter's deadline passed: complete() calls on_late in the window
    assert pending.complete(request.correlation_id, DECISION) is True  # no InvalidStateError
    assert failed == [False] and request.future.result(0) == DECISION
    assert pending.begin("t1") == DECISION  # kept for a retry

    second, _ = pending.begin("t2")  # type: ignore[misc]
    assert pending.fail(second, "unavailable", "refused") is True  # the report first, then the reply
    assert pending.complete(second.correlation_id, DECISION) is False
    with pytest.raises(ScoringFailed, match="refused"):
        second.future.result(0)
    assert pending.in_flight() == 0


def test_the_delivery_report_and_the_reply_through_the_publisher_in_either_order() -> None:
    """The real Publisher on a producer whose report says refused: the reply arriving first or last."""
    for reply_first in (True, False):
        pending = Pending(10)
        producer = FakeProducer(FakeBroker(), policy=lambda topic, value: "refuse")
        publisher = Publisher(Settings(), "replies", producer=producer)
        request, _ = pending.begin("t1")  # type: ignore[misc]
        fail = lambda detail, r=request, p=pending: p.fail(r, "unavailable", detail)  # noqa: E731
        publisher.publish("C1", b"{}", "t1", request.correlation_id, fail)
        if reply_first:
            pending.complete(request.correlation_id, DECISION)
        publisher.poll()
        publisher.poll()  # the fake answers on the second poll: the report says refused
        if not reply_first:
            pending.complete(request.correlation_id, DECISION)
        assert request.future.done() and pending.in_flight() == 0


class ReplyConsumer:
    """The consumer calls the reply listener makes: replies come from a list; list_topics answers."""

    def __init__(self, replies: list[tuple[bytes, bytes]]) -> None:
        self.replies = list(replies)
        self.closed = False

    def consume(self, num_messages: int = 1, timeout: float = 0.0) -> list[Any]:
        taken, self.replies = self.replies[:num_messages], self.replies[num_messages:]
        if not taken:
            time.sleep(min(timeout, 0.01))
        return [Reply(k, v) for k, v in taken]

    def list_topics(self, topic: str, timeout: float = 0.0) -> None:
        return None

    def close(self) -> None:
        self.closed = True


class Reply:
    def __init__(self, key: bytes, value: bytes) -> None:
        self._key, self._value = key, value

    def error(self) -> None:
        return None

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return self._value

    def headers(self) -> list[tuple[str, bytes]]:
        return [(CORRELATION_ID, self._key)]


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.01)


def test_the_reply_listener_survives_callbacks_that_raise_and_counts_them(caplog: Any) -> None:
    handled: list[bytes] = []
    errors: list[str] = []
    turns = [0]

    def on_reply(correlation_id: bytes, value: bytes) -> None:
        if value == b"boom":
            raise RuntimeError("a bug in the completion")
        handled.append(value)

    def on_turn() -> None:  # the producer's delivery reports: the first one raises
        turns[0] += 1
        if turns[0] == 1:
            raise RuntimeError("a bug in a delivery callback")

    consumer = ReplyConsumer([(b"c1", b"boom"), (b"c2", b"ok")])
    listener = ReplyListener(Settings(), "replies", on_reply, None, on_turn, errors.append)
    listener.run_on(consumer)
    try:
        wait_for(lambda: handled == [b"ok"] and turns[0] >= 2)
        assert listener.alive()  # still reading replies
        assert errors == ["reply", "turn"]
        failures = [r for r in caplog.records if r.getMessage() == "reply_listener_callback_failed"]
        assert [r.callback for r in failures] == ["reply", "turn"]  # type: ignore[attr-defined]
    finally:
        listener.close()
    assert consumer.closed


def test_publish_reports_the_producers_refusals_and_lets_our_own_errors_through() -> None:
    reasons: list[str] = []
    for verdict in ("full_here", "invalid_here"):
        producer = FakeProducer(FakeBroker(), policy=lambda topic, value, v=verdict: v)
        Publisher(Settings(), "replies", producer=producer).publish("C1", b"{}", "t1", b"c1", reasons.append)
    assert reasons[0].startswith("the producer's queue is full") and reasons[1].startswith("Kafka: ")

    def bug(topic: str, value: bytes | None) -> str:
        raise TypeError("a programming error")

    publisher = Publisher(Settings(), "replies", producer=FakeProducer(FakeBroker(), policy=bug))
    with pytest.raises(TypeError):
        publisher.publish("C1", b"{}", "t1", b"c1", reasons.append)
    assert len(reasons) == 2  # not reported as the broker's refusal


def test_a_bug_in_publishing_is_a_500_not_a_503_and_releases_the_request(caplog: Any) -> None:
    app, stream, registry = build("decide")

    def broken(*args: Any) -> None:
        raise TypeError("a programming error")

    app.service.publish = broken
    status, body = call(app, "POST", "/v1/score", tx("bug"))
    assert status == 500 and orjson.loads(body)["error"] == "internal_error"
    assert app.service.pending.in_flight() == 0  # a retry is published again, not joined to a dead request
    sample = registry.get_sample_value
    assert sample("scorer_serve_requests_total", {"route": "score", "outcome": "internal_error"}) == 1
    assert sample("scorer_serve_requests_total", {"route": "score", "outcome": "unavailable"}) == 0
    assert any(r.getMessage() == "request_failed" and r.exc_info for r in caplog.records)
    app.service.publish = stream.publish
    assert call(app, "POST", "/v1/score", tx("bug"))[0] == 200


def test_the_listener_keeps_reading_when_its_consumer_fails(caplog: Any) -> None:
    class Flaky(ReplyConsumer):
        def consume(self, num_messages: int = 1, timeout: float = 0.0) -> list[Any]:
            if not hasattr(self, "failed"):
                self.failed = True
                raise RuntimeError("consumer failed once")
            return super().consume(num_messages, timeout)

    handled: list[bytes] = []
    errors: list[str] = []
    listener = ReplyListener(Settings(), "r", lambda c, v: handled.append(v), on_error=errors.append)
    listener.run_on(Flaky([(b"c1", b"ok")]))
    try:
        wait_for(lambda: handled == [b"ok"])
        assert errors == ["consume"] and listener.alive()
    finally:
        listener.close()


def test_listener_errors_are_exported_as_a_metric() -> None:
    from scorer.serve.metrics import ServeMetrics

    registry = CollectorRegistry()
    metrics = ServeMetrics(registry)
    counted = threading.Event()

    def count(name: str) -> None:
        metrics.listener_errors.labels(name).inc()
        counted.set()

    listener = ReplyListener(Settings(), "r", lambda c, v: 1 / 0, on_error=count)
    listener.run_on(ReplyConsumer([(b"c1", b"x")]))
    try:
        assert counted.wait(10)
    finally:
        listener.close()
    assert registry.get_sample_value("scorer_serve_listener_errors_total", {"callback": "reply"}) == 1
