"""What an analyst's verdict publishes (scorer.cases.model.VerdictPublisher): its labels to the labels topic
and its rules to `scorer-rules`, all acknowledged by the broker before `publish` returns.

Labels are schemas/label.schema.json with `source: "analyst"`, `analyst_id` and `case_id`, `reported_at` the
publisher's clock and `timestamp` the labelled transaction's event time; keyed by customer id, so a card's
labels and any later correction of them share a partition and are read in the order they were published.
Rules are the records `scorer rules add` writes (kafka/rules.py, rule_record), checked against the rules in
force as it checks them (kafka/rules.py, check_rule). A rule's id comes from its request alone
(`case-<case id>-block`, `case-<case id>-past-<rule id>`), so a retried verdict replaces its own rule
instead of adding another.

A record not acknowledged in time may still be written by the broker (its answer may be what was lost): a
caller that rolls the verdict back and retries it publishes the same rule ids and labels again, which
replace what landed (consumers take a transaction's newest label).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import numpy as np
import orjson
from confluent_kafka import KafkaError, KafkaException

from scorer.cases.model import RULE_ACTIONS, UNBLOCK, LabelOut, RuleRequest
from scorer.config import Settings
from scorer.errors import ScorerError
from scorer.events.timestamps import rfc3339_ms
from scorer.kafka import clients
from scorer.kafka.rules import check_rule, read_rules, rule_record
from scorer.policy.rules import EXEMPTION, RULE_ID, Rule, RuleError

logger = logging.getLogger(__name__)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
POLL_S = 0.05  # how long one wait for delivery reports lasts (another thread's poll may serve ours)
GRACE_S = 1.0  # past the producer's own delivery timeout, the longest a report may take to come back


class RuleRefused(ScorerError):
    """The rule a verdict asks for cannot join those in force (it contradicts one, or is malformed):
    nothing was sent, and retrying will not help (the console answers 409 with the reason)."""


class Producing(Protocol):
    """The confluent-kafka Producer methods the publisher calls (tests pass fakes that refuse or hold)."""

    def produce(
        self, topic: str, value: bytes | None = ..., key: bytes | None = ..., *, on_delivery: Any = ...
    ) -> None: ...

    def poll(self, timeout: float = ...) -> int: ...

    def flush(self, timeout: float = ...) -> int: ...


class _Deliveries:
    """The delivery reports one publish waits for; thread-safe (another thread's poll may serve them)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.outstanding = 0
        self.refusals: list[str] = []
        self.fatal = False  # the producer itself is broken (idempotence lost): it must be replaced
        self.done = threading.Event()
        self.done.set()

    def sent(self) -> None:
        with self.lock:
            self.outstanding += 1
            self.done.clear()

    def refused(self, err: KafkaError, topic: str) -> None:
        self.refusals.append(f"{topic}: {err.str()}")
        self.fatal |= bool(err.fatal())

    def report(self, err: KafkaError | None, msg: Any) -> None:
        with self.lock:
            self.outstanding -= 1
            if err is not None:
                self.refused(err, msg.topic() if msg is not None else "?")
            if self.outstanding == 0:
                self.done.set()


def rule_id_for(request: RuleRequest) -> str:
    """The id of the rule a verdict asks for, from the request alone: `case-<case>-block` for a block,
    `case-<case>-past-<rule>` for an exemption; when that is not a valid rule id (a case id with other
    characters, or too long) the case part is the first 12 hex digits of its SHA-256 instead."""
    what = "block" if request.kind == "block_customer" else f"past-{request.past_rule_id}"
    readable = f"case-{request.case_id}-{what}"
    if RULE_ID.fullmatch(readable):
        return readable
    digest = hashlib.sha256(request.case_id.encode()).hexdigest()[:12]
    hashed = f"case-{digest}-{what}"
    if RULE_ID.fullmatch(hashed):
        return hashed
    rule_digest = hashlib.sha256(what.encode()).hexdigest()[:12]
    return f"case-{digest}-{what[:5]}{rule_digest}"  # a past rule id too long to repeat in full


def rule_for(request: RuleRequest, now_ms: int) -> Rule:
    """The rule a verdict's request becomes (its note names the case and the analyst); ScorerError with
    the reason when the request is malformed (an unknown kind, a naive expiry, a bad past rule id...)."""
    if request.kind not in RULE_ACTIONS:
        raise ScorerError(
            f"rule request of case {request.case_id}: kind {request.kind!r} is not one of {RULE_ACTIONS}"
        )
    note = f"case {request.case_id}, analyst {request.analyst_id}" + (
        f": {request.note}" if request.note else ""
    )
    action = "approve" if request.kind == EXEMPTION else "decline"
    try:
        return Rule(
            rule_id_for(request), request.kind, action, (request.customer_id,),
            expires_ms=epoch_ms(request.expires_at), note=note, created_ms=now_ms, past_rule=request.past_rule_id,
        )  # fmt: skip
    except RuleError as exc:
        raise ScorerError(f"rule request of case {request.case_id}: {exc}") from exc


def epoch_ms(at: datetime) -> int:
    """A timezone-aware time in ms since the epoch; ScorerError for a naive one (its zone is unknown)."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ScorerError(f"time {at.isoformat()} has no time zone: give it one (UTC)")
    return (at - EPOCH) // timedelta(milliseconds=1)


def label_value(label: LabelOut, reported_ms: int) -> bytes:
    """A verdict's label as the labels topic carries it (schemas/label.schema.json, source analyst)."""
    reported, stamp = rfc3339_ms(np.asarray([reported_ms, epoch_ms(label.event_time)], dtype=np.int64))
    return orjson.dumps(
        {
            "transaction_id": label.transaction_id,
            "customer_id": label.customer_id,
            "terminal_id": label.terminal_id,
            "is_fraud": label.is_fraud,
            "reported_at": reported,
            "timestamp": stamp,
            "source": "analyst",
            "analyst_id": label.analyst_id,
            "case_id": label.case_id,
        }
    )


class KafkaVerdictPublisher:
    """Publishes verdicts with one idempotent producer (acks=all) for its lifetime; thread-safe.

    `publish` returns once the broker acknowledged every record, and raises ScorerError (one line) when a
    request is malformed or contradicts a rule in force (then nothing is sent), or when any record is
    refused or not acknowledged within `timeout_s` (some records may have landed: see the module's note).
    The producer gives a record up after `timeout_s` itself, so nothing of a failed publish is sent later.
    `rules_in_force` reads the rules topic (tests give a dict); `clock` gives the labels' `reported_at` (a
    simulation passes its own); `grace_s` is how long, past `timeout_s`, the producer's reports may take.
    """

    def __init__(
        self,
        settings: Settings,
        timeout_s: float = 10.0,
        producer: Producing | None = None,
        rules_in_force: Callable[[], Mapping[str, Rule]] | None = None,
        clock: Callable[[], float] = time.time,
        grace_s: float = GRACE_S,
    ) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self.grace_s = grace_s
        self.clock = clock
        self.rules_in_force = rules_in_force or (lambda: read_rules(settings, timeout_s))
        self.config = {**settings.producer_config(), "message.timeout.ms": max(1, int(timeout_s * 1000))}
        self._given = producer
        self._producer: Producing | None = producer
        self._lock = threading.Lock()  # guards replacing the producer and closing
        self._closed = False

    def publish(
        self, labels: Sequence[LabelOut], rules: Sequence[RuleRequest], reported_at: datetime | None = None
    ) -> None:
        """Publish the labels and rules of one verdict; returns once every record is acknowledged. An
        UNBLOCK request publishes the tombstone of its case's block rule."""
        now_ms = int(self.clock() * 1000)
        reported_ms = now_ms if reported_at is None else epoch_ms(reported_at)
        records: list[tuple[str, bytes, bytes | None]] = [
            (self.settings.labels_topic, lbl.customer_id.encode(), label_value(lbl, reported_ms))
            for lbl in labels
        ]
        for request in (r for r in rules if r.kind == UNBLOCK):
            block = RuleRequest(
                "block_customer", request.customer_id, request.expires_at, request.case_id, ""
            )
            records.append((self.settings.rules_topic, *rule_record(rule_id_for(block), None)))
        try:
            new_rules = [rule_for(r, now_ms) for r in rules if r.kind != UNBLOCK]
        except ScorerError as exc:
            raise RuleRefused(str(exc)) from exc
        if new_rules:
            in_force = self._in_force()
            for rule in new_rules:  # a retried verdict replaces its own rule (same id)
                try:
                    check_rule(rule, in_force, replace=True)
                except ScorerError as exc:
                    raise RuleRefused(str(exc)) from exc
            records += [(self.settings.rules_topic, *rule_record(r.rule_id, r)) for r in new_rules]
        if records:
            self._send(records)

    def close(self) -> None:
        """Deliver what is still queued (up to `timeout_s`); `publish` is refused afterwards."""
        with self._lock:
            self._closed = True
            producer, self._producer = self._producer, None
        if producer is not None:
            producer.flush(self.timeout_s)

    def _in_force(self) -> Mapping[str, Rule]:
        try:
            return self.rules_in_force()
        except KafkaException as exc:  # ScorerError (and TopicMissing, one) pass as they are
            raise ScorerError(
                f"the rules in force could not be read from {self.settings.rules_topic}: {exc}"
            ) from exc

    def _producing(self) -> Producing:
        with self._lock:
            if self._closed:
                raise ScorerError("the verdict publisher is closed")
            if self._producer is None:
                self._producer = self._given or clients.producer(self.config)
            return self._producer

    def _send(self, records: list[tuple[str, bytes, bytes | None]]) -> None:
        producer = self._producing()
        reports = _Deliveries()
        deadline = time.monotonic() + self.timeout_s + self.grace_s
        try:
            for topic, key, value in records:
                self._produce(producer, reports, topic, key, value, deadline)
            while not reports.done.wait(0) and time.monotonic() < deadline:
                producer.poll(POLL_S)
        except KafkaException as exc:  # refused at produce time: too large, a fatal producer state...
            with reports.lock:
                reports.refused(exc.args[0], topic)
        if reports.fatal:
            self._replace(producer)
        if reports.refusals or reports.outstanding:
            failed = len(reports.refusals) + reports.outstanding
            why = reports.refusals[0] if reports.refusals else f"not acknowledged within {self.timeout_s:g} s"
            logger.error(
                "verdict_not_published", extra={"records": len(records), "failed": failed, "error": why}
            )
            raise ScorerError(f"verdict not published: {failed} of {len(records)} records failed ({why})")

    def _produce(
        self,
        producer: Producing,
        reports: _Deliveries,
        topic: str,
        key: bytes,
        value: bytes | None,
        deadline: float,
    ) -> None:
        """Queue one record, polling while the producer's queue is full (until `deadline`)."""
        while True:
            reports.sent()
            try:
                producer.produce(topic, value, key, on_delivery=reports.report)
                return
            except BufferError:
                reports.report(None, None)  # not queued: take it back
                if time.monotonic() >= deadline:
                    raise ScorerError(
                        f"verdict not published: the producer's queue stayed full for {self.timeout_s:g} s"
                    ) from None
                producer.poll(POLL_S)
            except KafkaException:
                reports.report(None, None)
                raise

    def _replace(self, broken: Producing) -> None:
        """A fatal producer error (its idempotence broken): the next publish gets a new producer."""
        with self._lock:
            if self._producer is broken and self._given is None:
                self._producer = None
