"""What a scored batch produces, and where: decisions, flags, shadow decisions, dead letters and replies.

In at_least_once mode everything goes through the sink, whose delivery epochs the commit tracker waits
on; in exactly_once mode each record's outputs go into its input partition's transaction, so the
offsets commit with them. Either way a reply to `scorer serve` (replies.py) travels with the decision it
carries.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from confluent_kafka import Message

from scorer.config import Settings
from scorer.kafka.deadletters import Limits, dead_letter, send_dead_letter
from scorer.kafka.sink import Sink
from scorer.kafka.transactions import PartitionTransactions
from scorer.runtime.metrics import Metrics
from scorer.scoring.core import Scored
from scorer.scoring.replies import Replies

I64 = npt.NDArray[np.int64]
REPLY_PARTITION = 0  # a reply topic has one partition (scorer serve creates it)


class Outputs:
    """The producing side of the loop."""

    def __init__(
        self,
        settings: Settings,
        sink: Sink,
        transactions: PartitionTransactions | None,
        metrics: Metrics,
        now_ms: Callable[[], int],
    ) -> None:
        self.settings = settings
        self.sink = sink
        self.transactions = transactions
        self.metrics = metrics
        self.now_ms = now_ms

    def send(self, scored: Scored, partitions: I64) -> None:
        """A batch's decisions, flags and shadow decisions; `partitions`: the input partition of each
        decision (exactly_once puts each into its partition's transaction)."""
        if self.transactions is None:
            s = self.settings
            if scored.decisions:
                self.sink.send(s.decisions_topic, scored.decisions)
            if scored.flags:
                self.sink.send(s.flags_topic, scored.flags)
            if scored.shadow:
                self.sink.send(f"{s.decisions_topic}-shadow", scored.shadow)
        else:
            self._send_in_transactions(scored, partitions)

    def _send_in_transactions(self, scored: Scored, partitions: I64) -> None:
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

    def reply(self, replies: Replies) -> None:
        """Reply records, to partition 0 of each reply topic (in the input partition's transaction)."""
        for (topic, p), records in replies.items():
            if self.transactions is None:
                self.sink.send(topic, records, partition=REPLY_PARTITION)
            else:
                self.transactions.send(p, topic, records, out=REPLY_PARTITION)
            self.metrics.replies.inc(len(records))

    def dead_letter(self, msg: Message, reason: str, detail: str) -> None:
        s = self.settings
        limits = Limits(s.max_value_bytes, s.dead_letter_prefix_bytes)
        if self.transactions is None:
            send_dead_letter(self.sink, s.dlq_topic, msg, reason, detail, self.now_ms(), limits)
        else:  # in the record's transaction; a broker that refuses its size fails the transaction (README)
            record = dead_letter(msg, reason, detail, self.now_ms(), limits)
            self.transactions.send_one(
                msg.partition() or 0, s.dlq_topic, record.value, record.key, record.headers
            )
        self.metrics.dead_letters.labels(reason).inc()
