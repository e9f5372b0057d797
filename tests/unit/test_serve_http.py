"""scorer serve's ASGI app and service over a fake stream: routes, errors, deadlines, fallbacks, batches.

The fake publish answers through the same path the reply listener takes (Pending.complete, from another
thread), or not at all, or refuses the transaction as a broker would."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from scorer.config import Settings
from scorer.serve.access import Access, OpenAccess
from scorer.serve.http import ScoringApp
from scorer.serve.metrics import ServeMetrics
from scorer.serve.pending import Pending
from scorer.serve.service import ScoringService

TX = {"customer_id": "C1", "terminal_id": "T1", "amount": 5.0, "timestamp": "2026-03-01T10:00:00Z"}


class FakeStream:
    """publish(): answer each transaction from a thread with a decision (or an error, or never)."""

    def __init__(self, pending: Pending, mode: str = "decide") -> None:
        self.pending = pending
        self.mode = mode
        self.published: list[bytes] = []

    def publish(
        self, customer: str, value: bytes, tid: str, cid: bytes, failed: Callable[[str], None]
    ) -> None:
        self.published.append(value)
        if self.mode == "refuse":
            failed("Broker: not enough replicas")
        elif self.mode == "decide":
            decision = orjson.dumps({"transaction_id": tid, "score": 0.25, "flagged": False})
            threading.Timer(0.01, self.pending.complete, (cid, decision)).start()
        elif self.mode == "dead":
            error = orjson.dumps({"error": "processing_error", "detail": "model failed"})
            threading.Timer(0.01, self.pending.complete, (cid, error)).start()


def build(
    mode: str = "decide", access: Access | None = None, **settings: Any
) -> tuple[ScoringApp, FakeStream, CollectorRegistry]:
    """The app over a fake stream; open to anyone unless `access` says otherwise."""
    pending = Pending(100)
    stream = FakeStream(pending, mode)
    service = ScoringService(Settings(**settings), pending, stream.publish)
    registry = CollectorRegistry()
    metrics = ServeMetrics(registry)
    metrics.in_flight.set_function(pending.in_flight)
    ready = lambda: "the broker is down" if mode == "down" else None  # noqa: E731
    return ScoringApp(service, registry, metrics, ready, access or OpenAccess()), stream, registry


def call(app: ScoringApp, method: str, path: str, body: bytes = b"", **headers: str) -> tuple[int, bytes]:
    """One request through the ASGI interface, the body in two chunks, as a server may deliver it."""
    status, body, _ = exchange(app, method, path, body, **headers)
    return status, body


def exchange(
    app: ScoringApp, method: str, path: str, body: bytes = b"", **headers: str
) -> tuple[int, bytes, dict[bytes, bytes]]:
    """call() with the response's headers."""
    chunks = [{"type": "http.request", "body": body[: len(body) // 2], "more_body": True},
              {"type": "http.request", "body": body[len(body) // 2 :], "more_body": False}]  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return chunks.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path,
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}  # fmt: skip
    asyncio.run(app(scope, receive, send))
    start, content = sent
    response_headers = dict(start["headers"])
    assert int(response_headers[b"content-length"]) == len(content["body"])
    return int(start["status"]), bytes(content["body"]), response_headers


def tx(tid: str) -> bytes:
    return orjson.dumps({**TX, "transaction_id": tid})


def test_a_decision_comes_back_with_its_source_and_a_retry_from_the_cache() -> None:
    app, stream, registry = build()
    status, body = call(app, "POST", "/v1/score", tx("a"))
    assert (
        status == 200
        and body == b'{"decision_source":"stream","transaction_id":"a","score":0.25,"flagged":false}'
    )
    status, body = call(app, "POST", "/v1/score", tx("a"))
    assert status == 200 and orjson.loads(body)["decision_source"] == "cache"
    assert len(stream.published) == 1  # the retry was not published again
    assert (
        registry.get_sample_value("scorer_serve_requests_total", {"route": "score", "outcome": "cache"}) == 1
    )


def test_a_missed_deadline_is_the_configured_fallback_or_504() -> None:
    app, stream, registry = build("silent", serve_fallback_action="review")
    status, body = call(app, "POST", "/v1/score", tx("b"), **{"X-Scorer-Deadline-Ms": "20"})
    doc = orjson.loads(body)
    assert status == 200 and doc["decision_source"] == "fallback" and doc["fallback_reason"] == "deadline"
    assert doc["action"] == "review" and doc["flagged"] is True and doc["transaction_id"] == "b"
    strict, _, _ = build("silent", serve_on_deadline="504")
    status, body = call(strict, "POST", "/v1/score", tx("c"), **{"X-Scorer-Deadline-Ms": "20"})
    assert status == 504 and orjson.loads(body)["error"] == "deadline_exceeded"
    assert (
        registry.get_sample_value("scorer_serve_requests_total", {"route": "score", "outcome": "fallback"})
        == 1
    )


def test_a_refused_publish_is_503_and_a_dead_letter_the_fallback() -> None:
    refused, _, _ = build("refuse")
    status, body = call(refused, "POST", "/v1/score", tx("d"))
    assert status == 503 and orjson.loads(body)["error"] == "unavailable"
    dead, _, _ = build("dead")
    status, body = call(dead, "POST", "/v1/score", tx("e"), **{"X-Scorer-Deadline-Ms": "5000"})
    assert status == 200 and orjson.loads(body)["fallback_reason"] == "processing_error"


def test_a_batch_answers_each_transaction_in_order() -> None:
    app, stream, _ = build()
    body = orjson.dumps([{**TX, "transaction_id": f"b{i}"} for i in range(3)])
    status, answer = call(app, "POST", "/v1/score:batch", body)
    assert status == 200
    assert [d["transaction_id"] for d in orjson.loads(answer)["decisions"]] == ["b0", "b1", "b2"]
    for bad, reason in ((b"{", "invalid_json"), (b"{}", "not_an_array"), (b"[]", "not_an_array")):
        status, answer = call(app, "POST", "/v1/score:batch", bad)
        assert status == 422 and orjson.loads(answer)["reason"] == reason
    assert len(stream.published) == 3


def test_routes_probes_and_refusals() -> None:
    app, stream, _ = build()
    assert call(app, "GET", "/healthz") == (200, b"ok\n")
    assert call(app, "GET", "/readyz")[0] == 200
    assert call(build("down")[0], "GET", "/readyz") == (503, b"not ready: the broker is down\n")
    assert b"scorer_serve_in_flight" in call(app, "GET", "/metrics")[1]
    assert orjson.loads(call(app, "GET", "/openapi.json")[1])["openapi"].startswith("3.")
    assert call(app, "GET", "/v1/score")[0] == 405
    assert call(app, "GET", "/nope")[0] == 404
    status, body = call(app, "POST", "/v1/score", b"x" * 70_000)  # the stream would dead-letter it so
    assert status == 422 and orjson.loads(body)["reason"] == "oversized_value"
    assert call(app, "POST", "/v1/score:batch", b"x" * (65_536 * 100 + 2000))[0] == 413
    status, body = call(app, "POST", "/v1/score", tx("f"), **{"X-Scorer-Deadline-Ms": "0"})
    assert status == 400 and orjson.loads(body)["error"] == "invalid_deadline"
    status, body = call(app, "POST", "/v1/score", b'{"transaction_id": "g"}')
    assert status == 422 and orjson.loads(body)["reason"] == "missing_field"
    assert stream.published == []  # nothing invalid was published
