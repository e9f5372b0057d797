"""Every Prometheus metric of the scorer and the aggregator, built on an injected registry.

Labels come from small fixed sets (reason, partition, kind, model version), never a card, terminal or
transaction id. Every dead-letter reason is pre-created so dashboards show zeros, not gaps.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import HistogramMetricFamily

LATENCY_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 20)) + (0.99, 0.999)
BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2000, 5000, 10000)
INFERENCE_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class BatchHistogram:
    """A Prometheus histogram fed a whole batch at once (numpy), so the hot path does no per-event calls.

    With `labelname`, one histogram per label value (e.g. per model version), created on first use.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        registry: CollectorRegistry,
        labelname: str | None = None,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelname = labelname
        self.upper = np.asarray(buckets, dtype=np.float64)
        self.series: dict[str, tuple[npt.NDArray[np.int64], list[float]]] = {}  # label -> (counts, [sum])
        if labelname is None:
            self._series("")
        self._lock = threading.Lock()
        registry.register(self)

    def _series(self, label: str) -> tuple[npt.NDArray[np.int64], list[float]]:
        if label not in self.series:  # last bin: above every bucket
            self.series[label] = (np.zeros(len(self.upper) + 1, dtype=np.int64), [0.0])
        return self.series[label]

    def observe_many(self, values: npt.NDArray[np.float64], label: str = "") -> None:
        if len(values) == 0:
            return
        bins = np.bincount(np.searchsorted(self.upper, values, side="left"), minlength=len(self.upper) + 1)
        with self._lock:
            counts, total = self._series(label)
            counts += bins
            total[0] += float(values.sum())

    def collect(self) -> Iterable[HistogramMetricFamily]:
        labels = [self.labelname] if self.labelname else []
        family = HistogramMetricFamily(self.name, self.documentation, labels=labels)
        with self._lock:
            series = [(k, np.cumsum(c).tolist(), t[0]) for k, (c, t) in self.series.items()]
        for label, cumulative, total in series:
            buckets = [(_le(b), float(c)) for b, c in zip(self.upper.tolist(), cumulative, strict=False)]
            buckets.append(("+Inf", float(cumulative[-1])))
            family.add_metric([label] if self.labelname else [], buckets, total)
        yield family


def _le(bound: float) -> str:
    return repr(float(bound))


class Metrics:
    """The scorer's metrics; one instance per process (tests give each its own registry)."""

    def __init__(self, registry: CollectorRegistry, reasons: Iterable[str] = ()) -> None:
        r = registry
        self.registry = registry
        self.consumed = Counter("scorer_events_consumed", "Records read from the input topic.", registry=r)
        self.scored = Counter("scorer_events_scored", "Transactions scored (one decision each).", registry=r)
        self.flagged = Counter("scorer_events_flagged", "Decisions with flagged=true.", registry=r)
        self.decisions = Counter(
            "scorer_decisions", "Decisions by action (approve, review, decline) and source (model, rule).",
            ["action", "source"], registry=r,
        )  # fmt: skip
        for action in ("approve", "review", "decline"):
            for source in ("model", "rule"):
                self.decisions.labels(action, source)
        self.rule_hits = Counter(
            "scorer_rule_hits",
            "Decisions a rule decided, by rule id (rule ids are few).",
            ["rule_id"],
            registry=r,
        )
        self.replies = Counter(
            "scorer_replies", "Decisions (or errors) sent to a scorer serve reply topic.", registry=r
        )
        self.dead_letters = Counter(
            "scorer_dead_letters", "Records sent to the dead-letter topic, by reason.", ["reason"], registry=r
        )
        for reason in reasons:
            self.dead_letters.labels(reason)
        self.batch_size = Histogram(
            "scorer_batch_size_records", "Records per consumed batch.", buckets=BATCH_BUCKETS, registry=r
        )
        self.inference = Histogram(
            "scorer_inference_seconds", "onnxruntime time per batch.", ["model_version"],
            buckets=INFERENCE_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.batch_seconds = Histogram(
            "scorer_batch_seconds", "Wall time to decode, score and hand a batch to the producer.",
            buckets=INFERENCE_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.batch_cpu_seconds = Histogram(  # beside the wall time: a gap between the two is a busy host
            "scorer_batch_cpu_seconds", "CPU time of the scoring thread for the same work as scorer_batch_seconds.",
            buckets=INFERENCE_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.latency = BatchHistogram(
            "scorer_end_to_end_latency_seconds",
            "Decision produced minus the transaction's Kafka timestamp.",
            LATENCY_BUCKETS_S, r,
        )  # fmt: skip
        self.lag = Gauge(
            "scorer_consumer_lag_records", "High watermark minus position.", ["partition"], registry=r
        )
        self.assigned = Gauge(
            "scorer_assigned_partitions", "Input partitions assigned to this process.", registry=r
        )
        self.state_keys = Gauge("scorer_state_keys", "Keys held in window state.", ["kind"], registry=r)
        self.state_bytes = Gauge("scorer_state_bytes", "Bytes held by window state.", ["kind"], registry=r)
        self.model_info = Info("scorer_model", "The model version(s) in use.", registry=r)
        self.model_scores = BatchHistogram(
            "scorer_model_score", "Scores each model version gave (champion and challenger).",
            SCORE_BUCKETS, r, labelname="model_version",
        )  # fmt: skip
        self.model_flagged = Counter(
            "scorer_model_flagged", "Events each model version would flag at its own threshold.",
            ["model_version"], registry=r,
        )  # fmt: skip
        self.model_scored = Counter(
            "scorer_model_scored", "Events each model version scored.", ["model_version"], registry=r
        )
        self.agreement = Counter(
            "scorer_challenger_agreement",
            "Events champion and challenger flag alike (compare with scorer_model_scored of the challenger).",
            ["model_version"], registry=r,
        )  # fmt: skip
        self.fallbacks = Counter(
            "scorer_challenger_fallbacks",
            "Events a challenger should have scored but failed, timed out or returned NaN for (champion used).",
            ["model_version"], registry=r,
        )  # fmt: skip
        self.challenger_skipped = Counter(
            "scorer_challenger_skipped_batches",
            "Batches a challenger was left out of because it was still scoring an earlier one (never queued).",
            ["model_version"], registry=r,
        )  # fmt: skip
        self.watcher_errors = Counter(  # the watchers pre-create their own kind and reasons
            "scorer_watcher_errors",
            "Failures following the control or rules topic, by topic kind and reason.",
            ["topic_kind", "reason"], registry=r,
        )  # fmt: skip
        self.watcher_readable = Gauge(
            "scorer_watcher_topic_readable",
            "1 while the control or rules topic is followed, 0 while it is missing or unreadable (retried).",
            ["topic_kind"], registry=r,
        )  # fmt: skip
        self.watcher_updated = Gauge(
            "scorer_watcher_last_update_timestamp_seconds",
            "When the newest deployment or rule book was read and built, ready for the loop's next batch.",
            ["topic_kind"], registry=r,
        )  # fmt: skip
        self.rebalances = Counter(
            "scorer_rebalances", "Partition assignments and revocations.", ["kind"], registry=r
        )
        for kind in ("assign", "revoke", "lost"):
            self.rebalances.labels(kind)
        self.commits = Counter(
            "scorer_commits", "Offset commits after every output was acknowledged.", registry=r
        )
        self.restored = Counter(
            "scorer_state_restored_keys", "Customer keys restored on assignment.", registry=r
        )
        self.backpressure = Counter(
            "scorer_producer_backpressure",
            "Times the producer queue was full and the loop waited.",
            registry=r,
        )
        self.terminal_stale = Counter(
            "scorer_terminal_features_stale",
            "Transactions scored before the aggregator had closed the previous day.",
            registry=r,
        )
        self.terminal_ahead = Counter(
            "scorer_terminal_features_ahead",
            "Transactions scored after the table had applied a later day's close (late events, partition skew).",
            registry=r,
        )
        self.terminal_day = Gauge(
            "scorer_terminal_table_closed_day_timestamp_seconds",
            "Start of the newest day closed by the aggregator and applied to the terminal table.",
            registry=r,
        )
        self.dead_letters_truncated = Counter(
            "scorer_dead_letters_truncated",
            "Dead letters the broker refused for their size, sent again with the value cut to its prefix.",
            registry=r,
        )
        self.dead_letter_errors = Counter(
            "scorer_dead_letter_errors",
            "Dead letters that could not be written at all: logged, and the scorer stops without committing past them.",
            registry=r,
        )
        self.produce_errors = Counter(
            "scorer_delivery_errors", "Outputs the broker refused after all retries.", ["topic"], registry=r
        )
        self.input_issues = Counter(
            "scorer_input_issues",
            "Scored transactions unlike the training data: unseen category, outside the training range, "
            "missing optional field, future or late timestamp.",
            ["field", "reason"], registry=r,
        )  # fmt: skip
        self.feature_psi = Gauge(
            "scorer_feature_psi", "Population Stability Index of a feature against training, per event-time window.",
            ["feature", "window"], registry=r,
        )  # fmt: skip
        self.score_psi = Gauge(
            "scorer_score_psi", "PSI of the champion's score against its training scores, per window.",
            ["window"], registry=r,
        )  # fmt: skip
        self.drift_events = Gauge(
            "scorer_drift_window_events", "Events in each drift window (PSI is noisy on few).", ["window"],
            registry=r,
        )  # fmt: skip


class AggregatorMetrics:
    """Metrics of `scorer aggregate` (terminal features)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.registry = registry
        self.events = Counter(
            "scorer_aggregator_events", "Events folded into terminal state.", ["kind"], registry=r
        )
        for kind in ("transaction", "label"):
            self.events.labels(kind)
        self.repartitioned = Counter(
            "scorer_aggregator_repartitioned", "Records re-keyed by terminal.", ["kind"], registry=r
        )
        self.closed_day = Gauge(
            "scorer_aggregator_closed_day_timestamp_seconds", "Start of the newest closed day.", registry=r
        )
        self.rows = Counter(
            "scorer_aggregator_rows_published", "Terminal rows published at day close.", registry=r
        )
        self.late = Counter(
            "scorer_aggregator_late_events", "Events for a day that was already closed.", ["kind"], registry=r
        )
        self.state_keys = Gauge("scorer_aggregator_state_keys", "Terminals held in state.", registry=r)
        self.state_bytes = Gauge("scorer_aggregator_state_bytes", "Bytes held by terminal state.", registry=r)
        self.lag = Gauge(
            "scorer_aggregator_lag_records", "Lag per input partition.", ["topic", "partition"], registry=r
        )
