"""Cases, the analysts' unit of work: what the console shows and changes, and the one interface between the
console (the web layer) and where cases live (PostgreSQL, scorer/db/cases.py).

A case is a card (a customer id; investigators check cards, which is what Card Precision@k measures), so
`case_id` is the customer id. Every review or decline decision of the card (a model's or a rule's) joins
its case: a card without a case gets one (`open`), a closed case gets the alert and becomes `reopened`.
Statuses: open -> in_review (someone took it) -> closed (with an outcome) -> reopened (a new alert) ->
in_review -> closed ... A verdict on a closed case is a reversal: its labels are published again with the
new value, so every consumer corrects what it counted.

A verdict becomes labels (schemas/label.schema.json with `source: analyst`, `analyst_id`, `case_id`): fraud
labels every alerted transaction of the case's episode, or, given a transaction, every transaction of the
card from that one on (a card is compromised from a moment on); genuine labels the alerted transactions
not fraud; inconclusive labels nothing, except that it withdraws an earlier fraud verdict (is_fraud false
for what that verdict labelled, since an unlabelled transaction counts as genuine everywhere).

The interface works inside the caller's database transaction: a change writes its own audit entry, the
caller publishes the labels and rules, and commits only when all of that succeeded (so a verdict the
broker refused leaves the case as it was).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

STATUSES = ("open", "in_review", "closed", "reopened")
OPEN_STATUSES = ("open", "in_review", "reopened")
OUTCOMES = ("fraud", "genuine", "inconclusive")
ALERT_ACTIONS = ("review", "decline")


class CaseError(ValueError):
    """A change the case's state refuses (unknown card, an outcome not in OUTCOMES, a note too long, a
    transaction not of this card...): its message is the reason shown to the user (HTTP 4xx)."""


@dataclass(frozen=True, slots=True)
class QueueFilter:
    """Which cases the queue lists. Every field narrows; the defaults list every open case."""

    assigned_to: str | None = None  # "mine" is the signed-in analyst
    unassigned: bool = False
    action: str | None = None  # cases with at least one alert of this action (review, decline)
    rule_id: str | None = None  # cases with at least one decision of this rule
    model_version: str | None = None  # cases with at least one alert scored by this version
    statuses: tuple[str, ...] = OPEN_STATUSES
    limit: int = 50
    offset: int = 0


@dataclass(frozen=True, slots=True)
class CaseSummary:
    """A case as the queue lists it. Alerts and amounts count the case's current episode (since it was
    opened or last reopened). `priority` orders the queue (higher first; its formula is documented where it
    is computed); `over_sla` is true when the oldest unanswered alert is older than the SLA setting."""

    case_id: str
    customer_id: str
    status: str
    outcome: str | None  # of the last verdict, if any
    assigned_to: str | None
    opened_at: datetime  # of the current episode
    last_alert_at: datetime
    closed_at: datetime | None
    alerts: int
    max_score: float
    amount_at_risk: float
    actions: tuple[str, ...]  # the distinct actions of the episode's alerts
    rule_ids: tuple[str, ...]  # the distinct rules that hit in the episode
    model_versions: tuple[str, ...]
    age_hours: float
    over_sla: bool
    priority: float


@dataclass(frozen=True, slots=True)
class Reason:
    """One reason a decision gives: a feature, its value as scored, and its contribution to the score
    when the model can say it exactly (None otherwise)."""

    feature: str
    value: float
    contribution: float | None = None


@dataclass(frozen=True, slots=True)
class CaseTransaction:
    """One of the card's transactions over the case page's window, with its decision when stored."""

    transaction_id: str
    event_time: datetime
    amount: float
    terminal_id: str
    score: float | None
    action: str | None
    action_source: str | None  # model, rule, policy ...
    rule_id: str | None
    model_version: str | None
    alerted: bool  # a review or decline
    reasons: tuple[Reason, ...]
    features: tuple[tuple[str, float], ...]  # the feature vector as scored, by name (empty if not stored)
    label: bool | None  # fraud (True), genuine (False) by its labels, None when unlabelled


@dataclass(frozen=True, slots=True)
class TerminalView:
    """A terminal the card used: its risk as the last decision there saw it, and other cards alerted there
    recently (a compromised terminal shows up as several cards)."""

    terminal_id: str
    risk: float | None
    alerts: int  # alerted decisions at the terminal over the window, every card
    other_cards: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Note:
    author: str
    at: datetime
    text: str


@dataclass(frozen=True, slots=True)
class CaseEvent:
    """One step of the case's history: opened, alert, assigned, note, closed, reopened, reversed..."""

    at: datetime
    actor: str | None  # None for the system (the store opening or reopening it)
    kind: str
    detail: str


@dataclass(frozen=True, slots=True)
class CaseDetail:
    summary: CaseSummary
    transactions: tuple[CaseTransaction, ...]  # newest first
    terminals: tuple[TerminalView, ...]
    notes: tuple[Note, ...]
    history: tuple[CaseEvent, ...]  # oldest first


@dataclass(frozen=True, slots=True)
class Capacity:
    """The team's load: open cases against what it can answer in a day."""

    open_cases: int
    unassigned: int
    opened_today: int
    closed_today: int
    daily_capacity: int


@dataclass(frozen=True, slots=True)
class LabelOut:
    """A label a verdict publishes (schemas/label.schema.json, source analyst)."""

    transaction_id: str
    customer_id: str
    terminal_id: str
    is_fraud: bool
    event_time: datetime  # the labelled transaction's time (the label's `timestamp`)
    case_id: str
    analyst_id: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """What closing a case did: the case after it and the labels to publish (corrections included)."""

    summary: CaseSummary
    labels: tuple[LabelOut, ...]
    reversal: bool  # the case was closed already: the labels correct an earlier verdict


@dataclass(frozen=True, slots=True)
class Actor:
    """Who asks for a change, and from where (the audit log records both)."""

    name: str
    role: str  # analyst or lead
    remote_addr: str | None = None


class CaseStore(Protocol):
    """Cases where they live. Reads never change anything. A change happens in the caller's open database
    transaction (the caller commits, or rolls back when publishing what it decided fails), writes its own
    audit entry, and raises CaseError with the reason when refused (nothing changed then). Times come from
    the database's clock; the SLA is the store's setting."""

    def queue(self, flt: QueueFilter) -> list[CaseSummary]:
        """Cases matching `flt`, highest priority first (ties: oldest first)."""
        ...

    def capacity(self, daily_capacity: int) -> Capacity: ...

    def case(self, case_id: str, days: int = 30) -> CaseDetail | None:
        """The case page's content, or None for an unknown case."""
        ...

    def assign(self, case_id: str, assignee: str | None, actor: Actor) -> CaseSummary:
        """Assign (None: unassign). An open or reopened case becomes in_review; a closed one is refused."""
        ...

    def note(self, case_id: str, text: str, actor: Actor) -> None: ...

    def close(
        self, case_id: str, outcome: str, actor: Actor, from_transaction_id: str | None = None
    ) -> Verdict:
        """Close with an outcome (a reversal when already closed); the labels it publishes. The same
        verdict twice is refused."""
        ...

    def audit(
        self, actor: Actor, action: str, case_id: str | None, rule_id: str | None, detail: dict[str, object]
    ) -> None:
        """Append an entry to the audit log (in the caller's transaction)."""
        ...


RULE_ACTIONS = ("block_customer", "allow_customer_past_rule")
UNBLOCK = "unblock_customer"  # a request that removes the case's block (a fraud verdict reversed)


@dataclass(frozen=True, slots=True)
class RuleRequest:
    """A rule a verdict asks for: block the card (after fraud), or let it past one rule (after genuine),
    until `expires_at` in event time (the rules machinery masks a rule out by each transaction's own time;
    the console sets it from the card's newest transaction plus the days asked for)."""

    kind: str  # one of RULE_ACTIONS, or UNBLOCK (expires_at and past_rule_id then unused)
    customer_id: str
    expires_at: datetime
    case_id: str
    analyst_id: str
    past_rule_id: str | None = None  # for allow_customer_past_rule: the rule the card may pass
    note: str = ""


class VerdictPublisher(Protocol):
    """Publishes what a verdict decided: its labels to the labels topic and its rules to the rules topic.
    Returns once the broker acknowledged every record; raises ScorerError (one line) if any was refused or
    not acknowledged in time, so the caller rolls the verdict back."""

    def publish(
        self, labels: Sequence[LabelOut], rules: Sequence[RuleRequest], reported_at: datetime | None = None
    ) -> None:
        """reported_at: the labels' report time (None: the publisher's clock, which is now)."""
        ...
