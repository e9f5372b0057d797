"""Analysts' verdicts joined with the alerts they judged: the figures an analysts' lead asks for.

`scorer monitor` feeds this with the served decisions (the decisions topic: what the queue showed, not a
shadow challenger's scores) and the labels whose `source` is `analyst`. An alert is a decision whose action is
review or decline. Over the newest `window_days` days of verdicts (UTC days of `reported_at`, ending at the
newest verdict's day):

- precision of each action band and each rule from verdicts: among the alerts with a verdict reported in the
  window, the share the analyst's latest verdict calls fraud (per (transaction, source) the latest label wins,
  events/labelstate.py, so a reversed verdict counts as its new value), per action and per rule id (the
  decision's `action_source` when a rule decided);
- verdicts per analyst per day: distinct cases (`case_id`; a label without one counts as its own case) an
  analyst gave a verdict on, per UTC day of `reported_at`; a reversal counts as a verdict of whoever made it;
- time to verdict: the first verdict's `reported_at` minus the alert's `scored_at` (its event time if that
  is unreadable), in seconds, as quantiles.

Everything is rebuilt from the topics on every start, like live quality, and bounded by `keep_days` (older
alerts, verdicts and case counts are dropped as the newest day moves on) and by `max_alerts` (past it, the
oldest days of alerts go). Analyst ids label a series: they are the console's accounts, a set as small as
the team.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client.core import GaugeMetricFamily

from scorer.events.batches import LabelBatch
from scorer.events.timestamps import MS_PER_DAY, NEVER, rfc3339_ms, stamps_ms

ALERT_ACTIONS = ("review", "decline")
MODEL_SOURCE = "model"  # a decision's action_source when no rule decided
WAIT_QUANTILES = (0.5, 0.9, 0.99, 1.0)
I64 = npt.NDArray[np.int64]


@dataclass(slots=True)
class Alert:
    action: str
    rule: str | None  # the rule that decided, None when the model did
    scored_ms: int
    day: int  # event day


@dataclass(slots=True)
class VerdictFigures:
    """The figures over one window; empty dicts when no verdict fell in it."""

    bands: dict[str, dict[str, float]] = field(default_factory=dict)  # action -> verdicts, frauds, precision
    rules: dict[str, dict[str, float]] = field(default_factory=dict)  # rule id -> the same
    cases: dict[tuple[str, int], int] = field(default_factory=dict)  # (analyst, report day) -> cases
    wait_s: dict[float, float] = field(default_factory=dict)  # quantile -> seconds
    waited: int = 0  # verdicts with a known alert time behind the quantiles


class Verdicts:
    """The bounded join of served alerts and analysts' labels."""

    def __init__(self, keep_days: int, max_alerts: int) -> None:
        self.keep_days, self.max_alerts = keep_days, max_alerts
        self.alerts: dict[str, Alert] = {}  # transaction id -> its served alert
        # transaction id -> the analysts' latest verdict on it (reported ms, fraud)
        self.latest: dict[str, tuple[int, bool]] = {}
        self.first_ms: dict[str, int] = {}  # transaction id -> its first verdict's report time
        self.cases: dict[tuple[str, int], set[str]] = {}  # (analyst, report day) -> case ids
        self.newest_day = NEVER  # of the alerts' event times and the verdicts' reports

    def add_decisions(self, docs: Sequence[dict[str, Any]], event_ms: I64) -> None:
        """Served decisions (documents of the decision schema, their event times): alerts are kept, a
        redelivered one replaces the earlier copy."""
        alerted = [i for i, d in enumerate(docs) if d.get("action") in ALERT_ACTIONS]
        if not alerted:
            return
        scored_ms, bad = stamps_ms([str(docs[i].get("scored_at", "")) for i in alerted])
        for j, i in enumerate(alerted):
            doc, ms = docs[i], int(event_ms[i])
            source = doc.get("action_source")
            rule = source if isinstance(source, str) and source != MODEL_SOURCE else None
            self.alerts[str(doc["transaction_id"])] = Alert(
                str(doc["action"]), rule, ms if bad[j] else int(scored_ms[j]), ms // MS_PER_DAY
            )
        self._advance(int(event_ms.max()) // MS_PER_DAY)
        if len(self.alerts) > self.max_alerts:
            self._drop_oldest_alerts()

    def _drop_oldest_alerts(self) -> None:
        """Drop the oldest days of alerts until at most 90% of `max_alerts` are left (the newest day stays)."""
        days, counts = np.unique(
            np.fromiter((a.day for a in self.alerts.values()), dtype=np.int64), return_counts=True
        )
        kept_from = np.cumsum(counts[::-1])[::-1]  # alerts on or after each day
        over = days[kept_from > self.max_alerts * 9 // 10]
        cutoff = min(int(over.max()) + 1, int(days[-1])) if len(over) else int(days[0])
        self.alerts = {t: a for t, a in self.alerts.items() if a.day >= cutoff}

    def add_labels(self, labels: LabelBatch) -> None:
        """The analysts' labels among `labels` (source analyst); the others are not verdicts."""
        rows = zip(
            labels.transaction_id, labels.source, labels.reported_ts_ms.tolist(), labels.is_fraud.tolist(),
            labels.analyst_id, labels.case_id, strict=True,
        )  # fmt: skip
        newest = NEVER
        for tid, source, reported, fraud, analyst, case in rows:
            if source != "analyst":
                continue
            held = self.latest.get(tid)
            if held is None or reported >= held[0]:
                self.latest[tid] = (reported, fraud)
            self.first_ms[tid] = min(self.first_ms.get(tid, reported), reported)
            day = reported // MS_PER_DAY
            self.cases.setdefault((analyst or "", day), set()).add(case or f"transaction:{tid}")
            newest = max(newest, day)
        if newest != NEVER:
            self._advance(newest)

    def _advance(self, day: int) -> None:
        """Move the newest day on; past `keep_days` behind it, alerts and verdicts are forgotten."""
        if day <= self.newest_day:
            return
        self.newest_day = day
        cutoff = day - self.keep_days
        self.alerts = {t: a for t, a in self.alerts.items() if a.day >= cutoff}
        self.latest = {t: v for t, v in self.latest.items() if v[0] // MS_PER_DAY >= cutoff}
        self.first_ms = {t: ms for t, ms in self.first_ms.items() if t in self.latest}
        self.cases = {k: v for k, v in self.cases.items() if k[1] >= cutoff}

    def figures(self, window_days: int) -> VerdictFigures:
        """The figures over the newest `window_days` days of verdicts."""
        out = VerdictFigures()
        if not self.latest:
            return out
        newest = max(ms for ms, _ in self.latest.values()) // MS_PER_DAY
        first_day = newest - window_days + 1
        out.cases = {k: len(v) for k, v in sorted(self.cases.items()) if first_day <= k[1] <= newest}
        judged = [
            t for t, (ms, _) in self.latest.items() if ms // MS_PER_DAY >= first_day and t in self.alerts
        ]
        for tid in judged:
            alert, fraud = self.alerts[tid], self.latest[tid][1]
            _count(out.bands.setdefault(alert.action, _empty()), fraud)
            if alert.rule is not None:
                _count(out.rules.setdefault(alert.rule, _empty()), fraud)
        for figures in (*out.bands.values(), *out.rules.values()):
            figures["precision"] = figures["frauds"] / figures["verdicts"]
        waits = np.asarray(
            [self.first_ms[t] - self.alerts[t].scored_ms for t in judged if t in self.first_ms],
            dtype=np.float64,
        )
        if len(waits):
            seconds = np.maximum(waits, 0.0) / 1000.0  # a verdict stamped before its alert: clocks apart
            out.wait_s = dict(zip(WAIT_QUANTILES, np.quantile(seconds, WAIT_QUANTILES).tolist(), strict=True))
            out.waited = len(waits)
        return out


def _empty() -> dict[str, float]:
    return {"verdicts": 0, "frauds": 0}


def _count(figures: dict[str, float], fraud: bool) -> None:
    figures["verdicts"] += 1
    figures["frauds"] += fraud


def verdict_families(verdicts: Verdicts, window_days: int) -> list[GaugeMetricFamily]:
    """The verdict gauges (docs/monitoring.md, Verdicts), from the join as it is now."""
    f = verdicts.figures(window_days)
    bands = GaugeMetricFamily(
        "scorer_verdict_band_quality",
        f"Per action band, alerts with an analyst's verdict over the newest {window_days} days of verdicts: "
        "verdicts, frauds (the latest verdict says fraud) and precision (frauds / verdicts).",
        labels=["metric", "action"],
    )
    rules = GaugeMetricFamily(
        "scorer_verdict_rule_quality",
        "The same per rule id, for alerts a rule decided.",
        labels=["metric", "rule"],
    )
    for family, groups in ((bands, f.bands), (rules, f.rules)):
        for name, figures in groups.items():
            for metric, value in figures.items():
                family.add_metric([metric, name], value)
    cases = GaugeMetricFamily(
        "scorer_verdict_cases",
        "Distinct cases given a verdict per analyst and UTC day of reported_at.",
        labels=["analyst", "day"],
    )
    for (analyst, day), n in f.cases.items():
        cases.add_metric([analyst, _day(day)], n)
    wait = GaugeMetricFamily(
        "scorer_verdict_wait_seconds",
        "Time to verdict: the first verdict's reported_at minus the alert's scored_at (quantiles, window).",
        labels=["quantile"],
    )
    for q, seconds in f.wait_s.items():
        wait.add_metric([f"{q:g}"], seconds)
    waited = GaugeMetricFamily("scorer_verdict_waits", "Verdicts behind the time-to-verdict quantiles.")
    waited.add_metric([], f.waited)
    return [bands, rules, cases, wait, waited]


def _day(day: int) -> str:
    return rfc3339_ms(np.asarray([day * MS_PER_DAY], dtype=np.int64))[0][:10]
