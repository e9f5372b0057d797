"""What the console does, without HTTP: who may do what, each change in one database transaction, and a
verdict committed only once the broker has acknowledged its labels and rules.

Roles: an analyst reads everything, takes an unassigned case (or drops their own), writes notes, and closes
cases that are unassigned or theirs; a lead also assigns to anyone, closes any case, and closes in bulk.
A refused action raises Forbidden (HTTP 403) or CaseError (HTTP 409/422 with its reason); nothing changed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
from prometheus_client import CollectorRegistry, Counter, Histogram
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool

from scorer.cases.model import (
    UNBLOCK,
    Actor,
    Capacity,
    CaseDetail,
    CaseError,
    CaseSummary,
    QueueFilter,
    RuleRequest,
    Verdict,
    VerdictPublisher,
)
from scorer.db import accounts
from scorer.db.accounts import Principal
from scorer.db.cases import BandFigures, PostgresCases
from scorer.db.deadline import Deadline, DeadlineExceeded
from scorer.errors import ScorerError
from scorer.kafka.verdicts import RuleRefused, rule_id_for

logger = logging.getLogger(__name__)
MAX_RULE_DAYS = 365
BULK_MAX = 100


class Forbidden(PermissionError):
    """The signed-in user's role does not allow this action: the message says what would."""


class Unavailable(ScorerError):
    """The database or the broker did not answer: HTTP 503, nothing changed."""


@dataclass(frozen=True, slots=True)
class Closing:
    """A verdict as the analyst asked for it."""

    case_id: str
    outcome: str
    from_transaction_id: str | None = None
    block_days: int = 0  # fraud: block the card for this many days (0: no block)
    allow_rule_id: str | None = None  # genuine: let the card past this rule ...
    allow_days: int = 0  # ... for this many days


@dataclass(frozen=True, slots=True)
class QueuePage:
    """The cases, the team's capacity, the last 24 hours' alerts by action, and what the last 7 days'
    verdicts say of each action band."""

    cases: list[CaseSummary]
    capacity: Capacity
    alerts_24h: dict[str, int]
    figures: BandFigures


class ConsoleMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.verdicts = Counter(
            "scorer_console_verdicts", "Verdicts committed, by outcome", ["outcome"], registry=registry
        )
        self.refused = Counter(
            "scorer_console_refused", "Actions refused, by why (forbidden, invalid, unavailable)", ["why"],
            registry=registry,
        )  # fmt: skip
        self.signins = Counter(
            "scorer_console_signins",
            "Sign-ins by result (ok, wrong, throttled)",
            ["result"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "scorer_console_request_seconds", "Time to answer a page or API call", ["route"], registry=registry,
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
        )  # fmt: skip


class ConsoleService:
    """The console's actions over a connection pool and a verdict publisher."""

    def __init__(
        self,
        pool: ConnectionPool[psycopg.Connection[TupleRow]],
        publisher: VerdictPublisher,
        metrics: ConsoleMetrics,
        sla_hours: float,
        daily_capacity: int,
        label_time: str = "now",
        deadline_s: float = 10.0,
        publish_s: float = 12.0,
    ) -> None:
        self.pool = pool
        # a request's database work ends within deadline_s even against a frozen server (then 503); a
        # verdict's transaction also waits for the broker's acknowledgement, up to publish_s more
        self.deadline_s = deadline_s
        self.publish_s = publish_s
        self.label_time = label_time  # "now", or "event": a label is reported at the card's newest event time
        self.publisher = publisher
        self.metrics = metrics
        self.sla_hours = sla_hours
        self.daily_capacity = daily_capacity

    @contextmanager
    def _cases(self, extra_s: float = 0.0) -> Iterator[tuple[psycopg.Connection[TupleRow], PostgresCases]]:
        """A connection in a transaction, committed when the block ends (rolled back on an error), all
        within the request's deadline: a server that stops answering costs the request a 503, never a
        thread held for ever (db/deadline.py shuts the socket; the pool then drops the connection)."""
        try:
            with (
                self.pool.connection() as conn,
                Deadline(conn, self.deadline_s + extra_s, what="a console request"),
            ):
                yield conn, PostgresCases(conn, self.sla_hours)
                conn.commit()  # inside the deadline: a commit can hang on a frozen server too
        except (psycopg.OperationalError, TimeoutError, DeadlineExceeded) as exc:
            self.metrics.refused.labels("unavailable").inc()
            raise Unavailable(f"the database did not answer: {str(exc).strip().splitlines()[0]}") from exc

    # sign-in --------------------------------------------------------------------------------------------

    def sign_in(self, name: str, password: str, remote_addr: str | None) -> tuple[str, str] | None:
        """(session token, CSRF token), or None for a wrong name or password. Forbidden when throttled."""
        with self._cases() as (conn, cases):
            if accounts.throttled(conn, name, remote_addr):
                self.metrics.signins.labels("throttled").inc()
                raise Forbidden("too many failed sign-ins: wait a few minutes")
            role = accounts.check_password(conn, name, password, remote_addr)
            if role is None:
                self.metrics.signins.labels("wrong").inc()
                return None
            tokens = accounts.open_session(conn, name, remote_addr)
            cases.audit(Actor(name, role, remote_addr), "signed_in", None, None, {})
        self.metrics.signins.labels("ok").inc()
        return tokens

    def sign_out(self, token: str) -> None:
        with self._cases() as (conn, _):
            accounts.close_session(conn, token)

    def session(self, token: str) -> Principal | None:
        with self._cases() as (conn, _):
            return accounts.session(conn, token)

    def api_token(self, token: str) -> Principal | None:
        with self._cases() as (conn, _):
            return accounts.token_principal(conn, token)

    # reads ----------------------------------------------------------------------------------------------

    def queue(self, flt: QueueFilter) -> QueuePage:
        """The queue page's content, read in one transaction."""
        with self._cases() as (conn, cases):
            rows = conn.execute(
                "select action, count(*) from case_alerts where alerted_at > now() - interval '1 day' group by action"
            ).fetchall()
            return QueuePage(
                cases.queue(flt), cases.capacity(self.daily_capacity), {str(a): int(n) for a, n in rows},
                cases.verdict_figures(),
            )  # fmt: skip

    def case(self, case_id: str) -> CaseDetail | None:
        with self._cases() as (_, cases):
            return cases.case(case_id)

    # changes --------------------------------------------------------------------------------------------

    def assign(self, who: Actor, case_id: str, assignee: str | None) -> CaseSummary:
        with self._cases() as (_, cases):
            current = cases.summary(case_id)
            if current is None:
                raise CaseError(f"no case {case_id!r}")
            self._may_assign(who, current, assignee)
            return cases.assign(case_id, assignee, who)

    def note(self, who: Actor, case_id: str, text: str) -> None:
        with self._cases() as (_, cases):
            cases.note(case_id, text, who)

    def close(self, who: Actor, closing: Closing) -> Verdict:
        """Close (or reverse) a case, publish its labels and rules, then commit; on a refused or
        unacknowledged publish the transaction rolls back (Unavailable) and the case is as it was."""
        rules = _rule_days(closing)
        with self._cases(extra_s=self.publish_s) as (conn, cases):
            current = cases.summary(closing.case_id)
            if current is None:
                raise CaseError(f"no case {closing.case_id!r}")
            self._may_close(who, current)
            verdict = cases.close(closing.case_id, closing.outcome, who, closing.from_transaction_id)
            requests, newest = self._rule_requests(conn, who, closing, rules, current)
            for request in requests:
                rule_id = rule_id_for(_block_of(request) if request.kind == UNBLOCK else request)
                cases.audit(who, "rule_requested", closing.case_id, rule_id, _rule_detail(request))
            reported_at = newest if self.label_time == "event" else None
            try:
                self.publisher.publish(verdict.labels, requests, reported_at)
            except RuleRefused as exc:
                self.metrics.refused.labels("invalid").inc()
                raise CaseError(f"the verdict's rule was refused, nothing changed: {exc}") from exc
            except ScorerError as exc:
                self.metrics.refused.labels("unavailable").inc()
                raise Unavailable(f"the verdict was not published, nothing changed: {exc}") from exc
        self.metrics.verdicts.labels(closing.outcome).inc()
        logger.info(
            "verdict",
            extra={"case": closing.case_id, "outcome": closing.outcome, "labels": len(verdict.labels),
                   "rules": len(requests), "analyst": who.name, "reversal": verdict.reversal},
        )  # fmt: skip
        return verdict

    def bulk_close(self, who: Actor, case_ids: list[str], outcome: str) -> list[tuple[str, str | None]]:
        """Close each case on its own (a lead's action); per case, None or why it was refused."""
        if who.role != "lead":
            raise Forbidden("bulk close is a lead's action")
        if not 1 <= len(case_ids) <= BULK_MAX:
            raise CaseError(f"bulk close takes 1 to {BULK_MAX} cases")
        results: list[tuple[str, str | None]] = []
        for case_id in case_ids:
            try:
                self.close(who, Closing(case_id, outcome))
                results.append((case_id, None))
            except (CaseError, Forbidden) as exc:
                results.append((case_id, str(exc)))
        return results

    # who may --------------------------------------------------------------------------------------------

    def _may_assign(self, who: Actor, case: CaseSummary, assignee: str | None) -> None:
        if who.role == "lead":
            return
        own = assignee in (None, who.name) and case.assigned_to in (None, who.name)
        if not own:
            self.metrics.refused.labels("forbidden").inc()
            raise Forbidden("an analyst takes unassigned cases or drops their own; a lead reassigns")

    def _may_close(self, who: Actor, case: CaseSummary) -> None:
        if who.role != "lead" and case.assigned_to not in (None, who.name):
            self.metrics.refused.labels("forbidden").inc()
            raise Forbidden(f"case {case.case_id} is {case.assigned_to}'s: they or a lead close it")

    def _rule_requests(
        self,
        conn: psycopg.Connection[TupleRow],
        who: Actor,
        closing: Closing,
        days: int,
        current: CaseSummary,
    ) -> tuple[list[RuleRequest], datetime | None]:
        """The rules the verdict asks for (a block, an exemption, or, when it reverses a fraud verdict, the
        removal of that verdict's block), and the card's newest decision's event time (rules expire in
        event time, counted from it)."""
        row = conn.execute(
            "select max(event_time) from decisions where customer_id = %s", (closing.case_id,)
        ).fetchone()
        newest: datetime | None = row[0] if row else None
        requests: list[RuleRequest] = []
        note = f"{closing.outcome} verdict on case {closing.case_id} by {who.name}"
        if days:
            if newest is None:
                raise CaseError(f"card {closing.case_id} has no decisions to date a rule from")
            kind = "block_customer" if closing.outcome == "fraud" else "allow_customer_past_rule"
            requests.append(
                RuleRequest(
                    kind,
                    closing.case_id,
                    newest + timedelta(days=days),
                    closing.case_id,
                    who.name,
                    closing.allow_rule_id,
                    note,
                )  # fmt: skip
            )
        if current.status == "closed" and current.outcome == "fraud" and closing.outcome != "fraud":
            at = newest or datetime.now(UTC)
            requests.append(RuleRequest(UNBLOCK, closing.case_id, at, closing.case_id, who.name, None, note))
        return requests, newest


def _rule_days(closing: Closing) -> int:
    """The days of the rule the closing asks for (0: none), refused with a reason when it does not fit."""
    if closing.block_days and closing.outcome != "fraud":
        raise CaseError("a card is blocked after a fraud verdict only")
    if (closing.allow_rule_id or closing.allow_days) and closing.outcome != "genuine":
        raise CaseError("a card is let past a rule after a genuine verdict only")
    if bool(closing.allow_rule_id) != bool(closing.allow_days):
        raise CaseError("letting a card past a rule needs both the rule and the days")
    days = closing.block_days or closing.allow_days
    if not 0 <= days <= MAX_RULE_DAYS:
        raise CaseError(f"a rule lasts 1 to {MAX_RULE_DAYS} days")
    return days


def _block_of(request: RuleRequest) -> RuleRequest:
    """The block an UNBLOCK request removes (its id is the one a block of this case was published under)."""
    return RuleRequest("block_customer", request.customer_id, request.expires_at, request.case_id, "")


def _rule_detail(request: RuleRequest) -> dict[str, object]:
    return {
        "kind": request.kind,
        "expires_at": request.expires_at.isoformat(),
        "past_rule": request.past_rule_id,
    }
