"""The producer wrapper on the real broker: a full queue means waiting, never an exception or a loss."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from scorer.config import Settings
from scorer.kafka.sink import Sink
from scorer.runtime.metrics import Metrics
from tests.integration.conftest import consume


def test_full_queue_waits_and_delivers_everything(settings: Settings) -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    config = {**settings.producer_config(), "queue.buffering.max.messages": 10, "linger.ms": 50}
    sink = Sink(config, metrics)
    n = 500
    sink.send(settings.flags_topic, [{"key": b"k", "value": f"m{i}".encode()} for i in range(n // 2)])
    for i in range(n // 2, n):
        sink.send_one(settings.flags_topic, f"m{i}".encode(), b"k", [("h", b"v")])
    epoch = sink.seal()
    assert sink.wait(epoch, timeout_s=30)
    assert sink.failure is None
    assert registry.get_sample_value("scorer_producer_backpressure_total") > 0  # the queue really was full
    assert sink.close()
    values = sorted(r["value"] for r in consume(settings, settings.flags_topic, n))  # type: ignore[type-var]
    assert values == sorted(f"m{i}".encode() for i in range(n))
