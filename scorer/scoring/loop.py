"""`scorer run`: consume a batch -> decode -> features -> one model call -> produce -> commit when safe.

At-least-once, in three steps per commit (see snapshots.py): seal the producer epoch holding the batch's
decisions; once the broker acknowledged it, write the customer-state snapshot for those offsets; once
that is acknowledged, commit the offsets. None of it blocks the loop. On revocation and shutdown the same
steps run synchronously for the partitions concerned. This module holds the only broad `except`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from prometheus_client import CollectorRegistry

from scorer.aggregate.table import TerminalTable
from scorer.config import Settings
from scorer.errors import ScorerError
from scorer.events.batches import TransactionBatch, pick
from scorer.events.decode import decode_transactions
from scorer.events.timestamps import HOUR_MS, rfc3339_ms
from scorer.features.engine import CUSTOMER_NAMES, FEATURE_NAMES, stateless_features
from scorer.kafka.control import ControlWatcher
from scorer.kafka.sink import Sink
from scorer.kafka.topics import check_topics
from scorer.model.onnx import OnnxModel
from scorer.monitoring.drift import Bins, Drift
from scorer.monitoring.inputs import InputChecks, issue_labels
from scorer.rollout.serving import Outcome, Serving
from scorer.runtime.health import HealthServer
from scorer.runtime.metrics import Metrics
from scorer.runtime.process import tune_gc
from scorer.scoring.customers import CustomerStore
from scorer.scoring.decisions import Explainer, ScoredBatch, encode_decisions

logger = logging.getLogger(__name__)
I64 = npt.NDArray[np.int64]
DLQ_REASONS = (
    "empty_value", "oversized_value", "invalid_utf8", "invalid_json", "not_an_object", "missing_field",
    "wrong_type", "empty_field", "field_too_long", "invalid_amount", "invalid_timestamp", "invalid_currency",
    "processing_error",
)  # fmt: skip
ACK_TIMEOUT_S = 30.0
GAUGE_INTERVAL_S = 2.0


@dataclass(slots=True)
class PendingCommit:
    """Offsets waiting for their decisions (stage 1) and then their state snapshot (stage 2)."""

    epoch: int
    offsets: dict[int, int]
    snapshot: list[tuple[int, list[dict[str, Any]]]] = field(default_factory=list)
    stage: int = 1


class Pipeline:
    """One scorer process: a member of the consumer group on the transactions topic."""

    def __init__(
        self, settings: Settings, model: OnnxModel, registry: CollectorRegistry | None = None
    ) -> None:
        self.settings = settings
        self.serving = Serving(model)
        self.explainer = Explainer.from_meta(model.meta.raw, FEATURE_NAMES)
        self.watcher = ControlWatcher(settings, settings.onnx_threads, self.serving)
        self.shadow_topic = f"{settings.decisions_topic}-shadow"
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry, DLQ_REASONS)
        for name, reason in issue_labels(FEATURE_NAMES):
            self.metrics.input_issues.labels(name, reason)
        self.checks, self.drift = self._data_health(model)
        self.last_published = time.monotonic()
        self.instance = f"{socket.gethostname()}-{os.getpid()}"
        self.metrics.model_info.info({"version": model.label, "threshold": f"{model.threshold:.6f}"})
        self.sink = Sink(settings.producer_config(), self.metrics)
        config = model.meta.feature_config
        self.vocab = config.codes()
        reader = settings.consumer_config(group=f"{settings.group}-reader", background=True)
        self.customers = CustomerStore(config, reader, settings.state_topic)
        self.table = TerminalTable(
            config,
            reader,
            settings.terminal_topic,
            settings.terminal_wait_s,
            self.metrics.terminal_stale.inc,
            self.metrics.terminal_ahead.inc,
        )
        self.consumer = Consumer(settings.consumer_config())
        self.progress: dict[int, int] = {}  # next offset to commit, per assigned partition
        self.pending: list[PendingCommit] = []
        self.assigned: set[int] = set()
        self.lag_partitions: set[int] = set()
        self.last_commit = time.monotonic()
        self.last_gauges = 0.0
        self.consuming = False
        self.fatal: str | None = None

    # -- lifecycle -------------------------------------------------------------------------------------

    def ready(self) -> bool:
        return self.consuming and bool(self.assigned) and self.fatal is None

    def run(self, stop: threading.Event) -> int:
        """Score until `stop` is set (SIGTERM/SIGINT) or a fatal error; returns the exit code."""
        s = self.settings
        check_topics(s, [(s.input_topic, s.state_topic), (s.terminal_events_topic, s.terminal_topic)])
        server = self._start_server()
        try:
            self.table.start()
            self.watcher.start()
            self.table.catch_up(timeout_s=10.0)
            self.consumer.subscribe(
                [self.settings.input_topic],
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
            logger.info("started", extra={"model": self.serving.label, "settings": self.settings.masked()})
            tune_gc()
            while not stop.is_set() and self.fatal is None:
                self.step()
            self._shutdown()
        finally:
            if server is not None:
                server.stop()
        if self.fatal is not None:
            logger.error("stopped_on_fatal_error", extra={"error": self.fatal})
            return 1
        logger.info("stopped")
        return 0

    def _start_server(self) -> HealthServer | None:
        if self.settings.metrics_port == 0:
            return None
        try:
            return HealthServer(
                self.registry, self.settings.metrics_host, self.settings.metrics_port, self.ready
            ).start()
        except OSError as exc:
            raise ScorerError(
                f"cannot serve metrics on port {self.settings.metrics_port}: {exc.strerror}"
            ) from exc

    def step(self) -> None:
        """One loop turn: a batch (if any), table updates, commit progress, gauges."""
        msgs = self.consumer.consume(self.settings.batch_max, self.settings.batch_wait_s)
        self.consuming = True
        ready = self.watcher.take()
        if ready is not None:
            self._adopt(ready)
        self.table.poll()
        if msgs:
            try:
                self.process(msgs)
            except Exception as exc:  # the one broad except: a poison batch must not become a crash loop
                self._dead_letter_batch(msgs, exc)
        self._advance_commits()
        if self.sink.failure is not None:
            self.fatal = self.sink.failure
        now = time.monotonic()
        if now - self.last_commit >= self.settings.commit_interval_s:
            self._begin_commit()
        if now - self.last_gauges >= GAUGE_INTERVAL_S:
            self._update_gauges()
        interval = self.settings.monitoring_interval_s
        if interval > 0 and now - self.last_published >= interval:
            self._publish_drift()

    def _shutdown(self) -> None:
        """Finish: commit everything processed (if the sink is healthy), leave the group, flush."""
        if self.fatal is None:
            if self.settings.monitoring_interval_s > 0:
                self._publish_drift()
            self._commit_sync(sorted(self.assigned))
        self.consumer.close()
        self.table.close()
        self.watcher.close()
        self.sink.close()

    # -- the hot path ----------------------------------------------------------------------------------

    def process(self, msgs: Sequence[Message]) -> None:
        """Score one consumed batch: decode all, dead-letter the bad, one feature pass, one model call.

        Message fields are read with map() over the batch (no bytecode per record) and kept as arrays.
        """
        started = time.monotonic()
        records = msgs if not any(map(Message.error, msgs)) else [m for m in msgs if self._usable(m)]
        if not records:
            return
        n = len(records)
        self.metrics.consumed.inc(n)
        self.metrics.batch_size.observe(n)
        decoded = decode_transactions(list(map(Message.value, records)), self.settings.max_value_bytes)
        for index, rejected in decoded.rejected:
            self._dead_letter(records[index], rejected.reason, rejected.detail)
        partitions = np.fromiter(map(Message.partition, records), dtype=np.int64, count=n)
        if len(decoded.batch):
            kept = decoded.kept
            produced = np.fromiter(map(_create_time, records), dtype=np.int64, count=n)
            self._score(decoded.batch, partitions[kept], produced[kept])
        self._record_progress(partitions, np.fromiter(map(Message.offset, records), dtype=np.int64, count=n))
        self.metrics.batch_seconds.observe(time.monotonic() - started)

    def _record_progress(self, partitions: I64, offsets: I64) -> None:
        """Next offset to commit per partition: one past the newest offset of the batch."""
        for p in np.unique(partitions).tolist():
            self.progress[p] = int(offsets[partitions == p].max()) + 1

    def _dead_letter_batch(self, msgs: Sequence[Message], exc: Exception) -> None:
        """A batch that failed for a reason of ours goes, record by record, to the DLQ with the error."""
        logger.exception("batch_failed", extra={"records": len(msgs)})
        detail = f"{type(exc).__name__}: {exc}"
        for m in msgs:
            if m.error() is None:
                self._dead_letter(m, "processing_error", detail)
                self.progress[m.partition() or 0] = (m.offset() or 0) + 1

    def _usable(self, msg: Message) -> bool:
        err = msg.error()
        if err is None:
            return True
        if err.code() == KafkaError._PARTITION_EOF:
            return False
        if err.fatal():
            self.fatal = f"fatal Kafka error: {err}"
        logger.warning("consume_error", extra={"error": str(err)})
        return False

    def features(self, batch: TransactionBatch, partitions: I64) -> npt.NDArray[np.float32]:
        """Stateless + per-partition customer windows + terminal table, in FEATURE_NAMES order."""
        customer = np.empty((len(batch), len(CUSTOMER_NAMES)), dtype=np.float64)
        for p in np.unique(partitions).tolist():
            idx = np.flatnonzero(partitions == p)
            ids = pick(batch.customer_id, idx)
            state = self.customers.get(p)
            customer[idx] = state.update_and_compute(ids, batch.event_ts_ms[idx], batch.amount[idx])
        terminal = self.table.features(batch.terminal_id, batch.event_ts_ms)
        return np.hstack([stateless_features(batch, self.vocab), customer, terminal]).astype(np.float32)

    def _score(self, batch: TransactionBatch, partitions: I64, produced_ms: I64) -> None:
        X = self.features(batch, partitions)
        serving = self.serving
        outcome = serving.score(X, batch, self._timed, self.settings.challenger_timeout_s)
        self._record_models(serving, outcome)
        now_ms = int(time.time() * 1000)
        champion = serving.champion
        self.checks.check(batch, X, now_ms, self._count_issue, champion.label)
        self.drift.observe(X, outcome.champion_scores, batch.event_ts_ms)
        scored = ScoredBatch(
            batch, X, outcome.scores, outcome.flagged, champion.threshold, champion.label, outcome.extra
        )
        values = encode_decisions(scored, self.explainer, now_ms)
        keys = list(map(str.encode, batch.customer_id))
        self.sink.send(
            self.settings.decisions_topic, [{"key": k, "value": v} for k, v in zip(keys, values, strict=True)]
        )
        flag_idx = np.flatnonzero(outcome.flagged).tolist()
        if flag_idx:
            self.sink.send(
                self.settings.flags_topic, [{"key": keys[i], "value": values[i]} for i in flag_idx]
            )
        if outcome.shadow_scores is not None and serving.challenger is not None:
            self._send_shadow(batch, X, outcome.shadow_scores, serving.challenger, keys, now_ms)
        self.metrics.scored.inc(len(batch))
        self.metrics.flagged.inc(len(flag_idx))
        latency_s = np.maximum(now_ms - produced_ms[produced_ms > 0], 0) / 1000.0
        self.metrics.latency.observe_many(latency_s)

    def _send_shadow(
        self,
        batch: TransactionBatch,
        X: npt.NDArray[np.float32],
        scores: npt.NDArray[np.float64],
        model: OnnxModel,
        keys: list[bytes],
        now_ms: int,
    ) -> None:
        """The challenger's decisions under a shadow plan: to the shadow topic only, never to flags."""
        shadow = ScoredBatch(batch, X, scores, scores >= model.threshold, model.threshold, model.label)
        values = encode_decisions(shadow, self.explainer, now_ms)
        self.sink.send(self.shadow_topic, [{"key": k, "value": v} for k, v in zip(keys, values, strict=True)])

    def _record_models(self, serving: Serving, outcome: Outcome) -> None:
        """Per model version: its score histogram, events scored and flagged; fallbacks and agreement."""
        m, champion = self.metrics, serving.champion
        champion_flags = outcome.champion_scores >= champion.threshold
        m.model_scores.observe_many(outcome.champion_scores, champion.label)
        m.model_scored.labels(champion.label).inc(len(champion_flags))
        m.model_flagged.labels(champion.label).inc(int(champion_flags.sum()))
        if serving.challenger is None:
            return
        label = serving.challenger.label
        if outcome.fallbacks:
            m.fallbacks.labels(label).inc(outcome.fallbacks)
        if outcome.challenger_scores is not None:
            usable = np.isfinite(outcome.challenger_scores)
            scores = outcome.challenger_scores[usable]
            flags = scores >= serving.challenger.threshold
            m.model_scores.observe_many(scores, label)
            m.model_scored.labels(label).inc(len(scores))
            m.model_flagged.labels(label).inc(int(flags.sum()))
            m.agreement.labels(label).inc(int((flags == champion_flags[usable]).sum()))

    def _count_issue(self, name: str, reason: str, n: int) -> None:
        self.metrics.input_issues.labels(name, reason).inc(n)

    def _data_health(self, model: OnnxModel) -> tuple[InputChecks, Drift]:
        """Input checks and drift state against this champion's training reference."""
        s, meta = self.settings, model.meta.raw
        checks = InputChecks.from_meta(meta, FEATURE_NAMES, s.max_future_skew_s, s.max_event_delay_s)
        return checks, Drift(Bins.from_reference(meta["reference"], FEATURE_NAMES))

    def _drift_gauges(self) -> None:
        for window, (events, values) in self.drift.window_psi().items():
            self.metrics.drift_events.labels(window).set(events)
            comparable = self.drift.comparable[window][:-1].tolist()
            for column, value, ok in zip(
                self.drift.bins.columns[:-1], values[:-1].tolist(), comparable, strict=True
            ):
                if ok:  # calendar features over a window shorter than their cycle get no series at all
                    self.metrics.feature_psi.labels(column, window).set(value)
            self.metrics.score_psi.labels(window).set(float(values[-1]))

    def _publish_drift(self) -> None:
        """Per event hour, the binned counts gathered since the last publication (for `scorer report`)."""
        self.last_published = time.monotonic()
        hours = self.drift.take_hours()
        if not hours:
            return
        bins = self.drift.bins
        sizes = np.diff([*bins.offsets.tolist(), bins.size]).tolist()
        stamps = rfc3339_ms(np.asarray(sorted(hours), dtype=np.int64) * HOUR_MS)
        records = [
            {
                "value": orjson.dumps(
                    {
                        "kind": "drift", "hour": stamp, "model_version": self.serving.champion.label,
                        "instance": self.instance, "columns": bins.columns, "bins": sizes,
                        "counts": hours[hour].tolist(),
                    }
                ),
                "key": self.instance.encode(),
            }
            for hour, stamp in zip(sorted(hours), stamps, strict=True)
        ]  # fmt: skip
        self.sink.send(self.settings.monitoring_topic, records)

    def _timed(self, label: str, seconds: float) -> None:
        self.metrics.inference.labels(label).observe(seconds)

    def _adopt(self, serving: Serving) -> None:
        """Swap in a newly loaded deployment between batches."""
        if serving.champion is not self.serving.champion:
            self.explainer = Explainer.from_meta(serving.champion.meta.raw, FEATURE_NAMES)
            if self.settings.monitoring_interval_s > 0:
                self._publish_drift()  # the counts so far belong to the outgoing champion
            self.checks, self.drift = self._data_health(serving.champion)
        self.serving = serving
        self.metrics.model_info.info(
            {"version": serving.label, "threshold": f"{serving.champion.threshold:.6f}"}
        )
        logger.info("deployment_applied", extra={"serving": serving.label})

    def _dead_letter(self, msg: Message, reason: str, detail: str) -> None:
        headers = [
            ("reason", reason.encode()),
            ("detail", detail[:500].encode("utf-8", "replace")),
            ("source.topic", (msg.topic() or "").encode()),
            ("source.partition", str(msg.partition()).encode()),
            ("source.offset", str(msg.offset()).encode()),
            ("source.timestamp", str(msg.timestamp()[1]).encode()),
            ("dead_lettered_at", str(int(time.time() * 1000)).encode()),
        ]
        original = msg.headers() or []
        for name, value in original.items() if isinstance(original, dict) else original:
            headers.append((f"original.{name}", value if isinstance(value, bytes) else str(value).encode()))
        self.sink.send_one(self.settings.dlq_topic, msg.value(), msg.key(), headers)
        self.metrics.dead_letters.labels(reason).inc()

    # -- commits ---------------------------------------------------------------------------------------

    def _begin_commit(self) -> None:
        self.last_commit = time.monotonic()
        offsets = {p: o for p, o in self.progress.items() if p in self.assigned}
        if not offsets:
            return
        snapshot = [(p, self.customers.snapshot(p, o)) for p, o in offsets.items()]
        self.pending.append(PendingCommit(self.sink.seal(), offsets, snapshot))
        self.progress = {}

    def _advance_commits(self, asynchronous: bool = True) -> None:
        while self.pending and self.sink.acknowledged(self.pending[0].epoch):
            head = self.pending[0]
            if head.stage == 1:
                for partition, messages in head.snapshot:
                    self.sink.send(self.settings.state_topic, messages, partition=partition)
                head.snapshot, head.stage, head.epoch = [], 2, self.sink.seal()
                continue
            self._commit_offsets(head.offsets, asynchronous=asynchronous)
            self.pending.pop(0)

    def _commit_offsets(self, offsets: dict[int, int], asynchronous: bool) -> None:
        live = [
            TopicPartition(self.settings.input_topic, p, o) for p, o in offsets.items() if p in self.assigned
        ]
        if not live:
            return
        try:
            if asynchronous:
                self.consumer.commit(offsets=live, asynchronous=True)
            else:
                self.consumer.commit(offsets=live, asynchronous=False)
            self.metrics.commits.inc()
        except KafkaException as exc:
            logger.warning("commit_failed", extra={"error": str(exc)})

    def _commit_sync(self, partitions: Sequence[int]) -> None:
        """Run every outstanding commit step for `partitions` now (revocation, shutdown)."""
        self.last_commit = 0.0
        self._begin_commit()
        deadline = time.monotonic() + ACK_TIMEOUT_S
        while self.pending and time.monotonic() < deadline and self.sink.failure is None:
            self.sink.wait(self.pending[0].epoch, max(0.0, deadline - time.monotonic()))
            self._advance_commits(asynchronous=False)
        if self.pending:
            logger.error(
                "commit_incomplete", extra={"partitions": list(partitions), "error": self.sink.failure}
            )

    # -- rebalance -------------------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels("assign").inc()
        for tp in partitions:
            offset = self.customers.restore(tp.partition)
            if offset is not None:
                tp.offset = offset  # state and position must agree (see snapshots.py)
            self.assigned.add(tp.partition)
        consumer.assign(partitions)
        self.metrics.assigned.set(len(self.assigned))
        logger.info("partitions_assigned", extra={"partitions": [tp.partition for tp in partitions]})

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels("revoke").inc()
        revoked = [tp.partition for tp in partitions]
        self._commit_sync(revoked)
        self._forget(revoked)
        logger.info("partitions_revoked", extra={"partitions": revoked})

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels("lost").inc()
        lost = [tp.partition for tp in partitions]
        self._forget(lost)
        logger.warning("partitions_lost", extra={"partitions": lost})

    def _forget(self, partitions: Sequence[int]) -> None:
        for p in partitions:
            self.assigned.discard(p)
            self.customers.drop(p)
            self.progress.pop(p, None)
            if p in self.lag_partitions:
                self.metrics.lag.remove(str(p))
                self.lag_partitions.discard(p)
        self.metrics.assigned.set(len(self.assigned))

    # -- gauges ----------------------------------------------------------------------------------------

    def _update_gauges(self) -> None:
        self.last_gauges = time.monotonic()
        self.metrics.state_keys.labels("customer").set(self.customers.keys)
        self.metrics.state_bytes.labels("customer").set(self.customers.nbytes)
        self.metrics.state_keys.labels("terminal").set(self.table.keys)
        self.metrics.state_bytes.labels("terminal").set(self.table.nbytes)
        self._drift_gauges()
        if self.table.applied_day > -(2**61):
            self.metrics.terminal_day.set(self.table.applied_day * 86_400)
        positions = self.consumer.position(
            [TopicPartition(self.settings.input_topic, p) for p in sorted(self.assigned)]
        )
        for tp in positions:
            try:
                _, high = self.consumer.get_watermark_offsets(tp, timeout=1.0, cached=True)
            except KafkaException:
                continue
            if tp.offset >= 0:
                self.metrics.lag.labels(str(tp.partition)).set(max(0, high - tp.offset))
                self.lag_partitions.add(tp.partition)


def _create_time(msg: Message) -> int:
    """The record's timestamp in ms (0 when it has none)."""
    kind, ms = msg.timestamp()
    return int(ms) if kind != TIMESTAMP_NOT_AVAILABLE else 0
