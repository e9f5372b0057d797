"""Paced: a producer at fixed rates; end-to-end latency and the highest lag of each implementation.

Latency is the output record's create time minus the input's produce time (events are stamped with
the wall clock as they are sent, so a decision's `timestamp` is its input's produce time). Lag is what
was produced but has not come out yet, sampled as the run goes. A rate the implementation cannot keep
up with is reported as such and the higher rates are skipped (their backlog would only grow).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from benchmarks.harness import (
    INPUT_TOPIC_CONFIG,
    PARTITIONS,
    Launcher,
    Profile,
    Running,
    cpu_seconds,
    histogram_quantile,
    input_ms_of,
)
from scorer.events.timestamps import rfc3339_ms
from scorer.kafka.admin import TopicSpec, ensure_topics
from scorer.training.simulate import SimulatedData

PLACEHOLDER = "0000-00-00T00:00:00.000Z"
WARMUP_EVENTS = 200


class Events:
    """Pre-encoded simulated transactions whose timestamp is filled in when they are sent."""

    def __init__(self, data: SimulatedData, count: int) -> None:
        idx = np.arange(min(count, len(data.transaction_id)))
        amounts = data.amount[idx].tolist()
        self.keys = [data.customer_id[i].encode() for i in idx.tolist()]
        self.parts: list[tuple[bytes, bytes]] = []
        for j, i in enumerate(idx.tolist()):
            doc = {
                "transaction_id": data.transaction_id[i], "timestamp": PLACEHOLDER,
                "customer_id": data.customer_id[i], "terminal_id": data.terminal_id[i],
                "amount": amounts[j], "currency": data.currency[i], "channel": data.channel[i],
                "merchant_category": data.merchant_category[i],
            }  # fmt: skip
            head, tail = orjson.dumps(doc).split(PLACEHOLDER.encode())
            self.parts.append((head, tail))
        self.next = 0

    def take(self, n: int) -> list[dict[str, Any]]:
        """The next n events, stamped now; wraps around (ids repeat) only if the run outlasts the data."""
        now_ms = int(time.time() * 1000)
        stamp = rfc3339_ms(np.asarray([now_ms], dtype=np.int64))[0].encode()
        out = []
        for _ in range(n):
            i = self.next % len(self.parts)
            head, tail = self.parts[i]
            out.append({"key": self.keys[i], "value": head + stamp + tail})  # create time: now
            self.next += 1
        return out


class Link:
    """The producer into one run's input topic and the reader of its output topic."""

    def __init__(
        self, brokers: str, input_topic: str, output_topic: str, kind: str, fetch_wait_ms: int
    ) -> None:
        self.topic = input_topic
        self.producer = Producer({"bootstrap.servers": brokers, "linger.ms": 5})
        self.reader = Consumer(
            {"bootstrap.servers": brokers, "group.id": f"bench-paced-{time.monotonic_ns()}",
             "enable.auto.commit": False, "fetch.wait.max.ms": fetch_wait_ms}
        )  # fmt: skip
        self.reader.assign([TopicPartition(output_topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        self.input_ms = input_ms_of(kind)
        self.sent = 0
        self.received = 0
        self.latencies: list[npt.NDArray[np.int64]] = []  # per read: (input ms, output ms) pairs

    def send(self, msgs: list[dict[str, Any]]) -> None:
        while msgs:
            self.producer.produce_batch(self.topic, msgs)
            self.sent += len(msgs)
            msgs = [m for m in msgs if m.pop("_error", None) is not None]
            self.sent -= len(msgs)
            self.producer.poll(0.01 if msgs else 0)

    def read(self) -> None:
        msgs = [m for m in self.reader.consume(10_000, 0) if not m.error()]
        if msgs:
            produced = self.input_ms([m.value() or b"" for m in msgs])
            out_ms = np.array([m.timestamp()[1] for m in msgs], dtype=np.int64)
            self.latencies.append(np.column_stack([produced, out_ms]))
            self.received += len(msgs)

    def wait_until_received(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.received < self.sent and time.monotonic() < deadline:
            self.producer.poll(0)
            self.read()
            time.sleep(0.002)
        return self.received >= self.sent

    def close(self) -> None:
        self.producer.flush(10)
        self.reader.close()


INSIDE = {  # scorer histograms read around each phase -> the phase's field (p99, a bucket bound, ms)
    "scorer_batch_seconds": "batch_p99_le_ms",
    "scorer_batch_cpu_seconds": "batch_cpu_p99_le_ms",
    "scorer_end_to_end_latency_seconds": "produced_p99_le_ms",
}


def paced(
    launcher: Launcher,
    profile: Profile,
    events: Events,
    rates: Sequence[float],
    seconds: float,
    broker_pid: int,
) -> dict[str, Any]:
    """Warm up, then each rate for `seconds`; latency percentiles and max lag per rate."""
    input_topic = f"paced-{launcher.runs + 1}-{profile.name}"
    ensure_topics(launcher.brokers, [TopicSpec(input_topic, PARTITIONS, config=INPUT_TOPIC_CONFIG)])
    running = launcher.start(profile, input_topic)
    link = Link(launcher.brokers, input_topic, running.output_topic, profile.kind, launcher.fetch_wait_ms)
    phases: list[dict[str, Any]] = []
    try:
        link.send(events.take(WARMUP_EVENTS))
        if not link.wait_until_received(90.0):
            return {"profile": profile.name, "error": f"no output after warm-up (log: {running.logs})"}
        for rate in rates:
            phase = _phase(link, running, events, rate, seconds, broker_pid)
            phases.append(phase)
            if not phase["kept_up"]:
                break
        rss = running.rss()
    finally:
        link.close()
        running.stop()
    return {"profile": profile.name, "phases": phases, "rss_bytes": rss}


def _phase(
    link: Link, running: Running, events: Events, rate: float, seconds: float, broker_pid: int
) -> dict[str, Any]:
    link.latencies = []
    first_ms, sent0, cpu0 = int(time.time() * 1000), link.sent, running.cpu(running.scoring_roles)
    aggregator0, broker0 = running.cpu(["aggregator"]), cpu_seconds(broker_pid)
    inside0 = {h: running.histogram(h) for h in INSIDE} if running.metrics_ports else {}
    started, max_lag = time.monotonic(), 0
    while (elapsed := time.monotonic() - started) < seconds:
        due = int(elapsed * rate) - (link.sent - sent0)
        if due > 0:
            link.send(events.take(due))
        link.producer.poll(0)
        link.read()
        max_lag = max(max_lag, link.sent - link.received)
        time.sleep(0.001)
    cpu = running.cpu(running.scoring_roles) - cpu0
    aggregator, broker = running.cpu(["aggregator"]) - aggregator0, cpu_seconds(broker_pid) - broker0
    kept_up = link.wait_until_received(max(10.0, seconds))
    inside = {}  # the scorer's own view: bucket bounds of its p99 batch time and produce-minus-timestamp
    for h, (bounds, before) in inside0.items():
        p99 = histogram_quantile(bounds, before, running.histogram(h)[1], 0.99)
        inside[INSIDE[h]] = None if p99 is None else round(p99 * 1000, 2)
    pairs = np.concatenate(link.latencies) if link.latencies else np.zeros((0, 2), dtype=np.int64)
    pairs = pairs[pairs[:, 0] >= first_ms]
    latency = (pairs[:, 1] - pairs[:, 0]).astype(np.float64)
    pct = np.percentile(latency, [50, 99, 99.9]).tolist() if len(latency) else [float("nan")] * 3
    return {
        "rate": rate,
        "sent": link.sent - sent0,
        "received": int(len(pairs)),
        "kept_up": kept_up,
        "p50_ms": round(pct[0], 1),
        "p99_ms": round(pct[1], 1),
        "p999_ms": round(pct[2], 1),
        "max_ms": float(latency.max()) if len(latency) else float("nan"),
        "max_lag": int(max_lag),
        "cpu_share": round(cpu / seconds, 3),
        "aggregator_cpu_share": round(aggregator / seconds, 3),
        "broker_cpu_share": round(broker / seconds, 3),
        **inside,
    }
