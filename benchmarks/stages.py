"""What each step of the scorer's hot path costs per event, in-process, without Kafka.

`python -m benchmarks.stages` replays simulated transactions (as JSON bytes, keyed to 4 partitions like
the drain) through the scoring core `scorer run` calls (scorer.scoring.core.ScoringCore), batch by batch, and
prints microseconds per event per step, as the core marks them. The Kafka side (consume, produce, delivery reports) is what the passthrough measures.
The terminal table's own updates (the aggregator's work) run between batches and are not timed.
`--default-gc` keeps Python's default collector thresholds, to show what scorer.runtime.process.tune_gc saves.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from prometheus_client import CollectorRegistry

from benchmarks.harness import rss_bytes
from scorer.aggregate.partition import TX, PartitionAgg
from scorer.aggregate.table import MemorySource, TerminalTable, terminal_codec
from scorer.config import DEFAULT_MODEL, Settings
from scorer.events.decode import decode_transactions
from scorer.events.timestamps import MS_PER_DAY
from scorer.features.engine import TerminalFeatures
from scorer.model.onnx import OnnxModel
from scorer.policy.rules import Rule, RuleBook
from scorer.rollout.plans import Plan
from scorer.rollout.serving import Serving
from scorer.runtime.metrics import Metrics
from scorer.runtime.process import tune_gc
from scorer.scoring.core import ScoringCore
from scorer.scoring.customers import CustomerStore
from scorer.training.simulate import SimulationParams, simulate, transaction_values

PARTITIONS = 4
STAGES = (  # the laps of scorer.scoring.core.ScoringCore; "model": every model call and the blending under a plan
    "decode",
    "rules",
    "customer windows",
    "terminal lookup",
    "stateless + assemble",
    "model",
    "input checks + drift",
    "decisions",
)


class Replay:
    """The scoring core of `scorer run` (scorer.scoring.core.ScoringCore) over pre-encoded events, each stage
    timed through the core's lap hook. The aggregator's part (folding the batch into terminal state and
    publishing each closed day to the terminal table) runs between batches, untimed, in-process."""

    def __init__(
        self, batch_size: int, blend: bool = False, model_dir: Path = DEFAULT_MODEL, rule_entries: int = 0
    ) -> None:
        model = OnnxModel(model_dir)
        serving = Serving(model)
        if blend:  # a second copy of the model as challenger, blended over the whole stream
            plan = Plan("bench", "blend", model.label, model.label, 0, end_ms=2**62, steps=0)
            serving = Serving(model, OnnxModel(model_dir), plan)
        config = model.meta.feature_config
        self.source = MemorySource([0])
        self.table = TerminalTable(config, self.source)
        self.aggregator = PartitionAgg(TerminalFeatures(config))
        self.codec = terminal_codec(config)
        self.scorer = ScoringCore(
            Settings(), serving, CustomerStore(config), self.table, Metrics(CollectorRegistry())
        )
        self.scorer.lap = self._lap
        self.scorer.rules = RuleBook.of(bench_rules(rule_entries))
        self.batch_size = batch_size
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.clock = time.perf_counter()
        self.offset = 0

    def _lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] += now - self.clock
        self.clock = now

    def run(self, values: list[bytes], partitions: Any) -> None:
        for start in range(0, len(values), self.batch_size):
            stop = start + self.batch_size
            self.batch(values[start:stop], partitions[start:stop])

    def batch(self, raw: list[bytes], partition: Any) -> None:
        self.clock = time.perf_counter()
        scored = self.scorer.score(raw, partition)
        assert len(scored.decisions) == len(raw)  # noqa: S101 - every event is valid here
        self._aggregate(raw)

    def _aggregate(self, raw: list[bytes]) -> None:
        """The aggregator's part (untimed): close the days before the batch's newest, fold the batch."""
        b = decode_transactions(raw).batch
        newest_day = int(b.event_ts_ms.max()) // MS_PER_DAY
        if newest_day - 1 > self.aggregator.terminals.closed_day:
            records, _, _ = self.aggregator.close(newest_day - 1, self.codec)
            self.source.add(0, records)
        events = [
            (self.offset + i, t.encode(), TX.pack(b"T", ts, 0, self.offset + i))
            for i, (t, ts) in enumerate(zip(b.terminal_id, b.event_ts_ms.tolist(), strict=True))
        ]
        self.offset += len(events)
        self.aggregator.fold(events, self.aggregator.terminals.closed_day)
        self.table.poll()


def bench_rules(entries: int) -> list[Rule]:
    """`entries` list entries over four rules (block customers and terminals, allow customers, a category
    block) and two amount limits, as a fraud team's lists might look; ids that never match this data, so
    every event is looked up everywhere and the model still decides (the stages stay comparable)."""
    if entries <= 0:
        return []
    quarter = max(1, entries // 4)

    def ids(prefix: str) -> tuple[str, ...]:
        return tuple(f"{prefix}{i:07d}" for i in range(quarter))

    return [
        Rule("bench-block-cards", "block_customer", "decline", ids("XC")),
        Rule("bench-block-terminals", "block_terminal", "review", ids("XT")),
        Rule("bench-allow", "allow_customer", "approve", ids("YC")),
        Rule("bench-mcc", "block_merchant_category", "decline", ids("M")),
        Rule("bench-limit", "amount_limit", "review", max_amount=1e8),
        Rule("bench-limit-usd", "amount_limit", "decline", max_amount=1e8, currency="USD"),
    ]


def measure(
    events: int,
    batch_size: int,
    default_gc: bool,
    warmup: int,
    blend: bool = False,
    model_dir: Path = DEFAULT_MODEL,
    rule_entries: int = 0,
) -> dict[str, float]:
    data = simulate(SimulationParams())
    n = min(events + warmup, len(data.transaction_id))
    values = transaction_values(data, np.arange(n, dtype=np.int64))
    partitions = np.array([zlib.crc32(data.customer_id[i].encode()) % PARTITIONS for i in range(n)])
    replay = Replay(batch_size, blend, model_dir, rule_entries)
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
        keys = replay.scorer.customers.keys + replay.table.keys + len(replay.aggregator.terminals.ring)
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
    p.add_argument("--rules", type=int, default=0, help="rules in force with this many list entries in all")
    p.add_argument("--json", action="store_true", help="print the per-stage figures as JSON")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="the model artefact to score with")
    p.add_argument("--memory", action="store_true", help="instead: RSS while --events stream through (JSON)")
    p.add_argument("--sample-every", type=int, default=50_000, help="--memory: events between RSS samples")
    args = p.parse_args(argv)
    if args.memory:
        sys.stdout.write(orjson.dumps(memory(args.events, args.sample_every)).decode() + "\n")
        return 0
    us = measure(args.events, args.batch, args.default_gc, args.warmup, args.blend, args.model, args.rules)
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
