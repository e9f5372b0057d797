"""How far the writers of terminal-events have got through their inputs: what the aggregator asks before it
closes a day without hearing from one of them.

A source is an input partition whose records end up in terminal-events: "t3" is partition 3 of the
transactions topic (written by the scorers' group, or by the aggregator's re-key group when
terminal_events_from = "aggregator"), "l0" partition 0 of the labels topic (the re-key group). A source is
drained when its writers' group has committed every record of it. A writer commits an input offset only
once the terminal events of the records before it are acknowledged, so every terminal event of a drained
source is in terminal-events before anything appended after the snapshot: the aggregator appends a fence
there and waits until it has folded it (aggregate/watermark.py). Not the partitions' end offsets: tansu
reports the last record batch's base offset + 1, short of the real end, and a close that trusted it folded
the last batch's labels a day late.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

EventTime = Callable[[str, bytes | None], int | None]  # (source kind, record value) -> event time, ms


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The writers' progress at one moment."""

    sources: frozenset[str]  # every source, from the input topics' metadata
    drained: frozenset[str]  # sources whose writers had committed all of their records
    lag: Mapping[tuple[str, int], int]  # records not committed yet, per (topic, partition)
    # per source with records not committed: the event time of the first of them (its writers have done
    # everything before it, so the source has in effect reached that time); left out when unreadable
    next_event_ms: Mapping[str, int] = field(default_factory=dict)


class WriterProgress:
    """Committed offsets of each source's writers' group against the source's end offset."""

    def __init__(
        self,
        inputs: Mapping[str, tuple[str, Consumer]],
        events: Consumer,
        timeout_s: float = 5.0,
        peek: Consumer | None = None,
        event_ms: EventTime = lambda kind, value: None,
    ) -> None:
        """`inputs`: source kind ("t", "l") -> (its topic, a consumer in the group that writes its terminal
        events; it is only asked for committed offsets). `events` reads the inputs' metadata and end offsets.
        `peek` (no group of its own to commit) reads a lagging source's first uncommitted record, whose
        event time `event_ms` tells."""
        self.inputs = dict(inputs)
        self.events = events
        self.peek = peek
        self.event_ms = event_ms
        self.timeout_s = timeout_s

    def partitions(self, topic: str) -> list[int]:
        """The topic's partitions (KafkaException when it cannot be described)."""
        meta = self.events.list_topics(topic, timeout=self.timeout_s).topics[topic]
        if meta.error is not None:
            raise KafkaException(meta.error)
        return sorted(meta.partitions)

    def sources(self) -> frozenset[str]:
        return frozenset(
            f"{kind}{p}" for kind, (topic, _) in self.inputs.items() for p in self.partitions(topic)
        )

    def snapshot(self) -> Snapshot:
        """Every source's progress. Raises KafkaException when the broker does not answer."""
        sources: set[str] = set()
        drained: set[str] = set()
        lag: dict[tuple[str, int], int] = {}
        upcoming: dict[str, int] = {}
        for kind, (topic, group) in self.inputs.items():
            asked = [TopicPartition(topic, p) for p in self.partitions(topic)]
            for tp in group.committed(asked, timeout=self.timeout_s):
                if tp.error is not None:
                    raise KafkaException(tp.error)
                low, high = self.events.get_watermark_offsets(tp, timeout=self.timeout_s, cached=False)
                behind = max(0, high - max(tp.offset, low))  # no commit yet: OFFSET_INVALID, below `low`
                source = f"{kind}{tp.partition}"
                sources.add(source)
                lag[(topic, tp.partition)] = behind
                if behind == 0:
                    drained.add(source)
                elif (ms := self._next_event_ms(kind, tp)) is not None:
                    upcoming[source] = ms
        return Snapshot(frozenset(sources), frozenset(drained), lag, upcoming)

    def _next_event_ms(self, kind: str, committed: TopicPartition) -> int | None:
        """The event time of the first record the writers have not committed (None: not read in time)."""
        if self.peek is None:
            return None
        start = committed.offset if committed.offset >= 0 else OFFSET_BEGINNING
        self.peek.assign([TopicPartition(committed.topic, committed.partition, start)])
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            for msg in self.peek.consume(1, 0.2):
                if msg.error() is None:
                    return self.event_ms(kind, msg.value())
        return None
