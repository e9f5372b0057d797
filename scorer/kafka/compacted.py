"""Compacted topics the scorer follows for its configuration (`scorer-control`, `scorer-rules`): read one
to its end now (read_compacted), or follow it in a thread (CompactedWatcher) that folds its records into a
value, such as the Serving of a deployment or a rule book, and hands the newest one to the run loop.

One watcher class serves both topics, so both have the same locking (the thread sets the value and
`take()` clears it under one lock: a value that lands while the loop takes the previous one is handed out
next, never lost), the same retries (a missing topic or an unreachable broker is retried with a growing
wait and logged once per change of state, never given up on) and the same error metrics
(`scorer_watcher_errors_total{topic_kind, reason}`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any, Generic, Protocol, TypeVar

from confluent_kafka import KafkaException

from scorer.config import Settings
from scorer.errors import ScorerError
from scorer.kafka.tables import TopicMissing, TopicReader
from scorer.runtime.metrics import Metrics

logger = logging.getLogger(__name__)
V = TypeVar("V")  # one record's value, parsed
T = TypeVar("T")  # what the loop takes: built from every key's newest parsed value
POLL_S = 0.2
MAX_RECORDS = 1000
# why a watcher could not read or use its topic (the label set of scorer_watcher_errors_total)
REASONS = ("topic_missing", "broker_error", "unreadable_record", "not_applied", "internal_error")


class CompactedSource(Protocol):
    """A compacted topic followed from its beginning (kafka.tables.TopicReader; fakes in tests)."""

    def start(self, timeout_s: float = 10.0) -> object:
        """Assign every partition; TopicMissing when the topic does not exist, KafkaException when the
        broker cannot be reached."""

    def read(self, timeout_s: float, max_records: int) -> list[tuple[int, bytes, bytes | None]]:
        """(partition, key, value) of what arrived; a None value is a tombstone."""

    def caught_up(self) -> bool:
        """Every partition read to its end."""

    def close(self) -> None: ...


def read_compacted(settings: Settings, topic: str, timeout_s: float = 10.0) -> dict[bytes, bytes]:
    """The newest value of every key of a compacted topic, read to its end (tombstoned keys left out).

    Raises TopicMissing when the topic does not exist, ScorerError when it cannot be read to its end
    within `timeout_s`, KafkaException when the broker does not answer.
    """
    reader = TopicReader(settings.consumer_config(group=f"{settings.group}-control"), topic)
    try:
        reader.start(timeout_s)
        table: dict[bytes, bytes | None] = {}
        deadline = time.monotonic() + timeout_s
        while not reader.caught_up():
            if time.monotonic() > deadline:
                raise ScorerError(f"topic {topic} could not be read to its end within {timeout_s:.0f} s")
            for _, key, value in reader.read(POLL_S, MAX_RECORDS):
                table[key] = value
        return {k: v for k, v in table.items() if v}
    finally:
        reader.close()


class Backoff:
    """How long to wait before the next attempt: `first_s`, doubled after each failure up to `max_s`."""

    def __init__(self, first_s: float = 0.5, max_s: float = 10.0) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self.next_s = first_s

    def failed(self) -> float:
        """The wait before the next attempt, after one more failure."""
        wait, self.next_s = self.next_s, min(self.next_s * 2, self.max_s)
        return wait

    def reset(self) -> None:
        self.next_s = self.first_s


class CompactedWatcher(Generic[V, T]):
    """Follows one compacted topic in a thread; `take()` gives the newest value built from it, once.

    Each record's value is parsed with `parse(key, value)` as it arrives; once the reader has caught up
    with the topic and something changed, `build(table)` turns every key's newest parsed value into the
    value handed out (None: nothing to hand out). `parse` and `build` refuse with ScorerError: a refused
    record is left out of the table (reason `unreadable_record`), a refused build keeps the value
    in force (`not_applied`); each is logged and counted once, not retried until a new record arrives.
    A record read again (after a reconnection) is no change and builds nothing.
    """

    def __init__(
        self,
        kind: str,
        open_source: Callable[[], CompactedSource],
        parse: Callable[[bytes, bytes], V],
        build: Callable[[Mapping[bytes, V]], T | None],
        metrics: Metrics,
        lock: AbstractContextManager[Any] | None = None,  # tests pass one that pauses the taker
    ) -> None:
        self.kind = kind
        self.open_source = open_source
        self.parse = parse
        self.build = build
        self.metrics = metrics
        self.lock = lock or threading.Lock()  # guards _ready: set by the thread, cleared by take()
        self.backoff = Backoff()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"{kind}-watcher", daemon=True)
        self._ready: T | None = None
        self._source: CompactedSource | None = None
        self._raw: dict[bytes, bytes] = {}  # every key's newest value as read (kept across reconnections)
        self._table: dict[bytes, V] = {}  # the same, parsed; refused records left out
        self._built: dict[bytes, bytes] | None = None  # _raw when build last ran
        self._changed = False
        self._trouble: str | None = None  # the reason the topic cannot be followed now, logged once
        for reason in REASONS:  # every series from the start: dashboards show zeros, not gaps
            metrics.watcher_errors.labels(kind, reason)
        metrics.watcher_readable.labels(kind).set(0)

    def take(self) -> T | None:
        """The newest value once built (then None until the next one)."""
        with self.lock:
            ready, self._ready = self._ready, None
        return ready

    def load_current(self, timeout_s: float = 10.0) -> bool:
        """Read the topic to its end now, before start(), so that take() gives what is in force (a
        restarted scorer must not decide with its configured model while the thread catches up).
        False when the topic could not be read (counted and logged; the thread keeps trying)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._guarded_turn() > 0:
                return False
            if self._source is not None and self._source.caught_up():
                return True
        self._failed("broker_error", f"not read to its end within {timeout_s:.0f} s")
        return False

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        """Stop the thread (waiting up to 5 s for a build in progress) and close the reader."""
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)
        elif self._source is not None:  # load_current opened it and the thread never ran
            self._source.close()

    def turn(self) -> float:
        """One step of the thread: connect if needed, fold what arrived, build once caught up.

        Returns how long to wait before the next step: 0, or a growing backoff after a failure (the
        reader is then closed and the next step connects again).
        """
        try:
            source = self._source or self._connect()
            records = source.read(POLL_S, MAX_RECORDS)
        except TopicMissing as exc:
            return self._failed("topic_missing", str(exc))
        except (KafkaException, ScorerError) as exc:
            return self._failed("broker_error", str(exc))
        self._following()
        self._fold(records)
        if self._changed and source.caught_up():
            self._changed = False
            self._rebuild()
        return 0.0

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                wait = self._guarded_turn()
                if wait > 0:
                    self.stop.wait(wait)
        finally:
            if self._source is not None:
                self._source.close()
                self._source = None

    def _guarded_turn(self) -> float:
        """turn(), with a failure of our own logged, counted and retried: never a dead thread, nor a
        traceback that stops the scorer (which goes on with the value it has)."""
        try:
            return self.turn()
        except Exception as exc:
            logger.exception("watcher_failed", extra={"topic_kind": self.kind})
            return self._failed("internal_error", f"{type(exc).__name__}: {exc}")

    def _connect(self) -> CompactedSource:
        source = self.open_source()
        try:
            source.start()
        except BaseException:
            source.close()
            raise
        self._source = source
        return source

    def _failed(self, reason: str, error: str) -> float:
        """Count the failure, log it when the state changes, drop the reader; the wait before a retry."""
        self.metrics.watcher_errors.labels(self.kind, reason).inc()
        self.metrics.watcher_readable.labels(self.kind).set(0)
        if self._trouble != reason:  # a topic missing for an hour is one line, not one every retry
            self._trouble = reason
            logger.error(
                "watcher_topic_unreadable", extra={"topic_kind": self.kind, "reason": reason, "error": error}
            )
        if self._source is not None:
            self._source.close()
            self._source = None
        return self.backoff.failed()

    def _following(self) -> None:
        if self._trouble is not None:
            logger.info("watcher_topic_readable", extra={"topic_kind": self.kind})
            self._trouble = None
        self.metrics.watcher_readable.labels(self.kind).set(1)
        self.backoff.reset()

    def _fold(self, records: list[tuple[int, bytes, bytes | None]]) -> None:
        for _, key, value in records:
            if self._raw.get(key) == value:
                continue  # read again: already folded
            self._changed = True
            if not value:  # a tombstone: the key is gone
                self._raw.pop(key, None)
                self._table.pop(key, None)
                continue
            self._raw[key] = value
            try:
                self._table[key] = self.parse(key, value)
            except ScorerError as exc:
                self._table.pop(key, None)
                self._refused("unreadable_record", str(exc), key)

    def _rebuild(self) -> None:
        if self._raw == self._built:
            return  # the same records as at the last build (read again after a reconnection)
        self._built = dict(self._raw)
        try:
            value = self.build(self._table)
        except ScorerError as exc:
            self._refused("not_applied", str(exc))
            return
        if value is None:
            return
        with self.lock:
            self._ready = value
        self.metrics.watcher_updated.labels(self.kind).set(time.time())

    def _refused(self, reason: str, error: str, key: bytes | None = None) -> None:
        self.metrics.watcher_errors.labels(self.kind, reason).inc()
        extra = {"topic_kind": self.kind, "reason": reason, "error": error}
        if key is not None:
            extra["key"] = key.decode("utf-8", "replace")
        logger.error("watcher_record_refused" if key is not None else "watcher_value_refused", extra=extra)
