"""Drain: N events preloaded on the input topic, then each implementation reads them all as fast as it can.

Throughput is measured from the first output record to the last (startup, imports and the group join are
left out), as events per wall second and per CPU second of the implementation's own processes. The
broker's and the whole machine's CPU over the same interval show what else was busy. Afterwards every
output record is read back: each input must appear exactly once.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import numpy as np
from confluent_kafka import Producer

from benchmarks.harness import (
    INPUT_TOPIC_CONFIG,
    PARTITIONS,
    Launcher,
    Profile,
    Tail,
    cpu_seconds,
    decision_ids,
    machine_busy_s,
    passthrough_ids,
    same_decisions,
)
from scorer.kafka.admin import TopicSpec, ensure_topics
from scorer.training.simulate import SimulatedData, transaction_values

CHUNK = 10_000
POLL_S = 0.05


def preload(brokers: str, topic: str, data: SimulatedData, n: int) -> list[str]:
    """Produce the first n simulated transactions (keyed by customer, in time order); returns their ids."""
    ensure_topics(brokers, [TopicSpec(topic, PARTITIONS, config=INPUT_TOPIC_CONFIG)])
    producer = Producer({"bootstrap.servers": brokers, "linger.ms": 20, "compression.type": "lz4"})
    for start in range(0, n, CHUNK):
        idx = np.arange(start, min(n, start + CHUNK))
        values = transaction_values(data, idx)
        msgs = [
            {"key": data.customer_id[i].encode(), "value": v}
            for i, v in zip(idx.tolist(), values, strict=True)
        ]
        while msgs:
            producer.produce_batch(topic, msgs)
            msgs = [m for m in msgs if m.pop("_error", None) is not None]
            producer.poll(0.05 if msgs else 0)
    if producer.flush(60) != 0:
        raise RuntimeError("preload: the broker did not take every event")
    return data.transaction_id[:n]


def expected_ids(kind: str, ids: list[str], brokers: str, topic: str) -> set[str]:
    """What each input looks like in the output: its id, or partition:offset for the passthrough."""
    if kind != "passthrough":
        return set(ids)
    tail = Tail(brokers, topic)
    try:
        tail.until(len(ids), 30.0)
    finally:
        tail.close()
    return {f"{p}:{o}" for p, o in tail.where}


def drain(
    launcher: Launcher, profile: Profile, topic: str, expected: set[str], broker_pid: int, timeout_s: float
) -> dict[str, Any]:
    """Run one profile over the preloaded topic; its throughput, CPU and the exactly-once check."""
    n = len(expected)
    running = launcher.start(profile, topic)
    tail = Tail(launcher.brokers, running.output_topic)
    start: dict[str, float] | None = None
    deadline = time.monotonic() + timeout_s
    try:
        while tail.count < n and time.monotonic() < deadline and running.alive():
            tail.poll(POLL_S)
            if start is None and tail.count > 0:
                start = _sample(running, broker_pid, tail.count)
        end = _sample(running, broker_pid, tail.count)
        alive = running.alive()
        running.stop()
        tail.until(n + 1, 3.0)  # anything written twice comes after the last expected record
    finally:
        tail.close()
        running.stop()
    result: dict[str, Any] = {"profile": profile.name, "events": n}
    if start is None or end["out"] < n:
        why = "died" if not alive else f"timed out after {timeout_s:.0f}s"
        return {**result, "error": f"{why} with {end['out']} of {n} outputs (log: {running.logs})"}
    result.update(_rates(start, end))
    result.update(_check(tail.values, profile.kind, expected))
    return result


def _sample(running: Any, broker_pid: int, out: int) -> dict[str, float]:
    busy, total = machine_busy_s()
    return {
        "t": time.monotonic(),
        "out": out,
        "cpu": running.cpu(running.scoring_roles),
        "aggregator": running.cpu(["aggregator"]),
        "broker": cpu_seconds(broker_pid),
        "busy": busy,
        "total": total,
    }


def _rates(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    events, seconds = b["out"] - a["out"], b["t"] - a["t"]
    cpu, agg = b["cpu"] - a["cpu"], b["aggregator"] - a["aggregator"]
    return {
        "seconds": round(seconds, 3),
        "events_per_s": round(events / seconds),
        "cpu_s": round(cpu, 2),
        "events_per_cpu_s": round(events / cpu) if cpu > 0 else 0,
        "aggregator_cpu_s": round(agg, 2),
        "events_per_cpu_s_with_aggregator": round(events / (cpu + agg)) if cpu + agg > 0 else 0,
        "broker_cpu_s": round(b["broker"] - a["broker"], 2),
        "machine_busy_share": round((b["busy"] - a["busy"]) / max(b["total"] - a["total"], 1e-9), 3),
    }


def _check(values: list[bytes], kind: str, expected: set[str]) -> dict[str, Any]:
    ids = passthrough_ids(values) if kind == "passthrough" else decision_ids(values)
    counts = Counter(ids)
    duplicates = sum(c - 1 for c in counts.values() if c > 1)
    missing = len(expected - counts.keys())
    unexpected = len(counts.keys() - expected)
    return {
        "exactly_once": duplicates == 0 and missing == 0 and unexpected == 0,
        "duplicates": duplicates,
        "missing": missing,
        "unexpected": unexpected,
    }


def outputs(launcher: Launcher, profile: Profile, topic: str, n: int, timeout_s: float) -> list[bytes]:
    """Every output record of one profile over `topic` (n inputs), read until n arrived or none came for
    timeout_s, then a little longer so that a repeated record would show."""
    running = launcher.start(profile, topic)
    tail = Tail(launcher.brokers, running.output_topic)
    try:
        tail.until(n, timeout_s)
        running.stop()
        tail.until(n + 1, 2.0)
        return tail.values
    finally:
        tail.close()
        running.stop()


def equal_work(
    launcher: Launcher, first: Profile, second: Profile, topic: str, n: int, timeout_s: float = 60.0
) -> dict[str, Any]:
    """Both profiles over the same preloaded topic: same transaction ids, scores within 1e-5
    (harness.same_decisions), so a peer that is faster because it does less cannot pass for equal."""
    a = outputs(launcher, first, topic, n, timeout_s)
    b = outputs(launcher, second, topic, n, timeout_s)
    return {"first": first.name, "second": second.name, "inputs": n, **same_decisions(a, b)}
