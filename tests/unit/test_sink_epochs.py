"""Sink delivery epochs on a fake producer: a refused message's epoch is never acknowledged."""

from __future__ import annotations

import threading

import pytest
from prometheus_client import CollectorRegistry

from scorer.kafka import clients
from scorer.kafka.sink import Sink
from scorer.runtime.metrics import Metrics
from tests.unit.fakes import FakeBroker, FakeProducer, Policy


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


def refuse_at_produce(verdict: str) -> Policy:
    return lambda topic, value: verdict if value == b"b" else "ok"


@pytest.mark.parametrize("verdict", ["too_large_here", "unknown_partition_here", "invalid_here"])
def test_a_refusal_at_produce_time_fails_the_sink_at_once_and_is_not_retried(verdict: str) -> None:
    """Before: every error produce_batch reported was retried as if the queue were full, forever."""
    producer = FakeProducer(FakeBroker(), refuse_at_produce(verdict))
    sink = Sink({}, producer=producer)
    sink.send("out", [{"key": b"k", "value": b"a"}, {"key": b"k", "value": b"b"}])
    assert producer.produce_calls == 1
    assert sink.failure is not None and "out" in sink.failure
    assert not sink.wait(sink.seal(), 0.5)  # its epoch never acknowledged: nothing commits past it


def test_a_full_queue_is_waited_out_and_everything_delivered() -> None:
    broker = FakeBroker()
    producer = FakeProducer(broker)
    producer.full = 3
    registry = CollectorRegistry()
    sink = Sink({}, Metrics(registry), producer=producer)
    sink.send("out", [{"key": b"k", "value": b"a"}])
    sink.send_one("dlq", b"d", b"k", [("reason", b"x")])
    assert sink.wait(sink.seal(), 1.0) and sink.failure is None
    assert broker.records("out") == [(b"k", b"a")] and broker.records("dlq") == [(b"k", b"d")]
    assert registry.get_sample_value("scorer_producer_backpressure_total") == 3


def test_a_queue_that_fills_midway_counts_what_it_took_before_serving_its_reports() -> None:
    """The queue takes 10 of 250 messages, then the sink polls for room: the delivery reports of those 10
    come back during that poll, so they must already be counted in flight (found on the real broker)."""
    broker = FakeBroker()
    producer = FakeProducer(broker)
    producer.capacity = 10
    sink = Sink({}, producer=producer)
    sink.send("out", [{"key": b"k", "value": f"m{i}".encode()} for i in range(250)])
    assert sink.wait(sink.seal(), 1.0) and sink.failure is None
    assert sorted(v for _, v in broker.records("out")) == sorted(f"m{i}".encode() for i in range(250))


def test_a_record_over_the_real_producers_size_limit_stops_the_send() -> None:
    """librdkafka's own Producer (no broker needed: it refuses the size locally) with message.max.bytes
    1000 and a 5 KB record: the send returns with the sink failed instead of looping."""
    producer = clients.producer({"bootstrap.servers": "127.0.0.1:9", "message.max.bytes": 1000})
    sink = Sink({}, producer=producer)
    done = threading.Event()

    def send() -> None:
        sink.send("out", [{"key": b"k", "value": b"x" * 5000}])
        done.set()

    threading.Thread(target=send, daemon=True).start()
    assert done.wait(30), "Sink.send looped on a record the producer can never take"
    assert sink.failure is not None and "Message size too large" in sink.failure
