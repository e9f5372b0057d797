"""Soak: the scorer and aggregator under a steady stream for minutes; does their memory stay flat?

A simulated history of 1,000 cards and 2,000 terminals (about 2,000 events a simulated day) is
replayed at a fixed rate with its own event times, labels included at their report time, so the
32-day windows fill after about 64,000 events and every later sample should show the same RSS: memory
follows the active keys, not the stream's length. The population is small so that the windows fill
early in the run: tansu's in-memory topics get slower as they fill, which caps the rate a ten-minute
run can sustain here. Memory per key at scale is the state workload's subject.

Each sample also records what isolates a stall: the CPU share of the broker and of the profile's
processes over the interval, and a probe's round trip (one record produced to a topic of its own and
read back by a consumer assigned to it, outside every group). When the broker is the bottleneck the
probe slows with the profile, whatever the profile is: run the passthrough and the scorer at one rate.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from benchmarks.harness import Launcher, Profile, Running, Tail, cpu_seconds
from scorer.config import Settings
from scorer.demo.stream import Streamer
from scorer.events.timestamps import MS_PER_DAY
from scorer.kafka.admin import TopicSpec, ensure_topics
from scorer.training.simulate import SimulationParams, simulate

SAMPLE_S = 5.0
EVENTS_PER_DAY = 1_900  # of the soak's simulation
FULL_WINDOW_DAYS = 32  # the customer ring: from here on no window grows


def soak(
    launcher: Launcher, profile: Profile, rate: float, seconds: float, broker_pid: int
) -> dict[str, Any]:
    """RSS, CPU shares and a probe's round trip every SAMPLE_S while the stream runs."""
    days = math.ceil(rate * seconds / EVENTS_PER_DAY * 1.3) + FULL_WINDOW_DAYS
    data = simulate(SimulationParams(customers=1000, terminals=2000, days=days))
    input_topic = f"soak-{launcher.runs + 1}-{profile.name}"
    ensure_topics(launcher.brokers, [TopicSpec(input_topic, 4), TopicSpec(f"{input_topic}-labels", 4)])
    running = launcher.start(profile, input_topic)
    settings = running.settings or dataclasses.replace(
        Settings(), brokers=launcher.brokers, input_topic=input_topic, labels_topic=f"{input_topic}-labels"
    )  # a passthrough reads the transactions only; the labels go to a topic nobody reads
    streamer = Streamer(settings, data, rate)
    tail = Tail(launcher.brokers, running.output_topic, keep=False)
    probe = Probe(launcher.brokers, f"{input_topic}-probe")
    full_ms = int(data.event_ts_ms[0]) + FULL_WINDOW_DAYS * MS_PER_DAY
    samples: list[dict[str, Any]] = []
    try:
        started = time.monotonic()
        next_sample = started + SAMPLE_S  # a sample's CPU shares cover the SAMPLE_S before it
        cpu = Shares(broker_pid, running)
        while time.monotonic() - started < seconds and not streamer.done and running.alive():
            streamer.pump()
            tail.poll(0)
            if time.monotonic() >= next_sample:
                next_sample += SAMPLE_S
                # decisions come out in event order per partition: the scored count dates the windows
                event_ms = int(data.event_ts_ms[min(max(0, tail.count - 1), streamer.next_tx - 1)])
                samples.append(
                    {"t": round(time.monotonic() - started, 1), "sent": streamer.next_tx,
                     "scored": tail.count, "windows_full": event_ms >= full_ms, "rss": running.rss(),
                     **cpu.take(), "probe_ms": probe.round_trip_ms()}
                )  # fmt: skip
            time.sleep(0.005)
        alive = running.alive()
    finally:
        streamer.close()
        tail.close()
        probe.close()
        running.stop()
    return {
        "profile": profile.name, "rate": rate, "alive": alive, **_growth(samples), **_stall(samples, rate),
        "samples": samples,
    }  # fmt: skip


class Shares:
    """CPU used by the broker and by the profile's processes since the previous take, as core shares."""

    def __init__(self, broker_pid: int, running: Running) -> None:
        self.broker_pid, self.running = broker_pid, running
        self.last = (time.monotonic(), cpu_seconds(broker_pid), running.cpu())

    def take(self) -> dict[str, float]:
        now = (time.monotonic(), cpu_seconds(self.broker_pid), self.running.cpu())
        dt = max(1e-6, now[0] - self.last[0])
        shares = {
            "broker_cpu": round((now[1] - self.last[1]) / dt, 2),
            "profile_cpu": round((now[2] - self.last[2]) / dt, 2),
        }
        self.last = now
        return shares


class Probe:
    """One record to a topic of its own and back, timed: the broker's responsiveness, outside any group."""

    TIMEOUT_S = 5.0

    def __init__(self, brokers: str, topic: str) -> None:
        ensure_topics(brokers, [TopicSpec(topic, 1)])
        self.topic = topic
        self.producer = Producer({"bootstrap.servers": brokers, "linger.ms": 0})
        self.consumer = Consumer(
            {"bootstrap.servers": brokers, "group.id": f"{topic}-reader", "enable.auto.commit": False,
             "fetch.wait.max.ms": 5}
        )  # fmt: skip
        self.consumer.assign([TopicPartition(topic, 0, 0)])
        self.sent = 0

    def round_trip_ms(self) -> float | None:
        """Milliseconds from produce to consume; None if it took longer than TIMEOUT_S."""
        self.sent += 1
        marker = str(self.sent).encode()
        started = time.monotonic()
        self.producer.produce(self.topic, value=marker)
        self.producer.flush(self.TIMEOUT_S)
        while time.monotonic() - started < self.TIMEOUT_S:
            msg = self.consumer.poll(0.05)
            if msg is not None and msg.error() is None and msg.value() == marker:
                return round((time.monotonic() - started) * 1000, 1)
        return None

    def close(self) -> None:
        self.consumer.close()
        self.producer.flush(1)


def _growth(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """RSS per role at the first sample with full windows and at the last one."""
    full = [s for s in samples if s["windows_full"]]
    if len(full) < 2:
        return {"error": "the run ended before the windows were full: raise --soak-seconds or the rate"}
    first, last = full[0], full[-1]
    return {
        "full_from_s": first["t"],
        "until_s": last["t"],
        "rss_full_bytes": first["rss"],
        "rss_end_bytes": last["rss"],
        "rss_growth": {
            r: round(last["rss"][r] / first["rss"][r] - 1.0, 4) for r in first["rss"] if first["rss"][r]
        },
    }


def _stall(samples: list[dict[str, Any]], rate: float) -> dict[str, Any]:
    """When the output first fell behind the input by more than 10 s of traffic, and what was busy then."""
    behind = [x for x in samples if x["sent"] - x["scored"] > 10 * rate]
    if not behind:
        return {"stall": None}
    first = behind[0]
    keys = ("t", "sent", "scored", "broker_cpu", "profile_cpu", "probe_ms")
    return {"stall": {k: first[k] for k in keys}}
