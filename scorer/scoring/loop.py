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
from scorer.errors import ScorerError
from scorer.kafka import clients
from scorer.kafka.control import ControlWatcher
from scorer.kafka.rules import RulesWatcher, read_rules
from scorer.kafka.sink import Sink
from scorer.kafka.tables import TopicReader, read_partition
from scorer.kafka.topics import check_topics
from scorer.kafka.transactions import PartitionTransactions
from scorer.model.onnx import OnnxModel
from scorer.policy.rules import RuleBook
from scorer.rollout.serving import Serving
from scorer.runtime.health import HealthServer, serve_health
from scorer.runtime.metrics import Metrics
from scorer.runtime.process import tune_gc
from scorer.scoring.commits import Commits, CommitTracker
from scorer.scoring.core import DEAD_LETTER_REASONS, Counted, ScoringCore, SystemicFailure
from scorer.scoring.customers import CustomerStore
from scorer.scoring.gauges import Gauges
from scorer.scoring.outputs import Outputs
from scorer.scoring.replies import ReplyBook, Requests, find_requests
from scorer.scoring.terminal_events import TerminalEventWriter

logger = logging.getLogger(__name__)
I64 = npt.NDArray[np.int64]
ACK_TIMEOUT_S = 30.0  # how long revocation and shutdown wait for outstanding acknowledgements
GAUGE_INTERVAL_S = 2.0
IDLE_WAIT_S = 0.05  # an idle loop turns this often (commits, gauges, the table)
FILL_SLICE_S = 0.005  # a filling batch looks for serve's requests this often (their added wait at most)


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
        self.rules = RulesWatcher(settings)
        self._show_model()
        self.last_published = self.last_commit = time.monotonic()
        self.gauges = Gauges(self.metrics, settings.input_topic)
        self.consuming = False
        self.fatal: str | None = None
        self.replies = ReplyBook(settings.reply_window)

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
        self.outputs = Outputs(s, self.sink, self.transactions, self.metrics, self.scorer.now_ms)
        self.terminal_events: TerminalEventWriter | None = None
        if s.terminal_events_from == "scorer":
            te = s.terminal_events_topic
            self.terminal_events = TerminalEventWriter(
                te, counts[te], self.sink, self.transactions, owned=lambda: self.commits.assigned
            )
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
        self._load_control()
        self.watcher.start()
        self.rules.start()
        self.table.catch_up(timeout_s=10.0)
        self.consumer.subscribe(
            [self.settings.input_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        logger.info("started", extra={"model": self.scorer.serving.label, "settings": self.settings.masked()})
        tune_gc()

    def _load_control(self) -> None:
        """The deployment and the rules in force before the first batch (the watchers then follow)."""
        try:
            self.watcher.load_current()
        except (ScorerError, KafkaException) as exc:  # the watcher retries; the configured model until then
            logger.error("control_topic_unreadable", extra={"error": str(exc)})
        ready = self.watcher.take()
        if ready is not None:
            self._adopt(ready)
        try:
            self.scorer.rules = RuleBook.of(list(read_rules(self.settings).values()))
        except (ScorerError, KafkaException) as exc:  # the watcher retries; no rule applies until then
            logger.error("rules_topic_unreadable", extra={"error": str(exc)})

    def step(self) -> None:
        """One loop turn: a batch (if any), table updates, commit progress, gauges."""
        msgs = self._consume()
        self.consuming = True
        ready = self.watcher.take()
        if ready is not None:
            self._adopt(ready)
        rules = self.rules.take()
        if rules is not None:  # between batches, like a deployment
            self.scorer.rules = rules
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
        if now - self.gauges.last >= GAUGE_INTERVAL_S:
            self.gauges.update(self.scorer, self.table, self.consumer, self.commits.assigned)
        interval = self.settings.monitoring_interval_s
        if interval > 0 and now - self.last_published >= interval:
            self._publish_drift()

    def _consume(self) -> list[Message]:
        """What is there once the first record arrives; then, for throughput (batch_wait_s > 0), up to
        batch_wait_s more to fill the batch, cut short when a request of `scorer serve` is in it."""
        batch_max, wait_s = self.settings.batch_max, self.settings.batch_wait_s
        msgs = clients.take_available(self.consumer, batch_max, IDLE_WAIT_S)
        deadline = time.monotonic() + wait_s
        while msgs and len(msgs) < batch_max and not any(map(Message.headers, msgs)):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            msgs += self.consumer.consume(batch_max - len(msgs), min(left, FILL_SLICE_S))
        return msgs

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
        self.rules.close()
        self.sink.close()
        return complete

    # -- the hot path ----------------------------------------------------------------------------------

    def process(self, msgs: Sequence[Message]) -> None:
        """Score one consumed batch and queue its outputs; message fields are read with map() as arrays."""
        started, cpu_started = time.monotonic(), time.thread_time()
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
        progress = partitions, offsets  # every record's offset counts, answered again or scored
        requests = find_requests(list(map(Message.headers, records)))
        if requests is not None and len(self.replies.partitions):  # a retried request: its first answer
            repeated, replies = self.replies.repeats(requests, partitions)
            if len(repeated):
                self.outputs.reply(replies)
                records, values, partitions, offsets, requests = _without(
                    records, values, partitions, offsets, requests, repeated
                )
        scored = self.scorer.score(values, partitions, write if writer is not None else None)
        for dead in scored.dead_letters:
            self.outputs.dead_letter(records[dead.index], dead.reason, dead.detail)
        self.outputs.send(scored, partitions[scored.kept])
        if requests is not None:
            self.outputs.reply(self.replies.answer(requests, scored, partitions))
        if len(scored.kept):  # `records` may be fewer than at the start: retries answered again left it
            produced = np.fromiter(map(_create_time, records), dtype=np.int64, count=len(records))
            latency_s = np.maximum(scored.scored_at_ms - produced[scored.kept][produced[scored.kept] > 0], 0)
            self.metrics.latency.observe_many(latency_s / 1000.0)
        self._record_progress(*progress)
        self.metrics.batch_seconds.observe(time.monotonic() - started)
        self.metrics.batch_cpu_seconds.observe(time.thread_time() - cpu_started)

    def _record_progress(self, partitions: I64, offsets: I64) -> None:
        """Next offset to commit per partition: one past the newest offset of the batch."""
        for p in np.unique(partitions).tolist():
            self.commits.processed(p, int(offsets[partitions == p].max()) + 1)

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
        self.replies.forget(partitions)
        for p in partitions:
            self.scorer.customers.drop(p)
        self.gauges.forget(partitions)
        self.metrics.assigned.set(len(self.commits.assigned))


def _without(
    records: Sequence[Message], values: list[bytes | None], partitions: I64, offsets: I64,
    requests: Requests, repeated: I64,
) -> tuple[list[Message], list[bytes | None], I64, I64, Requests | None]:  # fmt: skip
    """The batch without the requests at `repeated` (positions in `requests`), which were answered again."""
    keep = np.ones(len(records), dtype=bool)
    keep[requests.index[repeated]] = False
    rows = np.flatnonzero(keep)
    kept_records = [records[i] for i in rows.tolist()]
    return (
        kept_records, [values[i] for i in rows.tolist()], partitions[rows], offsets[rows],
        find_requests(list(map(Message.headers, kept_records))),
    )  # fmt: skip


def _create_time(msg: Message) -> int:
    """The record's timestamp in ms (0 when it has none)."""
    kind, ms = msg.timestamp()
    return int(ms) if kind != TIMESTAMP_NOT_AVAILABLE else 0
