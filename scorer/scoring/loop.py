"""`scorer run`: consume a batch -> the scoring core -> produce its outputs -> commit when safe.

The loop is the only part of the scorer that knows the consumer: it reads batches, hands their values
to the core (core.py), sends what comes back, records each partition's progress with the commit tracker
(commits.py), follows rebalances and the control topic, and keeps the gauges. A record that breaks the
core costs only itself (the core isolates it); a fault that is not a record's stops the process
without committing, so nothing is skipped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
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
from scorer.events.timestamps import NEVER
from scorer.kafka import clients
from scorer.kafka.control import ControlWatcher
from scorer.kafka.deadletters import Limits, dead_letter, send_dead_letter
from scorer.kafka.sink import Sink
from scorer.kafka.tables import TopicReader, read_partition
from scorer.kafka.topics import check_topics
from scorer.kafka.transactions import PartitionTransactions
from scorer.model.onnx import OnnxModel
from scorer.rollout.serving import Serving
from scorer.runtime.health import HealthServer, serve_health
from scorer.runtime.metrics import Metrics
from scorer.runtime.process import tune_gc
from scorer.scoring.commits import Commits, CommitTracker
from scorer.scoring.core import DEAD_LETTER_REASONS, Counted, Scored, ScoringCore, SystemicFailure
from scorer.scoring.customers import CustomerStore
from scorer.scoring.terminal_events import TerminalEventWriter

logger = logging.getLogger(__name__)
I64 = npt.NDArray[np.int64]
ACK_TIMEOUT_S = 30.0  # how long revocation and shutdown wait for outstanding acknowledgements
GAUGE_INTERVAL_S = 2.0


class KafkaOffsets:
    """The OffsetStore of the commit tracker: the input topic's offsets in the consumer group."""

    def __init__(self, consumer: Consumer, topic: str) -> None:
        self.consumer = consumer
        self.topic = topic

    def commit(self, offsets: Mapping[int, int], asynchronous: bool) -> bool:
        partitions = [TopicPartition(self.topic, p, o) for p, o in offsets.items()]
        try:
            if asynchronous:  # a failure shows in the next synchronous commit or the next commit's offsets
                self.consumer.commit(offsets=partitions, asynchronous=True)
                return True
            refused = [tp for tp in self.consumer.commit(offsets=partitions, asynchronous=False) if tp.error]
        except KafkaException as exc:
            logger.warning("commit_failed", extra={"error": str(exc)})
            return False
        if refused:
            logger.warning("commit_failed", extra={"error": str(refused[0].error)})
        return not refused


class ScorerLoop:
    """One scorer process: a member of the consumer group on the transactions topic."""

    def __init__(
        self, settings: Settings, model: OnnxModel, registry: CollectorRegistry | None = None
    ) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry, DEAD_LETTER_REASONS)
        config = model.meta.feature_config
        self.reader_config = settings.consumer_config(group=f"{settings.group}-reader", background=True)
        self.table_source = TopicReader(self.reader_config, settings.terminal_topic)
        self.table = table = TerminalTable(
            config,
            self.table_source,
            settings.terminal_wait_s,
            self.metrics.terminal_stale.inc,
            self.metrics.terminal_ahead.inc,
        )
        self.scorer = ScoringCore(settings, Serving(model), CustomerStore(config), table, self.metrics)
        self.watcher = ControlWatcher(settings, settings.onnx_threads, self.scorer.serving)
        self._show_model()
        self.last_published = self.last_commit = time.monotonic()
        self.last_gauges = 0.0
        self.lag_partitions: set[int] = set()
        self.consuming = False
        self.fatal: str | None = None

    # -- lifecycle -------------------------------------------------------------------------------------

    def ready(self) -> bool:
        return self.consuming and bool(self.commits.assigned) and self.fatal is None

    def run(self, stop: threading.Event) -> int:
        """Score until `stop` is set (SIGTERM/SIGINT) or a fatal error; returns the exit code."""
        s = self.settings
        counts = check_topics(
            s, [(s.input_topic, s.state_topic), (s.terminal_events_topic, s.terminal_topic)]
        )
        self.sink = Sink(s.producer_config(), self.metrics)  # exactly_once: the monitoring topic only
        self.consumer = clients.consumer(s.consumer_config())
        snapshot = self.scorer.customers.snapshot
        self.transactions: PartitionTransactions | None = None
        self.commits: Commits
        if s.processing_guarantee == "exactly_once":
            self.transactions = PartitionTransactions(s, self.consumer, snapshot, self.metrics.commits.inc)
            self.commits = self.transactions
        else:
            offsets = KafkaOffsets(self.consumer, s.input_topic)
            self.commits = CommitTracker(
                self.sink, offsets, snapshot, s.state_topic, self.metrics.commits.inc
            )
        self.terminal_events: TerminalEventWriter | None = None
        if s.terminal_events_from == "scorer":
            te = s.terminal_events_topic
            self.terminal_events = TerminalEventWriter(te, counts[te], self.sink, self.transactions)
        server: HealthServer | None = serve_health(self.registry, s.metrics_host, s.metrics_port, self.ready)
        try:
            self._start()
            while not stop.is_set() and self.fatal is None:
                self.step()
            complete = self._shutdown()
        finally:
            if server is not None:
                server.stop()
        if self.fatal is not None:
            logger.error("stopped_on_fatal_error", extra={"error": self.fatal})
            return 1
        if not complete:
            logger.error("stopped_without_final_commit")
            return 1
        logger.info("stopped")
        return 0

    def _start(self) -> None:
        self.table_source.start()
        self.watcher.start()
        self.table.catch_up(timeout_s=10.0)
        self.consumer.subscribe(
            [self.settings.input_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        logger.info("started", extra={"model": self.scorer.serving.label, "settings": self.settings.masked()})
        tune_gc()

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
            except SystemicFailure as exc:
                self.fatal = str(exc)  # not the records' fault: stop without committing them
            except Exception as exc:  # the one broad except: ours, outside the core, not a record's
                logger.exception("batch_failed", extra={"records": len(msgs)})
                self.fatal = f"{type(exc).__name__}: {exc}"
        failure = self.sink.failure or self.commits.failure
        if failure is not None:
            self.fatal = failure  # before any commit step: nothing moves past a refused delivery
            return
        self.commits.advance()
        now = time.monotonic()
        if now - self.last_commit >= self.settings.commit_interval_s:
            self.last_commit = now
            self.commits.begin()
        if now - self.last_gauges >= GAUGE_INTERVAL_S:
            self._update_gauges()
        interval = self.settings.monitoring_interval_s
        if interval > 0 and now - self.last_published >= interval:
            self._publish_drift()

    def _shutdown(self) -> bool:
        """Finish: commit everything processed (if no delivery was refused), leave the group, flush."""
        complete = False
        if self.fatal is None:
            if self.settings.monitoring_interval_s > 0:
                self._publish_drift()
            complete = self.commits.flush(ACK_TIMEOUT_S)
        if self.transactions is not None:
            self.transactions.close()  # aborts what a failed run still holds
        self.consumer.close()
        self.table.close()
        self.watcher.close()
        self.sink.close()
        return complete

    # -- the hot path ----------------------------------------------------------------------------------

    def process(self, msgs: Sequence[Message]) -> None:
        """Score one consumed batch and queue its outputs; message fields are read with map() as arrays."""
        started = time.monotonic()
        records = msgs if not any(map(Message.error, msgs)) else [m for m in msgs if self._usable(m)]
        if not records:
            return
        n = len(records)
        self.metrics.consumed.inc(n)
        self.metrics.batch_size.observe(n)
        partitions = np.fromiter(map(Message.partition, records), dtype=np.int64, count=n)
        offsets = np.fromiter(map(Message.offset, records), dtype=np.int64, count=n)
        writer = self.terminal_events

        def write(counted: Counted) -> None:  # before scoring: see scoring/terminal_events.py
            assert writer is not None  # noqa: S101 - passed only with a writer
            writer.write(counted, partitions, offsets)

        values = list(map(Message.value, records))
        scored = self.scorer.score(values, partitions, write if writer is not None else None)
        for dead in scored.dead_letters:
            self._dead_letter(records[dead.index], dead.reason, dead.detail)
        if self.transactions is None:
            self._send(scored)
        else:
            self._send_in_transactions(scored, partitions[scored.kept])
        if len(scored.kept):
            produced = np.fromiter(map(_create_time, records), dtype=np.int64, count=n)[scored.kept]
            latency_s = np.maximum(scored.scored_at_ms - produced[produced > 0], 0) / 1000.0
            self.metrics.latency.observe_many(latency_s)
        self._record_progress(partitions, offsets)
        self.metrics.batch_seconds.observe(time.monotonic() - started)

    def _send(self, scored: Scored) -> None:
        s = self.settings
        if scored.decisions:
            self.sink.send(s.decisions_topic, scored.decisions)
        if scored.flags:
            self.sink.send(s.flags_topic, scored.flags)
        if scored.shadow:
            self.sink.send(f"{s.decisions_topic}-shadow", scored.shadow)

    def _send_in_transactions(self, scored: Scored, partitions: I64) -> None:
        """exactly_once: each record's outputs go into its input partition's transaction."""
        assert self.transactions is not None  # noqa: S101 - only called in exactly_once mode
        s, flags_at = self.settings, partitions[scored.flag_rows]
        for p in np.unique(partitions).tolist():
            rows = np.flatnonzero(partitions == p).tolist()
            self.transactions.send(p, s.decisions_topic, [scored.decisions[i] for i in rows])
            if scored.shadow:
                self.transactions.send(p, f"{s.decisions_topic}-shadow", [scored.shadow[i] for i in rows])
            flags = [scored.flags[i] for i in np.flatnonzero(flags_at == p).tolist()]
            if flags:
                self.transactions.send(p, s.flags_topic, flags)

    def _record_progress(self, partitions: I64, offsets: I64) -> None:
        """Next offset to commit per partition: one past the newest offset of the batch."""
        for p in np.unique(partitions).tolist():
            self.commits.processed(p, int(offsets[partitions == p].max()) + 1)

    def _dead_letter(self, msg: Message, reason: str, detail: str) -> None:
        s = self.settings
        limits = Limits(s.max_value_bytes, s.dead_letter_prefix_bytes)
        if self.transactions is None:
            send_dead_letter(self.sink, s.dlq_topic, msg, reason, detail, self.scorer.now_ms(), limits)
        else:  # in the record's transaction; a broker that refuses its size fails the transaction (README)
            record = dead_letter(msg, reason, detail, self.scorer.now_ms(), limits)
            self.transactions.send_one(
                msg.partition() or 0, s.dlq_topic, record.value, record.key, record.headers
            )
        self.metrics.dead_letters.labels(reason).inc()

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

    def _adopt(self, serving: Serving) -> None:
        """Swap in a newly loaded deployment between batches."""
        outgoing = self.scorer.adopt(serving)
        if outgoing and self.settings.monitoring_interval_s > 0:  # counts of the outgoing champion
            self.sink.send(self.settings.monitoring_topic, outgoing)
        self._show_model()
        logger.info("deployment_applied", extra={"serving": serving.label})

    def _show_model(self) -> None:
        serving = self.scorer.serving
        self.metrics.model_info.info(
            {"version": serving.label, "threshold": f"{serving.champion.threshold:.6f}"}
        )

    def _publish_drift(self) -> None:
        self.last_published = time.monotonic()
        records = self.scorer.drift_records()
        if records:
            self.sink.send(self.settings.monitoring_topic, records)

    # -- rebalance -------------------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels("assign").inc()
        self.commits.assign([tp.partition for tp in partitions])  # exactly_once: fences the old owners first
        for tp in partitions:
            dump = read_partition(self.reader_config, self.settings.state_topic, tp.partition)
            offset = self.scorer.customers.restore(tp.partition, dump)
            if offset is not None:
                tp.offset = offset  # state and position must agree (see commits.py)
        consumer.assign(partitions)
        self.metrics.assigned.set(len(self.commits.assigned))
        logger.info("partitions_assigned", extra={"partitions": [tp.partition for tp in partitions]})

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels("revoke").inc()
        revoked = [tp.partition for tp in partitions]
        if self.fatal is None and self.sink.failure is None and self.commits.failure is None:
            self.commits.flush(ACK_TIMEOUT_S)
        self._forget(revoked)
        logger.info("partitions_revoked", extra={"partitions": revoked})

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels("lost").inc()
        lost = [tp.partition for tp in partitions]
        self._forget(lost, lost=True)
        logger.warning("partitions_lost", extra={"partitions": lost})

    def _forget(self, partitions: Sequence[int], lost: bool = False) -> None:
        self.commits.forget(partitions, lost)
        for p in partitions:
            self.scorer.customers.drop(p)
            if p in self.lag_partitions:
                self.metrics.lag.remove(str(p))
                self.lag_partitions.discard(p)
        self.metrics.assigned.set(len(self.commits.assigned))

    # -- gauges ----------------------------------------------------------------------------------------

    def _update_gauges(self) -> None:
        self.last_gauges = time.monotonic()
        m, customers, table = self.metrics, self.scorer.customers, self.table
        m.state_keys.labels("customer").set(customers.keys)
        m.state_bytes.labels("customer").set(customers.nbytes)
        m.state_keys.labels("terminal").set(table.keys)
        m.state_bytes.labels("terminal").set(table.nbytes)
        self._drift_gauges()
        if table.applied_day > NEVER:
            m.terminal_day.set(table.applied_day * 86_400)
        self._lag_gauges()

    def _drift_gauges(self) -> None:
        drift = self.scorer.drift
        for window, (events, values) in drift.window_psi().items():
            self.metrics.drift_events.labels(window).set(events)
            comparable = drift.comparable[window][:-1].tolist()
            for column, value, ok in zip(
                drift.bins.columns[:-1], values[:-1].tolist(), comparable, strict=True
            ):
                if ok:  # calendar features over a window shorter than their cycle get no series at all
                    self.metrics.feature_psi.labels(column, window).set(value)
            self.metrics.score_psi.labels(window).set(float(values[-1]))

    def _lag_gauges(self) -> None:
        topic = self.settings.input_topic
        positions = self.consumer.position([TopicPartition(topic, p) for p in sorted(self.commits.assigned)])
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
