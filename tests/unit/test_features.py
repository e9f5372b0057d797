"""The vectorised feature engine against a slow, obviously-correct reference over the full history."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import pytest

from scorer.events.batches import LabelBatch, TransactionBatch
from scorer.events.timestamps import MS_PER_DAY
from scorer.features.engine import (
    CUSTOMER_NAMES,
    FEATURE_NAMES,
    LATE_GRACE_DAYS,
    NO_HISTORY,
    SINCE_LAST_CAP_S,
    STATELESS_NAMES,
    TERMINAL_NAMES,
    WINDOW_DAYS,
    FeatureConfig,
    FeatureEngine,
)
from scorer.features.state import occurrence_rank
from scorer.training.history import replay, replay_steps

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@dataclass
class RefKey:
    """Everything the reference knows about one key: every stored event, never aggregated."""

    newest_ms: int | None = None
    stored: list[tuple[int, float]] = field(default_factory=list)  # (day, value)
    frauds: list[int] = field(default_factory=list)  # fraud label days


def window_weight(day: int, end_ms: int, days: int, lag_days: int) -> float:
    """Weight of a bucket day in the window of `days` days ending `lag_days` before end_ms."""
    end_day = end_ms // MS_PER_DAY - lag_days
    frac = (end_ms % MS_PER_DAY) / MS_PER_DAY
    if end_day - days < day <= end_day:
        return 1.0
    return 1.0 - frac if day == end_day - days else 0.0


def alive(key: RefKey, day: int, ring: int) -> bool:
    assert key.newest_ms is not None
    return day > key.newest_ms // MS_PER_DAY - ring


class Reference:
    """Sequential, per-event, dictionary-of-lists implementation of the documented semantics."""

    def __init__(self, config: FeatureConfig) -> None:
        self.config = config
        self.customers: dict[str, RefKey] = {}
        self.terminals: dict[str, RefKey] = {}
        self.pending: list[tuple[str, int, int]] = []
        self.closed_day = -(10**9)

    def batch(
        self, cust: list[str], term: list[str], ts: list[int], amount: list[float]
    ) -> list[list[float]]:
        """Customers event by event; terminals day by day (a day's events see only closed days)."""
        customer_rows = [self._customer(c, t, a) for c, t, a in zip(cust, ts, amount, strict=True)]
        terminal_rows: dict[int, list[float]] = {}
        days = [t // MS_PER_DAY for t in ts]
        for day in sorted(set(days)):
            group = [i for i, d in enumerate(days) if d == day]
            if day - 1 > self.closed_day:
                self._close(day - 1)
            for i in group:
                terminal_rows[i] = self._terminal_features(term[i], day)
            for i in group:
                self._terminal_add(term[i], ts[i])
        return [customer_rows[i] + terminal_rows[i] for i in range(len(cust))]

    def _customer(self, cid: str, ts: int, amount: float) -> list[float]:
        ring = self.config.customer_ring_days
        key = self.customers.setdefault(cid, RefKey())
        since = SINCE_LAST_CAP_S if key.newest_ms is None else (ts - key.newest_ms) / 1000
        key.newest_ms = ts if key.newest_ms is None else max(key.newest_ms, ts)
        live = [(d, a) for d, a in key.stored if alive(key, d, ring)]
        counts, sums = [], []
        for w in WINDOW_DAYS:
            weights = [window_weight(d, ts, w, 0) for d, _ in live]
            counts.append(sum(weights))
            sums.append(sum(wt * a for wt, (_, a) in zip(weights, live, strict=True)))
        day = ts // MS_PER_DAY
        if alive(key, day, ring):
            key.stored.append((day, amount))
        means = [(s + amount) / (c + 1) for c, s in zip(counts, sums, strict=True)]
        ratios = [
            amount / (sums[i] / counts[i]) if counts[i] > 0 and sums[i] > 0 else NO_HISTORY for i in (1, 2)
        ]
        return [*(c + 1 for c in counts), *means, *ratios, min(max(since, 0.0), SINCE_LAST_CAP_S)]

    def _terminal_features(self, tid: str, day: int) -> list[float]:
        ring, delay = self.config.terminal_ring_days, self.config.label_delay_days
        key = self.terminals.setdefault(tid, RefKey())
        live = [d for d, _ in key.stored if key.newest_ms is not None and alive(key, d, ring)]
        frauds = [d for d in key.frauds if key.newest_ms is not None and alive(key, d, ring)]

        def total(days: list[int], w: int, last: int) -> float:
            return float(sum(1 for d in days if last - w < d <= last))

        counts = [total(live, w, day - 1 - delay) for w in WINDOW_DAYS]
        risks = [
            total(frauds, w, day - 1 - delay) / c if c else 0.0
            for w, c in zip(WINDOW_DAYS, counts, strict=True)
        ]
        fresh = []
        for w in WINDOW_DAYS:
            n = total(live, w, day - 1)
            fresh.append(total(frauds, w, day - 1) / n if n else 0.0)
        return [*counts, *risks, *fresh]

    def _terminal_add(self, tid: str, ts: int) -> None:
        key = self.terminals[tid]
        key.newest_ms = ts if key.newest_ms is None else max(key.newest_ms, ts)
        if alive(key, ts // MS_PER_DAY, self.config.terminal_ring_days):
            key.stored.append((ts // MS_PER_DAY, 1.0))

    def label(self, terminal: str, tx_ts: int, reported_ms: int) -> None:
        self.pending.append((terminal, tx_ts, reported_ms))

    def _close(self, day: int) -> None:
        self.closed_day = day
        due = [p for p in self.pending if p[2] < (day + 1) * MS_PER_DAY]
        self.pending = [p for p in self.pending if p[2] >= (day + 1) * MS_PER_DAY]
        for terminal, tx_ts, _ in due:
            key = self.terminals.get(terminal)
            if key is None or key.newest_ms is None:
                continue
            d = tx_ts // MS_PER_DAY
            if alive(key, d, self.config.terminal_ring_days) and d <= key.newest_ms // MS_PER_DAY:
                key.frauds.append(d)


def make_batch(cust: list[str], term: list[str], ts: list[int], amount: list[float]) -> TransactionBatch:
    n = len(cust)
    return TransactionBatch(
        transaction_id=[f"t{i}" for i in range(n)],
        customer_id=cust,
        terminal_id=term,
        amount=np.asarray(amount, dtype=np.float64),
        event_ts_ms=np.asarray(ts, dtype=np.int64),
        currency=["EUR"] * n,
        channel=[None] * n,
        merchant_category=["5411"] * n,
    )


LABELLED = itertools.count()  # a transaction id per label: each label here is of another transaction


def make_labels(term: list[str], tx_ts: list[int], reported: list[int]) -> LabelBatch:
    n = len(term)
    return LabelBatch(
        transaction_id=[f"tx{next(LABELLED)}" for _ in range(n)],
        customer_id=["c"] * n,
        terminal_id=term,
        is_fraud=np.ones(n, dtype=bool),
        reported_ts_ms=np.asarray(reported, dtype=np.int64),
        tx_ts_ms=np.asarray(tx_ts, dtype=np.int64),
    )


def random_stream(seed: int, n: int, late_days: float) -> tuple[list[str], list[str], list[int], list[float]]:
    """Mostly increasing times over ~80 days with jitter, late events, idle gaps and repeated keys."""
    rng = np.random.default_rng(seed)
    base = START_MS + np.sort(rng.integers(0, 80 * MS_PER_DAY, n))
    late = rng.random(n) < 0.1
    ts = base - np.where(late, (rng.random(n) * late_days * MS_PER_DAY).astype(np.int64), 0)
    cust = [f"c{i}" for i in rng.integers(0, 12, n)]
    term = [f"t{i}" for i in rng.integers(0, 6, n)]
    day = (ts - START_MS) // MS_PER_DAY
    for i in np.flatnonzero((day < 4) | ((day > 32) & (day < 40))):  # keys idle for about a ring length
        if rng.random() < 0.5:
            cust[i], term[i] = "c-idle", "t-idle"
    amount = np.round(rng.gamma(2.0, 40.0, n), 2)
    return cust, term, ts.tolist(), amount.tolist()


@pytest.mark.parametrize("seed", range(6))
def test_engine_matches_reference_on_out_of_order_streams(seed: int) -> None:
    config = FeatureConfig(label_delay_days=3)
    cust, term, ts, amount = random_stream(seed, 700, late_days=LATE_GRACE_DAYS)
    engine, ref = FeatureEngine(config), Reference(config)
    rng = np.random.default_rng(1000 + seed)
    start = 0
    while start < len(cust):
        size = int(rng.integers(1, 60))
        end = min(len(cust), start + size)
        got = engine.update_and_compute(
            make_batch(cust[start:end], term[start:end], ts[start:end], amount[start:end])
        )
        want = ref.batch(cust[start:end], term[start:end], ts[start:end], amount[start:end])
        np.testing.assert_allclose(got[:, len(STATELESS_NAMES) :], np.asarray(want), rtol=2e-5, atol=1e-3)
        # a few fraud labels on recent transactions, released between batches
        picks = [i for i in range(start, end) if rng.random() < 0.3]
        if picks:
            engine.apply_labels(
                make_labels([term[i] for i in picks], [ts[i] for i in picks], [ts[end - 1]] * len(picks))
            )
            for i in picks:
                ref.label(term[i], ts[i], ts[end - 1])
        start = end


def test_idle_keys_expire_and_memory_stays_bounded() -> None:
    engine = FeatureEngine()
    for day in range(120):
        ids = [f"c{day}-{i}" for i in range(50)]  # every day a fresh population
        ts = [START_MS + day * MS_PER_DAY + 3_600_000] * 50
        engine.update_and_compute(make_batch(ids, ids, ts, [10.0] * 50))
    ring_days = FeatureConfig().terminal_ring_days + LATE_GRACE_DAYS
    assert len(engine.terminals.ring) <= 50 * ring_days
    assert len(engine.customers.ring) <= 50 * (FeatureConfig().customer_ring_days + LATE_GRACE_DAYS)
    assert len(engine.customers.ring.newest_ms) < 50 * 60  # freed slots are reused


def test_window_counts_roll_across_midnight() -> None:
    engine = FeatureEngine()
    noon = START_MS + MS_PER_DAY // 2
    engine.update_and_compute(make_batch(["c"], ["t"], [noon], [10.0]))
    # 18 h later (06:00 next day): a quarter of yesterday lies outside the last 24 h -> 0.75 + 1 (itself)
    got = engine.update_and_compute(make_batch(["c"], ["t"], [noon + 18 * 3_600_000], [30.0]))
    col = FEATURE_NAMES.index("cust_tx_count_1d")
    assert got[0, col] == pytest.approx(1.75)
    assert got[0, FEATURE_NAMES.index("cust_amount_ratio_7d")] == pytest.approx(3.0)
    assert got[0, FEATURE_NAMES.index("cust_seconds_since_last")] == pytest.approx(18 * 3600)


def test_stateless_features_and_categories() -> None:
    engine = FeatureEngine(
        FeatureConfig(categories={"currency": ["EUR", "USD"], "merchant_category": ["5411"]})
    )
    saturday_2am = START_MS + 2 * MS_PER_DAY + 2 * 3_600_000  # 2026-01-03 is a Saturday
    batch = make_batch(["c", "d"], ["t", "u"], [saturday_2am, START_MS + 14 * 3_600_000], [100.0, 0.0])
    batch.currency = ["USD", "GBP"]
    batch.merchant_category = [None, "5411"]
    row = dict(zip(FEATURE_NAMES, engine.update_and_compute(batch)[0], strict=True))
    assert (row["is_weekend"], row["is_night"], row["hour_of_day"]) == (1.0, 1.0, 2.0)
    assert row["log_amount"] == pytest.approx(math.log1p(100.0))
    assert (row["currency_code"], row["merchant_category_code"]) == (1.0, -1.0)
    other = engine.update_and_compute(make_batch(["x"], ["y"], [START_MS], [1.0]))
    assert other[0, FEATURE_NAMES.index("currency_code")] == 0.0


def test_feature_names_are_partitioned() -> None:
    assert FEATURE_NAMES == STATELESS_NAMES + CUSTOMER_NAMES + TERMINAL_NAMES
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)


def test_occurrence_rank() -> None:
    got = occurrence_rank(np.array([5, 3, 5, 5, 3, 9], dtype=np.int64))
    assert got.tolist() == [0, 0, 1, 2, 1, 0]


def test_replay_releases_labels_at_report_time_only() -> None:
    tx_ts = np.array([10, 20, 30, 40], dtype=np.int64)
    reported = np.array([25, 5, 40, 99], dtype=np.int64)
    steps = [(lab.tolist(), tx.tolist()) for lab, tx in replay_steps(tx_ts, reported, chunk=10)]
    assert steps == [([1], [0, 1]), ([0], [2]), ([2], [3]), ([3], [])]


def test_replay_equals_streaming_in_time_order() -> None:
    """The offline replay (training) and a stream of small batches (serving) give the same features,
    and both follow the reference."""
    cust, term, ts, amount = random_stream(7, 400, late_days=0.0)
    order = np.argsort(ts, kind="stable")
    cust, term = [cust[i] for i in order], [term[i] for i in order]
    ts, amount = [ts[i] for i in order], [amount[i] for i in order]
    batch = make_batch(cust, term, ts, amount)
    labels = make_labels(term[::7], ts[::7], [t + 2 * MS_PER_DAY for t in ts[::7]])
    offline = replay(batch, labels, chunk=33)
    engine, ref = FeatureEngine(), Reference(FeatureConfig())
    pending = sorted(
        zip(labels.reported_ts_ms.tolist(), labels.terminal_id, labels.tx_ts_ms.tolist(), strict=True)
    )
    want, streamed = [], []
    for i in range(len(cust)):
        due = []
        while pending and pending[0][0] <= ts[i]:
            due.append(pending.pop(0))
        for reported, tid, tx_ts in due:
            ref.label(tid, tx_ts, reported)
        if due:  # the labels reported by now reach the engine before the event, as in the stream
            engine.apply_labels(make_labels([d[1] for d in due], [d[2] for d in due], [d[0] for d in due]))
        streamed.append(engine.update_and_compute(make_batch([cust[i]], [term[i]], [ts[i]], [amount[i]]))[0])
        want.append(ref.batch([cust[i]], [term[i]], [ts[i]], [amount[i]])[0])
    np.testing.assert_allclose(offline[:, len(STATELESS_NAMES) :], np.asarray(want), rtol=2e-5, atol=1e-3)
    np.testing.assert_allclose(np.asarray(streamed), offline, rtol=1e-6, atol=1e-6)
    assert engine.state_keys > 0


def test_late_event_after_idle_gap_still_sees_old_history() -> None:
    """A key idle for a whole ring is kept LATE_GRACE_DAYS longer, for events that late."""
    config = FeatureConfig()
    engine, ref = FeatureEngine(config), Reference(config)
    noon = MS_PER_DAY // 2
    steps = [
        ("c", START_MS + noon),
        ("other", START_MS + 33 * MS_PER_DAY),
        ("c", START_MS + 30 * MS_PER_DAY + 3),
    ]
    for cust, ts in steps:
        got = engine.update_and_compute(make_batch([cust], [cust], [ts], [50.0]))
        want = ref.batch([cust], [cust], [ts], [50.0])[0]
        np.testing.assert_allclose(got[0, len(STATELESS_NAMES) :], want, rtol=2e-5, atol=1e-3)
    assert got[0, FEATURE_NAMES.index("cust_tx_count_30d")] > 1.0
