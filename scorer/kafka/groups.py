"""Whether the scorers can answer: their consumer group as the broker describes it (`scorer serve`'s readiness).

A request of `scorer serve` is answered by the scorer that owns its partition. Until the scorers' group
has settled with every partition of the transactions topic assigned, a request waits for nobody and
gets the fallback at its deadline; after it, the owner scores it in its next batch. The group's state
comes from the admin API (DescribeGroups: it needs Describe on the group), which reads nothing and
writes nothing: no probe transaction in the customers' windows or on the decisions topic.

Ready means: the group has been seen Stable with every input partition assigned at least once since
start, and is not Empty or Dead now (no scorer at all). A rebalance later keeps it ready: taking every
`serve` instance out of its load balancer for the seconds a rebalance lasts would turn the fallback, the
designed answer for those seconds, into refused connections.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import ConsumerGroupState, KafkaException

logger = logging.getLogger(__name__)
STARTING_EVERY_S = 0.5  # until the group is first seen serving: readiness follows it closely
STEADY_EVERY_S = 5.0  # then: a group that lost every member is seen within this
WAITING_LOG_EVERY_S = 10.0
GONE = (ConsumerGroupState.EMPTY, ConsumerGroupState.DEAD)


@dataclass(frozen=True, slots=True)
class GroupView:
    """One description of the group: its state and the input partitions its members hold (None: the
    broker listed no members, as tansu does, and only the state tells)."""

    state: str
    assigned: frozenset[int] | None


def describe(admin: Any, group: str, topic: str, timeout_s: float = 3.0) -> GroupView:
    """The group's state and who holds `topic`'s partitions; raises KafkaException if the broker fails."""
    future = admin.describe_consumer_groups([group], request_timeout=timeout_s)[group]
    description = future.result(timeout=timeout_s + 1.0)
    members = description.members or []
    held = {
        tp.partition
        for m in members
        if m.assignment is not None
        for tp in m.assignment.topic_partitions
        if tp.topic == topic
    }
    return GroupView(description.state.name, frozenset(held) if members else None)


class ScorerGroupWatch:
    """Describes the scorers' group from a thread; `why_not()` is None once they can answer."""

    def __init__(
        self,
        admin: Any,
        group: str,
        topic: str,
        partitions: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.admin = admin
        self.group = group
        self.topic = topic
        self.partitions = partitions
        self.clock = clock
        self.view: GroupView | None = None
        self.served = False  # seen Stable with every partition assigned since start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="serve-scorers", daemon=True)
        self._logged_s = -WAITING_LOG_EVERY_S

    def start(self) -> ScorerGroupWatch:
        self._thread.start()
        return self

    def check(self) -> None:
        """Describe the group once; a broker that does not answer leaves the last view in place."""
        try:
            view = describe(self.admin, self.group, self.topic)
        except (KafkaException, TimeoutError) as exc:  # the broker is slow or gone: the listener says so
            logger.debug("scorer_group_not_described", extra={"group": self.group, "error": str(exc)})
            return
        self.view = view
        if not self.served and self._serving(view):
            self.served = True
            logger.info("scorers_ready", extra={"group": self.group})
        elif self.why_not() is not None and self.clock() - self._logged_s >= WAITING_LOG_EVERY_S:
            self._logged_s = self.clock()
            logger.info("waiting_for_scorers", extra={"group": self.group, "reason": self.why_not()})

    def _serving(self, view: GroupView) -> bool:
        if view.state != ConsumerGroupState.STABLE.name:
            return False
        return view.assigned is None or view.assigned >= frozenset(range(self.partitions))

    def why_not(self) -> str | None:
        """None when the scorers can answer; else why not, for /readyz and the log."""
        view = self.view
        if view is None:
            return f"the scorers' group {self.group} has not been described yet"
        if view.state in (s.name for s in GONE):
            return f"no scorer in the group {self.group} (state {view.state}): start `scorer run`"
        if not self.served:
            held = (
                ""
                if view.assigned is None
                else f", {len(view.assigned)} of {self.partitions} partitions held"
            )
            return f"the scorers' group {self.group} has not settled yet (state {view.state}{held})"
        return None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
            except Exception:  # a bug here must not freeze readiness silently: logged, tried again
                logger.exception("scorer_group_check_failed", extra={"group": self.group})
            self._stop.wait(STEADY_EVERY_S if self.served else STARTING_EVERY_S)

    def close(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
