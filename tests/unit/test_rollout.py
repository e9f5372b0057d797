"""Plans decide per event from event time and customer only: blend schedule, canary share, fallback."""

from __future__ import annotations

import numpy as np
import pytest

from scorer.rollout.plans import Plan, PlanError, challenger_weight, combine, customer_hash_share, schedule

DAY = 86_400_000
START = 1_767_225_600_000  # 2026-01-01


def plan(strategy: str, **kw: object) -> Plan:
    return Plan(plan_id="p1", strategy=strategy, champion="m/1", challenger="m/2", start_ms=START, **kw)  # type: ignore[arg-type]


def test_blend_ramps_linearly_over_the_transition_by_event_time() -> None:
    p = plan("blend", end_ms=START + 14 * DAY)
    at = [START - 1, START, START + 7 * DAY, START + 14 * DAY, START + 30 * DAY]
    assert schedule(p, at) == [0.0, 0.0, 0.5, 1.0, 1.0]


def test_blend_in_steps() -> None:
    p = plan("blend", end_ms=START + 4 * DAY, steps=4)
    assert schedule(p, [START + d * DAY + DAY // 2 for d in range(5)]) == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_direct_switches_at_start_and_shadow_never_decides() -> None:
    ts = np.array([START - 1, START, START + 1], dtype=np.int64)
    assert challenger_weight(plan("direct"), ts, ["a", "b", "c"]).tolist() == [0.0, 1.0, 1.0]
    assert challenger_weight(plan("shadow"), ts, ["a", "b", "c"]).tolist() == [0.0, 0.0, 0.0]


def test_canary_share_within_tolerance_over_ten_thousand_customers_and_sticky() -> None:
    customers = [f"C{i:07d}" for i in range(10_000)]
    p = plan("canary", share=0.1)
    ts = np.full(len(customers), START + DAY, dtype=np.int64)
    first = challenger_weight(p, ts, customers)
    assert abs(first.mean() - 0.1) < 0.01  # binomial sd at n=10k is 0.003
    again = challenger_weight(p, ts + 5 * DAY, customers[::-1])[::-1]
    assert np.array_equal(first, again)  # the same customers, whatever the order or the day
    assert challenger_weight(p, ts - 2 * DAY, customers).sum() == 0  # nobody before the start


def test_customer_hash_is_stable_across_processes() -> None:
    assert customer_hash_share(["C0000001"]).tolist() == [0.5852076946757734]  # CRC-32, not hash()


def test_fallback_to_the_champion_for_nan_or_a_failed_challenger() -> None:
    w = np.array([0.0, 0.5, 1.0, 1.0])
    champion = np.array([0.1, 0.2, 0.3, 0.4])
    mixed = combine(w, champion, np.array([0.9, 0.6, np.nan, 0.8]))
    assert mixed.scores.tolist() == pytest.approx([0.1, 0.4, 0.3, 0.8])
    assert mixed.weight.tolist() == [0.0, 0.5, 0.0, 1.0] and mixed.fallback.tolist() == [
        False,
        False,
        True,
        False,
    ]
    failed = combine(w, champion, None)
    assert failed.scores.tolist() == champion.tolist() and failed.fallback.tolist() == [
        False,
        True,
        True,
        True,
    ]


def test_invalid_plans_say_why() -> None:
    with pytest.raises(PlanError, match="strategy 'swap' is not one of"):
        plan("swap")
    with pytest.raises(PlanError, match="blend needs end after start"):
        plan("blend")
    with pytest.raises(PlanError, match=r"canary share 1.5 is not in \(0, 1\]"):
        plan("canary", share=1.5)
    with pytest.raises(PlanError, match="malformed field"):
        Plan.from_dict({"plan_id": "x"})
    p = plan("blend", end_ms=START + DAY, steps=2)
    assert Plan.from_dict(p.to_dict()) == p
