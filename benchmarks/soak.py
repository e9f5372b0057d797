"""Soak: the scorer and aggregator under a steady stream for minutes; does their memory stay flat?

A simulated history of 1,000 cards and 2,000 terminals (about 2,000 events a simulated day) is
replayed at a fixed rate with its own event times, labels included at their report time, so the
32-day windows fill after about 64,000 events and every later sample should show the same RSS: memory
follows the active keys, not the stream's length. The population is small so that the windows fill
early in the run: tansu's in-memory topics get slower as they fill, which caps the rate a ten-minute
run can sustain here. Memory per key at scale is the state workload's subject.
"""

from __future__ import annotations

import math
import time
from typing import Any

from benchmarks.harness import Launcher, Profile, Tail
from scorer.demo.stream import Streamer
from scorer.events.timestamps import MS_PER_DAY
from scorer.kafka.admin import TopicSpec, ensure_topics
from scorer.training.simulate import SimulationParams, simulate

SAMPLE_S = 5.0
EVENTS_PER_DAY = 1_900  # of the soak's simulation
FULL_WINDOW_DAYS = 32  # the customer ring: from here on no window grows


def soak(launcher: Launcher, profile: Profile, rate: float, seconds: float) -> dict[str, Any]:
    """RSS of each process every SAMPLE_S while the stream runs; growth after the windows are full."""
    days = math.ceil(rate * seconds / EVENTS_PER_DAY * 1.3) + FULL_WINDOW_DAYS
    data = simulate(SimulationParams(customers=1000, terminals=2000, days=days))
    input_topic = f"soak-{launcher.runs + 1}-{profile.name}"
    ensure_topics(launcher.brokers, [TopicSpec(input_topic, 4)])
    running = launcher.start(profile, input_topic)
    if running.settings is None:
        raise ValueError("soak runs a scorer profile")
    streamer = Streamer(running.settings, data, rate)
    tail = Tail(launcher.brokers, running.output_topic, keep=False)
    full_ms = int(data.event_ts_ms[0]) + FULL_WINDOW_DAYS * MS_PER_DAY
    samples: list[dict[str, Any]] = []
    try:
        started = next_sample = time.monotonic()
        while time.monotonic() - started < seconds and not streamer.done and running.alive():
            streamer.pump()
            tail.poll(0)
            if time.monotonic() >= next_sample:
                next_sample += SAMPLE_S
                # decisions come out in event order per partition: the scored count dates the windows
                event_ms = int(data.event_ts_ms[min(max(0, tail.count - 1), streamer.next_tx - 1)])
                samples.append(
                    {"t": round(time.monotonic() - started, 1), "sent": streamer.next_tx,
                     "scored": tail.count, "windows_full": event_ms >= full_ms, "rss": running.rss()}
                )  # fmt: skip
            time.sleep(0.005)
        alive = running.alive()
    finally:
        streamer.close()
        tail.close()
        running.stop()
    return {"profile": profile.name, "rate": rate, "alive": alive, **_growth(samples), "samples": samples}


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
