"""`scorer aggregate`: terminal features for every scorer, from all partitions' transactions and the labels.

Two stages in one process, each its own consumer group, so any number of instances share the work:
1. re-key: fraud labels -> `terminal-events`, keyed by terminal_id (compact binary). The scorers write the
   transactions there themselves from the batches they decoded (terminal_events_from = "scorer", the
   default); with terminal_events_from = "aggregator" this stage also reads and re-keys the transactions;
2. aggregate: each instance folds its terminal-events partitions into terminal state (partition.py) and,
   when the event-time watermark passes midnight, closes the day: it publishes the changed terminals' rows
   (and tombstones for expired ones) to partition p of the compacted `terminal-features` topic, then a
   marker. Offsets are committed at the marker's `replay_from` once the close is acknowledged, and the
   re-key stage's offsets once its re-keyed records are, so recovery neither loses nor double-counts.

The consumers and the producer can be given (tests inject fakes that refuse deliveries or revoke).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition
from prometheus_client import CollectorRegistry

from scorer.aggregate.partition import EventRecord, PartitionAgg, label_record, transaction_records
from scorer.aggregate.table import terminal_codec
from scorer.config import Settings
from scorer.events.decode import decode_labels, decode_transactions
from scorer.events.timestamps import MS_PER_DAY, NEVER
from scorer.features.engine import FeatureConfig
from scorer.features.rows import PartitionDump
from scorer.kafka import clients
from scorer.kafka.deadletters import Limits, send_dead_letter
from scorer.kafka.sink import Sink
from scorer.kafka.tables import read_partition
from scorer.kafka.topics import check_topics
from scorer.runtime.health import serve_health
from scorer.runtime.metrics import AggregatorMetrics
from scorer.runtime.process import tune_gc

logger = logging.getLogger(__name__)
IDLE_PARTITION_S = 10.0  # a partition silent this long no longer holds the watermark back
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
        read: ReadPartition = read_partition,
    ) -> None:
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
        self.parts: dict[int, PartitionAgg] = {}
        self.closed_day = NEVER
        self.rekey_pending: list[tuple[int, list[TopicPartition]]] = []
        self.close_pending: list[tuple[int, list[TopicPartition]]] = []
        self.running = False

    def run(self, stop: threading.Event) -> int:
        s = self.settings
        check_topics(s, [(s.terminal_events_topic, s.terminal_topic)])
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
        self.rekey.subscribe(rekeyed)
        self.consumer.subscribe(
            [s.terminal_events_topic], on_assign=self._on_assign, on_revoke=self._on_revoke
        )

    def close(self) -> None:
        """Commit what is acknowledged (nothing past a refused delivery), leave both groups, flush."""
        self._flush_commits(timeout_s=10.0)
        self.rekey.close()
        self.consumer.close()
        self.sink.close()

    def ready(self) -> bool:
        return self.running and self.sink.failure is None

    def step(self) -> None:
        self._rekey(self.rekey.consume(self.settings.batch_max, self.settings.batch_wait_s))
        self._aggregate(self.consumer.consume(self.settings.batch_max, self.settings.batch_wait_s))
        self.running = True
        self._maybe_close()
        if self.sink.failure is None:
            self._commit_acknowledged()

    # -- stage 1: re-key by terminal ---------------------------------------------------------------------

    def _rekey(self, msgs: Sequence[Message]) -> None:
        good = [m for m in msgs if m.error() is None]
        if not good:
            return
        tx = [m for m in good if m.topic() == self.settings.input_topic]
        labels = [m for m in good if m.topic() != self.settings.input_topic]
        out = self._rekey_transactions(tx) + self._rekey_labels(labels)
        if out:
            self.sink.send(self.settings.terminal_events_topic, out)
        offsets: dict[tuple[str, int], int] = {}
        for m in good:
            offsets[(m.topic() or "", m.partition() or 0)] = (m.offset() or 0) + 1
        commit = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        self.rekey_pending.append((self.sink.seal(), commit))

    def _rekey_transactions(self, msgs: Sequence[Message]) -> list[dict[str, object]]:
        """Valid transactions only: the scorer dead-letters the invalid ones with their reason."""
        decoded = decode_transactions([m.value() for m in msgs], self.settings.max_value_bytes)
        b = decoded.batch
        self.metrics.repartitioned.labels("transaction").inc(len(b))
        if not len(b):
            return []
        src = [msgs[i] for i in decoded.kept.tolist()]
        partitions = np.fromiter((m.partition() or 0 for m in src), dtype=np.int64, count=len(src))
        offsets = np.fromiter((m.offset() or 0 for m in src), dtype=np.int64, count=len(src))
        return transaction_records(b.terminal_id, b.event_ts_ms, partitions, offsets)

    def _rekey_labels(self, msgs: Sequence[Message]) -> list[dict[str, object]]:
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
        columns = zip(
            b.terminal_id,
            b.reported_ts_ms.tolist(),
            b.tx_ts_ms.tolist(),
            b.is_fraud.tolist(),
            src,
            strict=True,
        )
        return [
            label_record(t, rep, tx, fraud, m.partition() or 0, m.offset() or 0)
            for t, rep, tx, fraud, m in columns
        ]

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
        part.last_seen = time.monotonic()
        self.metrics.events.labels("transaction").inc(folded.transactions)
        self.metrics.events.labels("label").inc(folded.labels)
        self.metrics.late.labels("transaction").inc(folded.late_transactions)

    def _maybe_close(self) -> None:
        """Close the newest day the watermark of every active partition has passed."""
        now = time.monotonic()
        active = [
            p.watermark_ms
            for p in self.parts.values()
            if p.watermark_ms > NEVER and now - p.last_seen < IDLE_PARTITION_S
        ]
        if not active:
            return
        watermark = min(active) - int(self.settings.day_close_grace_s * 1000)
        day = watermark // MS_PER_DAY - 1
        if day > self.closed_day:
            self._close(day)

    def _close(self, day: int) -> None:
        commit: list[TopicPartition] = []
        for p, part in self.parts.items():
            replay_from = self._close_partition(p, part, day)
            commit.append(TopicPartition(self.settings.terminal_events_topic, p, replay_from))
        self.closed_day = day
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
