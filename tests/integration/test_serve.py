"""`scorer serve` on the real broker: the stream's decisions over HTTP, concurrent requests, invalid input,
retries, a restart of serve, and deadlines while the broker is paused."""

from __future__ import annotations

import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest

from scorer.config import Settings
from scorer.demo.broker import EmbeddedBroker, free_port
from tests.integration.conftest import Proc, consume

TX = {"terminal_id": "T1", "amount": 25.0, "timestamp": "2026-03-01T10:00:00Z"}


class Serve(Proc):
    """A `scorer serve` child on a free HTTP port with its own reply topic; open to anyone (serve_auth =
    "none") unless `extra` sets the access settings."""

    def __init__(self, settings: Settings, model: Path, log: Path, reply: str, **extra: str) -> None:
        self.http_port = free_port()
        env = {"SCORER_SERVE_AUTH": "none", **extra}
        super().__init__(
            "serve",
            settings,
            model,
            log,
            SCORER_HTTP_PORT=str(self.http_port),
            SCORER_REPLY_TOPIC=reply,
            **env,
        )

    def call(self, path: str, body: object | bytes | None = None, **headers: str) -> tuple[int, bytes]:
        data = body if isinstance(body, bytes) or body is None else orjson.dumps(body)
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", data=data, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as r:  # noqa: S310 - loopback
                return int(r.status), r.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()
        except OSError:
            return 0, b""

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.call("/readyz")[0] != 200:
            assert self.popen.poll() is None, self.log.read_text()[-2000:]
            assert time.monotonic() < deadline, "serve did not become ready"
            time.sleep(0.2)


def test_ready_means_the_first_requests_get_the_models_decisions(
    settings: Settings, tiny_model: Path, procs: list[Proc], tmp_path: Path
) -> None:
    """Started as the README says (aggregate, run, serve, at once) and asked as soon as /readyz says so:
    the first requests, at the default deadline, are answered by the scorers, not by the fallback."""
    procs.append(Proc("aggregate", settings, tiny_model, tmp_path / "aggregate.log"))
    procs.append(Proc("run", settings, tiny_model, tmp_path / "run.log"))
    serve = Serve(settings, tiny_model, tmp_path / "serve.log", f"{settings.input_topic}-replies")
    procs.append(serve)
    deadline = time.monotonic() + 60
    while (probe := serve.call("/readyz"))[0] != 200:
        assert serve.popen.poll() is None, serve.describe()
        assert time.monotonic() < deadline, f"serve never became ready: {probe}"
        time.sleep(0.05)
    answers = [serve.call("/v1/score", tx(f"first-{i}", f"C{i}")) for i in range(10)]
    sources = [orjson.loads(body).get("decision_source") for _, body in answers]
    assert sources == ["stream"] * 10, answers
    on_topic = consume(settings, settings.decisions_topic, 10, timeout_s=30)  # readiness wrote nothing there
    assert sorted(orjson.loads(r["value"])["transaction_id"] for r in on_topic) == [
        f"first-{i}" for i in range(10)
    ]  # type: ignore[arg-type]
    assert (
        b"scorer_serve_scorers_ready 1.0"
        in urllib.request.urlopen(  # noqa: S310 - loopback
            f"http://127.0.0.1:{serve.metrics_port}/metrics", timeout=5
        ).read()
    )


def tx(tid: str, customer: str = "C1", **fields: object) -> dict[str, object]:
    return {**TX, "transaction_id": tid, "customer_id": customer, **fields}


@pytest.fixture
def system(settings: Settings, tiny_model: Path, procs: list[Proc], tmp_path: Path) -> Iterator[Serve]:
    """A scorer (no batch wait) and a serve instance, both ready, and a first request answered (the
    scorer has its partitions)."""
    procs.append(Proc("run", settings, tiny_model, tmp_path / "run.log", SCORER_BATCH_WAIT_S="0.02"))
    serve = Serve(settings, tiny_model, tmp_path / "serve.log", f"{settings.input_topic}-replies")
    procs.append(serve)
    serve.wait_ready()
    status, body = serve.call("/v1/score", tx("warm-up", "C0"), **{"X-Scorer-Deadline-Ms": "30000"})
    assert status == 200 and orjson.loads(body)["decision_source"] == "stream", body
    yield serve


def test_concurrent_requests_get_the_streams_decisions(system: Serve, settings: Settings) -> None:
    requests = [tx(f"c-{i}", f"C{i % 17}", amount=10.0 + i) for i in range(80)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(
            pool.map(lambda t: system.call("/v1/score", t, **{"X-Scorer-Deadline-Ms": "20000"}), requests)
        )
    assert [status for status, _ in answers] == [200] * len(requests)
    bodies = {orjson.loads(b)["transaction_id"]: b for _, b in answers}
    assert {orjson.loads(b)["decision_source"] for b in bodies.values()} == {"stream"}
    on_topic = {
        orjson.loads(r["value"])["transaction_id"]: r["value"]  # type: ignore[arg-type]
        for r in consume(settings, settings.decisions_topic, len(requests) + 1)
    }
    for tid, body in bodies.items():  # the decisions topic's record, byte for byte, after decision_source,
        record = on_topic[tid]  # without its feature vector (the record's last field)
        assert b'"features":[' in record and b'"features"' not in body  # type: ignore[operator]
        cut = record.rfind(b',"features":[')  # type: ignore[union-attr]
        assert body == b'{"decision_source":"stream",' + record[1:cut] + b"}"  # type: ignore[index]

    status, body = system.call(
        "/v1/score:batch", [tx("b-1", "C3"), tx("b-2", "C4")], **{"X-Scorer-Deadline-Ms": "20000"}
    )
    assert status == 200
    assert [d["transaction_id"] for d in orjson.loads(body)["decisions"]] == ["b-1", "b-2"]
    text = system.call("/metrics")[1].decode()
    assert 'scorer_serve_requests_total{outcome="stream",route="score"} 81.0' in text
    assert 'scorer_serve_request_seconds_count{route="score"} 81.0' in text
    assert "/v1/score:batch" in orjson.loads(system.call("/openapi.json")[1])["paths"]
    assert system.terminate() == 0


def test_invalid_input_is_422_with_the_dead_letter_reason_and_never_published(
    system: Serve, settings: Settings
) -> None:
    cases = [
        (b'{"transaction_id": "x', "invalid_json"),
        (orjson.dumps({k: v for k, v in tx("m").items() if k != "amount"}), "missing_field"),
        (orjson.dumps(tx("n", amount=-5)), "invalid_amount"),
        (b"[1]", "not_an_object"),
    ]
    for body, reason in cases:
        status, answer = system.call("/v1/score", body)
        assert status == 422 and orjson.loads(answer)["reason"] == reason, answer
    status, answer = system.call("/v1/score:batch", [tx("ok-1"), {"transaction_id": "half"}])
    assert status == 422
    assert [(e["index"], e["reason"]) for e in orjson.loads(answer)["errors"]] == [(1, "missing_field")]
    assert system.call("/v1/score:batch", [tx(f"z{i}") for i in range(101)])[0] == 422  # over serve_batch_max
    assert system.call("/v1/score", tx("d"), **{"X-Scorer-Deadline-Ms": "soon"})[0] == 400
    published = consume(settings, settings.input_topic, 2, timeout_s=5)
    assert [orjson.loads(r["value"])["transaction_id"] for r in published] == ["warm-up"]  # type: ignore[arg-type]


def test_a_retry_gets_the_first_decision_even_after_serve_restarts(
    system: Serve, settings: Settings, tiny_model: Path, procs: list[Proc], tmp_path: Path
) -> None:
    deadline = {"X-Scorer-Deadline-Ms": "20000"}
    status, first = system.call("/v1/score", tx("r-1", "C5", amount=77.0), **deadline)
    assert status == 200
    status, again = system.call("/v1/score", tx("r-1", "C5", amount=77.0), **deadline)
    assert status == 200 and again == first.replace(b'"stream"', b'"cache"', 1)  # serve's own cache
    assert system.terminate() == 0
    restarted = Serve(settings, tiny_model, tmp_path / "serve2.log", f"{settings.input_topic}-replies")
    procs.append(restarted)
    restarted.wait_ready()
    status, after = restarted.call("/v1/score", tx("r-1", "C5", amount=77.0), **deadline)
    assert status == 200 and after == first  # the partition's owner answered with the first decision
    got = consume(settings, settings.decisions_topic, 3, timeout_s=8)
    assert sorted(orjson.loads(r["value"])["transaction_id"] for r in got) == ["r-1", "warm-up"]  # type: ignore[arg-type]


def test_a_missed_deadline_gets_the_fallback_and_the_late_decision_is_kept(
    system: Serve,
    broker: EmbeddedBroker,
    settings: Settings,
    tiny_model: Path,
    procs: list[Proc],
    tmp_path: Path,
) -> None:
    strict = Serve(settings, tiny_model, tmp_path / "strict.log", f"{settings.input_topic}-replies-strict",
                   SCORER_SERVE_ON_DEADLINE="504")  # fmt: skip
    procs.append(strict)
    strict.wait_ready()
    os.kill(broker.pid, signal.SIGSTOP)
    try:
        status, body = system.call("/v1/score", tx("late-1", "C6"), **{"X-Scorer-Deadline-Ms": "300"})
        strict_status, strict_body = strict.call(
            "/v1/score", tx("late-2", "C7"), **{"X-Scorer-Deadline-Ms": "300"}
        )
    finally:
        os.kill(broker.pid, signal.SIGCONT)
    fallback = orjson.loads(body)
    assert status == 200 and fallback["decision_source"] == "fallback", body
    assert fallback["fallback_reason"] == "deadline" and fallback["action"] == "approve"
    assert fallback["flagged"] is False and fallback["transaction_id"] == "late-1"
    assert strict_status == 504 and orjson.loads(strict_body)["error"] == "deadline_exceeded"
    # the transaction still flows: its decision reaches the decisions topic, and serve keeps it for a retry
    got = consume(settings, settings.decisions_topic, 3, timeout_s=60)
    assert {"late-1", "late-2"} <= {orjson.loads(r["value"])["transaction_id"] for r in got}  # type: ignore[arg-type]
    deadline = time.monotonic() + 30
    while "scorer_serve_late_decisions_total 1.0" not in system.call("/metrics")[1].decode():
        assert time.monotonic() < deadline, "the late decision never reached serve"
        time.sleep(0.2)
    status, retried = system.call("/v1/score", tx("late-1", "C6"), **{"X-Scorer-Deadline-Ms": "300"})
    assert status == 200 and orjson.loads(retried)["decision_source"] == "cache"
    metrics = system.call("/metrics")[1].decode()
    assert 'scorer_serve_requests_total{outcome="fallback",route="score"} 1.0' in metrics
