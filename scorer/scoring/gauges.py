"""The scorer's gauges, refreshed every couple of seconds: state size, drift, terminal table day and lag."""

from __future__ import annotations

import time
from collections.abc import Iterable

from confluent_kafka import KafkaException, TopicPartition

from scorer.aggregate.table import TerminalTable
from scorer.events.timestamps import NEVER
from scorer.runtime.metrics import Metrics
from scorer.scoring.connections import InputConsumer
from scorer.scoring.core import ScoringCore


class Gauges:
    """Sets the gauges from the loop's parts; remembers which lag series exist, to remove them on revoke."""

    def __init__(self, metrics: Metrics, input_topic: str) -> None:
        self.metrics = metrics
        self.input_topic = input_topic
        self.last = 0.0
        self.lag_partitions: set[int] = set()

    def update(
        self, core: ScoringCore, table: TerminalTable, consumer: InputConsumer, assigned: Iterable[int]
    ) -> None:
        self.last = time.monotonic()
        m, customers = self.metrics, core.customers
        m.state_keys.labels("customer").set(customers.keys)
        m.state_bytes.labels("customer").set(customers.nbytes)
        m.state_keys.labels("terminal").set(table.keys)
        m.state_bytes.labels("terminal").set(table.nbytes)
        self._drift(core)
        if table.applied_day > NEVER:
            m.terminal_day.set(table.applied_day * 86_400)
        self._lag(consumer, assigned)

    def _drift(self, core: ScoringCore) -> None:
        drift = core.drift
        for window, (events, values) in drift.window_psi().items():
            self.metrics.drift_events.labels(window).set(events)
            comparable = drift.comparable[window][:-1].tolist()
            for column, value, ok in zip(
                drift.bins.columns[:-1], values[:-1].tolist(), comparable, strict=True
            ):
                if ok:  # calendar features over a window shorter than their cycle get no series at all
                    self.metrics.feature_psi.labels(column, window).set(value)
            self.metrics.score_psi.labels(window).set(float(values[-1]))

    def _lag(self, consumer: InputConsumer, assigned: Iterable[int]) -> None:
        positions = consumer.position([TopicPartition(self.input_topic, p) for p in sorted(assigned)])
        for tp in positions:
            try:
                _, high = consumer.get_watermark_offsets(tp, timeout=1.0, cached=True)
            except KafkaException:
                continue
            if tp.offset >= 0:
                self.metrics.lag.labels(str(tp.partition)).set(max(0, high - tp.offset))
                self.lag_partitions.add(tp.partition)

    def forget(self, partitions: Iterable[int]) -> None:
        """Revoked partitions: their lag series go."""
        for p in partitions:
            if p in self.lag_partitions:
                self.metrics.lag.remove(str(p))
                self.lag_partitions.discard(p)
