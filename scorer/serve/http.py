"""The HTTP face of `scorer serve` (aiohttp): routes, deadlines, metrics. The answers come from service.py.

Handlers never block the event loop: a request's decision is a concurrent future completed by the reply
listener's thread; the handler waits on an asyncio future that the completion wakes (not on the future
itself, so that a missed deadline never cancels it: the late decision must still land in the cache).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from scorer.serve.metrics import ServeMetrics
from scorer.serve.openapi import openapi_document
from scorer.serve.service import DEADLINE_HEADER, Answer, ScoringService

JSON = "application/json"


def build_app(
    service: ScoringService,
    registry: CollectorRegistry,
    metrics: ServeMetrics,
    ready: Callable[[], bool],
) -> web.Application:
    """The routes: POST /v1/score, POST /v1/score:batch, GET /healthz /readyz /metrics /openapi.json."""
    batch_max = service.settings.serve_batch_max
    max_body = max(1 << 20, service.settings.max_value_bytes * batch_max + 1024)
    app = web.Application(client_max_size=max_body)

    async def score(request: web.Request) -> web.Response:
        with metrics.timed("score") as record:
            answer = await _score_one(service, request)
            record(answer.outcome)
            return _json(answer.status, answer.body)

    async def score_batch(request: web.Request) -> web.Response:
        with metrics.timed("score_batch") as record:
            answer = await _score_batch(service, request, batch_max)
            record(answer.outcome)
            return _json(answer.status, answer.body)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        ok = ready()
        return web.Response(status=200 if ok else 503, text="ready\n" if ok else "not ready\n")

    async def prometheus(_: web.Request) -> web.Response:
        metrics.in_flight.set(service.pending.in_flight())
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    document = orjson.dumps(openapi_document(batch_max))

    async def openapi(_: web.Request) -> web.Response:
        return _json(200, document)

    app.add_routes([
        web.post("/v1/score", score),
        web.post("/v1/score:batch", score_batch),
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
        web.get("/metrics", prometheus),
        web.get("/openapi.json", openapi),
    ])  # fmt: skip
    return app


async def _score_one(service: ScoringService, request: web.Request) -> Answer:
    deadline = service.deadline_s(request.headers.get(DEADLINE_HEADER))
    if isinstance(deadline, Answer):
        return deadline
    admitted = service.admit([await request.read()])
    if isinstance(admitted, Answer):
        return admitted
    await _wait([t.future for t in admitted], deadline)
    return service.answer(admitted[0])


async def _score_batch(service: ScoringService, request: web.Request, batch_max: int) -> Answer:
    deadline = service.deadline_s(request.headers.get(DEADLINE_HEADER))
    if isinstance(deadline, Answer):
        return deadline
    values = _batch_values(await request.read(), batch_max)
    if isinstance(values, Answer):
        return values
    admitted = service.admit(values)
    if isinstance(admitted, Answer):
        return admitted
    await _wait([t.future for t in admitted], deadline)
    answers = [service.answer(t, single=False) for t in admitted]
    body = b'{"decisions":[' + b",".join(a.body for a in answers) + b"]}"
    outcome = "stream" if all(a.outcome in ("stream", "cache") for a in answers) else "fallback"
    return Answer(200, body, outcome)


def _batch_values(body: bytes, batch_max: int) -> list[bytes] | Answer:
    """The batch body, a JSON array of transactions, as one JSON value per transaction."""
    try:
        docs = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return _bad("invalid_json", str(exc))
    if not isinstance(docs, list) or not docs:
        return _bad("not_an_array", "the body must be a non-empty JSON array of transactions")
    if len(docs) > batch_max:
        return _bad("batch_too_large", f"{len(docs)} transactions, at most {batch_max} (serve_batch_max)")
    return [orjson.dumps(d) for d in docs]


def _bad(reason: str, detail: str) -> Answer:
    return Answer(
        422, orjson.dumps({"error": "invalid_request", "reason": reason, "detail": detail}), "invalid"
    )


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


def _json(status: int, body: bytes) -> web.Response:
    return web.Response(status=status, body=body, content_type=JSON)
