"""Drive a simulated history through the running system one event-day at a time, and score it offline.

Producing a day only after the previous one is fully decided and its labels are re-keyed by the
aggregator makes the online run deterministic, so its scores can be compared with the offline replay.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from scorer.config import Settings
from scorer.events.timestamps import MS_PER_DAY
from scorer.model.onnx import OnnxModel
from scorer.training.dataset import History
from scorer.training.history import replay
from scorer.training.simulate import SimulatedData, label_values, transaction_values
from tests.integration.conftest import FAST


def offline_scores(history: History, model: OnnxModel) -> dict[str, float]:
    """The offline path: replay the history through the feature engine, score every transaction."""
    from scorer.features.engine import FeatureEngine

    X = replay(history.transactions, history.labels, FeatureEngine(model.meta.feature_config))
    return dict(zip(history.transactions.transaction_id, model.predict(X).tolist(), strict=True))


@dataclass
class Collector:
    """Reads decisions as they come; keeps every decision per transaction id."""

    settings: Settings

    def __post_init__(self) -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": self.settings.brokers,
                "group.id": f"collector-{time.monotonic_ns()}",
                "auto.offset.reset": "earliest",
                **FAST,
            }  # fmt: skip
        )
        self.consumer.subscribe([self.settings.decisions_topic])
        self.scores: dict[str, list[float]] = {}

    def poll(self, timeout_s: float = 0.2) -> None:
        for msg in self.consumer.consume(5000, timeout_s):
            if msg.error() is None and msg.value():
                doc = orjson.loads(msg.value() or b"{}")
                self.scores.setdefault(doc["transaction_id"], []).append(doc["score"])

    def wait_for(self, ids: list[str], timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(i in self.scores for i in ids):
                return
            self.poll()
        missing = [i for i in ids if i not in self.scores]
        raise AssertionError(f"{len(missing)} transactions without a decision, e.g. {missing[:3]}")

    def close(self) -> None:
        self.consumer.close()


def wait_rekeyed(settings: Settings, timeout_s: float = 30.0) -> None:
    """Until the aggregator's re-key stage has committed every label produced so far."""
    group = f"{settings.aggregator_group}-rekey"
    probe = Consumer({"bootstrap.servers": settings.brokers, "group.id": group, "enable.auto.commit": False})
    try:
        meta = probe.list_topics(settings.labels_topic, timeout=10)
        parts = [
            TopicPartition(settings.labels_topic, p) for p in meta.topics[settings.labels_topic].partitions
        ]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            committed = {tp.partition: tp.offset for tp in probe.committed(parts, timeout=5)}
            highs = {tp.partition: probe.get_watermark_offsets(tp, timeout=5)[1] for tp in parts}
            if all(highs[p] == 0 or committed.get(p, -1) >= highs[p] for p in highs):
                return
            time.sleep(0.1)
        raise AssertionError("the aggregator did not re-key the labels in time")
    finally:
        probe.close()


def stream_by_day(
    settings: Settings,
    data: SimulatedData,
    collector: Collector,
    on_day: Callable[[int], None] | None = None,
) -> None:
    """Produce each event-day's transactions and the labels reported that day; wait until decided.

    `on_day(n)` runs right after day n is produced, while the scorers are working on it.
    """
    producer = Producer({"bootstrap.servers": settings.brokers, "linger.ms": 2})
    days = data.event_ts_ms // MS_PER_DAY
    label_days = data.label_reported_ts_ms // MS_PER_DAY
    for n, day in enumerate(np.unique(days).tolist()):
        idx = np.flatnonzero(days == day)
        values = transaction_values(data, idx)
        for i, value in zip(idx.tolist(), values, strict=True):
            producer.produce(settings.input_topic, value=value, key=data.customer_id[i].encode())
        due = np.flatnonzero(label_days == day)
        for k, value in zip(due.tolist(), label_values(data, due), strict=True):
            producer.produce(
                settings.labels_topic, value=value, key=data.terminal_id[data.label_index[k]].encode()
            )
        assert producer.flush(30) == 0
        if on_day is not None:
            on_day(n)
        collector.wait_for([data.transaction_id[i] for i in idx.tolist()])
        wait_rekeyed(settings)


def assert_parity(collector: Collector, offline: dict[str, float], tolerance: float = 1e-6) -> None:
    missing = [t for t in offline if t not in collector.scores]
    assert not missing, f"{len(missing)} transactions have no decision"
    worst = max(abs(s - offline[t]) for t, scores in collector.scores.items() for s in scores)
    assert worst <= tolerance, f"online and offline scores differ by up to {worst:.3g}"
