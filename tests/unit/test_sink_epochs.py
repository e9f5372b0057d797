"""Sink delivery epochs on a fake producer: a refused message's epoch is never acknowledged."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from scorer.kafka.sink import Sink
from scorer.runtime.metrics import Metrics
from tests.unit.fakes import FakeBroker, FakeProducer


def refuse_b(topic: str, value: bytes | None) -> str:
    return "refuse" if value == b"b" else "ok"


def test_an_epoch_with_a_refused_message_and_every_later_one_stay_unacknowledged() -> None:
    broker = FakeBroker()
    registry = CollectorRegistry()
    sink = Sink({}, Metrics(registry), producer=FakeProducer(broker, refuse_b))
    sink.send("out", [{"key": b"k", "value": b"a"}])
    first = sink.seal()
    sink.send("out", [{"key": b"k", "value": b"b"}, {"key": b"k", "value": b"c"}])
    second = sink.seal()
    sink.send_one("dlq", b"d", b"k", [("reason", b"x")])
    third = sink.seal()
    assert sink.wait(first, 1.0)
    assert not sink.wait(third, 0.1)
    assert sink.acknowledged(first)
    assert not sink.acknowledged(second)
    assert not sink.acknowledged(third)  # delivered, but after a refusal: no commit may pass it
    assert sink.failure is not None and "out" in sink.failure
    assert registry.get_sample_value("scorer_delivery_errors_total", {"topic": "out"}) == 1
    assert broker.records("out") == [(b"k", b"a"), (b"k", b"c")]
    assert broker.records("dlq") == [(b"k", b"d")]


def test_an_epoch_whose_acknowledgement_never_comes_is_not_acknowledged() -> None:
    broker = FakeBroker()
    producer = FakeProducer(broker, lambda topic, value: "hold" if value == b"x" else "ok")
    sink = Sink({}, producer=producer)
    sink.send("out", [{"key": None, "value": b"x"}])
    epoch = sink.seal()
    assert not sink.wait(epoch, 0.05)
    assert sink.failure is None
    producer.policy = lambda topic, value: "ok"
    producer.release()
    assert sink.wait(epoch, 1.0)
