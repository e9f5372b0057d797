"""The terminal table applies closes in day order and counts stale and ahead lookups (no broker needed)."""

from __future__ import annotations

import numpy as np

from scorer.aggregate.table import TerminalTable, terminal_codec
from scorer.events.timestamps import MS_PER_DAY
from scorer.features.engine import FeatureConfig, TerminalFeatures

CONFIG = FeatureConfig(label_delay_days=1)


def row_after(*days: tuple[int, int]) -> bytes:
    """The published row of terminal "T" holding (day, count) transactions."""
    features = TerminalFeatures(CONFIG)
    for day, count in days:
        features.add_transactions(["T"] * count, np.full(count, day * MS_PER_DAY + 1000, dtype=np.int64))
    return terminal_codec(CONFIG).encode(features.ring, features.ring.slots(["T"]))[0]


def test_closes_apply_in_day_order_and_lookups_are_counted() -> None:
    stale: list[int] = []
    ahead: list[int] = []
    table = TerminalTable(CONFIG, {"bootstrap.servers": "127.0.0.1:1"}, "t", 0.0, stale.append, ahead.append)
    table.partitions = [0]
    table._closed = {0: 12}
    table.pending = {10: {"T": row_after((10, 3))}, 12: {"T": row_after((10, 3), (12, 5))}}
    count_1d = 0  # term_tx_count_1d (delayed by 1 day) is the first terminal feature
    day11 = np.array([11 * MS_PER_DAY + 5], dtype=np.int64)
    # day 12's events see the close of day 11 at the latest: only the close of day 10 applies here
    got = table.features(["T"], day11 + MS_PER_DAY)
    assert table.applied_day == 10 and got[0, count_1d] == 3.0
    assert stale == [1]  # the close of day 11 never came: scored with the table as of day 10
    table._closed = {0: 13}
    table.pending[13] = {}  # nothing changed on day 13
    got = table.features(["T", "U"], np.repeat(day11 + 3 * MS_PER_DAY, 2))  # day 14: closes 12 and 13 apply
    assert table.applied_day == 13 and got[0, count_1d] == 5.0  # the 1-day window, 1 day delayed: day 12
    assert got[1].tolist() == [0.0] * got.shape[1]  # an unknown terminal has no history
    table.features(["T"], day11)  # a late event of day 11 after close 12 was applied
    assert ahead == [1]
    table.close()
