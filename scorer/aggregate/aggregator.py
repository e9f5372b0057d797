"""`scorer aggregate`: terminal features for every scorer, from all partitions' transactions and the labels.

Two stages in one process, each its own consumer group, so any number of instances share the work:
1. re-key: fraud labels -> `terminal-events`, keyed by terminal_id (compact binary). The scorers write the
   transactions there themselves from the batches they decoded (terminal_events_from = "scorer", the
   default); with terminal_events_from = "aggregator" this stage also reads and re-keys the transactions;
2. aggregate: each instance folds its terminal-events partitions into terminal state (partition.py) and,
   once every input partition with unprocessed records has passed midnight (watermark.py), closes the
   day: it publishes the changed terminals' rows (and tombstones for expired ones) to partition p of the
   compacted `terminal-features` topic, then a marker. Offsets are committed at the marker's
   `replay_from` once the close is acknowledged, and the re-key stage's offsets once its re-keyed records
   are, so recovery neither loses nor double-counts.

The consumers, the producer and the clock can be given (tests inject fakes that refuse deliveries, revoke
or stay silent).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition
from prometheus_client import CollectorRegistry

from scorer.aggregate.partition import (
    EventRecord,
    PartitionAgg,
    fence_record,
    label_record,
    transaction_records,
    watermark_record,
)
from scorer.aggregate.table import terminal_codec
from scorer.aggregate.watermark import IdleSources, closable_day
from scorer.config import Settings
from scorer.events.decode import decode_labels, decode_transactions
from scorer.events.timestamps import MS_PER_DAY, NEVER
from scorer.features.engine import FeatureConfig
from scorer.features.rows import PartitionDump
from scorer.kafka import clients
from scorer.kafka.deadletters import Limits, send_dead_letter
from scorer.kafka.progress import Snapshot, WriterProgress
from scorer.kafka.sink import Sink
from scorer.kafka.tables import read_partition
from scorer.kafka.topics import check_topics, require_topics
from scorer.runtime.health import serve_health
from scorer.runtime.metrics import AggregatorMetrics
from scorer.runtime.process import tune_gc

logger = logging.getLogger(__name__)
IDLE_CHECK_INTERVAL_S = 1.0  # how often, at most, to ask which sources are drained while a close waits
ReadPartition = Callable[[Mapping[str, Any], str, int], PartitionDump]


class Aggregator:
    """One `scorer aggregate` process."""

    def __init__(
        self,
        settings: Settings,
        config: FeatureConfig,
        registry: CollectorRegistry | None = None,
        *,
        sink: Sink | None = None,
        rekey: Consumer | None = None,
        consumer: Consumer | None = None,
        writers: Consumer | None = None,
        peek: Consumer | None = None,
        read: ReadPartition = read_partition,
        clock: Callable[[], float] = time.monotonic,
        idle_check_interval_s: float = IDLE_CHECK_INTERVAL_S,
    ) -> None:
        """`writers`: a consumer in the scorers' group, asked only for its committed offsets (made here when
        the scorers write the transactions to terminal-events); `peek`: one that reads a lagging input's next
        record (kafka/progress.py)."""
        self.settings = settings
        self.config = config
        self.codec = terminal_codec(config)
        self.registry = registry or CollectorRegistry()
        self.metrics = AggregatorMetrics(self.registry)
        group = settings.aggregator_group
        self.sink = sink or Sink(settings.producer_config())
        self.rekey = rekey or clients.consumer(
            settings.consumer_config(group=f"{group}-rekey", background=True)
        )
        self.consumer = consumer or clients.consumer(settings.consumer_config(group=group, background=True))
        self.reader_config = settings.consumer_config(group=f"{group}-reader", background=True)
        self.read = read
        self.writers = self._writers(writers)
        self.peek = peek or clients.consumer(
            {**settings.consumer_config(group=f"{group}-peek", background=True), "enable.auto.commit": False}
        )
        self.progress = WriterProgress(
            {"t": (settings.input_topic, self.writers), "l": (settings.labels_topic, self.rekey)},
            self.consumer,
            peek=self.peek,
            event_ms=source_event_ms,
        )
        self.idle = IdleSources(
            self.progress, idle_check_interval_s, clock, self._send_fences, self._on_snapshot
        )
        self.sources: frozenset[str] = frozenset()  # every input partition that feeds terminal-events
        self.events_partitions = 0  # of terminal-events, all of which get each source's new-day watermark
        self.rekey_days: dict[str, int] = {}  # newest event day per source the re-key stage has announced
        self.waiting: list[str] = []  # the sources the next close was last logged waiting for
        self.parts: dict[int, PartitionAgg] = {}
        self.closed_day = NEVER
        self.rekey_pending: list[tuple[int, list[TopicPartition]]] = []
        self.close_pending: list[tuple[int, list[TopicPartition]]] = []
        self.running = False

    def _writers(self, given: Consumer | None) -> Consumer:
        """Whose committed offsets say how far the transactions have been written to terminal-events."""
        if self.settings.terminal_events_from == "aggregator":
            return self.rekey
        return given or clients.consumer(
            self.settings.consumer_config(group=self.settings.group, background=True)
        )

    def run(self, stop: threading.Event) -> int:
        s = self.settings
        check_topics(s, [(s.terminal_events_topic, s.terminal_topic)])
        require_topics(s, [s.input_topic, s.labels_topic])  # their partitions are what a close waits for
        server = serve_health(self.registry, s.metrics_host, s.metrics_port, self.ready)
        try:
            self.subscribe()
            logger.info("aggregator_started", extra={"settings": self.settings.masked()})
            tune_gc()
            while not stop.is_set() and self.sink.failure is None:
                self.step()
            self.close()
        finally:
            if server is not None:
                server.stop()
        if self.sink.failure:
            logger.error("stopped_on_fatal_error", extra={"error": self.sink.failure})
            return 1
        return 0

    def subscribe(self) -> None:
        """Join both groups: re-key on the labels (and on the transactions when the scorers do not write
        them to terminal-events: terminal_events_from = "aggregator"), aggregate on terminal-events."""
        s = self.settings
        rekeyed = [s.labels_topic] if s.terminal_events_from == "scorer" else [s.input_topic, s.labels_topic]
        self.sources = self.progress.sources()
        self.events_partitions = len(self.progress.partitions(s.terminal_events_topic))
        self.rekey.subscribe(rekeyed)
        self.consumer.subscribe(
            [s.terminal_events_topic], on_assign=self._on_assign, on_revoke=self._on_revoke
        )

    def close(self) -> None:
        """Commit what is acknowledged (nothing past a refused delivery), leave both groups, flush."""
        self._flush_commits(timeout_s=10.0)
        self.rekey.close()
        self.consumer.close()
        if self.writers is not self.rekey:
            self.writers.close()
        self.peek.close()
        self.sink.close()

    def ready(self) -> bool:
        return self.running and self.sink.failure is None

    def step(self) -> None:
        self._rekey(self.rekey.consume(self.settings.batch_max, self.settings.batch_wait_s))
        self._aggregate(self.consumer.consume(self.settings.batch_max, self.settings.batch_wait_s))
        self.running = True
        self._maybe_close()
        self.sink.poll(0)  # delivery reports every turn, not only when something waits on them
        if self.sink.failure is None:
            self._commit_acknowledged()

    # -- stage 1: re-key by terminal ---------------------------------------------------------------------

    def _rekey(self, msgs: Sequence[Message]) -> None:
        good = [m for m in msgs if m.error() is None]
        if not good:
            return
        tx = [m for m in good if m.topic() == self.settings.input_topic]
        labels = [m for m in good if m.topic() != self.settings.input_topic]
        newest: dict[str, int] = {}  # event time reached per source in this batch
        out = self._rekey_transactions(tx, newest) + self._rekey_labels(labels, newest)
        if out:
            self.sink.send(self.settings.terminal_events_topic, out)
            self._announce(newest)
        offsets: dict[tuple[str, int], int] = {}
        for m in good:
            offsets[(m.topic() or "", m.partition() or 0)] = (m.offset() or 0) + 1
        commit = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        self.rekey_pending.append((self.sink.seal(), commit))

    def _rekey_transactions(self, msgs: Sequence[Message], newest: dict[str, int]) -> list[dict[str, object]]:
        """Valid transactions only: the scorer dead-letters the invalid ones with their reason."""
        decoded = decode_transactions([m.value() for m in msgs], self.settings.max_value_bytes)
        b = decoded.batch
        self.metrics.repartitioned.labels("transaction").inc(len(b))
        if not len(b):
            return []
        src = [msgs[i] for i in decoded.kept.tolist()]
        partitions = np.fromiter((m.partition() or 0 for m in src), dtype=np.int64, count=len(src))
        offsets = np.fromiter((m.offset() or 0 for m in src), dtype=np.int64, count=len(src))
        _note_newest(newest, "t", partitions, b.event_ts_ms)
        return transaction_records(b.terminal_id, b.event_ts_ms, partitions, offsets)

    def _rekey_labels(self, msgs: Sequence[Message], newest: dict[str, int]) -> list[dict[str, object]]:
        """Valid labels re-keyed; invalid ones go to the dead-letter topic with their reason."""
        s = self.settings
        decoded = decode_labels([m.value() for m in msgs], s.max_value_bytes)
        now_ms, limits = int(time.time() * 1000), Limits(s.max_value_bytes, s.dead_letter_prefix_bytes)
        for index, rejected in decoded.rejected:
            send_dead_letter(
                self.sink, s.dlq_topic, msgs[index], rejected.reason, rejected.detail, now_ms, limits
            )
        b = decoded.batch
        self.metrics.repartitioned.labels("label").inc(len(b))
        src = [msgs[i] for i in decoded.kept.tolist()]
        partitions = np.fromiter((m.partition() or 0 for m in src), dtype=np.int64, count=len(src))
        _note_newest(newest, "l", partitions, b.reported_ts_ms)
        columns = zip(
            b.terminal_id,
            b.reported_ts_ms.tolist(),
            b.tx_ts_ms.tolist(),
            b.is_fraud.tolist(),
            src,
            b.transaction_id,
            b.source,
            strict=True,
        )
        return [
            label_record(t, rep, tx, fraud, m.partition() or 0, m.offset() or 0, tid, source)
            for t, rep, tx, fraud, m, tid, source in columns
        ]

    def _announce(self, newest: Mapping[str, int]) -> None:
        """A source's first records of a new day reach only the partitions of their terminals: its event
        time goes to every partition too, so that none keeps waiting for a source that has passed midnight."""
        marks = [
            watermark_record(ts, source)
            for source, ts in newest.items()
            if ts // MS_PER_DAY > self.rekey_days.get(source, NEVER)
        ]
        for source, ts in newest.items():
            self.rekey_days[source] = max(self.rekey_days.get(source, NEVER), ts // MS_PER_DAY)
        if marks:
            for q in range(self.events_partitions):
                self.sink.send(self.settings.terminal_events_topic, marks, partition=q)

    # -- stage 2: aggregate --------------------------------------------------------------------------------

    def _aggregate(self, msgs: Sequence[Message]) -> None:
        by_partition: dict[int, list[Message]] = {}
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    logger.warning("consume_error", extra={"error": str(err)})
                continue
            by_partition.setdefault(m.partition() or 0, []).append(m)
        for p, records in by_partition.items():
            if p in self.parts:
                self._fold(self.parts[p], records)

    def _fold(self, part: PartitionAgg, msgs: Sequence[Message]) -> None:
        records: list[EventRecord] = [(m.offset() or 0, m.key() or b"", m.value() or b"") for m in msgs]
        folded = part.fold(records, self.closed_day)
        self.metrics.events.labels("transaction").inc(folded.transactions)
        self.metrics.events.labels("label").inc(folded.labels)
        self.metrics.late.labels("transaction").inc(folded.late_transactions)

    def _maybe_close(self) -> None:
        """Close the newest day that every source with unprocessed records has passed (watermark.py)."""
        reached = [part.reached for part in self.parts.values()]
        grace_ms = int(self.settings.day_close_grace_s * 1000)
        day = closable_day(reached, self.sources.union(*reached), grace_ms)
        if day <= self.closed_day < closable_day(reached, (), grace_ms):  # a source holds it: drained?
            snapshot = self.idle.verified(self._fenced, self.parts.keys())
            if snapshot is not None:
                self.sources = snapshot.sources
                reached = [_with_upcoming(seen, snapshot.next_event_ms) for seen in reached]
                day = closable_day(reached, snapshot.sources.union(*reached) - snapshot.drained, grace_ms)
                if day <= self.closed_day:
                    self._log_waiting(reached, snapshot, grace_ms)
        if day > self.closed_day:
            self._close(day)

    def _send_fences(self, owned: Collection[int], nonce: int) -> None:
        """A fence to each owned terminal-events partition (watermark.py): behind every record written so far."""
        for p in owned:
            self.sink.send(self.settings.terminal_events_topic, [fence_record(nonce)], partition=p)

    def _fenced(self, nonce: int) -> bool:
        return all(part.fence >= nonce for part in self.parts.values())

    def _on_snapshot(self, snapshot: Snapshot) -> None:
        for (topic, p), behind in snapshot.lag.items():
            self.metrics.lag.labels(topic, str(p)).set(behind)

    def _log_waiting(self, reached: Collection[Mapping[str, int]], snapshot: Snapshot, grace_ms: int) -> None:
        """Which sources hold the next close (logged when that changes): whom the day waits for."""
        day = closable_day(reached, (), grace_ms)
        after_ms = (day + 1) * MS_PER_DAY + grace_ms
        waiting = sorted(
            s
            for s in snapshot.sources.union(*reached) - snapshot.drained
            if any(seen.get(s, NEVER) < after_ms for seen in reached)
        )
        if waiting != self.waiting:
            self.waiting = waiting
            logger.info("day_close_waiting", extra={"day": str(np.datetime64(day, "D")), "sources": waiting})

    def _close(self, day: int) -> None:
        commit: list[TopicPartition] = []
        for p, part in self.parts.items():
            replay_from = self._close_partition(p, part, day)
            commit.append(TopicPartition(self.settings.terminal_events_topic, p, replay_from))
        self.closed_day = day
        self.waiting = []
        self.metrics.closed_day.set(day * 86_400)
        self.close_pending.append((self.sink.seal(), commit))
        logger.info(
            "day_closed", extra={"day": str(np.datetime64(day, "D")), "partitions": sorted(self.parts)}
        )

    def _close_partition(self, p: int, part: PartitionAgg, day: int) -> int:
        records, replay_from, changed = part.close(day, self.codec)
        self.sink.send(self.settings.terminal_topic, records, partition=p)
        self.metrics.rows.inc(changed)
        self.metrics.state_keys.set(sum(len(x.terminals.ring) for x in self.parts.values()))
        self.metrics.state_bytes.set(sum(x.terminals.ring.nbytes for x in self.parts.values()))
        return replay_from

    # -- commits and rebalance ----------------------------------------------------------------------------

    def _commit_acknowledged(self) -> None:
        for consumer, pending in ((self.rekey, self.rekey_pending), (self.consumer, self.close_pending)):
            while pending and self.sink.acknowledged(pending[0][0]):
                _, offsets = pending.pop(0)
                live = [tp for tp in offsets if consumer is self.rekey or tp.partition in self.parts]
                if live:
                    consumer.commit(offsets=live, asynchronous=True)

    def _flush_commits(self, timeout_s: float) -> None:
        epoch = self.sink.seal()
        self.sink.wait(epoch, timeout_s)
        self._commit_acknowledged()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            part = self._restore(tp.partition)
            self.parts[tp.partition] = part
            if part.skip_before or part.position:
                tp.offset = part.position
        consumer.assign(partitions)
        logger.info("partitions_assigned", extra={"partitions": [tp.partition for tp in partitions]})

    def _restore(self, p: int) -> PartitionAgg:
        dump = self.read(self.reader_config, self.settings.terminal_topic, p)
        part = PartitionAgg.restore(self.config, self.codec, dump)
        self.closed_day = max(self.closed_day, part.terminals.closed_day)
        return part

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._flush_commits(timeout_s=10.0)
        for tp in partitions:
            self.parts.pop(tp.partition, None)
        logger.info("partitions_revoked", extra={"partitions": [tp.partition for tp in partitions]})


def _note_newest(
    newest: dict[str, int], kind: str, partitions: npt.NDArray[np.int64], ts_ms: npt.NDArray[np.int64]
) -> None:
    """Keep in `newest` the latest event time of each source (kind + partition) among these records."""
    for p in np.unique(partitions).tolist():
        source = f"{kind}{p}"
        newest[source] = max(newest.get(source, NEVER), int(ts_ms[partitions == p].max()))


def _with_upcoming(seen: Mapping[str, int], upcoming: Mapping[str, int]) -> dict[str, int]:
    """A partition's event time per source, moved up to each lagging source's next unread record: its
    writers committed everything before that record (so it is folded, behind the fence), and a source's
    records come in event-time order. A scorer stopped after its day D was done holds no close of D."""
    return {**seen, **{s: max(seen.get(s, NEVER), ms) for s, ms in upcoming.items()}}


def source_event_ms(kind: str, value: bytes | None) -> int | None:
    """The event time a source's record counts at (a transaction's, a label's report time); None for a
    record the decoders refuse (it makes no terminal event)."""
    if kind == "t":
        decoded = decode_transactions([value])
        return int(decoded.batch.event_ts_ms[0]) if len(decoded.batch) else None
    labels = decode_labels([value])
    return int(labels.batch.reported_ts_ms[0]) if len(labels.batch) else None
