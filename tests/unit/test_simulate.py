"""The simulator: same seed same bytes, the handbook's fraud scenarios, labels with their delay."""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path

import numpy as np
import orjson
import pytest

from scorer.events.files import read_labels_jsonl, read_transactions_jsonl
from scorer.events.timestamps import MS_PER_DAY
from scorer.training.simulate import (
    FRAUD_AMOUNT,
    Drift,
    SimulatedData,
    SimulationParams,
    simulate,
    transaction_values,
    write_jsonl,
)

SMALL = SimulationParams(customers=200, terminals=400, days=40, seed=11, start=datetime.date(2026, 3, 1))


@pytest.fixture(scope="module")
def data() -> SimulatedData:
    return simulate(SMALL)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_jsonl(simulate(SMALL), a)
    write_jsonl(simulate(SMALL), b)
    write_jsonl(simulate(_reseed(SMALL, 12)), c)
    for name in ("transactions.jsonl", "labels.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
        assert (a / name).read_bytes() != (c / name).read_bytes()


def _reseed(p: SimulationParams, seed: int) -> SimulationParams:
    return SimulationParams(p.customers, p.terminals, p.days, seed, p.start, p.radius, p.label_delay_days)


def test_sorted_in_time_and_within_the_period(data: SimulatedData) -> None:
    ts = data.event_ts_ms
    assert (np.diff(ts) >= 0).all()
    start = int(datetime.datetime(2026, 3, 1, tzinfo=datetime.UTC).timestamp() * 1000)
    assert ts.min() >= start and ts.max() < start + SMALL.days * MS_PER_DAY
    assert len(set(data.transaction_id)) == len(ts)


def test_fraud_scenarios(data: SimulatedData) -> None:
    s = data.fraud_scenario
    assert (data.amount[s == 1] > FRAUD_AMOUNT).all()
    assert set(np.unique(s).tolist()) == {0, 1, 2, 3}
    assert 0.002 < data.is_fraud.mean() < 0.5  # fixed daily counts (2 terminals, 3 cards): high on tiny grids
    assert (data.is_fraud == (s > 0)).all()
    # scenario 2: once a terminal is compromised, all its transactions are fraud (not only some)
    term = np.asarray(data.terminal_id)
    day = data.event_ts_ms // MS_PER_DAY
    for t in np.unique(term[s == 2])[:20]:
        first = day[(term == t) & (s == 2)].min()
        assert data.is_fraud[(term == t) & (day == first)].all()


def test_customers_use_terminals_within_the_radius() -> None:
    # the same seed draws the same positions: recompute them the way the simulator does
    from scorer.training.simulate import terminal_lists

    rng = np.random.default_rng(SMALL.seed)
    cust_xy, reach = terminal_lists(rng, SMALL)
    data = simulate(SMALL)
    term_idx = np.asarray([int(t[1:]) for t in data.terminal_id])
    cust_idx = np.asarray([int(c[1:]) for c in data.customer_id])
    allowed = {(c, t) for c in range(SMALL.customers) for t in reach[c].tolist()}
    assert all((c, t) in allowed for c, t in zip(cust_idx.tolist(), term_idx.tolist(), strict=True))
    assert cust_xy.shape == (SMALL.customers, 2)


def test_labels_are_the_frauds_with_a_bounded_delay(data: SimulatedData) -> None:
    assert sorted(data.label_index.tolist()) == np.flatnonzero(data.is_fraud).tolist()
    delay = data.label_reported_ts_ms - data.event_ts_ms[data.label_index]
    assert delay.min() >= 3_600_000 and delay.max() <= SMALL.label_delay_days * MS_PER_DAY
    assert (np.diff(data.label_reported_ts_ms) >= 0).all()


def test_written_files_follow_the_contracts(data: SimulatedData, tmp_path: Path) -> None:
    tx_path, label_path = write_jsonl(data, tmp_path)
    first = orjson.loads(tx_path.read_bytes().splitlines()[0])
    assert list(first) == [
        "transaction_id",
        "timestamp",
        "customer_id",
        "terminal_id",
        "amount",
        "currency",
        "channel",
        "merchant_category",
    ]
    tx = read_transactions_jsonl(tx_path)
    labels = read_labels_jsonl(label_path)
    assert len(tx) == len(data.transaction_id) and len(labels) == len(data.label_index)
    np.testing.assert_array_equal(tx.event_ts_ms, data.event_ts_ms)
    np.testing.assert_allclose(tx.amount, data.amount)
    assert labels.is_fraud.all()


DRIFT_DAY = 12
BASE = SimulationParams(customers=300, terminals=600, days=20, seed=5)


@pytest.fixture(scope="module")
def drifted() -> tuple[SimulatedData, SimulatedData]:
    drift = Drift(from_day=DRIFT_DAY, amount_factor=3.0, new_terminals=40, currency="USD", card_testing=4)
    return simulate(BASE), simulate(dataclasses.replace(BASE, drift=drift))


def test_drift_leaves_the_days_before_it_unchanged(drifted: tuple[SimulatedData, SimulatedData]) -> None:
    plain, moved = drifted
    start = int(plain.event_ts_ms[0] // MS_PER_DAY)
    n = int(np.count_nonzero(plain.event_ts_ms // MS_PER_DAY < start + DRIFT_DAY))
    idx = np.arange(n, dtype=np.int64)
    assert transaction_values(plain, idx) == transaction_values(moved, idx)
    assert len(moved.amount) == len(plain.amount)
    assert np.all(np.diff(moved.event_ts_ms) >= 0)


def test_drift_shifts_amounts_adds_terminals_a_currency_and_a_fraud_pattern(
    drifted: tuple[SimulatedData, SimulatedData],
) -> None:
    plain, moved = drifted
    start = int(plain.event_ts_ms[0] // MS_PER_DAY)
    after = moved.event_ts_ms // MS_PER_DAY >= start + DRIFT_DAY
    before_plain = plain.event_ts_ms // MS_PER_DAY >= start + DRIFT_DAY
    assert np.median(moved.amount[after & (moved.fraud_scenario == 0)]) > 2 * np.median(
        plain.amount[before_plain]
    )
    new_terminals = {
        t for t, a in zip(moved.terminal_id, after.tolist(), strict=True) if a and t.startswith("TN")
    }
    assert 20 <= len(new_terminals) <= 40
    share = np.mean([c == "USD" for c, a in zip(moved.currency, after.tolist(), strict=True) if a])
    assert 0.25 < share < 0.35
    testing = moved.fraud_scenario == 4
    assert testing.any() and np.all(after[testing])
    assert np.all(moved.amount[testing] <= 5.0)
    hours = (moved.event_ts_ms[testing] % MS_PER_DAY) / 3_600_000
    assert np.all(hours < 5.0)
    labelled = set(moved.label_index.tolist())
    assert set(np.flatnonzero(moved.is_fraud).tolist()) == labelled


def test_a_fixed_label_delay_reports_every_fraud_seven_days_late_on_the_same_transactions(
    data: SimulatedData,
) -> None:
    fixed = simulate(dataclasses.replace(SMALL, fixed_label_delay=True))
    assert fixed.transaction_id == data.transaction_id and (fixed.is_fraud == data.is_fraud).all()
    np.testing.assert_array_equal(np.sort(fixed.label_index), np.sort(data.label_index))
    delays = fixed.label_reported_ts_ms - fixed.event_ts_ms[fixed.label_index]
    assert (delays == 7 * MS_PER_DAY).all()
    assert (data.label_reported_ts_ms - data.event_ts_ms[data.label_index] < 7 * MS_PER_DAY).all()
