"""`scorer aggregate`: terminal features for every scorer, from all partitions' transactions and the labels.

Two stages in one process, each its own consumer group, so any number of instances share the work:
1. re-key: transactions and fraud labels -> `terminal-events`, keyed by terminal_id (compact binary);
2. aggregate: each instance folds its terminal-events partitions into TerminalFeatures and, when the
   event-time watermark passes midnight, closes the day: it publishes the changed terminals' rows (and
   tombstones for expired ones) to partition p of the compacted `terminal-features` topic, then a marker
   {"day", "position", "replay_from"}. Offsets are committed at `replay_from` (the oldest label still
   waiting for a later close); on restart the rows are restored and the records before `position` that
   the rows already contain are skipped, so recovery neither loses nor double-counts.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition
from prometheus_client import CollectorRegistry

from scorer.aggregate.table import terminal_codec
from scorer.config import Settings
from scorer.events.batches import LabelBatch
from scorer.events.decode import decode_labels, decode_transactions
from scorer.events.timestamps import MS_PER_DAY
from scorer.features.engine import LATE_GRACE_DAYS, FeatureConfig, TerminalFeatures
from scorer.features.rows import MARKER_KEY, encode_marker, load_rows
from scorer.kafka.sink import Sink
from scorer.kafka.tables import read_partition
from scorer.kafka.topics import check_topics
from scorer.runtime.health import HealthServer
from scorer.runtime.metrics import AggregatorMetrics
from scorer.runtime.process import tune_gc

logger = logging.getLogger(__name__)
# b"T", event_ts_ms, source partition, source offset
TX = struct.Struct("<cqiq")
# b"L", reported_ts_ms, tx_ts_ms, is_fraud, source partition, source offset
LABEL = struct.Struct("<cqq?iq")
NEVER = -(2**62)
IDLE_PARTITION_S = 10.0  # a partition silent this long no longer holds the watermark back


@dataclass(slots=True)
class PartitionAgg:
    """Terminal state of one terminal-events partition and where it stands."""

    terminals: TerminalFeatures
    watermark_ms: int = NEVER
    last_seen: float = 0.0
    position: int = 0  # next offset to read
    skip_before: int = 0  # records before this offset are already in the restored rows
    skip_labels_before_ms: int = NEVER  # ... unless a label was reported after the restored close
    label_offsets: list[tuple[int, int]] = field(default_factory=list)  # (offset, reported_ms) still pending
    # newest source offset applied per source ("t3": transactions partition 3, "l0": labels partition 0):
    # a re-key stage that crashed re-sends a suffix of each source, and those repeats must count once
    sources: dict[str, int] = field(default_factory=dict)


class Aggregator:
    """One `scorer aggregate` process."""

    def __init__(
        self, settings: Settings, config: FeatureConfig, registry: CollectorRegistry | None = None
    ) -> None:
        self.settings = settings
        self.config = config
        self.codec = terminal_codec(config)
        self.registry = registry or CollectorRegistry()
        self.metrics = AggregatorMetrics(self.registry)
        self.sink = Sink(settings.producer_config())
        self.rekey = Consumer(
            settings.consumer_config(group=f"{settings.aggregator_group}-rekey", background=True)
        )
        self.consumer = Consumer(settings.consumer_config(group=settings.aggregator_group, background=True))
        self.reader_config = settings.consumer_config(
            group=f"{settings.aggregator_group}-reader", background=True
        )
        self.parts: dict[int, PartitionAgg] = {}
        self.closed_day = NEVER
        self.rekey_pending: list[tuple[int, list[TopicPartition]]] = []
        self.close_pending: list[tuple[int, list[TopicPartition]]] = []
        self.running = False

    def run(self, stop: threading.Event) -> int:
        s = self.settings
        check_topics(s, [(s.terminal_events_topic, s.terminal_topic)])
        server = None
        if self.settings.metrics_port:
            server = HealthServer(
                self.registry, self.settings.metrics_host, self.settings.metrics_port, self.ready
            )
            server.start()
        try:
            self.rekey.subscribe([self.settings.input_topic, self.settings.labels_topic])
            self.consumer.subscribe(
                [self.settings.terminal_events_topic], on_assign=self._on_assign, on_revoke=self._on_revoke
            )
            logger.info("aggregator_started", extra={"settings": self.settings.masked()})
            tune_gc()
            while not stop.is_set() and self.sink.failure is None:
                self.step()
            self._flush_commits(timeout_s=10.0)
            self.rekey.close()
            self.consumer.close()
            self.sink.close()
        finally:
            if server is not None:
                server.stop()
        return 1 if self.sink.failure else 0

    def ready(self) -> bool:
        return self.running and self.sink.failure is None

    def step(self) -> None:
        self._rekey(self.rekey.consume(self.settings.batch_max, self.settings.batch_wait_s))
        self._aggregate(self.consumer.consume(self.settings.batch_max, self.settings.batch_wait_s))
        self.running = True
        self._maybe_close()
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
        ts = b.event_ts_ms.tolist()
        src = [msgs[i] for i in decoded.kept.tolist()]
        return [
            {"key": t.encode(), "value": TX.pack(b"T", ts[i], src[i].partition() or 0, src[i].offset() or 0)}
            for i, t in enumerate(b.terminal_id)
        ]

    def _rekey_labels(self, msgs: Sequence[Message]) -> list[dict[str, object]]:
        """Valid labels re-keyed; invalid ones go to the dead-letter topic with their reason."""
        decoded = decode_labels([m.value() for m in msgs], self.settings.max_value_bytes)
        for index, rejected in decoded.rejected:
            m = msgs[index]
            headers = [("reason", rejected.reason.encode()), ("source.topic", (m.topic() or "").encode()),
                       ("source.partition", str(m.partition()).encode()), ("source.offset", str(m.offset()).encode())]  # fmt: skip
            self.sink.send_one(self.settings.dlq_topic, m.value(), m.key(), headers)
        b = decoded.batch
        self.metrics.repartitioned.labels("label").inc(len(b))
        rep, txs, fraud = b.reported_ts_ms.tolist(), b.tx_ts_ms.tolist(), b.is_fraud.tolist()
        src = [msgs[i] for i in decoded.kept.tolist()]
        return [
            {
                "key": t.encode(),
                "value": LABEL.pack(
                    b"L", rep[i], txs[i], fraud[i], src[i].partition() or 0, src[i].offset() or 0
                ),
            }
            for i, t in enumerate(b.terminal_id)
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

    def _fold(self, part: PartitionAgg, records: Sequence[Message]) -> None:
        tx_ids: list[str] = []
        tx_ts: list[int] = []
        labels: list[tuple[str, int, int, bool, int]] = []
        for m in records:
            offset, value, key = (
                m.offset() or 0,
                m.value() or b"",
                (m.key() or b"").decode("utf-8", "replace"),
            )
            part.position = offset + 1
            if value[:1] == b"T" and len(value) == TX.size:
                _, ts, src_partition, src_offset = TX.unpack(value)
                part.watermark_ms = max(part.watermark_ms, ts)
                if offset >= part.skip_before and _first_time(part, f"t{src_partition}", src_offset):
                    tx_ids.append(key)
                    tx_ts.append(ts)
                    self._count_late("transaction", ts)
            elif value[:1] == b"L" and len(value) == LABEL.size:
                _, reported, tx_time, is_fraud, src_partition, src_offset = LABEL.unpack(value)
                part.watermark_ms = max(part.watermark_ms, reported)
                if offset < part.skip_before:
                    keep = reported >= part.skip_labels_before_ms  # pending at the restored close
                else:
                    keep = _first_time(part, f"l{src_partition}", src_offset)
                if keep:
                    labels.append((key, reported, tx_time, is_fraud, offset))
        part.last_seen = time.monotonic()
        if tx_ids:
            part.terminals.add_transactions(tx_ids, np.asarray(tx_ts, dtype=np.int64))
            self.metrics.events.labels("transaction").inc(len(tx_ids))
        if labels:
            part.terminals.buffer_labels(_label_batch(labels))
            part.label_offsets += [(o, r) for _, r, _, fraud, o in labels if fraud]
            self.metrics.events.labels("label").inc(len(labels))

    def _count_late(self, kind: str, ts_ms: int) -> None:
        if ts_ms // MS_PER_DAY <= self.closed_day:
            self.metrics.late.labels(kind).inc()

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
        terminals = part.terminals
        terminals.close(day)
        terminals.ring.expire_idle(day + 1, LATE_GRACE_DAYS)
        keys, slots, expired = terminals.ring.drain_changes()
        values = self.codec.encode(terminals.ring, slots) if len(slots) else []
        topic = self.settings.terminal_topic
        messages: list[dict[str, object]] = [
            {"key": k.encode(), "value": v} for k, v in zip(keys, values, strict=True)
        ]
        messages += [{"key": k.encode(), "value": None} for k in expired]
        cutoff = (day + 1) * MS_PER_DAY
        part.label_offsets = [(o, r) for o, r in part.label_offsets if r >= cutoff]
        replay_from = min([o for o, _ in part.label_offsets], default=part.position)
        marker = {
            "day": day,
            "position": part.position,
            "replay_from": replay_from,
            "ring_days": self.codec.n_days,
        }
        messages.append({"key": MARKER_KEY, "value": encode_marker(marker)})
        self.sink.send(topic, messages, partition=p)
        self.metrics.rows.inc(len(keys))
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
        dump = read_partition(self.reader_config, self.settings.terminal_topic, p)
        part = PartitionAgg(TerminalFeatures(self.config))
        load_rows(
            part.terminals.ring, self.codec, {k.decode("utf-8", "replace"): v for k, v in dump.rows.items()}
        )
        part.terminals.ring.drain_changes()
        if dump.marker is not None:
            day = int(dump.marker["day"])
            part.terminals.closed_day = day
            self.closed_day = max(self.closed_day, day)
            part.position = int(dump.marker["replay_from"])
            part.skip_before = int(dump.marker["position"])
            part.skip_labels_before_ms = (day + 1) * MS_PER_DAY
            part.sources = {str(k): int(v) for k, v in dump.marker.get("sources", {}).items()}
        return part

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._flush_commits(timeout_s=10.0)
        for tp in partitions:
            self.parts.pop(tp.partition, None)
        logger.info("partitions_revoked", extra={"partitions": [tp.partition for tp in partitions]})


def _first_time(part: PartitionAgg, source: str, offset: int) -> bool:
    """True (and remembered) unless this source record was already applied."""
    if offset <= part.sources.get(source, -1):
        return False
    part.sources[source] = offset
    return True


def _label_batch(rows: Sequence[tuple[str, int, int, bool, int]]) -> LabelBatch:
    return LabelBatch(
        transaction_id=[""] * len(rows),
        customer_id=[""] * len(rows),
        terminal_id=[r[0] for r in rows],
        is_fraud=np.asarray([r[3] for r in rows], dtype=bool),
        reported_ts_ms=np.asarray([r[1] for r in rows], dtype=np.int64),
        tx_ts_ms=np.asarray([r[2] for r in rows], dtype=np.int64),
    )
