"""`scorer run`: consume a batch -> the scoring core -> produce its outputs -> commit when safe.

The loop is the only part of the scorer that knows the consumer: it reads batches, hands their values
to the core (core.py), writes what comes back through one Delivery (delivery.py: at-least-once or
exactly-once, the loop never asks which), records each partition's progress, follows rebalances and
the control and rules topics, and keeps the gauges. A record that breaks the core costs only itself
(the core isolates it); any other fault, wherever it is raised (a step of a batch, a rebalance callback,
the terminal table, the gauges), stops the process in order: no commit past it, the consumer closed,
the producer flushed, one log line and exit 1, so nothing is skipped.

Everything the loop opens on Kafka comes through `Connections` (connections.py), so unit tests
drive this very loop with fakes that refuse, hold, revoke and crash.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition
from prometheus_client import CollectorRegistry

from scorer.aggregate.table import TerminalTable
from scorer.config import Settings
from scorer.errors import ScorerError
from scorer.kafka import clients
from scorer.kafka.sink import Sink
from scorer.kafka.transactions import PartitionTransactions
from scorer.model.onnx import OnnxModel
from scorer.rollout.serving import Serving
from scorer.runtime.health import HealthServer, serve_health
from scorer.runtime.metrics import Metrics
from scorer.runtime.process import tune_gc
from scorer.scoring.connections import Connections, InputConsumer, KafkaConnections
from scorer.scoring.consumed import ConsumedBatch
from scorer.scoring.core import DEAD_LETTER_REASONS, ScoringCore, SystemicFailure
from scorer.scoring.customers import CustomerStore
from scorer.scoring.delivery import Delivery, ExactlyOnce, at_least_once
from scorer.scoring.gauges import Gauges
from scorer.scoring.outputs import Outputs
from scorer.scoring.replies import ReplyBook
from scorer.scoring.scored import Counted
from scorer.scoring.terminal_events import TerminalEventWriter

logger = logging.getLogger(__name__)
ACK_TIMEOUT_S = 30.0  # how long revocation and shutdown wait for outstanding acknowledgements
GAUGE_INTERVAL_S = 2.0
IDLE_WAIT_S = 0.05  # an idle loop turns this often (commits, gauges, the table)
FILL_SLICE_S = 0.005  # a filling batch looks for serve's requests this often (their added wait at most)
TABLE_CATCH_UP_S = 10.0


class ScorerLoop:
    """One scorer process: a member of the consumer group on the transactions topic."""

    def __init__(
        self,
        settings: Settings,
        model: OnnxModel,
        registry: CollectorRegistry | None = None,
        io: Connections | None = None,
    ) -> None:
        self.settings = settings
        self.io = io if io is not None else KafkaConnections(settings)
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry, DEAD_LETTER_REASONS)
        config = model.meta.feature_config
        self.table_source = self.io.table_source()
        self.table = TerminalTable(
            config,
            self.table_source,
            settings.terminal_wait_s,
            self.metrics.terminal_stale.inc,
            self.metrics.terminal_ahead.inc,
        )
        self.scorer = ScoringCore(settings, Serving(model), CustomerStore(config), self.table, self.metrics)
        self.watcher = self.io.control_watcher(self.scorer.serving, self.metrics)
        self.rules = self.io.rules_watcher(self.metrics)
        self._show_model()
        self.last_published = self.last_commit = time.monotonic()
        self.gauges = Gauges(self.metrics, settings.input_topic)
        self.consuming = False
        self.fatal: str | None = None
        self.replies = ReplyBook(settings.reply_window)

    # -- lifecycle -------------------------------------------------------------------------------------

    def ready(self) -> bool:
        return self.consuming and bool(self.delivery.assigned) and self.fatal is None

    def run(self, stop: threading.Event) -> int:
        """Score until `stop` is set (SIGTERM/SIGINT) or a fatal error; returns the exit code.

        A ScorerError while starting (topics missing or mismatched, the metrics port taken) is raised
        again once what was opened is closed: the CLI says it in one line (exit 1). From the first turn
        on, every failure ends here, in order, with one log line and exit 1."""
        self.open()
        server: HealthServer | None = None
        refused: ScorerError | None = None
        try:
            s = self.settings
            server = serve_health(self.registry, s.metrics_host, s.metrics_port, self.ready)
            self.start()
            while not stop.is_set() and self.fatal is None:
                self.step()
        except ScorerError as exc:
            refused = exc
        except Exception as exc:  # anything else while starting: ours; stop in order all the same
            self._fail("start_failed", exc)
        complete = self.shutdown()
        if server is not None:
            server.stop()
        if refused is not None:
            raise refused
        return self._exit_code(complete)

    def open(self) -> None:
        """Check the topics, then create the consumer, the producer and the delivery strategy."""
        s = self.settings
        counts = self.io.partition_counts()
        self.sink = Sink(s.producer_config(), self.metrics, producer=self.io.producer(s.producer_config()))
        self.consumer: InputConsumer = self.io.consumer()
        snapshot = self.scorer.customers.snapshot
        self.delivery: Delivery
        if s.processing_guarantee == "exactly_once":
            transactions = PartitionTransactions(
                s, self.consumer, snapshot, self.metrics.commits.inc, self.io.producer
            )
            self.delivery = ExactlyOnce(transactions, self.sink)
        else:
            self.delivery = at_least_once(
                self.sink, self.consumer, s.input_topic, s.state_topic, snapshot, self.metrics.commits.inc
            )
        self.outputs = Outputs(s, self.delivery, self.metrics, self.scorer.now_ms)
        self.terminal_events: TerminalEventWriter | None = None
        if s.terminal_events_from == "scorer":
            te = s.terminal_events_topic
            self.terminal_events = TerminalEventWriter(te, counts[te], self.delivery, owned=self._caught_up)

    def start(self) -> None:
        """The table, the deployment and the rules in force, then join the group."""
        self.table_source.start()
        self._load_control()
        self.watcher.start()
        self.rules.start()
        self.table.catch_up(timeout_s=TABLE_CATCH_UP_S)
        self.consumer.subscribe(
            [self.settings.input_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        logger.info("started", extra={"model": self.scorer.serving.label, "settings": self.settings.masked()})
        tune_gc()

    def _load_control(self) -> None:
        """The deployment and the rules in force before the first batch (the watchers then follow).

        A topic that cannot be read now is logged and counted by its watcher, which keeps trying: until
        then the configured model decides, and no rule applies."""
        self.watcher.load_current()
        self.rules.load_current()
        self._take_control()

    def _take_control(self) -> None:
        """A new deployment or rule book, when one is ready: swapped in between batches."""
        ready = self.watcher.take()
        if ready is not None:
            self._adopt(ready)
        rules = self.rules.take()
        if rules is not None:
            self.scorer.rules = rules

    def step(self) -> None:
        """One loop turn: a batch (if any), table updates, commit progress, gauges. Never raises: a failure
        sets `fatal` (the run then stops without committing past it)."""
        try:
            self._turn()
        except SystemicFailure as exc:
            self._fail("systemic_failure", exc)
        except Exception as exc:  # the one broad except: ours, not a record's (the core isolates those)
            self._fail("loop_failed", exc)

    def _turn(self) -> None:
        msgs = self._consume()  # rebalance callbacks run in here, and what they raise comes out here
        self.consuming = True
        self._take_control()
        self.table.poll()
        if msgs:
            self.process(msgs)
        failure = self.delivery.failure
        if failure is not None:
            self.fatal = failure  # before any commit step: nothing moves past a refused delivery
            return
        self.delivery.advance()
        now = time.monotonic()
        if now - self.last_commit >= self.settings.commit_interval_s:
            self.last_commit = now
            self.delivery.begin()
        if now - self.gauges.last >= GAUGE_INTERVAL_S:
            self.gauges.update(self.scorer, self.table, self.consumer, self.delivery.assigned)
        interval = self.settings.monitoring_interval_s
        if interval > 0 and now - self.last_published >= interval:
            self._publish_drift()

    def _fail(self, event: str, exc: BaseException) -> None:
        """Remember the first fatal error, logged once (one JSON line with the error)."""
        if self.fatal is None:
            logger.error(event, exc_info=exc)
            self.fatal = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ScorerError) else str(exc)

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

    def shutdown(self) -> bool:
        """Finish: commit everything processed (unless something failed), leave the group, flush.
        Each step runs even if an earlier one fails; True when the final commit was complete."""
        complete = False
        if self.fatal is None:
            try:
                if self.settings.monitoring_interval_s > 0:
                    self._publish_drift()
                complete = self.delivery.flush(ACK_TIMEOUT_S)
            except Exception as exc:
                self._fail("shutdown_failed", exc)
        for close in (self.consumer.close, self.table.close, self.watcher.close, self.rules.close):
            _quietly(close)
        _quietly(self.delivery.close)  # last: aborts what a failed exactly-once run still holds
        return complete

    def _exit_code(self, complete: bool) -> int:
        if self.fatal is not None:
            logger.error("stopped_on_fatal_error", extra={"error": self.fatal})
            return 1
        if not complete:
            logger.error("stopped_without_final_commit")
            return 1
        logger.info("stopped")
        return 0

    # -- the hot path ----------------------------------------------------------------------------------

    def process(self, msgs: Sequence[Message]) -> None:
        """Score one consumed batch and queue its outputs."""
        started, cpu_started = time.monotonic(), time.thread_time()
        records = list(msgs) if not any(map(Message.error, msgs)) else [m for m in msgs if self._usable(m)]
        if not records:
            return
        consumed = ConsumedBatch.of(records)
        self.metrics.consumed.inc(len(consumed))
        self.metrics.batch_size.observe(len(consumed))
        batch = self._answer_retries(consumed)
        writer = self.terminal_events

        def write(counted: Counted) -> None:  # before scoring: see scoring/terminal_events.py
            assert writer is not None  # noqa: S101 - passed only with a writer
            writer.write(counted, batch.partitions, batch.offsets)

        scored = self.scorer.score(batch.values, batch.partitions, write if writer is not None else None)
        self.outputs.dead_letters(batch, scored.dead_letters)
        self.outputs.decisions(scored, batch.partitions[scored.kept])
        if batch.requests is not None:
            self.outputs.replies(self.replies.answer(batch.requests, scored, batch.partitions))
        if len(scored.kept):
            produced = batch.produced_ms()[scored.kept]
            latency_ms = np.maximum(scored.scored_at_ms - produced[produced > 0], 0)
            self.metrics.latency.observe_many(latency_ms / 1000.0)
        for p, offset in consumed.next_offsets().items():  # every record counts, answered again or scored
            self.delivery.processed(p, offset)
        self.metrics.batch_seconds.observe(time.monotonic() - started)
        self.metrics.batch_cpu_seconds.observe(time.thread_time() - cpu_started)

    def _answer_retries(self, batch: ConsumedBatch) -> ConsumedBatch:
        """Requests of `scorer serve` decided before (retries) get their first decision again and are
        taken out of the batch, so the customer windows count each transaction once."""
        if batch.requests is None or not self.replies.partitions:
            return batch
        repeated, replies = self.replies.repeats(batch.requests, batch.partitions)
        if not len(repeated):
            return batch
        self.outputs.replies(replies)
        return batch.without(batch.requests.index[repeated])

    def _caught_up(self) -> set[int]:
        """The assigned input partitions with nothing left to read (position at the log's end as the last
        fetch saw it, no broker call): the ones a new-day watermark may speak for (terminal_events.py)."""
        asked = [TopicPartition(self.settings.input_topic, p) for p in sorted(self.delivery.assigned)]
        done: set[int] = set()
        for tp in self.consumer.position(asked):
            try:
                _, high = self.consumer.get_watermark_offsets(tp, timeout=0.1, cached=True)
            except KafkaException:
                continue
            if 0 <= high <= tp.offset:
                done.add(tp.partition)
        return done

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
            self.outputs.monitoring(outgoing)
        self._show_model()
        logger.info("deployment_applied", extra={"serving": serving.label})

    def _show_model(self) -> None:
        serving = self.scorer.serving
        self.metrics.model_info.info(
            {"version": serving.label, "threshold": f"{serving.champion.threshold:.6f}"}
        )

    def _publish_drift(self) -> None:
        self.last_published = time.monotonic()
        self.outputs.monitoring(self.scorer.drift_records())

    # -- rebalance (what these raise comes out of consume() in _turn, and stops the run in order) ------

    def _on_assign(self, consumer: InputConsumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels("assign").inc()
        self.delivery.assign([tp.partition for tp in partitions])  # exactly_once: fences old owners first
        for tp in partitions:
            offset = self.scorer.customers.restore(tp.partition, self.io.restore(tp.partition))
            if offset is not None:
                tp.offset = offset  # state and position must agree (see commits.py)
        consumer.assign(partitions)
        self.metrics.assigned.set(len(self.delivery.assigned))
        logger.info("partitions_assigned", extra={"partitions": [tp.partition for tp in partitions]})

    def _on_revoke(self, consumer: InputConsumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels("revoke").inc()
        revoked = [tp.partition for tp in partitions]
        if self.fatal is None and self.delivery.failure is None:
            self.delivery.flush(ACK_TIMEOUT_S)
        self._forget(revoked)
        logger.info("partitions_revoked", extra={"partitions": revoked})

    def _on_lost(self, consumer: InputConsumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels("lost").inc()
        lost = [tp.partition for tp in partitions]
        self._forget(lost, lost=True)
        logger.warning("partitions_lost", extra={"partitions": lost})

    def _forget(self, partitions: Sequence[int], lost: bool = False) -> None:
        self.delivery.forget(partitions, lost)
        self.replies.forget(partitions)
        for p in partitions:
            self.scorer.customers.drop(p)
        self.gauges.forget(partitions)
        self.metrics.assigned.set(len(self.delivery.assigned))


def _quietly(close: Callable[[], object]) -> None:
    """Run one closing step; its failure is logged, and the next step still runs."""
    try:
        close()
    except Exception as exc:
        logger.warning("close_failed", extra={"error": f"{type(exc).__name__}: {exc}"})
