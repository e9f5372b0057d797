"""The real run loop (scoring/loop.py) on the fake broker: a clean run, and every way it must stop in order.

The loop runs as `scorer run` does, over FakeConnections (tests/unit/fakes.py) instead of Kafka: the same
core, outputs, delivery and commit tracker. Faults are injected at the confluent boundary (a producer that
refuses, a consumer whose calls fail, a rebalance callback that raises) and inside each step of scoring.
Whatever happens, no offset may be committed past a record without its decision or dead letter, the
consumer is closed, the producer flushed, and the run ends with an exit code instead of a traceback.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException

from scorer.config import DEFAULT_MODEL, Settings
from scorer.kafka.requests import CORRELATION_ID, REPLY_TO, TRANSACTION_ID
from scorer.model.onnx import OnnxModel
from scorer.scoring import core as core_module
from scorer.scoring.loop import ScorerLoop
from tests.unit.fakes import FakeBroker, FakeConnections, Policy, deliver_all
from tests.unit.test_commits import PARTITIONS, inputs, model, reference, tx_id

SETTINGS = Settings(
    group="g",
    metrics_port=0,
    monitoring_interval_s=0,
    batch_max=40,
    batch_wait_s=0,
    commit_interval_s=0,
)


def loaded_broker(malformed_at: int | None = None) -> FakeBroker:
    """The ~1,000 simulated transactions on the input topic, by partition, in event-time order (with a
    record that is not JSON at position `malformed_at` of partition 0, if given)."""
    broker = FakeBroker(partitions=PARTITIONS)
    for p, values in inputs().items():
        for i, value in enumerate(values):
            if p == 0 and i == malformed_at:
                broker.put(SETTINGS.input_topic, p, None, b"{not json")
            broker.put(SETTINGS.input_topic, p, None, value)
    return broker


def scorer_loop(broker: FakeBroker, policy: Policy = deliver_all, m: OnnxModel | None = None) -> ScorerLoop:
    return ScorerLoop(SETTINGS, m or model(), io=FakeConnections(broker, SETTINGS, policy))


def connections(loop: ScorerLoop) -> FakeConnections:
    io = loop.io
    assert isinstance(io, FakeConnections)
    return io


def run(loop: ScorerLoop) -> int:
    """Until the inputs are drained (or the loop stops on its own)."""
    return loop.run(connections(loop).idle)


def decisions(broker: FakeBroker) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for _, value in broker.records(SETTINGS.decisions_topic):
        doc = orjson.loads(value or b"")
        out.setdefault(doc["transaction_id"], []).append(doc["score"])
    return out


def committed(broker: FakeBroker) -> dict[int, int]:
    return {p: o for (g, t, p), o in broker.group_offsets.items() if (g, t) == ("g", SETTINGS.input_topic)}


def assert_nothing_committed_past_a_missing_output(broker: FakeBroker) -> None:
    """Every record before a partition's committed offset has a delivered decision or dead letter."""
    decided = set(decisions(broker))
    dead = {v for _, v in broker.records(SETTINGS.dlq_topic)}
    for p, offset in committed(broker).items():
        records = [v for _, v in broker.log[(SETTINGS.input_topic, p)][:offset]]
        missing = [v for v in records if v not in dead and tx_id(v) not in decided]
        assert not missing, (p, offset, missing[:3])


def assert_stopped_in_order(loop: ScorerLoop, code: int, caplog: pytest.LogCaptureFixture) -> None:
    io = connections(loop)
    assert code == 1
    assert all(c.closed for c in io.consumers)
    assert io.producers and all(p.flushes for p in io.producers)
    fatal = [r for r in caplog.records if r.getMessage() == "stopped_on_fatal_error"]
    assert len(fatal) == 1


def test_a_clean_run_decides_every_record_once_commits_to_the_end_and_exits_0() -> None:
    broker = loaded_broker()
    loop = scorer_loop(broker)
    assert run(loop) == 0
    got = decisions(broker)
    assert set(got) == set(reference()) and all(len(s) == 1 for s in got.values())
    assert all(s[0] == pytest.approx(reference()[t], abs=1e-6) for t, s in got.items())
    assert committed(broker) == {p: len(inputs()[p]) for p in range(PARTITIONS)}
    assert all(c.closed for c in connections(loop).consumers)


@pytest.fixture
def raising() -> Iterator[Callable[..., Any]]:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("injected fault")

    yield fail


def fault_in_assignment(loop: ScorerLoop) -> None:  # the state topic does not answer in on_assign
    connections(loop).restore_failure = TimeoutError("reading state[0] timed out at offset 0 of 12")


def fault_in_the_table(loop: ScorerLoop) -> None:  # the terminal table's consumer fails
    def read(timeout_s: float, max_records: int) -> Any:
        raise KafkaException(KafkaError(KafkaError._TRANSPORT, "Broker: transport failure"))

    connections(loop).table.read = read  # type: ignore[method-assign]


def fault_in_the_gauges(loop: ScorerLoop) -> None:  # the gauges' position() call fails
    original = connections(loop).consumer

    def consumer() -> Any:
        made = original()
        made.failing["position"] = KafkaException(KafkaError(KafkaError._TIMED_OUT, "timed out"))
        return made

    connections(loop).consumer = consumer  # type: ignore[method-assign]


@pytest.mark.parametrize("inject", [fault_in_assignment, fault_in_the_table, fault_in_the_gauges])
def test_a_fault_outside_the_records_stops_in_order_with_nothing_committed(
    inject: Callable[[ScorerLoop], None], caplog: pytest.LogCaptureFixture
) -> None:
    """Before: these escaped step(), so the consumer was not closed, the producer not flushed, and the
    user saw a traceback."""
    broker = loaded_broker()
    loop = scorer_loop(broker)
    inject(loop)
    with caplog.at_level(logging.INFO):
        code = run(loop)
    assert_stopped_in_order(loop, code, caplog)
    assert committed(broker) == {}


def test_a_revocation_callback_that_raises_stops_in_order(caplog: pytest.LogCaptureFixture) -> None:
    broker = loaded_broker()
    loop = scorer_loop(broker)
    loop.open()
    loop.start()
    for _ in range(4):
        loop.step()

    def drop(partition: int) -> None:
        raise RuntimeError("injected fault in the revocation")

    loop.scorer.customers.drop = drop  # type: ignore[method-assign]
    loop.consumer.rebalance("revoke", SETTINGS.input_topic, [0])  # type: ignore[attr-defined]
    with caplog.at_level(logging.INFO):
        loop.step()
        assert loop.fatal is not None and "injected fault in the revocation" in loop.fatal
        assert_stopped_in_order(loop, loop._exit_code(loop.shutdown()), caplog)
    assert_nothing_committed_past_a_missing_output(broker)


STEPS = {  # where in scoring a fault of ours is injected: (module attribute or loop path, exception)
    "rules + decide": ("decide", RuntimeError("bug in decide")),
    "encode": ("encode_decisions", RuntimeError("bug in encode")),
    "stateless features (memory)": ("stateless_features", MemoryError()),
}


@pytest.mark.parametrize("step", sorted(STEPS))
def test_a_step_that_fails_for_every_record_is_systemic_not_poison(
    step: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: every record failed alone, so the whole batch went to the dead-letter topic as
    processing_error and was committed: those transactions never got a decision."""
    name, error = STEPS[step]

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(core_module, name, fail)
    broker = loaded_broker()
    loop = scorer_loop(broker)
    with caplog.at_level(logging.INFO):
        code = run(loop)
    assert_stopped_in_order(loop, code, caplog)
    assert broker.records(SETTINGS.dlq_topic) == [] and committed(broker) == {}


def break_the_terminal_table(loop: ScorerLoop) -> None:
    def features(terminal_id: Any, ts_ms: Any) -> Any:
        raise TimeoutError("terminal table: close of the previous day never came")

    loop.table.features = features  # type: ignore[method-assign]


def break_the_customer_windows(loop: ScorerLoop) -> None:
    def update(*args: Any, **kwargs: Any) -> Any:
        raise IndexError("customer ring slot out of range")

    loop.scorer.customers.update_and_compute = update  # type: ignore[method-assign]


def break_the_model(loop: ScorerLoop) -> None:
    def predict(X: Any) -> Any:
        raise RuntimeError("onnxruntime: session lost")

    loop.scorer.serving.champion.predict = predict  # type: ignore[method-assign]


@pytest.mark.parametrize("inject", [break_the_terminal_table, break_the_customer_windows, break_the_model])
def test_a_broken_part_of_the_scorer_is_systemic_not_poison(
    inject: Callable[[ScorerLoop], None], caplog: pytest.LogCaptureFixture
) -> None:
    broker = loaded_broker()
    loop = scorer_loop(broker, m=OnnxModel(DEFAULT_MODEL))  # its own copy: break_the_model patches it
    inject(loop)
    with caplog.at_level(logging.INFO):
        code = run(loop)
    assert_stopped_in_order(loop, code, caplog)
    assert broker.records(SETTINGS.dlq_topic) == [] and committed(broker) == {}
    assert "a valid made-up transaction" in (loop.fatal or "")


def test_a_record_that_fails_alone_is_dead_lettered_and_the_rest_decided() -> None:
    poison = tx_id(inputs()[1][17])
    m = OnnxModel(DEFAULT_MODEL)
    predict = m.predict
    bad_amount = orjson.loads(inputs()[1][17])["amount"]
    amount = list(core_module.FEATURE_NAMES).index("amount")

    def picky(X: Any) -> Any:
        if (X[:, amount] == np.float32(bad_amount)).any():
            raise ValueError("cannot score this one")
        return predict(X)

    m.predict = picky  # type: ignore[method-assign]
    broker = loaded_broker()
    assert run(scorer_loop(broker, m=m)) == 0
    got = decisions(broker)
    letters = [v for _, v in broker.records(SETTINGS.dlq_topic)]
    assert poison not in got and any(tx_id(v) == poison for v in letters)
    assert set(got) | {tx_id(v) for v in letters} == set(reference())
    assert committed(broker) == {p: len(inputs()[p]) for p in range(PARTITIONS)}


def on_topic(topic: str, verdict: str) -> Policy:
    return lambda t, value: verdict if t == topic else "ok"


@pytest.mark.parametrize(
    ("policy", "why"),
    [
        (on_topic(SETTINGS.decisions_topic, "unknown_partition_here"), "Unknown partition"),
        (on_topic(SETTINGS.decisions_topic, "too_large_here"), "size too large"),
        (on_topic(SETTINGS.decisions_topic, "refuse"), "timed out"),
        (on_topic(SETTINGS.dlq_topic, "invalid_here"), "Invalid argument"),
    ],
)
def test_a_refused_delivery_stops_the_run_without_committing_past_it(
    policy: Policy, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: a refusal at produce time looped forever (ready all along), and a refused dead letter
    was committed past."""
    broker = loaded_broker(malformed_at=5)  # a dead letter to write
    loop = scorer_loop(broker, policy)
    with caplog.at_level(logging.INFO):
        code = run(loop)
    assert_stopped_in_order(loop, code, caplog)
    assert why.lower() in (loop.fatal or "").lower()
    assert_nothing_committed_past_a_missing_output(broker)


def request(tid: str, correlation: bytes) -> list[tuple[str, bytes]]:
    return [(REPLY_TO, b"replies"), (CORRELATION_ID, correlation), (TRANSACTION_ID, tid.encode())]


def test_a_retried_request_and_new_records_in_one_batch_are_answered_and_scored_once() -> None:
    """The shape of the crash fixed in e2f13b4 (a column of the old length met the cut batch), driven
    through the loop itself: a request, then its retry in the same batch as new records."""
    broker = FakeBroker(partitions=PARTITIONS)
    values = inputs()[0][:6]
    broker.put(SETTINGS.input_topic, 0, None, values[0])
    broker.headers[(SETTINGS.input_topic, 0, 0)] = request(tx_id(values[0]), b"c1")
    loop = scorer_loop(broker)
    loop.open()
    loop.start()
    loop.step()  # the request is scored and answered
    broker.put(SETTINGS.input_topic, 0, None, values[1])
    broker.put(SETTINGS.input_topic, 0, None, values[0])  # the retry, through another serve instance
    broker.headers[(SETTINGS.input_topic, 0, 2)] = request(tx_id(values[0]), b"c2")
    for value in values[2:]:
        broker.put(SETTINGS.input_topic, 0, None, value)
    loop.step()
    assert loop.fatal is None
    assert loop._exit_code(loop.shutdown()) == 0
    replies = broker.records("replies")
    assert [k for k, _ in replies] == [b"c1", b"c2"] and replies[0][1] == replies[1][1]
    got = decisions(broker)
    assert set(got) == {tx_id(v) for v in values} and all(len(s) == 1 for s in got.values())
    assert committed(broker) == {0: len(values) + 1}


def test_exactly_once_through_the_loop_makes_each_decision_visible_once_with_its_offsets() -> None:
    from tests.unit.test_transactions import FakeTxnProducer, Ledger

    ledger = Ledger()
    settings = dataclasses.replace(SETTINGS, processing_guarantee="exactly_once")
    io = FakeConnections(loaded_broker(), settings)
    plain = io.producer  # the monitoring sink's producer stays an ordinary one

    def producer(config: Any) -> Any:
        return FakeTxnProducer(config, ledger) if "transactional.id" in config else plain(config)

    io.producer = producer  # type: ignore[method-assign]
    loop = ScorerLoop(settings, model(), io=io)
    assert loop.run(io.idle) == 0
    visible = [tx_id(v) for t, _, v in ledger.visible if t == settings.decisions_topic]
    assert sorted(visible) == sorted(reference())
    assert ledger.offsets == {p: len(inputs()[p]) for p in range(PARTITIONS)}


def test_a_new_day_speaks_for_the_owned_partitions_with_nothing_left_to_read_only() -> None:
    """Partition 1 still has records of day D-1 to read when partition 0 brings the first of day D: the
    scorer's watermarks announce day D for partition 0 (nothing left to read) but not for partition 1, whose
    own records must pass midnight first (else the day closes before they arrive: a hand-over's lag)."""
    from scorer.aggregate.partition import WATERMARK

    day = 20_513
    broker = FakeBroker(partitions=PARTITIONS)

    def record(tid: str, ms: int) -> bytes:
        stamp = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        doc = {
            "transaction_id": tid,
            "customer_id": "C1",
            "terminal_id": "T1",
            "amount": 5.0,
            "timestamp": stamp,
        }
        return orjson.dumps(doc)

    broker.put(SETTINGS.input_topic, 0, None, record("late-0", day * 86_400_000 - 60_000))
    broker.put(SETTINGS.input_topic, 0, None, record("new-0", day * 86_400_000 + 60_000))
    for i in range(5):
        broker.put(SETTINGS.input_topic, 1, None, record(f"old-{i}", day * 86_400_000 - 50_000 + i))
    loop = ScorerLoop(
        dataclasses.replace(SETTINGS, batch_max=2), model(), io=FakeConnections(broker, SETTINGS)
    )
    loop.open()
    loop.start()
    loop.step()  # partition 0's two records: day D reached, partition 1 not read yet
    marks = [
        (source, ts // 86_400_000)
        for _, v in broker.records(SETTINGS.terminal_events_topic)
        if v and v[:1] == b"W"
        for _, ts, kind, p in [WATERMARK.unpack(v)]
        for source in [kind.decode() + str(p)]
    ]
    assert ("t0", day) in marks and ("t1", day) not in marks
    assert loop._exit_code(loop.shutdown()) == 0
