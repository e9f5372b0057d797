"""Serve: open-loop HTTP requests to `scorer serve` at fixed rates; latency beside a request-reply floor.

Per rate, exactly rate x seconds POST /v1/score requests, each scheduled at t0 + i/rate whatever the
answers (open loop: a slow answer delays no later send, so queueing shows in the latency), over 32
keep-alive connections on loopback, each with a fresh transaction stamped at the start of the rate.
Latency runs from a request's scheduled send to the end of its answer. Two systems, each on a fresh
broker with its own `scorer serve`: the floor (the passthrough echoing each request's transaction as its
reply: the whole request-reply path with no scoring) and the scorer (`scorer run` + `scorer aggregate`,
default settings). A request is lost unless it comes back 200 with decision_source "stream"; every
scorer answer must equal its decision on the decisions topic byte for byte.
"""

from __future__ import annotations

import asyncio
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.harness import (
    INPUT_TOPIC_CONFIG,
    PARTITIONS,
    Launcher,
    Profile,
    Running,
    Tail,
    _spawn,
    cpu_seconds,
)
from benchmarks.paced import Events
from scorer.demo.broker import free_port
from scorer.kafka.admin import TopicSpec, ensure_topics

CONNECTIONS = 32
REQUEST_TIMEOUT_S = 10.0
DEADLINE_MS = "5000"  # long: the workload measures the path, not the fallback
SYSTEMS = {
    "floor": Profile("serve-floor", "passthrough", args=("--echo-replies",), description="echo as reply"),
    "scorer": Profile("serve-scorer", "scorer", description="scorer run + aggregate"),
}
BrokerFactory = Callable[[str], AbstractContextManager[tuple[Launcher, int]]]


@dataclass(slots=True)
class Sent:
    status: int
    body: bytes
    latency_s: float


def serve_workload(
    fresh_broker: BrokerFactory, events: Events, rates: list[float], seconds: float
) -> dict[str, Any]:
    """Both systems at every rate; per system and rate: latency percentiles, lost and unequal answers."""
    runs = []
    for name, profile in SYSTEMS.items():
        with fresh_broker(f"serve-{name}") as (launcher, broker_pid):
            runs.append(_system(launcher, profile, events, rates, seconds, broker_pid))
    floor = {p["rate"]: p["p99_ms"] for p in runs[0].get("phases", [])}
    for run in runs:
        for p in run.get("phases", []):
            p["added_p99_ms"] = p["p99_ms"] - floor.get(p["rate"], float("nan"))
    return {"seconds": seconds, "connections": CONNECTIONS, "runs": runs}


def _system(
    launcher: Launcher, profile: Profile, events: Events, rates: list[float], seconds: float, broker_pid: int
) -> dict[str, Any]:
    input_topic = f"{profile.name}-transactions"
    ensure_topics(launcher.brokers, [TopicSpec(input_topic, PARTITIONS, config=INPUT_TOPIC_CONFIG)])
    running = launcher.start(profile, input_topic)
    port = free_port()
    serve = _spawn_serve(launcher, running, input_topic, port)
    result: dict[str, Any] = {"system": profile.name, "description": profile.description, "phases": []}
    try:
        if not _warm_up(port, events, 90.0):
            return {**result, "error": f"no stream answer within 90 s (logs: {running.logs})"}
        decisions = Tail(launcher.brokers, running.output_topic, keep=profile.kind == "scorer")
        for rate in rates:
            result["phases"].append(
                _phase(port, events, rate, seconds, running, serve, broker_pid, decisions)
            )
        decisions.close()
    finally:
        serve.terminate()
        serve.wait(20)
        running.stop()
    return result


def _spawn_serve(launcher: Launcher, running: Running, input_topic: str, port: int) -> Any:
    env = {
        "SCORER_BROKERS": launcher.brokers, "SCORER_INPUT_TOPIC": input_topic, "SCORER_HTTP_PORT": str(port),
        "SCORER_REPLY_TOPIC": f"{input_topic}-replies", "SCORER_FETCH_WAIT_MAX_MS": str(launcher.fetch_wait_ms),
        "SCORER_LOG_LEVEL": "WARNING",
        "SCORER_SERVE_AUTH": "none", "SCORER_METRICS_PORT": "0",  # an open API on loopback, no metrics port
    }  # fmt: skip
    return _spawn([sys.executable, "-m", "scorer", "serve"], running.logs, env)


def _warm_up(port: int, events: Events, timeout_s: float) -> bool:
    """Until one request is answered by the stream (the consumer group has its partitions)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        (event,) = events.take(1)
        status, body = _post(port, event["value"])
        if status == 200 and b'"decision_source":"stream"' in body:
            return True
        time.sleep(0.5)
    return False


def _post(port: int, body: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/score", data=body, headers={"X-Scorer-Deadline-Ms": "20000"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as r:  # noqa: S310 - loopback
            return int(r.status), r.read()
    except OSError:
        return 0, b""


def _phase(
    port: int, events: Events, rate: float, seconds: float, running: Running, serve: Any, broker_pid: int,
    decisions: Tail,
) -> dict[str, Any]:  # fmt: skip
    bodies = [e["value"] for e in events.take(int(rate * seconds))]

    def cpu() -> dict[str, float]:
        return {"system": running.cpu(), "serve": cpu_seconds(serve.pid), "broker": cpu_seconds(broker_pid)}

    cpu0 = cpu()
    sent = asyncio.run(_load(port, bodies, rate))
    cpu1 = cpu()
    ok = [s for s in sent if s.status == 200 and s.body.startswith(b'{"decision_source":"stream",')]
    latency = np.sort(np.asarray([s.latency_s for s in ok])) * 1000.0
    phase: dict[str, Any] = {
        "rate": rate, "requests": len(bodies), "answered": len(ok), "lost": len(bodies) - len(ok),
        **{f"p{q}_ms": float(np.percentile(latency, q)) if len(latency) else float("nan") for q in (50, 99)},
        "p99.9_ms": float(np.percentile(latency, 99.9)) if len(latency) else float("nan"),
        "cpu_s": {k: round(cpu1[k] - cpu0[k], 2) for k in cpu0},
        "statuses": _count(iter([s.status for s in sent])),
    }  # fmt: skip
    phase["p999_ms"] = phase.pop("p99.9_ms")
    if running.profile.kind == "scorer":
        phase["unequal"] = _unequal(ok, decisions)
    return phase


def _count(values: Iterator[int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return out


def _unequal(ok: list[Sent], decisions: Tail) -> int:
    """Answers that differ from their decision on the decisions topic (after decision_source)."""
    expected = {_tid(b): b"{" + b[len(b'{"decision_source":"stream",') :] for b in (s.body for s in ok)}
    decisions.until(decisions.count + len(expected), 30.0)
    on_topic = {_tid(v): v for v in decisions.values}
    return sum(on_topic.get(t) != body for t, body in expected.items())


def _tid(decision: bytes) -> bytes:
    start = decision.index(b'"transaction_id":"') + len(b'"transaction_id":"')
    return decision[start : decision.index(b'"', start)]


class _Conn:
    """One keep-alive HTTP/1.1 connection: a request written, its answer read by Content-Length."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def post(self, raw: bytes) -> tuple[int, bytes]:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next(
            int(v) for k, _, v in (x.partition(b":") for x in lines[1:]) if k.lower() == b"content-length"
        )
        return int(lines[0].split(b" ", 2)[1]), await self.reader.readexactly(length)


async def _load(port: int, bodies: list[bytes], rate: float) -> list[Sent]:
    """Open loop: request i is sent at t0 + i/rate on the next free connection; latency from that time."""
    head = "POST /v1/score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    raws = [
        f"{head}X-Scorer-Deadline-Ms: {DEADLINE_MS}\r\nContent-Length: {len(b)}\r\n\r\n".encode() + b
        for b in bodies
    ]
    pool: asyncio.Queue[_Conn] = asyncio.Queue()
    for _ in range(CONNECTIONS):
        pool.put_nowait(_Conn(*await asyncio.open_connection("127.0.0.1", port)))
    sent: list[Sent] = [Sent(0, b"", 0.0) for _ in raws]

    async def one(i: int, scheduled: float) -> None:
        conn = await pool.get()
        try:
            status, body = await asyncio.wait_for(conn.post(raws[i]), REQUEST_TIMEOUT_S)
            sent[i] = Sent(status, body, time.perf_counter() - scheduled)
            pool.put_nowait(conn)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, StopIteration):
            conn.writer.close()  # a broken connection is replaced
            pool.put_nowait(_Conn(*await asyncio.open_connection("127.0.0.1", port)))

    t0 = time.perf_counter() + 0.05
    tasks = []
    for i in range(len(raws)):
        scheduled = t0 + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(i, scheduled)))
    await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT_S * 3)
    while not pool.empty():
        pool.get_nowait().writer.close()
    return sent
