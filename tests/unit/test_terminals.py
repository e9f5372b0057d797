"""The terminal table applies closes in day order and counts stale and ahead lookups (no broker needed)."""

from __future__ import annotations

import numpy as np

from scorer.aggregate.table import MemorySource, TerminalTable, terminal_codec
from scorer.events.timestamps import MS_PER_DAY, NEVER
from scorer.features.engine import FeatureConfig, TerminalFeatures
from scorer.features.rows import MARKER_KEY, encode_marker

CONFIG = FeatureConfig(label_delay_days=1)


def row_after(*days: tuple[int, int]) -> bytes:
    """The published row of terminal "T" holding (day, count) transactions."""
    features = TerminalFeatures(CONFIG)
    for day, count in days:
        features.add_transactions(["T"] * count, np.full(count, day * MS_PER_DAY + 1000, dtype=np.int64))
    return terminal_codec(CONFIG).encode(features.ring, features.ring.slots(["T"]))[0]


def close(day: int, rows: dict[str, bytes]) -> list[dict[str, bytes | None]]:
    """What the aggregator publishes to a partition when it closes `day`: the changed rows, a marker."""
    records: list[dict[str, bytes | None]] = [{"key": k.encode(), "value": v} for k, v in rows.items()]
    return [*records, {"key": MARKER_KEY, "value": encode_marker({"day": day})}]


def test_closes_apply_in_day_order_and_lookups_are_counted() -> None:
    stale: list[int] = []
    ahead: list[int] = []
    source = MemorySource([0])
    table = TerminalTable(CONFIG, source, 0.0, stale.append, ahead.append)
    source.add(0, close(10, {"T": row_after((10, 3))}))
    source.add(0, close(12, {"T": row_after((10, 3), (12, 5))}))
    assert table.poll() == 4 and table.closed_day == 12
    count_1d = 0  # term_tx_count_1d (delayed by 1 day) is the first terminal feature
    day11 = np.array([11 * MS_PER_DAY + 5], dtype=np.int64)
    # day 12's events see the close of day 11 at the latest: only the close of day 10 applies here
    got = table.features(["T"], day11 + MS_PER_DAY)
    assert table.applied_day == 10 and got[0, count_1d] == 3.0
    assert stale == [1]  # the close of day 11 never came: scored with the table as of day 10
    source.add(0, close(13, {}))  # nothing changed on day 13
    table.poll()
    got = table.features(["T", "U"], np.repeat(day11 + 3 * MS_PER_DAY, 2))  # day 14: closes 12 and 13 apply
    assert table.applied_day == 13 and got[0, count_1d] == 5.0  # the 1-day window, 1 day delayed: day 12
    assert got[1].tolist() == [0.0] * got.shape[1]  # an unknown terminal has no history
    table.features(["T"], day11)  # a late event of day 11 after close 12 was applied
    assert ahead == [1]
    table.close()


def test_a_partition_without_a_marker_holds_the_closed_day_back() -> None:
    source = MemorySource([0, 1])
    table = TerminalTable(CONFIG, source)
    source.add(0, close(10, {"T": row_after((10, 3))}))
    table.poll()
    assert table.closed_day == NEVER  # partition 1 has not closed any day yet
    source.add(1, close(9, {}))
    table.poll()
    assert table.closed_day == 9
