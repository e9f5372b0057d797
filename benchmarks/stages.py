"""What each step of the scorer's hot path costs per event, in-process, without Kafka.

`python -m benchmarks.stages` replays simulated transactions (as JSON bytes, keyed to 4 partitions like
the drain) through the same functions `scorer run` calls, batch by batch, and prints microseconds per
event per step. The Kafka side (consume, produce, delivery reports) is what the passthrough measures.
The terminal table's own updates (the aggregator's work) run between batches and are not timed.
`--default-gc` keeps Python's default collector thresholds, to show what scorer.runtime.tune_gc saves.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from benchmarks.harness import rss_bytes
from scorer.config import DEFAULT_MODEL
from scorer.events.batches import TransactionBatch, pick
from scorer.events.decode import decode_transactions
from scorer.events.timestamps import MS_PER_DAY
from scorer.features.engine import (
    CUSTOMER_NAMES,
    FEATURE_NAMES,
    TERMINAL_NAMES,
    CustomerFeatures,
    TerminalFeatures,
    stateless_features,
)
from scorer.model.onnx import OnnxModel
from scorer.monitoring.drift import Bins, Drift
from scorer.monitoring.inputs import InputChecks
from scorer.rollout.plans import Plan
from scorer.rollout.serving import Serving
from scorer.runtime.process import tune_gc
from scorer.scoring.decisions import Explainer, ScoredBatch, encode_decisions
from scorer.training.simulate import SimulationParams, simulate, transaction_values

PARTITIONS = 4
STAGES = (  # "model": every model call of the batch, and the blending under a plan
    "decode",
    "customer windows",
    "terminal lookup",
    "stateless + assemble",
    "model",
    "input checks + drift",
    "decisions",
    "messages",
)


class Replay:
    """The scorer's per-batch steps over pre-encoded events, timed one by one."""

    def __init__(self, batch_size: int, blend: bool = False) -> None:
        self.model = OnnxModel(DEFAULT_MODEL)
        self.serving = Serving(self.model)
        if blend:  # a second copy of the model as challenger, blended over the whole stream
            plan = Plan("bench", "blend", self.model.label, self.model.label, 0, end_ms=2**62, steps=0)
            self.serving = Serving(self.model, OnnxModel(DEFAULT_MODEL), plan)
        config = self.model.meta.feature_config
        self.vocab = config.codes()
        self.customers = [CustomerFeatures(config) for _ in range(PARTITIONS)]
        self.terminals = TerminalFeatures(config)
        self.explainer = Explainer.from_meta(self.model.meta.raw, FEATURE_NAMES)
        meta = self.model.meta.raw
        self.checks = InputChecks.from_meta(meta, FEATURE_NAMES, 300.0, 86_400.0)
        self.drift = Drift(Bins.from_reference(meta["reference"], FEATURE_NAMES))
        self.batch_size = batch_size
        self.seconds = dict.fromkeys(STAGES, 0.0)

    def run(self, values: list[bytes], partitions: Any) -> None:
        for start in range(0, len(values), self.batch_size):
            stop = start + self.batch_size
            self.batch(values[start:stop], partitions[start:stop])

    def batch(self, raw: list[bytes], partition: Any) -> None:
        clock = [time.perf_counter()]

        def lap(stage: str) -> None:
            clock.append(time.perf_counter())
            self.seconds[stage] += clock[-1] - clock[-2]

        b = decode_transactions(raw).batch
        lap("decode")
        customer = self._customers(b, partition)
        lap("customer windows")
        terminal = self._terminals(b)
        lap("terminal lookup")
        X = np.hstack([stateless_features(b, self.vocab), customer, terminal]).astype(np.float32)
        lap("stateless + assemble")
        out = self.serving.score(X, b, lambda label, seconds: None)
        lap("model")
        now_ms = int(time.time() * 1000)
        self.checks.check(b, X, now_ms, lambda name, reason, n: None, self.model.label)
        self.drift.observe(X, out.champion_scores, b.event_ts_ms)
        lap("input checks + drift")
        scored = ScoredBatch(b, X, out.scores, out.flagged, self.model.threshold, self.model.label, out.extra)
        values = encode_decisions(scored, self.explainer, int(time.time() * 1000))
        lap("decisions")
        keys = list(map(str.encode, b.customer_id))
        _ = [{"key": k, "value": v} for k, v in zip(keys, values, strict=True)]
        lap("messages")
        self._close_days(b)

    def _customers(self, b: TransactionBatch, partition: Any) -> Any:
        out = np.empty((len(b), len(CUSTOMER_NAMES)))
        for p in np.unique(partition).tolist():
            idx = np.flatnonzero(partition == p)
            state = self.customers[p]
            out[idx] = state.update_and_compute(pick(b.customer_id, idx), b.event_ts_ms[idx], b.amount[idx])
        return out

    def _terminals(self, b: TransactionBatch) -> Any:
        day = b.event_ts_ms // MS_PER_DAY
        out = np.zeros((len(b), len(TERMINAL_NAMES)))
        for d in np.unique(day).tolist():
            idx = np.flatnonzero(day == d)
            slots = self.terminals.ring.slots(pick(b.terminal_id, idx), create=False)
            known = slots >= 0
            if known.any():
                out[idx[known]] = self.terminals.compute(slots[known], day[idx][known])
        return out

    def _close_days(self, b: TransactionBatch) -> None:
        """The aggregator's part (untimed): count the batch into the terminal table."""
        for d in np.unique(b.event_ts_ms // MS_PER_DAY).tolist():
            idx = np.flatnonzero(b.event_ts_ms // MS_PER_DAY == d)
            if d - 1 > self.terminals.closed_day:
                self.terminals.close(d - 1)
            self.terminals.add_transactions(pick(b.terminal_id, idx), b.event_ts_ms[idx])


def measure(
    events: int, batch_size: int, default_gc: bool, warmup: int, blend: bool = False
) -> dict[str, float]:
    data = simulate(SimulationParams())
    n = min(events + warmup, len(data.transaction_id))
    values = transaction_values(data, np.arange(n, dtype=np.int64))
    partitions = np.array([zlib.crc32(data.customer_id[i].encode()) % PARTITIONS for i in range(n)])
    replay = Replay(batch_size, blend)
    if not default_gc:
        tune_gc()
    replay.run(values[:warmup], partitions[:warmup])
    replay.seconds = dict.fromkeys(STAGES, 0.0)
    replay.run(values[warmup:], partitions[warmup:])
    measured = n - warmup
    return {stage: s / measured * 1e6 for stage, s in replay.seconds.items()}


def memory(events: int, sample_every: int) -> dict[str, Any]:
    """RSS of this process while the default simulated history streams through the scorer's steps.

    The 32-day customer windows are full from day 32 of the history on: RSS sampled after that should
    stay flat, since state follows the active keys and expiry drops the idle ones.
    """
    data = simulate(SimulationParams())
    n = min(events, len(data.transaction_id))
    full_ms = int(data.event_ts_ms[0]) + 32 * MS_PER_DAY
    partitions = np.array([zlib.crc32(c.encode()) % PARTITIONS for c in data.customer_id[:n]])
    replay = Replay(2000)
    tune_gc()
    samples = []
    for start in range(0, n, sample_every):
        stop = min(n, start + sample_every)
        replay.run(transaction_values(data, np.arange(start, stop, dtype=np.int64)), partitions[start:stop])
        keys = sum(len(c.ring) for c in replay.customers) + len(replay.terminals.ring)
        filled = bool(data.event_ts_ms[stop - 1] >= full_ms)
        samples.append(
            {"events": stop, "windows_full": filled, "state_keys": keys, "rss": rss_bytes(os.getpid())}
        )
    full = [x for x in samples if x["windows_full"]]
    first, last = (full[0], full[-1]) if full else (samples[-1], samples[-1])
    return {
        "events": n,
        "samples": samples,
        "events_after_full": last["events"] - first["events"],
        "rss_growth_after_full_bytes": last["rss"] - first["rss"],
        "rss_growth_after_full": round(last["rss"] / first["rss"] - 1.0, 4),
        "note": "RSS includes the simulated history held in memory (fixed size): the growth is the scorer's",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stages", description=__doc__)
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=100_000, help="events replayed first, untimed (fills state)")
    p.add_argument("--default-gc", action="store_true", help="keep Python's default GC thresholds")
    p.add_argument("--blend", action="store_true", help="score with champion + challenger under a blend plan")
    p.add_argument("--json", action="store_true", help="print the per-stage figures as JSON")
    p.add_argument("--memory", action="store_true", help="instead: RSS while --events stream through (JSON)")
    p.add_argument("--sample-every", type=int, default=50_000, help="--memory: events between RSS samples")
    args = p.parse_args(argv)
    if args.memory:
        sys.stdout.write(orjson.dumps(memory(args.events, args.sample_every)).decode() + "\n")
        return 0
    us = measure(args.events, args.batch, args.default_gc, args.warmup, args.blend)
    if args.json:
        sys.stdout.write(orjson.dumps({"batch": args.batch, "us_per_event": us}).decode() + "\n")
        return 0
    write: Callable[[str], int] = sys.stdout.write
    write(f"per event, batches of {args.batch}, GC {'default' if args.default_gc else 'tuned'}:\n")
    for stage, value in us.items():
        write(f"  {stage:22s} {value:6.2f} us\n")
    write(
        f"  {'total':22s} {sum(us.values()):6.2f} us  (= {1e6 / sum(us.values()):,.0f} events/s per core)\n"
    )
    gc.collect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
