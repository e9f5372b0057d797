"""Exactly-once mode (`processing_guarantee = "exactly_once"`): one Kafka transaction per input partition
and commit interval holds that partition's decisions, flags, shadow decisions and dead letters, its
customer-state snapshot and its input offset, so they are all visible or none is.

Each assigned input partition p gets its own transactional producer, `transactional.id` =
`<transactional_id_prefix>-<input topic>-<p>` (the Kafka Streams "eos-v1" design). When p moves to
another scorer, the new owner's init_transactions fences the old owner's producer for p and aborts its
open transaction, so a paused or partitioned old owner (a zombie) can never commit for p again: its
next commit fails with _FENCED and it stops. Offsets go in with the consumer's group metadata
(send_offsets_to_transaction), so on Kafka 2.5+ the group's generation fences them too (KIP-447).
Any transactional failure stops the process (exit 1); a restart resumes from the last committed
transaction, which is exactly where its state snapshot stands.

This class has the methods of scoring.commits.CommitTracker that the run loop calls.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from scorer.config import Settings
from scorer.kafka import clients
from scorer.kafka.sink import produce_all

logger = logging.getLogger(__name__)
Record = dict[str, Any]
SnapshotFn = Callable[[int, int], list[Record]]
TXN_TIMEOUT_S = 30.0  # init, offsets and commit calls: longer means the broker is not answering
ABORT_TIMEOUT_S = 5.0  # aborting a revoked or lost partition's transaction
FENCED = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}


class GroupMember(Protocol):
    """What a transaction needs of the consumer: its group metadata, which fences a stale member."""

    def consumer_group_metadata(self) -> Any: ...


class PartitionTransactions:
    """A transactional producer per assigned input partition, and what each has processed."""

    def __init__(
        self,
        settings: Settings,
        consumer: GroupMember,
        snapshot: SnapshotFn,
        on_commit: Callable[[], object] = lambda: None,
        producer_factory: Callable[[Mapping[str, Any]], Producer] = clients.producer,
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.snapshot = snapshot
        self.on_commit = on_commit
        self.factory = producer_factory
        self.producers: dict[int, Producer] = {}
        self.progress: dict[int, int] = {}
        self.failure: str | None = None
        self.commits = 0

    @property
    def assigned(self) -> set[int]:
        return set(self.producers)

    def transactional_id(self, partition: int) -> str:
        s = self.settings
        return f"{s.transactional_id_prefix or s.group}-{s.input_topic}-{partition}"

    def assign(self, partitions: Sequence[int]) -> None:
        """A producer per partition; init_transactions fences the partition's previous owner."""
        for p in partitions:
            config = {**self.settings.producer_config(), "transactional.id": self.transactional_id(p)}
            producer = self.factory(config)
            self._call(p, functools.partial(producer.init_transactions, TXN_TIMEOUT_S))
            self._call(p, producer.begin_transaction)
            self.producers[p] = producer

    def send(self, partition: int, topic: str, records: Sequence[Record], out: int | None = None) -> None:
        """Queue records into partition `partition`'s open transaction (all to `out` when given).

        A full queue is waited out; any other refusal (fenced, a record over a limit, an unknown
        partition) fails the process: the transaction is never committed, so nothing is half visible.
        """
        if self.failure is not None:
            return
        producer = self.producers[partition]
        where: dict[str, Any] = {} if out is None else {"partition": out}
        refused = produce_all(
            producer, topic, records, functools.partial(self._poll, partition, producer), **where
        )
        if refused is not None:
            self._fail(f"transaction of {self.settings.input_topic}[{partition}]", refused)

    def _poll(self, partition: int, producer: Producer) -> None:
        self._call(partition, functools.partial(producer.poll, 0.05))

    def send_one(
        self, partition: int, topic: str, value: bytes | None, key: bytes | None, headers: Any
    ) -> None:
        """A dead letter into the partition's transaction (its size is bounded by kafka/deadletters.py)."""
        producer = self.producers[partition]
        while self.failure is None:
            try:
                producer.produce(topic, value=value, key=key, headers=headers)
                return
            except BufferError:
                self._poll(partition, producer)
            except KafkaException as exc:  # fatal (fenced), or over a limit the broker set lower than ours
                self._fail(
                    f"dead letter in the transaction of {self.settings.input_topic}[{partition}]", exc.args[0]
                )

    def _fail(self, what: str, err: Any) -> None:
        fenced = isinstance(err, KafkaError) and err.code() in FENCED
        self.failure = f"{what}: {err}" + (
            " (fenced: another scorer owns the partition now)" if fenced else ""
        )
        logger.error("fenced" if fenced else "transaction_failed", extra={"error": self.failure})

    def processed(self, partition: int, next_offset: int) -> None:
        self.progress[partition] = next_offset

    def begin(self) -> None:
        """Commit every partition with progress: its snapshot and offset join its transaction."""
        progress, self.progress = self.progress, {}
        for p, offset in sorted(progress.items()):
            if self.failure is None and p in self.producers:
                self._commit(p, offset)

    def _commit(self, p: int, offset: int) -> None:
        producer = self.producers[p]
        s = self.settings
        self.send(p, s.state_topic, self.snapshot(p, offset), out=p)
        # No delivery callbacks: a write the broker refuses (or a producer fenced by a newer owner of the
        # partition) makes flush, send_offsets or commit fail, and that is where it is reported.
        if not self._call(p, lambda: producer.flush(TXN_TIMEOUT_S)):
            return
        offsets = [TopicPartition(s.input_topic, p, offset)]
        metadata = self.consumer.consumer_group_metadata()
        if not self._call(p, lambda: producer.send_offsets_to_transaction(offsets, metadata, TXN_TIMEOUT_S)):
            return
        if self._call(p, lambda: producer.commit_transaction(TXN_TIMEOUT_S)) and self._call(
            p, producer.begin_transaction
        ):
            self.commits += 1
            self.on_commit()

    def _call(self, p: int, step: Callable[[], object]) -> bool:
        """Run a transactional step; a failure is the process's (it stops, the transaction is aborted)."""
        if self.failure is not None:
            return False
        try:
            step()
        except KafkaException as exc:
            self._fail(f"transaction of {self.settings.input_topic}[{p}]", exc.args[0] if exc.args else exc)
            return False
        return True

    def advance(self, asynchronous: bool = True) -> None:
        """Let each producer do its work (commits happen in `begin`)."""
        for p, producer in list(self.producers.items()):
            self._call(p, functools.partial(producer.poll, 0))

    def flush(self, timeout_s: float) -> bool:
        """Commit everything processed now (revocation, shutdown)."""
        self.begin()
        return self.failure is None

    def forget(self, partitions: Sequence[int], lost: bool = False) -> None:
        """Partitions revoked or lost: abort what their transactions still hold, drop their producers.

        A lost partition (or any after a failure) is not aborted here: its new owner's init_transactions
        aborts what is open and fences these producers, and the broker's transaction timeout would too.
        """
        for p in partitions:
            producer = self.producers.pop(p, None)
            self.progress.pop(p, None)
            if producer is None or lost or self.failure is not None:
                continue
            try:
                producer.abort_transaction(ABORT_TIMEOUT_S)
            except KafkaException as exc:  # fenced already, or the broker is gone: nothing more to undo
                logger.warning("transaction_abort_failed", extra={"partition": p, "error": str(exc)})

    def close(self) -> None:
        self.forget(sorted(self.producers))
