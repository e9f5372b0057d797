"""`scorer report --from --to`: one self-contained HTML page on data drift, live quality and flag volume.

For people who would rather look than read: everything is plotted per event day (UTC) of the range, from
what the topics hold now. Drift comes from the hourly binned counts the scorers publish on the monitoring
topic (PSI of the day's counts against the serving model's training reference); quality and flag volume
come from the decisions and shadow decisions joined with the fraud labels, exactly as `scorer monitor`
joins them. Days whose labels may still be incomplete (within the label delay of the newest label) are
marked. The page has inline SVG only: no script, nothing fetched, safe to mail.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from scorer.config import Settings
from scorer.errors import ScorerError
from scorer.events.timestamps import MS_PER_DAY, parse_rfc3339_ms
from scorer.features.engine import FEATURE_NAMES
from scorer.kafka import clients
from scorer.monitoring.drift import Bins, comparable
from scorer.monitoring.livequality import METRICS, LiveQuality
from scorer.monitoring.monitor import Models, Monitor, drain, label_delay
from scorer.monitoring.svgplot import bar_chart, line_chart
from scorer.version import __version__

I64 = npt.NDArray[np.int64]
READ_TIMEOUT_S = 300.0
TOP_FEATURES = 6
TITLES = {
    "average_precision": "Average Precision",
    "card_precision_at_100": "Card Precision@100",
    "precision": "Precision at the threshold",
    "recall": "Recall at the threshold",
}


@dataclass(slots=True)
class DriftCounts:
    """Binned counts per model version and event day, summed over hours and scorer instances."""

    layout: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = field(default_factory=dict)
    days: dict[str, dict[int, I64]] = field(default_factory=dict)
    skipped: int = 0

    def add(self, doc: Mapping[str, Any]) -> None:
        version = str(doc["model_version"])
        layout = (tuple(doc["columns"]), tuple(int(b) for b in doc["bins"]))
        if self.layout.setdefault(version, layout) != layout:
            self.skipped += 1  # a record written by a scorer of another layout: not comparable
            return
        day = parse_rfc3339_ms(str(doc["hour"])) // MS_PER_DAY
        counts = np.asarray(doc["counts"], dtype=np.int64)
        per_day = self.days.setdefault(version, {})
        per_day[day] = per_day.get(day, np.zeros_like(counts)) + counts


def read_drift(settings: Settings, first: int, last: int) -> DriftCounts:
    """Every drift record of the monitoring topic whose hour falls in the day range."""
    consumer = clients.consumer(
        settings.consumer_config(group=f"{settings.monitor_group}-report", background=True)
    )
    out = DriftCounts()
    try:
        meta = consumer.list_topics(settings.monitoring_topic, timeout=10.0).topics[settings.monitoring_topic]
        if meta.error is not None:
            raise ScorerError(
                f"{settings.monitoring_topic}: {meta.error.str()} (create it with `scorer topics`)"
            )
        consumer.assign(
            [TopicPartition(settings.monitoring_topic, p, OFFSET_BEGINNING) for p in sorted(meta.partitions)]
        )

        def step() -> int:
            msgs = [m for m in consumer.consume(5000, 0.5) if m.error() is None]
            for m in msgs:
                _add_drift(out, m.value(), first, last)
            return len(msgs)

        drain(consumer, step, READ_TIMEOUT_S)
    finally:
        consumer.close()
    return out


def _add_drift(out: DriftCounts, raw: bytes | None, first: int, last: int) -> None:
    try:
        doc = orjson.loads(raw or b"")
        if doc.get("kind") == "drift" and first <= parse_rfc3339_ms(doc["hour"]) // MS_PER_DAY <= last:
            out.add(doc)
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
        out.skipped += 1


def build_report(
    settings: Settings,
    start: datetime.date,
    end: datetime.date,
    retrain_runs: Sequence[Mapping[str, Any]] = (),
) -> str:
    """Read the topics and render the page for the event days start..end (inclusive); `retrain_runs` (the
    store's retrain_runs rows, newest first, read by the caller when it has the database) add a section."""
    if end < start:
        raise ScorerError(f"--to {end} is before --from {start}")
    first, last = (_epoch_day(d) for d in (start, end))
    monitor = Monitor(settings)
    # every decision of the range, however old: no retention by age, only the store's row bound
    monitor.store = LiveQuality(settings.quality_max_decisions, keep_days=10**6, only_days=(first, last))
    try:
        monitor.assign()
        monitor.catch_up(READ_TIMEOUT_S)
    finally:
        monitor.consumer.close()
    drift = read_drift(settings, first, last)
    return render(monitor.store, drift, monitor.models, first, last, retrain_runs)


def _epoch_day(d: datetime.date) -> int:
    return (d - datetime.date(1970, 1, 1)).days


def _iso(day: int) -> str:
    return (datetime.date(1970, 1, 1) + datetime.timedelta(days=day)).isoformat()


def render(
    store: LiveQuality,
    drift: DriftCounts,
    models: Models,
    first: int,
    last: int,
    retrain_runs: Sequence[Mapping[str, Any]] = (),
) -> str:
    """The HTML page."""
    days = list(range(first, last + 1))
    labels = [_iso(d) for d in days]
    sections = [
        _drift_section(drift, models, days, labels),
        _quality_section(store, models, days, labels),
        _volume_section(store, days, labels),
    ]
    if retrain_runs:
        sections.append(retrain_section(retrain_runs))
    notes = []
    if drift.skipped:
        notes.append(f"{drift.skipped} drift record(s) could not be read or had another layout; left out.")
    return _page(labels[0], labels[-1], sections, notes)


def _drift_section(drift: DriftCounts, models: Models, days: Sequence[int], labels: Sequence[str]) -> str:
    parts = ["<h2>Data drift</h2>", "<p>PSI of each day's values against the training reference of the "
             "model that scored them (below 0.1 stable, above 0.25 a major shift). is_weekend is left out: a "
             "single day cannot match its weekly pattern.</p>"]  # fmt: skip
    if not drift.days:
        return "\n".join([*parts, "<p><em>No drift counts in this range on the monitoring topic.</em></p>"])
    score: dict[str, list[float | None]] = {}
    for version, per_day in drift.days.items():
        meta = models.meta(version)
        if meta is None:
            parts.append(f"<p><em>{escape(version)}: model card not found, drift not computed.</em></p>")
            continue
        bins = Bins.from_reference(meta.raw["reference"], FEATURE_NAMES)
        table = {d: bins.column_psi(per_day[d].astype(np.float64)) for d in days if d in per_day}
        for psi in table.values():
            psi[~comparable(bins.columns, 86_400)] = np.nan  # a day holds one day of the week
        score[version] = [float(table[d][-1]) if d in table else None for d in days]
        parts.append(_feature_drift(version, bins, table, days, labels))
    parts.insert(2, line_chart("Score PSI per day", labels, score, {"major shift": 0.25}))
    return "\n".join(parts)


def _feature_drift(
    version: str,
    bins: Bins,
    table: Mapping[int, npt.NDArray[np.float64]],
    days: Sequence[int],
    labels: Sequence[str],
) -> str:
    """The most drifted features as lines, and every feature's largest and latest PSI as a table."""
    names = bins.columns[:-1]
    if not table:
        return ""
    stacked = np.vstack([table[d][:-1] for d in days if d in table])
    shown = np.flatnonzero(~np.isnan(stacked).all(axis=0))
    worst = np.nan_to_num(stacked, nan=0.0).max(axis=0)
    top = shown[np.argsort(-worst[shown], kind="stable")][:TOP_FEATURES]
    series = {names[i]: [float(table[d][i]) if d in table else None for d in days] for i in top.tolist()}
    rows = "".join(
        f"<tr><td>{escape(names[i])}</td><td>{worst[i]:.3f}</td><td>{stacked[-1][i]:.3f}</td></tr>"
        for i in shown[np.argsort(-worst[shown], kind="stable")].tolist()
    )
    return (
        line_chart(f"Most drifted features, {version}", labels, series, {"major shift": 0.25})
        + f"<details><summary>PSI of every feature ({escape(version)})</summary><table><tr><th>feature</th>"
        f"<th>largest</th><th>last day</th></tr>{rows}</table></details>"
    )


def _quality_section(store: LiveQuality, models: Models, days: Sequence[int], labels: Sequence[str]) -> str:
    parts = ["<h2>Live quality per day and version</h2>"]
    figures = {v: {d: store.figures(v, [d]) for d in days} for v in store.versions}
    if not any(f["decisions"] for per_day in figures.values() for f in per_day.values()):
        return "\n".join([*parts, "<p><em>No decisions in this range.</em></p>"])
    incomplete = [
        labels[i] for i, d in enumerate(days)
        if any(d >= _ripe(store, models, v) for v in store.versions if figures[v][d]["decisions"])
    ]  # fmt: skip
    if incomplete:
        parts.append(f"<p>Labels may still be incomplete for {', '.join(incomplete)} (within the label delay of "
                     "the newest label): their figures will still change.</p>")  # fmt: skip
    for metric in METRICS:
        series = {v: [_value(figures[v][d], metric) for d in days] for v in store.versions}
        refs = {}
        for v in store.versions:
            meta = models.meta(v)
            card = meta.raw.get("metrics", {}).get("validation", {}) if meta is not None else {}
            if metric in card:
                refs[f"card {v}"] = float(card[metric])
        parts.append(line_chart(TITLES[metric], labels, series, refs))
    return "\n".join([*parts, _bands_table(store, days)])


def _bands_table(store: LiveQuality, days: Sequence[int]) -> str:
    """Per version and action band over the whole range: decisions, precision and recall."""
    rows = [
        f"<tr><td>{escape(v)}</td><td>{action}</td><td>{f['decisions']:,.0f}</td><td>{f['precision']:.3f}</td>"
        f"<td>{f['recall']:.3f}</td></tr>"
        for v in store.versions for action, f in store.bands(v, days).items()
    ]  # fmt: skip
    head = ("<h3>Action bands</h3><p>Precision: labelled frauds among the band's decisions; recall: the share "
            "of all labelled frauds in the band (labels still arriving lower both).</p><table><tr><th>version"
            "</th><th>action</th><th>decisions</th><th>precision</th><th>recall</th></tr>")  # fmt: skip
    return head + "".join(rows) + "</table>"


def _ripe(store: LiveQuality, models: Models, version: str) -> int:
    return (store.label_watermark_ms - label_delay(models.meta(version)) * MS_PER_DAY) // MS_PER_DAY


def _value(figures: Mapping[str, float | int], metric: str) -> float | None:
    return float(figures[metric]) if metric in figures else None


def _volume_section(store: LiveQuality, days: Sequence[int], labels: Sequence[str]) -> str:
    parts = ["<h2>Flag volume</h2>"]
    rows = []
    for v in store.versions:
        per_day = [store.figures(v, [d]) for d in days]
        if not any(f["decisions"] for f in per_day):
            continue
        parts.append(bar_chart(f"Flagged per day, {v}", labels, [float(f["flagged"]) for f in per_day]))
        rows += [
            f"<tr><td>{escape(v)}</td><td>{labels[i]}</td><td>{f['decisions']:,}</td><td>{f['flagged']:,}</td>"
            f"<td>{f['frauds']:,}</td></tr>"
            for i, f in enumerate(per_day) if f["decisions"]
        ]  # fmt: skip
    table = "<table><tr><th>version</th><th>day</th><th>decisions</th><th>flagged</th><th>labelled frauds</th></tr>"
    return "\n".join([*parts, f"<details><summary>Numbers</summary>{table}{''.join(rows)}</table></details>"])


def _page(start: str, end: str, sections: Sequence[str], notes: Sequence[str]) -> str:
    made = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    note = "".join(f"<p class=note>{escape(n)}</p>" for n in notes)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>scorer report {start} to {end}</title>
<style>body{{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}}svg{{display:block;margin:1em 0}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}
.note{{color:#a00}}</style></head><body>
<h1>Fraud scorer report: {start} to {end}</h1>
<p>Event days in UTC. Generated {made} by scorer {escape(__version__)}.</p>{note}
{"".join(sections)}
</body></html>
"""


def write_report(path: Path, html: str) -> None:
    try:
        path.write_text(html, encoding="utf-8")
    except OSError as exc:
        raise ScorerError(f"cannot write {path}: {exc.strerror}") from exc


def retrain_section(runs: Sequence[Mapping[str, Any]]) -> str:
    """What `scorer retrain` did, run by run: the candidate, its fate and why, its labels and alarms."""
    head = "".join(
        f"<th>{h}</th>"
        for h in ("run", "cut-off", "champion", "candidate", "status", "labels", "alarms", "why")
    )
    rows = []
    for run in runs:
        labels = ", ".join(
            f"{n:,} {source}" for source, n in sorted((run.get("labels_by_source") or {}).items())
        )
        cells = (
            run["run_id"], run["cutoff"], run["champion"], run.get("candidate") or "-", run["status"], labels or "-",
            "; ".join(run.get("alarms") or []) or "none", run.get("reasons") or "",
        )  # fmt: skip
        rows.append("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in cells) + "</tr>")
    return (
        "<h2>Retraining</h2><p>Each run of <code>scorer retrain</code>: the candidate it trained on the store's "
        "window (labels reported before the cut-off only), and whether the gate refused it or the live labels "
        f"promoted or retired it.</p><table><tr>{head}</tr>{''.join(rows)}</table>"
    )
