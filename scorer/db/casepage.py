"""The case page's reads (scorer/db/cases.py's `case`): the card's decisions over a window with their
reasons, features and labels, the terminals it used and the other cards alerted there, notes, history."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import TupleRow

from scorer.cases.model import CaseEvent, CaseTransaction, Note, Reason, TerminalView
from scorer.features.engine import FEATURE_NAMES

Conn = psycopg.Connection[TupleRow]
TERMINAL_RISK_FEATURE = "term_risk_7d"  # the terminal's risk as the case page shows it
CASE_ROWS_MAX = 500  # a case page lists at most this many of the card's decisions


def transactions(conn: Conn, customer: str, days: int) -> list[CaseTransaction]:
    """The card's decisions over `days` before its newest one (event time), newest first."""
    rows = conn.execute(
        """
        with newest as (select max(event_time) as t from decisions where customer_id = %(c)s)
        select d.transaction_id, d.event_time, d.amount, d.terminal_id, d.score, d.action, d.action_source,
               d.rule_id, d.model_version, d.reasons, d.features,
               (select bool_or(l.is_fraud) from labels l where l.transaction_id = d.transaction_id)
        from decisions d, newest n
        where d.customer_id = %(c)s and d.event_time > n.t - make_interval(days => %(days)s)
          and d.event_day >= ((n.t at time zone 'UTC') - make_interval(days => %(days)s + 1))::date
        order by d.event_time desc, d.transaction_id
        limit %(limit)s
        """,
        {"c": customer, "days": days, "limit": CASE_ROWS_MAX},
    ).fetchall()
    return [_transaction(r) for r in rows]


def terminals(
    conn: Conn, case_id: str, transactions: Sequence[CaseTransaction], since: datetime
) -> list[TerminalView]:
    risks: dict[str, float | None] = {}
    for tx in transactions:  # newest first: the first seen is the terminal's latest risk
        if tx.terminal_id not in risks:
            risks[tx.terminal_id] = dict(tx.features).get(TERMINAL_RISK_FEATURE)
    if not risks:
        return []
    rows = conn.execute(
        """
        select terminal_id, count(*), coalesce(array_agg(distinct case_id) filter (where case_id <> %s), '{}')
        from case_alerts where terminal_id = any(%s) and event_time >= %s
        group by terminal_id
        """,
        (case_id, list(risks), since),
    ).fetchall()
    seen = {str(r[0]): (int(r[1]), tuple(sorted(r[2]))) for r in rows}
    views = [TerminalView(t, risk, *seen.get(t, (0, ()))) for t, risk in risks.items()]
    return sorted(views, key=lambda v: (-len(v.other_cards), -v.alerts, v.terminal_id))


def notes(conn: Conn, case_id: str) -> list[Note]:
    rows = conn.execute(
        "select author, at, text from case_notes where case_id = %s order by at, id", (case_id,)
    ).fetchall()
    return [Note(str(r[0]), r[1], str(r[2])) for r in rows]


def history(conn: Conn, case_id: str) -> list[CaseEvent]:
    rows = conn.execute(
        "select at, actor, action, detail from audit_log where case_id = %s order by id", (case_id,)
    ).fetchall()
    return [CaseEvent(r[0], r[1], str(r[2]), _describe(r[3])) for r in rows]


def _transaction(row: Sequence[Any]) -> CaseTransaction:
    features = row[10]
    named = tuple(zip(FEATURE_NAMES, (float(v) for v in features), strict=False)) if features else ()
    return CaseTransaction(
        transaction_id=str(row[0]),
        event_time=row[1],
        amount=float(row[2]),
        terminal_id=str(row[3]),
        score=float(row[4]),
        action=str(row[5]),
        action_source=str(row[6]),
        rule_id=row[7],
        model_version=str(row[8]),
        alerted=row[5] != "approve",
        reasons=tuple(_reason(r) for r in (row[9] or ()) if isinstance(r, dict)),
        features=named,
        label=row[11],
    )


def _reason(item: dict[str, Any]) -> Reason:
    contribution = item.get("contribution")
    return Reason(
        feature=str(item.get("feature", "")),
        value=float(item.get("value") or 0.0),
        contribution=None if contribution is None else float(contribution),
    )


def _describe(detail: Any) -> str:
    """An audit entry's detail as one readable line (keys in their stored order)."""
    if not isinstance(detail, dict):
        return ""
    return ", ".join(f"{k}: {_short(v)}" for k, v in detail.items() if v is not None)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
