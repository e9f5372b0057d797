"""The equal-work check of peer profiles: same transaction ids, scores within the tolerance."""

from __future__ import annotations

import orjson

from benchmarks.harness import same_decisions


def decision(tx: str, score: float) -> bytes:
    return orjson.dumps({"transaction_id": tx, "score": score})


def test_equal_decisions_in_any_order_agree() -> None:
    a = [decision("t1", 0.25), decision("t2", 0.5)]
    b = [decision("t2", 0.5 + 4e-6), decision("t1", 0.25)]
    result = same_decisions(a, b)
    assert result["ok"] and result["compared"] == 2
    assert 3e-6 < result["max_score_diff"] < 5e-6 and result["worst_transaction"] == "t2"


def test_a_score_off_by_more_than_the_tolerance_fails() -> None:
    result = same_decisions([decision("t1", 0.25)], [decision("t1", 0.2501)])
    assert not result["ok"] and result["over_tolerance"] == 1


def test_missing_extra_and_repeated_ids_fail() -> None:
    a = [decision("t1", 0.1), decision("t2", 0.2)]
    assert same_decisions(a, a[:1])["only_first"] == 1
    assert same_decisions(a[:1], a)["only_second"] == 1
    assert same_decisions([*a, a[0]], a)["duplicates"] == 1
    assert not same_decisions([], [])["ok"]  # nothing compared proves nothing
