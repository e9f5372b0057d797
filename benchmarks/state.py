"""State: memory per customer and per terminal once 1 M customers and 100 k terminals are in the windows.

Runs the scorer's own state classes in a fresh process (`python -m benchmarks.state`), so its RSS is the
state's and nothing else's. Three measures per key kind: `nbytes` (what the scorer's
scorer_state_bytes gauge reports: arrays of the slots in use plus an estimate of the key index),
`traced` (every byte Python and numpy allocated for it, slack of grown arrays included, by tracemalloc)
and the RSS growth.
"""

from __future__ import annotations

import argparse
import sys
import tracemalloc
from typing import Any

import numpy as np
import orjson

from benchmarks.harness import rss_bytes
from scorer.events.timestamps import MS_PER_DAY
from scorer.features.engine import CustomerFeatures, FeatureConfig, TerminalFeatures

BATCH = 10_000
START_MS = 1_767_225_600_000  # 2026-01-01


def fill_customers(n: int, config: FeatureConfig) -> CustomerFeatures:
    """n distinct customers, one transaction each, spread over a day."""
    state = CustomerFeatures(config)
    rng = np.random.default_rng(1)
    for start in range(0, n, BATCH):
        ids = [f"C{i:09d}" for i in range(start, min(n, start + BATCH))]
        ts = START_MS + np.sort(rng.integers(0, MS_PER_DAY, len(ids)))
        state.update_and_compute(ids, ts, rng.gamma(2.0, 30.0, len(ids)))
    return state


def fill_terminals(n: int, config: FeatureConfig) -> TerminalFeatures:
    """n distinct terminals, one transaction each (the scorer's table holds the same ring per terminal)."""
    state = TerminalFeatures(config)
    for start in range(0, n, BATCH):
        ids = [f"T{i:08d}" for i in range(start, min(n, start + BATCH))]
        state.add_transactions(ids, np.full(len(ids), START_MS, dtype=np.int64))
    return state


def measure(customers: int, terminals: int, trace: bool) -> dict[str, Any]:
    """Per-key memory of each kind; with `trace`, tracemalloc's count (its own bookkeeping inflates RSS)."""
    config = FeatureConfig()
    if trace:
        tracemalloc.start()
    out: dict[str, Any] = {"rss_start_bytes": rss_bytes_self()}
    kept = []  # each state stays alive while the next kind is measured
    for kind, n, fill in (("customer", customers, fill_customers), ("terminal", terminals, fill_terminals)):
        rss0, traced0 = rss_bytes_self(), tracemalloc.get_traced_memory()[0]
        state = fill(n, config)
        rss1, traced1 = rss_bytes_self(), tracemalloc.get_traced_memory()[0]
        kept.append(state)
        key = "traced_bytes_per_key" if trace else "rss_bytes_per_key"
        out[kind] = {
            "keys": len(state.ring),
            "nbytes_per_key": round(state.ring.nbytes / max(1, len(state.ring)), 1),
            key: round(((traced1 - traced0) if trace else (rss1 - rss0)) / max(1, n), 1),
        }
    out["rss_end_bytes"] = rss_bytes_self()
    tracemalloc.stop()
    return out


def rss_bytes_self() -> int:
    import os

    return rss_bytes(os.getpid())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.state")
    p.add_argument("--customers", type=int, default=1_000_000)
    p.add_argument("--terminals", type=int, default=100_000)
    p.add_argument("--trace", action="store_true", help="count allocations with tracemalloc instead of RSS")
    args = p.parse_args(argv)
    sys.stdout.write(orjson.dumps(measure(args.customers, args.terminals, args.trace)).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
