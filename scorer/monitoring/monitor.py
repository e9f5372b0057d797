"""`scorer monitor`: live model quality from delayed fraud labels, exported as Prometheus metrics.

One process per deployment reads the decisions topic, its shadow topic and the labels topic from the
beginning of their retention (no consumer group: the join store is rebuilt on every start, so a restart
loses nothing), joins them in a bounded LiveQuality store and, every few seconds, publishes per model
version and event day the precision and recall at the threshold, Average Precision and Card
Precision@100; the same over the newest `quality_window_days` days whose labels are complete; the model
card's validation figures; a 0/1 drop signal per figure when live quality falls below the card by
more than `quality_drop_margin`; and the analysts' figures from their verdicts (verdicts.py). The scorer's hot path is untouched by all of this.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from scorer.config import Settings
from scorer.errors import ModelError, ScorerError
from scorer.events.decode import decode_labels
from scorer.events.timestamps import MS_PER_DAY, rfc3339_ms, stamps_ms
from scorer.kafka import clients
from scorer.kafka.topics import reach
from scorer.model.onnx import ModelMeta, read_meta, resolve_artefact
from scorer.model.registry import Registry
from scorer.monitoring.livequality import METRICS, LiveQuality, decision_rows
from scorer.monitoring.verdicts import Verdicts, verdict_families
from scorer.runtime.health import HealthServer
from scorer.runtime.process import tune_gc

logger = logging.getLogger(__name__)
REFRESH_S = 5.0
DEFAULT_LABEL_DELAY_DAYS = 7
Figures = dict[str, float | int]


class Models:
    """Model metadata by version label (registry first, then the configured model), looked up once."""

    def __init__(self, settings: Settings) -> None:
        self.registry = Registry(Path(settings.registry))
        self.fallback = settings.model
        self.cache: dict[str, ModelMeta | None] = {}

    def meta(self, label: str) -> ModelMeta | None:
        if label not in self.cache:
            self.cache[label] = self._find(label)
            if self.cache[label] is None:
                logger.warning(
                    "model_card_not_found", extra={"model": label, "registry": str(self.registry.root)}
                )
        return self.cache[label]

    def _find(self, label: str) -> ModelMeta | None:
        try:
            return self.registry.get(label).meta
        except ModelError:
            pass
        try:
            meta = read_meta(resolve_artefact(Path(self.fallback)))
        except ModelError:
            return None
        return meta if meta.label == label else None


class QualitySnapshot(Collector):
    """The latest computed figures as gauges; swapped whole, so a scrape never sees half a refresh."""

    def __init__(self) -> None:
        self.families: list[GaugeMetricFamily] = []

    def collect(self) -> Iterable[GaugeMetricFamily]:
        return list(self.families)


class Monitor:
    """Consume decisions and labels, keep the join, refresh the quality gauges."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        s = settings
        self.settings = s
        self.models = Models(s)
        self.topics = (s.decisions_topic, f"{s.decisions_topic}-shadow", s.labels_topic)
        self.store = LiveQuality(
            s.quality_max_decisions, s.quality_window_days + 2 * DEFAULT_LABEL_DELAY_DAYS
        )
        self.verdicts = Verdicts(
            s.quality_window_days + 2 * DEFAULT_LABEL_DELAY_DAYS, s.quality_max_decisions
        )
        self.registry = registry or CollectorRegistry()
        self.snapshot = QualitySnapshot()
        self.registry.register(self.snapshot)
        self.records = Counter(
            "scorer_monitor_records", "Records read, by topic.", ["topic"], registry=self.registry
        )
        self.bad = Counter(
            "scorer_monitor_bad_records", "Records that could not be read (skipped), by topic.", ["topic"],
            registry=self.registry,
        )  # fmt: skip
        for topic in self.topics:
            self.records.labels(topic)
            self.bad.labels(topic)
        self.consumer = clients.consumer(s.consumer_config(group=s.monitor_group, background=True))
        self.started = False

    def run(self, stop: threading.Event) -> int:
        server = self._serve()
        try:
            self.assign()
            tune_gc()
            last = 0.0
            while not stop.is_set():
                self.step()
                if time.monotonic() - last >= REFRESH_S:
                    self.refresh()
                    last = time.monotonic()
        finally:
            self.consumer.close()
            if server is not None:
                server.stop()
        return 0

    def _serve(self) -> HealthServer | None:
        s = self.settings
        if s.metrics_port == 0:
            return None
        try:
            return HealthServer(self.registry, s.metrics_host, s.metrics_port, lambda: self.started).start()
        except OSError as exc:
            raise ScorerError(f"cannot serve metrics on port {s.metrics_port}: {exc.strerror}") from exc

    def assign(self) -> None:
        """Every partition of the three topics, from the beginning (the store lives in memory only)."""
        meta = reach(self.settings)
        missing = [t for t in self.topics if t not in meta.topics]
        if missing:
            raise ScorerError(f"missing topics {missing}: create them with `scorer topics`")
        self.consumer.assign(
            [
                TopicPartition(t, p, OFFSET_BEGINNING)
                for t in self.topics
                for p in sorted(meta.topics[t].partitions)
            ]
        )
        self.started = True
        logger.info("monitor_started", extra={"topics": list(self.topics)})

    def step(self) -> int:
        """Read one batch into the store; returns the records read."""
        msgs = [m for m in self.consumer.consume(5000, 0.5) if m.error() is None]
        by_topic: dict[str, list[Message]] = {}
        for m in msgs:
            by_topic.setdefault(m.topic() or "", []).append(m)
        for topic, records in by_topic.items():
            self.records.labels(topic).inc(len(records))
            values = [m.value() for m in records]
            if topic == self.settings.labels_topic:
                self._labels(values)
            else:
                self._decisions(topic, values)
        return len(msgs)

    def _labels(self, values: Sequence[bytes | None]) -> None:
        decoded = decode_labels(values)
        if decoded.rejected:
            self.bad.labels(self.settings.labels_topic).inc(len(decoded.rejected))
        self.store.add_labels(decoded.batch)
        self.verdicts.add_labels(decoded.batch)

    def _decisions(self, topic: str, values: Sequence[bytes | None]) -> None:
        docs = read_decisions(values)
        if len(docs) < len(values):
            self.bad.labels(topic).inc(len(values) - len(docs))
        ms, bad = stamps_ms([d["timestamp"] for d in docs])
        keep = np.flatnonzero(~bad)
        if len(keep) < len(docs):
            self.bad.labels(topic).inc(len(docs) - len(keep))
            docs = [docs[i] for i in keep.tolist()]
        for rows in decision_rows(docs, ms[keep]):
            self.store.add(rows)
        if topic == self.settings.decisions_topic:  # served: what the analysts' queue showed
            self.verdicts.add_decisions(docs, ms[keep])

    def catch_up(self, timeout_s: float) -> None:
        """Read until every assigned partition is at its end (for `scorer report`)."""
        drain(self.consumer, self.step, timeout_s)

    def refresh(self) -> None:
        """Recompute every figure and swap the gauges in."""
        self.snapshot.families = [
            *families(self.store, self.models, self.settings),
            *verdict_families(self.verdicts, self.settings.quality_window_days),
        ]


def drain(consumer: Consumer, step: Callable[[], int], timeout_s: float) -> None:
    """Call `step` until a poll comes back empty with every partition at or past its high watermark.

    Past, not at: tansu reports a high watermark short of the real end (see tables.read_partition).
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if step() == 0 and _at_end(consumer):
            return
    raise ScorerError(f"could not read the topics to their end within {timeout_s:.0f} s")


def _at_end(consumer: Consumer) -> bool:
    for tp in consumer.position(consumer.assignment()):
        _, high = consumer.get_watermark_offsets(tp, timeout=5.0, cached=False)
        if high > 0 and tp.offset < high:  # a negative position: nothing read yet, though there is data
            return False
    return True


def read_decisions(values: Sequence[bytes | None]) -> list[dict[str, Any]]:
    """Decision documents with the fields the join needs; anything else is skipped (and counted)."""
    out = []
    for raw in values:
        try:
            doc = orjson.loads(raw or b"")
        except orjson.JSONDecodeError:
            continue
        if isinstance(doc, dict) and _usable(doc):
            out.append(doc)
    return out


def _usable(doc: dict[str, Any]) -> bool:
    return (
        isinstance(doc.get("transaction_id"), str)
        and isinstance(doc.get("customer_id"), str)
        and isinstance(doc.get("model_version"), str)
        and isinstance(doc.get("timestamp"), str)
        and type(doc.get("score")) in (int, float)
        and isinstance(doc.get("flagged"), bool)
    )


def label_delay(meta: ModelMeta | None) -> int:
    return meta.feature_config.label_delay_days if meta is not None else DEFAULT_LABEL_DELAY_DAYS


def families(store: LiveQuality, models: Models, s: Settings) -> list[GaugeMetricFamily]:
    """Every quality gauge, from the store as it is now."""
    day = GaugeMetricFamily(
        "scorer_live_quality", "Quality per model version and event day from delayed labels (incomplete "
        "until the label delay has passed).", labels=["metric", "model_version", "day"],
    )  # fmt: skip
    mature = GaugeMetricFamily(
        "scorer_live_quality_mature",
        f"Quality over the newest {s.quality_window_days} days whose labels are complete.",
        labels=["metric", "model_version"],
    )
    card = GaugeMetricFamily(
        "scorer_model_validation_quality",
        "The model card's validation figures.",
        labels=["metric", "model_version"],
    )
    drop = GaugeMetricFamily(
        "scorer_live_quality_drop",
        f"1 when mature live quality is more than {s.quality_drop_margin} below the model card.",
        labels=["metric", "model_version"],
    )
    counts = GaugeMetricFamily(
        "scorer_live_decisions", "Decisions joined per version and day.", labels=["model_version", "day"]
    )
    frauds = GaugeMetricFamily(
        "scorer_live_frauds", "Labelled frauds among them.", labels=["model_version", "day"]
    )
    mature_days = GaugeMetricFamily(
        "scorer_live_mature_days", "Days in the mature window.", labels=["model_version"]
    )
    bands = GaugeMetricFamily(
        "scorer_live_band_quality",
        "Per action band over the mature window: precision (frauds among its decisions), recall (share of "
        "all frauds it holds) and decisions.", labels=["metric", "action", "model_version"],
    )  # fmt: skip
    for version in store.versions:
        meta = models.meta(version)
        for d in store.days(version):
            figures, when = store.figures(version, [d]), _day(d)
            counts.add_metric([version, when], figures["decisions"])
            frauds.add_metric([version, when], figures["frauds"])
            for m in METRICS:
                if m in figures:
                    day.add_metric([m, version, when], figures[m])
        window = store.mature_days(version, label_delay(meta), s.quality_window_days)
        mature_days.add_metric([version], len(window))
        live = store.figures(version, window) if window else {}
        for action, figures in (store.bands(version, window) if window else {}).items():
            for m, value in figures.items():
                bands.add_metric([m, action, version], value)
        validation = meta.raw.get("metrics", {}).get("validation", {}) if meta is not None else {}
        for m in METRICS:
            if m in live:
                mature.add_metric([m, version], live[m])
            if m in validation:
                card.add_metric([m, version], float(validation[m]))
            if m in live and m in validation:
                drop.add_metric([m, version], float(live[m] < float(validation[m]) - s.quality_drop_margin))
    watermark = GaugeMetricFamily(
        "scorer_live_label_watermark_timestamp_seconds", "Newest label report time seen."
    )
    watermark.add_metric([], max(0, store.label_watermark_ms) / 1000)
    stored = GaugeMetricFamily("scorer_live_store_rows", "Decisions held for the label join.")
    stored.add_metric([], store.size)
    return [day, mature, card, drop, counts, frauds, mature_days, bands, watermark, stored]


def _day(day: int) -> str:
    return rfc3339_ms(np.asarray([day * MS_PER_DAY], dtype=np.int64))[0][:10]
