"""The live demo's warm start: the state of a system that has already seen the history's first days.

A scorer that starts on an empty history scores its first weeks without any customer or terminal history
(a model's warm-up, not its quality). The demo therefore replays the days before the live part in
process, with the same feature code, and writes what `scorer run` and `scorer aggregate` would have
written by then: each input partition's customer windows to `scorer-state` with a marker at input offset
0, and each terminal-events partition's terminal rows to `terminal-features` with the close of the day
before the live part (position 0). Both processes then restore from those topics as after a restart and
go on from the first live transaction, so the first status line already shows the model at work.
Partitions follow librdkafka's default partitioner (CRC-32 of the key), as the live records will.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from scorer.aggregate.partition import PartitionAgg
from scorer.aggregate.table import terminal_codec
from scorer.config import Settings
from scorer.events.batches import LabelBatch, pick
from scorer.events.timestamps import MS_PER_DAY
from scorer.features.engine import FeatureConfig, TerminalFeatures
from scorer.kafka.sink import Sink
from scorer.scoring.customers import CustomerStore
from scorer.training.simulate import SimulatedData

CHUNK = 50_000
I64 = npt.NDArray[np.int64]


def partition_of(keys: list[str], partitions: int) -> I64:
    """librdkafka's default partitioner (consistent_random: CRC-32 of a non-empty key)."""
    return np.fromiter((zlib.crc32(k.encode()) % partitions for k in keys), dtype=np.int64, count=len(keys))


def live_start(data: SimulatedData, live_days: int) -> int:
    """Index of the first transaction of the last `live_days` days of the history."""
    day = data.event_ts_ms // MS_PER_DAY
    return int(np.searchsorted(day, int(day[-1]) - live_days + 1))


def warm_state(
    settings: Settings,
    data: SimulatedData,
    until: int,
    config: FeatureConfig,
    partitions: int,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Write the state after transactions [0, until) (and the labels reported before) to the state topics."""
    sink = Sink(settings.producer_config())
    customers = _customers(data, until, config, partitions, progress)
    for p in range(partitions):
        sink.send(settings.state_topic, customers.snapshot(p, 0), partition=p)
    cut_day = int(data.event_ts_ms[until]) // MS_PER_DAY
    codec = terminal_codec(config)
    for p, part in _terminals(data, until, config, partitions).items():
        part.position = 0  # the live terminal-events start at offset 0 of every partition
        records, _, _ = part.close(cut_day - 1, codec)
        sink.send(settings.terminal_topic, records, partition=p)
    if not sink.wait(sink.seal(), 60.0):
        raise RuntimeError(f"the warm state could not be written: {sink.failure or 'timed out'}")
    sink.close(0)


def _customers(
    data: SimulatedData,
    until: int,
    config: FeatureConfig,
    partitions: int,
    progress: Callable[[int, int], None] | None,
) -> CustomerStore:
    store = CustomerStore(config)
    part = partition_of(data.customer_id[:until], partitions)
    for start in range(0, until, CHUNK):
        rows = np.arange(start, min(until, start + CHUNK))
        store.update_and_compute(
            pick(data.customer_id, rows), data.event_ts_ms[rows], data.amount[rows], part[rows]
        )
        if progress is not None:
            progress(int(rows[-1]) + 1, until)
    return store


def _terminals(
    data: SimulatedData, until: int, config: FeatureConfig, partitions: int
) -> dict[int, PartitionAgg]:
    """Each terminal-events partition's terminals after the warm transactions and the labels reported by then."""
    cut_ms = int(data.event_ts_ms[until])
    part = partition_of(data.terminal_id[:until], partitions)
    known = data.label_reported_ts_ms < cut_ms  # labels reported before the live part
    labels, reported_ms = data.label_index[known], data.label_reported_ts_ms[known]
    label_part = partition_of(pick(data.terminal_id, labels), partitions)
    out: dict[int, PartitionAgg] = {}
    for p in range(partitions):
        agg = out[p] = PartitionAgg(TerminalFeatures(config))
        idx = np.flatnonzero(part == p)
        agg.terminals.add_transactions(pick(data.terminal_id, idx), data.event_ts_ms[idx])
        mine, reported = labels[label_part == p], reported_ms[label_part == p]
        agg.terminals.buffer_labels(
            LabelBatch(
                transaction_id=pick(data.transaction_id, mine),
                customer_id=pick(data.customer_id, mine),
                terminal_id=pick(data.terminal_id, mine),
                is_fraud=np.ones(len(mine), dtype=bool),
                reported_ts_ms=reported,
                tx_ts_ms=data.event_ts_ms[mine],
            )
        )
    return out
