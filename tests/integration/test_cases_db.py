"""Cases on the real PostgreSQL: alerts open and reopen cases through the store's tables, the queue, the case
page, verdicts and the labels they publish (reversals included), the audit log that cannot be changed, and
console accounts (passwords, sessions, tokens, throttling)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from scorer.cases.model import Actor, CaseError, QueueFilter
from scorer.db import accounts
from scorer.db.cases import PostgresCases
from scorer.db.migrate import migrate
from scorer.features.engine import FEATURE_NAMES

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
ANNA = Actor("anna", "analyst", "127.0.0.1")
LEAD = Actor("lena", "lead", "127.0.0.1")


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(database_url) as c:
        migrate(c)
        yield c


def add_decision(
    conn: psycopg.Connection[tuple[object, ...]],
    tx: str,
    customer: str,
    *,
    minutes: int = 0,
    action: str = "review",
    score: float = 0.7,
    amount: float = 100.0,
    terminal: str = "T1",
    source: str = "model",
) -> None:
    """A decision row as the store writes it (the partition made as the store makes it)."""
    at = T0 + timedelta(minutes=minutes)
    conn.execute("select store_ensure_partition('decisions', %s)", (at.date(),))
    features = [0.0] * len(FEATURE_NAMES)
    features[FEATURE_NAMES.index("term_risk_7d")] = 0.25
    conn.execute(
        """
        insert into decisions (event_day, transaction_id, event_time, customer_id, terminal_id, amount, score,
            flagged, action, action_source, threshold, model_version, reasons, scored_at, features,
            source_partition, source_offset)
        values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 0.5, 'default/2', %s::jsonb, %s, %s, 0, 0)
        on conflict do nothing
        """,
        (
            at.date(),
            tx,
            at,
            customer,
            terminal,
            amount,
            score,
            action != "approve",
            action,
            source,
            '[{"feature": "amount", "value": 100.0, "contribution": 1.5}]',
            at,
            features,
        ),
    )


def test_alerts_open_a_case_per_card_and_a_replay_joins_nothing_twice(
    conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    add_decision(conn, "a1", "C1", score=0.6)
    add_decision(conn, "a2", "C1", minutes=5, score=0.9, amount=250.0, action="decline")
    add_decision(conn, "a3", "C1", minutes=6, action="approve")
    add_decision(conn, "a2", "C1", minutes=5, score=0.9, amount=250.0, action="decline")  # a replay
    add_decision(conn, "b1", "C2", source="block-terminal-T9", action="decline", terminal="T9")
    cases = PostgresCases(conn, sla_hours=4)
    (c1,) = [c for c in cases.queue(QueueFilter()) if c.case_id == "C1"]
    assert (c1.status, c1.alerts, c1.max_score, c1.amount_at_risk) == ("open", 2, 0.9, 350.0)
    assert c1.actions == ("decline", "review")
    assert cases.queue(QueueFilter(rule_id="block-terminal-T9"))[0].case_id == "C2"
    assert [c.case_id for c in cases.queue(QueueFilter(action="review"))] == ["C1"]
    history = cases.case("C1")
    assert history is not None
    assert [e.kind for e in history.history] == ["opened"]
    assert [t.transaction_id for t in history.transactions] == ["a3", "a2", "a1"]  # newest first
    assert history.transactions[1].reasons[0].contribution == 1.5
    assert dict(history.transactions[0].features)["term_risk_7d"] == 0.25
    assert history.terminals[0].risk == 0.25


def test_the_queue_puts_the_highest_score_first_and_filters_by_assignee(
    conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    add_decision(conn, "x1", "LOW", score=0.55)
    add_decision(conn, "x2", "HIGH", score=0.95)
    cases = PostgresCases(conn, sla_hours=4)
    assert [c.case_id for c in cases.queue(QueueFilter())] == ["HIGH", "LOW"]
    cases.assign("LOW", "anna", ANNA)
    assert [c.case_id for c in cases.queue(QueueFilter(assigned_to="anna"))] == ["LOW"]
    assert [c.case_id for c in cases.queue(QueueFilter(unassigned=True))] == ["HIGH"]
    assert cases.summary("LOW").status == "in_review"  # type: ignore[union-attr]
    capacity = cases.capacity(daily_capacity=10)
    assert (capacity.open_cases, capacity.unassigned, capacity.daily_capacity) == (2, 1, 10)


def test_a_fraud_verdict_labels_the_alerts_and_a_new_alert_reopens_the_case(
    conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    add_decision(conn, "f1", "C3")
    add_decision(conn, "f2", "C3", minutes=1, action="approve")
    cases = PostgresCases(conn, sla_hours=4)
    verdict = cases.close("C3", "fraud", ANNA)
    assert [(lb.transaction_id, lb.is_fraud, lb.case_id, lb.analyst_id) for lb in verdict.labels] == [
        ("f1", True, "C3", "anna")
    ]
    assert (verdict.summary.status, verdict.summary.outcome, verdict.reversal) == ("closed", "fraud", False)
    with pytest.raises(CaseError, match="already closed as fraud"):
        cases.close("C3", "fraud", ANNA)
    add_decision(conn, "f2b", "C3", minutes=5, action="decline", source="case-C3-block")  # its own block
    assert cases.summary("C3").status == "closed"  # type: ignore[union-attr]
    add_decision(conn, "f3", "C3", minutes=10, action="decline")
    summary = cases.summary("C3")
    assert summary is not None
    assert (summary.status, summary.alerts) == ("reopened", 1)
    kinds = [e.kind for e in cases.case("C3").history]  # type: ignore[union-attr]
    assert kinds == ["opened", "closed", "reopened"]


def test_fraud_from_a_transaction_on_labels_the_card_and_a_reversal_corrects_it(
    conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    add_decision(conn, "g0", "C4", minutes=0, action="approve")
    add_decision(conn, "g1", "C4", minutes=1, action="approve")
    add_decision(conn, "g2", "C4", minutes=2)
    cases = PostgresCases(conn, sla_hours=4)
    fraud = cases.close("C4", "fraud", ANNA, from_transaction_id="g1")
    assert [lb.transaction_id for lb in fraud.labels] == ["g1", "g2"]
    genuine = cases.close("C4", "genuine", LEAD)  # reversed by the lead
    assert genuine.reversal
    assert sorted((lb.transaction_id, lb.is_fraud) for lb in genuine.labels) == [("g1", False), ("g2", False)]
    figures = cases.verdict_figures()
    assert figures.answered == {"review": (1, 0)} and figures.precision("review") == 0.0  # the latest verdict
    inconclusive = cases.close("C4", "inconclusive", LEAD)
    assert inconclusive.labels == ()  # genuine labels stand for "not fraud" already
    with pytest.raises(CaseError, match="not one of card"):
        cases.close("C4", "fraud", ANNA, from_transaction_id="a-transaction-of-someone-else")


def test_changes_are_refused_with_a_reason(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    add_decision(conn, "h1", "C5")
    cases = PostgresCases(conn, sla_hours=4)
    with pytest.raises(CaseError, match="no case"):
        cases.close("NOPE", "fraud", ANNA)
    with pytest.raises(CaseError, match="outcome must be"):
        cases.close("C5", "maybe", ANNA)
    with pytest.raises(CaseError, match="1 to 4000"):
        cases.note("C5", "   ", ANNA)
    cases.note("C5", "called the cardholder", ANNA)
    cases.close("C5", "genuine", ANNA)
    with pytest.raises(CaseError, match="is closed"):
        cases.assign("C5", "anna", ANNA)
    detail = cases.case("C5")
    assert detail is not None and detail.notes[0].text == "called the cardholder"


def test_the_audit_log_cannot_be_changed(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    add_decision(conn, "i1", "C6")
    conn.commit()
    for statement in ("update audit_log set actor = 'x'", "delete from audit_log", "truncate audit_log"):
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute(statement)
        conn.rollback()
    assert conn.execute("select count(*) from audit_log").fetchone() == (1,)


def test_accounts_passwords_sessions_tokens_and_throttling(
    conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    accounts.add_user(conn, "anna", "analyst", "correct horse battery")
    with pytest.raises(accounts.AccountError, match="exists"):
        accounts.add_user(conn, "anna", "lead", "correct horse battery")
    stored = conn.execute("select password_hash from console_users").fetchone()
    assert stored is not None and "correct horse" not in str(stored[0])
    assert accounts.check_password(conn, "anna", "correct horse battery", "10.0.0.1") == "analyst"
    assert accounts.check_password(conn, "nobody", "correct horse battery", "10.0.0.1") is None
    token, csrf = accounts.open_session(conn, "anna", "10.0.0.1")
    principal = accounts.session(conn, token)
    assert principal is not None and (principal.name, principal.csrf_token) == ("anna", csrf)
    api = accounts.add_token(conn, "siem", "anna")
    assert accounts.token_principal(conn, api) == accounts.Principal("anna", "analyst", None)
    accounts.revoke_token(conn, "siem")
    assert accounts.token_principal(conn, api) is None
    for _ in range(accounts.THROTTLE_PER_USER):
        assert accounts.check_password(conn, "anna", "wrong password!", "10.0.0.2") is None
    assert accounts.throttled(conn, "anna", "10.0.0.3")
    accounts.set_disabled(conn, "anna", True)
    assert accounts.session(conn, token) is None
