"""The HTTP face of `scorer serve`: a bare ASGI application (run by uvicorn) with six routes.

No framework: the routes are few and fixed, and a measurement on this machine found a bare ASGI callable
under uvicorn the cheapest of the stacks tried per request at equal latency (docs/serve.md). The answers
come from service.py; who may ask, from access.py (the scoring routes, and /metrics, need an API key
unless serve_auth = "none"; the probes and the API's description stay open: docs/serve.md says why). Handlers never block the event loop: a request's decision is a concurrent future
completed by the reply listener's thread; the handler waits on an asyncio future that the completion
wakes (not on the future itself, so a missed deadline never cancels it: the late decision must still
land in the cache).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from concurrent.futures import Future
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from scorer.serve.access import Access, ApiKey, OpenAccess, Refused
from scorer.serve.metrics import ServeMetrics
from scorer.serve.openapi import openapi_document
from scorer.serve.service import DEADLINE_HEADER, Answer, ScoringService

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Headers = tuple[tuple[bytes, bytes], ...]
JSON = b"application/json"
TEXT = b"text/plain; charset=utf-8"
REALM = b'Bearer realm="scorer"'
logger = logging.getLogger(__name__)


class ScoringApp:
    """POST /v1/score, POST /v1/score:batch, GET /healthz /readyz /metrics /openapi.json."""

    def __init__(
        self,
        service: ScoringService,
        registry: CollectorRegistry,
        metrics: ServeMetrics,
        ready: Callable[[], str | None],
        access: Access,
    ) -> None:
        self.service = service
        self.registry = registry
        self.metrics = metrics
        self.ready = ready  # None when a decision can come back, else why not
        self.access = access
        self.batch_max = service.settings.serve_batch_max
        self.max_single = service.settings.max_value_bytes  # over it: the stream's oversized_value
        self.max_batch = service.settings.max_value_bytes * self.batch_max + 1024
        self.openapi = orjson.dumps(openapi_document(self.batch_max, keys=not isinstance(access, OpenAccess)))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off (uvicorn's lifespan="off"); websockets are not served
        method, path = scope["method"], scope["path"]
        extra: Headers = ()
        if method == "POST" and path in ("/v1/score", "/v1/score:batch"):
            answer = await self._score(scope, receive, path.endswith(":batch"))
            status, body, kind, extra = answer.status, answer.body, JSON, answer.headers
        elif method == "GET" and path in GETS:
            refused = self._caller(scope) if path in KEYED else None
            if isinstance(refused, Refused):
                answer = self._refused(refused)
                status, body, kind, extra = answer.status, answer.body, JSON, answer.headers
            else:
                status, body, kind = GETS[path](self)
        elif path in GETS or path.startswith("/v1/score"):
            status, body, kind = 405, _problem("method_not_allowed", f"{method} {path}"), JSON
        else:
            status, body, kind = 404, _problem("not_found", path), JSON
        headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode()), *extra]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _score(self, scope: Scope, receive: Receive, batch: bool) -> Answer:
        route = "score_batch" if batch else "score"
        with self.metrics.timed(route) as record:
            try:
                answer = await self._decide(scope, receive, batch)
            except (
                Exception
            ):  # a bug of ours: 500, logged with its traceback, never taken for the broker's 503
                logger.exception("request_failed", extra={"route": route})
                answer = Answer(
                    500, _problem("internal_error", "the request failed; see the log"), "internal_error"
                )
            record(answer.outcome)
            return answer

    async def _decide(self, scope: Scope, receive: Receive, batch: bool) -> Answer:
        caller = self._caller(scope)
        if isinstance(caller, Refused):
            return self._refused(caller)
        limit = self.max_batch if batch else self.max_single
        body = await _read_body(receive, limit)
        if body is None:
            return _too_large(limit, batch)
        return await self._answer(caller, _header(scope, DEADLINE_HEADER), body, batch)

    async def _answer(self, caller: ApiKey, deadline_header: str | None, body: bytes, batch: bool) -> Answer:
        service = self.service
        deadline = service.deadline_s(deadline_header)
        if isinstance(deadline, Answer):
            return deadline
        values = _batch_values(body, self.batch_max) if batch else [body]
        if isinstance(values, Answer):
            return values
        refused = self.access.spend(caller, len(values))  # a batch costs one per transaction
        if refused is not None:
            return self._refused(refused)
        self.metrics.accepted(caller.name)
        admitted = service.admit(values)
        if isinstance(admitted, Answer):
            return admitted
        await _wait([t.future for t in admitted], deadline)
        if not batch:
            return service.answer(admitted[0])
        answers = [service.answer(t, single=False) for t in admitted]
        outcome = "stream" if all(a.outcome in ("stream", "cache") for a in answers) else "fallback"
        return Answer(200, b'{"decisions":[' + b",".join(a.body for a in answers) + b"]}", outcome)

    def _caller(self, scope: Scope) -> ApiKey | Refused:
        return self.access.identify(_header(scope, "authorization"))

    def _refused(self, refused: Refused) -> Answer:
        """401 with WWW-Authenticate (RFC 6750), or 429 with Retry-After; counted by key name."""
        if refused.status == 401:
            self.metrics.keys.labels(refused.label, "unauthorized").inc()
            challenge = REALM if refused.label == "missing" else REALM + b', error="invalid_token"'
            body = _problem("unauthorized", refused.detail)
            return Answer(401, body, "unauthorized", ((b"www-authenticate", challenge),))
        self.metrics.keys.labels(refused.label, "rate_limited").inc()
        retry = str(refused.retry_after_s).encode()
        return Answer(
            429, _problem("rate_limited", refused.detail), "rate_limited", ((b"retry-after", retry),)
        )

    def healthz(self) -> tuple[int, bytes, bytes]:
        return 200, b"ok\n", TEXT

    def readyz(self) -> tuple[int, bytes, bytes]:
        why_not = self.ready()
        if why_not is None:
            return 200, b"ready\n", TEXT
        return 503, f"not ready: {why_not}\n".encode(), TEXT

    def prometheus(self) -> tuple[int, bytes, bytes]:
        return 200, generate_latest(self.registry), CONTENT_TYPE_LATEST.encode()

    def openapi_json(self) -> tuple[int, bytes, bytes]:
        return 200, self.openapi, JSON


GETS: dict[str, Callable[[ScoringApp], tuple[int, bytes, bytes]]] = {
    "/healthz": ScoringApp.healthz,
    "/readyz": ScoringApp.readyz,
    "/metrics": ScoringApp.prometheus,
    "/openapi.json": ScoringApp.openapi_json,
}
KEYED = ("/metrics",)  # beside the scoring routes: key names and volumes are the operator's business


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None once it exceeds `limit` bytes."""
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        more = bool(message.get("more_body", False))
    return b"".join(chunks)


def _header(scope: Scope, name: str) -> str | None:
    wanted = name.encode()
    for key, value in scope.get("headers", []):
        if key == wanted:  # ASGI servers give header names in lower case
            return bytes(value).decode("latin-1")
    return None


def _batch_values(body: bytes, batch_max: int) -> list[bytes] | Answer:
    """The batch body, a JSON array of transactions, as one JSON value per transaction."""
    try:
        docs = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return _unprocessable("invalid_json", str(exc))
    if not isinstance(docs, list) or not docs:
        return _unprocessable("not_an_array", "the body must be a non-empty JSON array of transactions")
    if len(docs) > batch_max:
        return _unprocessable(
            "batch_too_large", f"{len(docs)} transactions, at most {batch_max} (serve_batch_max)"
        )
    return [orjson.dumps(d) for d in docs]


def _unprocessable(reason: str, detail: str) -> Answer:
    return Answer(
        422, orjson.dumps({"error": "invalid_request", "reason": reason, "detail": detail}), "invalid"
    )


def _too_large(limit: int, batch: bool) -> Answer:
    """A batch body over its limit is 413; one transaction over max_value_bytes gets the stream's reason."""
    if batch:
        return Answer(413, _problem("too_large", f"the body is over {limit} bytes"), "invalid")
    detail = f"value over max_value_bytes ({limit})"
    body = orjson.dumps({"error": "invalid_transaction", "reason": "oversized_value", "detail": detail})
    return Answer(422, body, "invalid")


def _problem(error: str, detail: str) -> bytes:
    return orjson.dumps({"error": error, "detail": detail})


async def _wait(futures: Sequence[Future[bytes] | None], timeout_s: float) -> None:
    """Until every future is done or the deadline passes; never cancels them."""
    loop = asyncio.get_running_loop()
    waiting = [_woken(f, loop) for f in futures if f is not None and not f.done()]
    if waiting:
        await asyncio.wait(waiting, timeout=timeout_s)
        for w in waiting:
            w.cancel()  # the asyncio side only: the concurrent future goes on to its late decision


def _woken(future: Future[bytes], loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
    woken: asyncio.Future[None] = loop.create_future()

    def wake(_: Future[bytes]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed (shutdown): nobody waits any more
            loop.call_soon_threadsafe(_set, woken)

    future.add_done_callback(wake)
    return woken


def _set(woken: asyncio.Future[None]) -> None:
    if not woken.done():
        woken.set_result(None)
