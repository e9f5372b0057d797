"""scorer serve's readiness: the scorers' consumer group as the admin API describes it (kafka/groups.py).

A fake admin client answers describe_consumer_groups as Kafka does (members with their assignments) or as
tansu does (the state only)."""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import ConsumerGroupState, KafkaError, KafkaException, TopicPartition

from scorer.kafka.groups import ScorerGroupWatch

TOPIC = "transactions"


@dataclass
class Assignment:
    topic_partitions: list[TopicPartition]


@dataclass
class Member:
    assignment: Assignment


@dataclass
class Description:
    state: ConsumerGroupState
    members: list[Member] = field(default_factory=list)


class FakeAdmin:
    """describe_consumer_groups answers with the next description given, or fails as a broker can."""

    def __init__(self) -> None:
        self.answer: Description | Exception = Description(ConsumerGroupState.UNKNOWN)

    def describe_consumer_groups(self, groups: list[str], request_timeout: float = 0.0) -> dict[str, Any]:
        future: Future[Description] = Future()
        if isinstance(self.answer, Exception):
            future.set_exception(self.answer)
        else:
            future.set_result(self.answer)
        return {groups[0]: future}


def members(*held: list[int]) -> list[Member]:
    return [
        Member(Assignment([TopicPartition(TOPIC, p) for p in ps] + [TopicPartition("other", 0)]))
        for ps in held
    ]


def test_ready_once_the_group_is_stable_with_every_partition_assigned() -> None:
    admin = FakeAdmin()
    watch = ScorerGroupWatch(admin, "fraud-scorer", TOPIC, partitions=4)
    assert watch.why_not() is not None  # not described yet
    for state, held in (
        (ConsumerGroupState.EMPTY, ()),  # no scorer has joined yet
        (ConsumerGroupState.PREPARING_REBALANCING, ([0, 1],)),  # a scorer joining
        (ConsumerGroupState.STABLE, ([0, 1], [2])),  # settled, but partition 3 is nobody's
    ):
        admin.answer = Description(state, members(*held))
        watch.check()
        assert watch.why_not() is not None, state
    admin.answer = Description(ConsumerGroupState.STABLE, members([0, 1], [2, 3]))
    watch.check()
    assert watch.why_not() is None


def test_a_rebalance_later_keeps_it_ready_but_no_scorer_at_all_does_not() -> None:
    admin = FakeAdmin()
    watch = ScorerGroupWatch(admin, "fraud-scorer", TOPIC, partitions=2)
    admin.answer = Description(ConsumerGroupState.STABLE, members([0, 1]))
    watch.check()
    admin.answer = Description(ConsumerGroupState.COMPLETING_REBALANCING, members([0]))
    watch.check()
    assert watch.why_not() is None  # seconds of fallbacks beat every instance out of the load balancer
    for failure in (KafkaException(KafkaError(KafkaError._TRANSPORT, "broker down")), TimeoutError()):
        admin.answer = failure
        watch.check()
        assert watch.why_not() is None  # the last view stays; the reply listener reports the broker
    admin.answer = Description(ConsumerGroupState.EMPTY)
    watch.check()
    assert "no scorer in the group fraud-scorer" in (watch.why_not() or "")
    admin.answer = Description(ConsumerGroupState.STABLE, members([0, 1]))
    watch.check()
    assert watch.why_not() is None


def test_a_broker_that_lists_no_members_is_judged_by_the_state() -> None:
    """tansu answers Stable with no members: the state is all there is to go on."""
    admin = FakeAdmin()
    watch = ScorerGroupWatch(admin, "g", TOPIC, partitions=4)
    admin.answer = Description(ConsumerGroupState.UNKNOWN)
    watch.check()
    assert "has not settled" in (watch.why_not() or "")
    admin.answer = Description(ConsumerGroupState.STABLE)
    watch.check()
    assert watch.why_not() is None


def test_the_watch_thread_follows_the_group() -> None:
    admin = FakeAdmin()
    admin.answer = Description(ConsumerGroupState.STABLE, members([0]))
    watch = ScorerGroupWatch(admin, "g", TOPIC, partitions=1).start()
    try:
        deadline = time.monotonic() + 10
        while watch.why_not() is not None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        watch.close()
