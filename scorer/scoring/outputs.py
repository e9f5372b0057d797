"""What a scored batch produces, and to which topic: decisions, flags, shadow decisions, dead letters,
replies and monitoring records. How they are delivered (at-least-once or exactly-once) is the Delivery's
business (delivery.py); a reply to `scorer serve` (replies.py) travels with the decision it carries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from scorer.config import Settings
from scorer.kafka.deadletters import Limits, dead_letter
from scorer.runtime.metrics import Metrics
from scorer.scoring.consumed import ConsumedBatch
from scorer.scoring.delivery import Delivery
from scorer.scoring.replies import Replies
from scorer.scoring.scored import DeadLetter, Record, Scored

I64 = npt.NDArray[np.int64]
REPLY_PARTITION = 0  # a reply topic has one partition (scorer serve creates it)


class Outputs:
    """The producing side of the loop: topics and record formats over a Delivery."""

    def __init__(
        self, settings: Settings, delivery: Delivery, metrics: Metrics, now_ms: Callable[[], int]
    ) -> None:
        self.settings = settings
        self.delivery = delivery
        self.metrics = metrics
        self.now_ms = now_ms
        self.limits = Limits(settings.max_value_bytes, settings.dead_letter_prefix_bytes)

    def decisions(self, scored: Scored, sources: I64) -> None:
        """A batch's decisions, flags and shadow decisions; `sources`: each decision's input partition."""
        s, put = self.settings, self.delivery.put
        if scored.decisions:
            put(s.decisions_topic, scored.decisions, sources)
        if scored.flags:
            put(s.flags_topic, scored.flags, sources[scored.flag_rows])
        if scored.shadow:
            put(f"{s.decisions_topic}-shadow", scored.shadow, sources)

    def replies(self, replies: Replies) -> None:
        """Reply records, to partition 0 of each reply topic (with their input partition's outputs)."""
        for (topic, p), records in replies.items():
            sources = np.full(len(records), p, dtype=np.int64)
            self.delivery.put(topic, records, sources, out=REPLY_PARTITION)
            self.metrics.replies.inc(len(records))

    def dead_letters(self, batch: ConsumedBatch, dead: Sequence[DeadLetter]) -> None:
        """The dead letters of `batch`'s records at `dead[i].index`, original bytes and reason headers."""
        for d in dead:
            msg = batch.records[d.index]
            letter = dead_letter(msg, d.reason, d.detail, self.now_ms(), self.limits)
            self.delivery.put_dead_letter(self.settings.dlq_topic, letter, int(batch.partitions[d.index]))
            self.metrics.dead_letters.labels(d.reason).inc()

    def monitoring(self, records: Sequence[Record]) -> None:
        if records:
            self.delivery.put_monitoring(self.settings.monitoring_topic, records)
