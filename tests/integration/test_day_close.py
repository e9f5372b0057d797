"""A scorer restarted across midnight, on the real broker: the aggregator's close of the day waits for the
scorer's unprocessed records, then counts them (aggregate/watermark.py)."""

from __future__ import annotations

import datetime
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from scorer.aggregate.partition import PartitionAgg
from scorer.aggregate.table import terminal_codec
from scorer.config import DEFAULT_MODEL, Settings
from scorer.events.timestamps import MS_PER_DAY, rfc3339_ms
from scorer.kafka.tables import read_partition
from scorer.model.onnx import OnnxModel
from scorer.training.simulate import SimulatedData, SimulationParams, simulate, transaction_values
from tests.integration.conftest import PARTITIONS, Proc, produce
from tests.integration.paced import Collector

HOUR_MS = 3_600_000
CLOSED_DAY = "scorer_aggregator_closed_day_timestamp_seconds"
DATA = SimulationParams(customers=80, terminals=24, days=2, seed=9, start=datetime.date(2026, 4, 1))


@pytest.fixture
def collector(settings: Settings) -> Iterator[Collector]:
    reader = Collector(settings)
    yield reader
    reader.close()


def test_a_scorer_restarted_across_midnight_has_its_days_events_in_the_close(
    settings: Settings, procs: list[Proc], collector: Collector, tmp_path: Path
) -> None:
    """The only scorer stops (SIGTERM) at 18:00 while its input goes on past midnight and fraud labels
    reported after midnight are re-keyed: the close of the day waits. Once the scorer is back, the day closes
    with every one of its transactions counted."""
    data = simulate(DATA)
    ts, day = data.event_ts_ms, int(data.event_ts_ms.min()) // MS_PER_DAY
    stop_ms = day * MS_PER_DAY + 18 * HOUR_MS
    before = np.flatnonzero(ts < stop_ms)
    during = np.flatnonzero((ts >= stop_ms) & (ts < (day + 1) * MS_PER_DAY + 6 * HOUR_MS))
    labels = fraud_labels(data, before, reported_ms=(day + 1) * MS_PER_DAY + HOUR_MS)

    def start(command: str, name: str) -> Proc:
        log = tmp_path / f"{name}.log"
        procs.append(Proc(command, settings, DEFAULT_MODEL, log, SCORER_TERMINAL_WAIT_S="10"))
        return procs[-1]

    aggregator, scorer = start("aggregate", "aggregator"), start("run", "scorer")
    send(settings, data, before)
    collector.wait_for([data.transaction_id[i] for i in before])
    assert scorer.terminate() == 0
    send(settings, data, during)
    produce(settings, settings.labels_topic, [(None, v) for v in labels])
    poll(lambda: waits_for_the_scorer(aggregator, settings, len(labels)), "no lag seen", aggregator)
    assert metric(aggregator, CLOSED_DAY) < day * 86_400  # every label past midnight, and still open
    start("run", "scorer-restarted")
    collector.wait_for([data.transaction_id[i] for i in during])
    poll(lambda: metric(aggregator, CLOSED_DAY) == day * 86_400, "the day did not close", aggregator)
    assert metric(aggregator, "scorer_aggregator_late_events_total", kind="transaction") == 0
    on_the_day = np.flatnonzero(ts // MS_PER_DAY == day)
    assert published_counts(settings, day) == Counter(data.terminal_id[i] for i in on_the_day.tolist())


def waits_for_the_scorer(aggregator: Proc, settings: Settings, labels: int) -> bool:
    """Every label folded (the labels are past midnight), and the stopped scorer's input seen behind."""
    folded = metric(aggregator, "scorer_aggregator_events_total", kind="label")
    return (
        folded == labels
        and metric(aggregator, "scorer_aggregator_lag_records", topic=settings.input_topic) > 0
    )


def fraud_labels(data: SimulatedData, idx: np.ndarray, reported_ms: int) -> list[bytes]:
    """A fraud label for the first transaction of each terminal in `idx`, reported at `reported_ms`: spread
    by terminal over every terminal-events partition."""
    first = {data.terminal_id[i]: i for i in reversed(idx.tolist())}
    reported = rfc3339_ms(np.asarray([reported_ms], dtype=np.int64))[0]
    stamps = rfc3339_ms(data.event_ts_ms[list(first.values())])
    return [
        orjson.dumps(
            {
                "transaction_id": data.transaction_id[i],
                "customer_id": data.customer_id[i],
                "terminal_id": t,
                "is_fraud": True,
                "reported_at": reported,
                "timestamp": stamp,
            }
        )  # fmt: skip
        for (t, i), stamp in zip(first.items(), stamps, strict=True)
    ]


def send(settings: Settings, data: SimulatedData, idx: np.ndarray) -> None:
    values = transaction_values(data, idx)
    produce(
        settings,
        settings.input_topic,
        [(data.customer_id[i].encode(), v) for i, v in zip(idx.tolist(), values, strict=True)],
    )


def published_counts(settings: Settings, day: int) -> Counter[str]:
    """Each terminal's transactions on `day` in the terminal-features table, as of its latest close."""
    config = OnnxModel(DEFAULT_MODEL).meta.feature_config
    reader = settings.consumer_config(group=f"check-{time.monotonic_ns()}")
    out: Counter[str] = Counter()
    for p in range(PARTITIONS):
        part = PartitionAgg.restore(
            config, terminal_codec(config), read_partition(reader, settings.terminal_topic, p)
        )
        assert part.terminals.closed_day == day
        ring = part.terminals.ring
        terminals = list(ring.index)
        ends = np.full((len(terminals), 1), day, dtype=np.int64)
        counts = ring.day_sums(("count",), ring.slots(terminals, create=False), ends, (1,))[:, 0, 0, 0]
        out.update({t: int(n) for t, n in zip(terminals, counts.tolist(), strict=True) if n})
    return out


def metric(proc: Proc, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (NaN when there is none)."""
    values = [
        sample.value
        for family in text_string_to_metric_families(proc.metrics())
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    ]
    return float(sum(values)) if values else float("nan")


def poll(condition: Callable[[], bool], failure: str, proc: Proc, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except OSError:  # the metrics port is not up yet
            pass
        time.sleep(0.2)
    raise AssertionError(f"{failure}; aggregator {proc.describe()}")
