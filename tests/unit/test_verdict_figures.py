"""The analysts' figures from their verdicts: precision per band and rule, cases per analyst and day, time to
verdict; through `scorer monitor`'s own record handling and its exported gauges."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry

from scorer.config import Settings
from scorer.events.batches import LabelBatch
from scorer.events.timestamps import MS_PER_DAY
from scorer.monitoring.monitor import Monitor
from scorer.monitoring.verdicts import Verdicts

DAY = 20_500
T0 = DAY * MS_PER_DAY + 9 * 3_600_000  # 09:00 UTC


def decision(
    tid: str, action: str, source: str = "model", scored_ms: int = T0, version: str = "m/1"
) -> dict[str, object]:
    stamp = np.datetime64(scored_ms, "ms").astype(str) + "Z"
    return {"transaction_id": tid, "customer_id": f"C{tid}", "terminal_id": "T1", "amount": 10.0,
            "timestamp": stamp, "score": 0.9, "flagged": action != "approve", "action": action,
            "action_source": source, "threshold": 0.5, "model_version": version, "reasons": [],
            "scored_at": stamp}  # fmt: skip


def verdict(tid: str, fraud: bool, after_s: float, analyst: str = "alice", case: str | None = None,
            source: str = "analyst") -> dict[str, object]:  # fmt: skip
    doc: dict[str, object] = {
        "transaction_id": tid, "customer_id": f"C{tid}", "terminal_id": "T1", "is_fraud": fraud,
        "reported_at": np.datetime64(T0 + int(after_s * 1000), "ms").astype(str) + "Z", "source": source,
    }  # fmt: skip
    if source == "analyst":
        doc |= {"analyst_id": analyst, "case_id": case or f"C{tid}"}
    return doc


def batch(docs: list[dict[str, object]]) -> LabelBatch:
    from scorer.events.decode import decode_labels

    decoded = decode_labels([orjson.dumps(d) for d in docs])
    assert not decoded.rejected
    return decoded.batch


def test_precision_per_band_and_rule_follows_the_latest_verdict_and_ignores_chargebacks() -> None:
    v = Verdicts(keep_days=30, max_alerts=100)
    docs = [decision("a", "review"), decision("b", "review"), decision("c", "decline", "block-card"),
            decision("d", "approve"), decision("e", "decline")]  # fmt: skip
    v.add_decisions(docs, np.full(len(docs), T0))
    v.add_labels(batch([
        verdict("a", True, 60), verdict("b", True, 120), verdict("c", True, 180), verdict("d", True, 60),
        verdict("e", True, 60, source="chargeback"),  # not a verdict
        verdict("b", False, 600, analyst="lead"),  # reversed by a lead
        verdict("a", False, 30),  # older than a's verdict: no change
    ]))  # fmt: skip
    f = v.figures(window_days=7)
    assert f.bands == {"review": {"verdicts": 2, "frauds": 1, "precision": 0.5},
                       "decline": {"verdicts": 1, "frauds": 1, "precision": 1.0}}  # fmt: skip
    assert f.rules == {"block-card": {"verdicts": 1, "frauds": 1, "precision": 1.0}}
    assert f.wait_s[1.0] == 180.0 and f.waited == 3  # a's first verdict (30 s) counts from its alert
    assert f.wait_s[0.5] == 120.0  # of 30, 120 and 180 s


def test_cases_count_once_per_analyst_and_day() -> None:
    v = Verdicts(keep_days=30, max_alerts=100)
    v.add_labels(batch([
        verdict("a", True, 60, case="K1"), verdict("b", True, 70, case="K1"),  # one case, two transactions
        verdict("c", False, 80, case="K2"), verdict("d", True, 90, analyst="bob", case="K1"),
        verdict("e", True, 86_400, case="K3"),  # the next day
    ]))  # fmt: skip
    assert v.figures(window_days=7).cases == {("alice", DAY): 2, ("alice", DAY + 1): 1, ("bob", DAY): 1}
    assert v.figures(window_days=1).cases == {("alice", DAY + 1): 1}


def test_old_alerts_and_verdicts_are_forgotten_and_the_alert_store_is_bounded() -> None:
    v = Verdicts(keep_days=2, max_alerts=10)
    for day in range(6):
        docs = [decision(f"t{day}-{i}", "review") for i in range(4)]
        v.add_decisions(docs, np.full(4, T0 + day * MS_PER_DAY))
    assert len(v.alerts) <= 10 and min(a.day for a in v.alerts.values()) >= DAY + 3
    v.add_labels(batch([verdict("t5-0", True, 5 * 86_400 + 10)]))
    v.add_labels(batch([verdict("x", True, 9 * 86_400)]))
    assert "t5-0" not in v.latest and set(v.cases) == {("alice", DAY + 9)}


def test_the_monitor_exports_the_verdict_gauges_from_served_decisions_only() -> None:
    registry = CollectorRegistry()
    s = Settings(brokers="127.0.0.1:1")
    monitor = Monitor(s, registry)
    monitor._decisions(s.decisions_topic, [orjson.dumps(decision("a", "review"))])
    monitor._decisions(f"{s.decisions_topic}-shadow", [orjson.dumps(decision("b", "decline", version="m/2"))])
    monitor._labels([orjson.dumps(verdict("a", True, 90)), orjson.dumps(verdict("b", True, 90))])
    monitor.refresh()
    get = registry.get_sample_value
    assert get("scorer_verdict_band_quality", {"metric": "precision", "action": "review"}) == 1.0
    assert get("scorer_verdict_band_quality", {"metric": "verdicts", "action": "decline"}) is None  # shadow
    assert get("scorer_verdict_cases", {"analyst": "alice", "day": "2026-02-16"}) == 2.0
    assert get("scorer_verdict_wait_seconds", {"quantile": "0.5"}) == pytest.approx(90.0)
    assert get("scorer_verdict_waits", {}) == 1.0
    assert get("scorer_live_frauds", {"model_version": "m/1", "day": "2026-02-16"}) == 1.0
