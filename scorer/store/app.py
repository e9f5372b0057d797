"""`scorer store`: a consumer group of its own that writes the transactions, decisions, labels and dead letters
into PostgreSQL, exactly once from an at-least-once stream.

Each consumed batch becomes one database transaction holding its rows (upserts keyed as the tables are)
and the next offset of every partition it read (the `store_offsets` table). On assignment the store reads
those offsets and starts there, whatever the group committed in Kafka (it commits there too, after the
database, only so that Kafka's tools show its lag). So a crash at any moment leaves the database at a
batch boundary, the next run starts at that boundary, and a replayed record changes nothing.

Writing a batch overlaps reading the next (writer.py: one batch in flight at most, written in order), so the
store keeps up with the scorer on about one core; a rebalance waits for the batch in flight first, so the
partitions go with their rows written.

When the database cannot be reached (lost, paused, restarting) the batch in hand is kept: `/readyz` says
503, the store tries again with a growing wait, and writes it once the database answers; the consumer is
not polled meanwhile (librdkafka keeps the group session alive; past `max.poll.interval.ms` it rejoins,
and the guards of the upserts make a stale write harmless). When it answers no (a statement timeout, a
full disk, a permission), the store stops: one line, exit 1, nothing committed past what was written.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from confluent_kafka import OFFSET_BEGINNING, KafkaError, Message, TopicPartition
from prometheus_client import CollectorRegistry
from threadpoolctl import threadpool_limits

from scorer.config import Settings
from scorer.errors import ScorerError
from scorer.kafka import clients
from scorer.runtime.health import HealthServer, serve_health
from scorer.runtime.process import tune_gc
from scorer.store.batch import StoreBatch, read_batch, topics
from scorer.store.metrics import StoreMetrics
from scorer.store.target import DatabaseUnavailable, StoreTarget
from scorer.store.writer import BatchWriter, Written

logger = logging.getLogger(__name__)
T = TypeVar("T")
FIRST_WAIT_S, MAX_WAIT_S = 0.5, 10.0  # waits between tries while the database is unavailable
LAG_EVERY_S = 5.0
RETENTION_EVERY_S = 600.0


class Store:
    """One `scorer store` process."""

    def __init__(
        self,
        settings: Settings,
        target: StoreTarget,
        consumer: Any | None = None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        threaded: bool | None = None,
    ) -> None:
        """`consumer`: tests pass a fake with confluent-kafka's Consumer methods; else one is made.
        `threaded`: write on a thread of its own while the next batch is read (False: one after the other);
        default: the `store_overlap` setting."""
        self.settings = settings
        self.target = target
        self.registry = registry or CollectorRegistry()
        self.metrics = StoreMetrics(self.registry)
        self.clock = clock
        config = {**settings.consumer_config(group=settings.store_group), "enable.auto.commit": False}
        self.consumer = consumer if consumer is not None else clients.consumer(config)
        self.stop = threading.Event()
        self.database_up = True
        self.fatal: str | None = None
        self.newest_day: int | None = None
        self.last_lag = self.last_retention = float("-inf")
        self.lag_series: set[tuple[str, int]] = set()  # the lag gauge's series, removed on revocation
        self.first_wait_s, self.max_wait_s = FIRST_WAIT_S, MAX_WAIT_S
        self.metrics.database_up.set(1)
        overlap = settings.store_overlap if threaded is None else threaded
        self.writer = BatchWriter(self._store_rows, clock, overlap)

    def ready(self) -> bool:
        return self.database_up and self.fatal is None

    def run(self, stop: threading.Event) -> int:
        """Store until `stop` (SIGTERM/SIGINT) or a fatal error; the exit code."""
        self.stop = stop
        s = self.settings
        server: HealthServer | None = serve_health(self.registry, s.metrics_host, s.metrics_port, self.ready)
        try:
            self.consumer.subscribe(
                topics(s), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
            )
            logger.info("store_started", extra={"group": s.store_group, "settings": s.masked()})
            tune_gc()  # a batch of decisions is thousands of parsed documents: see tune_gc
            # numpy's BLAS (one matrix product per batch, in the timestamp parser) would otherwise keep a
            # worker thread per core spinning after each product, ~1/3 of the store's CPU between batches
            threadpool_limits(limits=1, user_api="blas")
            while not stop.is_set() and self.fatal is None:
                self.step()
        finally:
            self.flush()
            self._close()
            if server is not None:
                server.stop()
        if self.fatal is not None:
            logger.error("stopped_on_fatal_error", extra={"error": self.fatal})
            return 1
        logger.info("stopped")
        return 0

    def step(self) -> None:
        """Read a batch (if any) while the previous one is written, wait for that write, maintain (the
        lag, the retention now and then), then hand the new batch to the writer. Never raises: a failure
        sets `fatal`, and no batch is handed over after it."""
        try:
            msgs = self._consume()
            batch = read_batch(msgs, self.settings) if msgs else None
            self._finish()
            self._maintain()
            if batch is not None and self.fatal is None:
                self.writer.submit(batch)
        except ScorerError as exc:
            self._fail(str(exc))
        except Exception as exc:  # ours, not the data's: stop in order, one line
            logger.exception("store_failed")
            self._fail(f"{type(exc).__name__}: {exc}")

    def flush(self) -> None:
        """Wait for the batch in flight (if any) and acknowledge it; never raises: a failure sets `fatal`."""
        try:
            self._finish()
        except ScorerError as exc:
            self._fail(str(exc))
        except Exception as exc:
            logger.exception("store_failed")
            self._fail(f"{type(exc).__name__}: {exc}")

    def _fail(self, error: str) -> None:
        if self.fatal is None:
            self.fatal = error

    def _consume(self) -> list[Message]:
        s = self.settings
        msgs = clients.take_available(self.consumer, s.store_batch_max, 0.1)
        deadline = self.clock() + s.store_batch_wait_s
        while msgs and len(msgs) < s.store_batch_max and (left := deadline - self.clock()) > 0:
            msgs += self.consumer.consume(s.store_batch_max - len(msgs), min(left, 0.05))
        return [m for m in msgs if self._usable(m)]

    def _usable(self, msg: Message) -> bool:
        err = msg.error()
        if err is None:
            return True
        if err.code() != KafkaError._PARTITION_EOF:
            if err.fatal():
                raise ScorerError(f"fatal Kafka error: {err}")
            logger.warning("consume_error", extra={"error": str(err)})
        return False

    def write(self, batch: StoreBatch) -> None:
        """The batch into the database now (waiting for it while unavailable), counted and acknowledged."""
        self._finish()
        started = self.clock()
        self._store_rows(batch)
        self._account(Written(batch, self.clock() - started))

    def _store_rows(self, batch: StoreBatch) -> None:
        """The writer's work: the batch in one transaction, waiting for the database while unavailable."""
        self._with_database(lambda: self.target.write(batch))

    def _finish(self) -> None:
        """Wait for the batch in flight; count and acknowledge it. Its write's error is raised here."""
        written = self.writer.finish()
        if written is not None:
            self._account(written)

    def _account(self, written: Written) -> None:
        """A batch the database holds: its metrics, the newest day (retention), Kafka's commit."""
        batch = written.batch
        self.metrics.batch_seconds.observe(written.seconds)
        self.metrics.batch_records.observe(batch.records)
        for rows in batch.tables:
            self.metrics.rows.labels(rows.table).inc(len(rows))
            for reason, n in rows.skipped.items():
                self.metrics.skipped.labels(rows.table, reason).inc(n)
        days = batch.days("transactions") + batch.days("decisions")
        if days:
            self.newest_day = max(days) if self.newest_day is None else max(self.newest_day, *days)
        self._acknowledge(batch.offsets)

    def _acknowledge(self, offsets: dict[tuple[str, int], int]) -> None:
        """Kafka's own commit, after the database's: only so that Kafka's tools see the store's lag."""
        partitions = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            self.consumer.commit(offsets=partitions, asynchronous=True)
        except Exception as exc:  # the database holds the truth; a refused commit here loses nothing
            logger.debug("kafka_commit_failed", extra={"error": str(exc)})

    def _with_database(self, call: Callable[[], T]) -> T:
        """`call`, tried again while the database is unavailable (growing waits, /readyz 503), until it
        answers or the store is told to stop (then ScorerError: nothing was written)."""
        wait_s = self.first_wait_s
        while True:
            try:
                result = call()
            except DatabaseUnavailable as exc:
                self._unavailable(exc)
            else:
                self._available()
                return result
            while not self.stop.wait(wait_s):
                wait_s = min(self.max_wait_s, wait_s * 2)
                try:
                    self.target.reconnect()
                    break
                except DatabaseUnavailable as exc:
                    self._unavailable(exc)
            if self.stop.is_set():
                raise ScorerError(
                    "stopped while the database was unavailable: the batch in hand is not stored"
                )

    def _unavailable(self, exc: DatabaseUnavailable) -> None:
        self.metrics.commit_failures.labels(exc.reason).inc()
        if self.database_up:
            logger.error("database_unavailable", extra={"reason": exc.reason, "error": str(exc)})
        self.database_up = False
        self.metrics.database_up.set(0)

    def _available(self) -> None:
        if not self.database_up:
            logger.info("database_available")
        self.database_up = True
        self.metrics.database_up.set(1)

    # -- rebalance -------------------------------------------------------------------------------------

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        """Start each partition where the database says the store got to (from the beginning if nowhere),
        once the batch in flight is written."""
        self._finish()
        wanted = [(tp.topic, tp.partition) for tp in partitions]
        stored = self._with_database(lambda: self.target.offsets(wanted))
        for tp in partitions:
            tp.offset = stored.get((tp.topic, tp.partition), OFFSET_BEGINNING)
        consumer.assign(partitions)
        logger.info("partitions_assigned", extra={"partitions": sorted(wanted)})

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        """The batch in flight written before the partitions go, so the next owner starts after it."""
        self._finish()
        gone = [(tp.topic, tp.partition) for tp in partitions]
        for topic, partition in gone:
            if (topic, partition) in self.lag_series:
                self.metrics.lag.remove(topic, str(partition))
                self.lag_series.discard((topic, partition))
        logger.info("partitions_revoked", extra={"partitions": sorted(gone)})

    # -- now and then ----------------------------------------------------------------------------------

    def _maintain(self) -> None:
        now = self.clock()
        if now - self.last_lag >= LAG_EVERY_S:
            self.last_lag = now
            self._lag()
        retention = self.settings.store_retention_days
        if retention > 0 and self.newest_day is not None and now - self.last_retention >= RETENTION_EVERY_S:
            self.last_retention = now
            cutoff = self.newest_day - retention  # in event time, like every window of the scorer
            self.metrics.partitions_dropped.inc(self._with_database(lambda: self.target.drop_before(cutoff)))

    def _lag(self) -> None:
        assigned: Sequence[TopicPartition] = self.consumer.assignment()
        for tp in self.consumer.position(list(assigned)):
            try:
                _, high = self.consumer.get_watermark_offsets(tp, timeout=1.0, cached=True)
            except Exception:  # noqa: S112 - the lag is a gauge: the next look tries again
                continue
            if tp.offset >= 0:
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, high - tp.offset))
                self.lag_series.add((tp.topic, tp.partition))

    def _close(self) -> None:
        for close in (self.writer.close, self.consumer.close, self.target.close):
            try:
                close()
            except Exception as exc:
                logger.warning("close_failed", extra={"error": f"{type(exc).__name__}: {exc}"})
