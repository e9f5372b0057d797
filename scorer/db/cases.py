"""Cases in PostgreSQL (migration 0003): the CaseStore the console works through.

Every statement is parameterised; reads use the indexes named in 0003 (the queue: cases_open; a card's
decisions: decisions_card; a terminal's alerts: case_alerts_terminal). Changes lock the case's row
(`for update`), so two analysts closing the same case at once are serialised: the second sees the first's
verdict and is refused or reverses it, never both applied blind.

Priority (higher first): max_score + 0.2 * min(1, amount_at_risk / 1000) + 0.3 * min(1.5, age / SLA).
The score dominates; a large amount or a case waiting past its SLA lifts it by up to a fifth and nearly
half a score point, so nothing waits forever behind fresher high scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg.rows import TupleRow

from scorer.cases.model import (
    OPEN_STATUSES,
    OUTCOMES,
    Actor,
    Capacity,
    CaseDetail,
    CaseError,
    CaseSummary,
    LabelOut,
    QueueFilter,
    Verdict,
)
from scorer.db import casepage

NOTE_MAX_CHARS = 4000

_SUMMARY_COLUMNS = """
    c.case_id, c.status, c.outcome, c.assigned_to, c.opened_at, c.last_alert_at, c.closed_at, c.alerts,
    c.max_score, c.amount_at_risk,
    extract(epoch from now() - c.opened_at) / 3600.0 as age_hours,
    c.max_score + 0.2 * least(1.0, c.amount_at_risk / 1000.0)
        + 0.3 * least(1.5, extract(epoch from now() - c.opened_at) / 3600.0 / %(sla)s) as priority
"""
# the summaries of the cases `{inner}` selects (in its order), with their episodes' distinct actions, rules
# and model versions, looked up for those cases only (after the inner query's limit)
_WITH_SETS = """
    select s.*, e.actions, e.rules, e.versions
    from ({inner}) s
    cross join lateral (
        select
            coalesce(array_agg(distinct a.action), '{{}}') as actions,
            coalesce(array_agg(distinct a.rule_id) filter (where a.rule_id is not null), '{{}}') as rules,
            coalesce(array_agg(distinct a.model_version), '{{}}') as versions
        from case_alerts a where a.case_id = s.case_id and a.episode = s.episode
    ) e
    order by s.priority desc, s.opened_at
"""


@dataclass(frozen=True, slots=True)
class BandFigures:
    """Per action band: (alerts answered by a verdict, of which fraud); cards blocked in the last day."""

    answered: dict[str, tuple[int, int]]
    blocked_today: int

    def precision(self, action: str) -> float | None:
        n, fraud = self.answered.get(action, (0, 0))
        return fraud / n if n else None


class PostgresCases:
    """CaseStore on one connection; the caller owns the transaction (see scorer.cases.model.CaseStore).

    sla_hours: how long an alert may wait for a verdict before its case is over SLA."""

    def __init__(self, conn: psycopg.Connection[TupleRow], sla_hours: float) -> None:
        if not sla_hours > 0:
            raise ValueError("sla_hours must be positive")
        self.conn = conn
        self.sla_hours = sla_hours

    # reads ----------------------------------------------------------------------------------------------

    def queue(self, flt: QueueFilter) -> list[CaseSummary]:
        where, params = _queue_where(flt)
        params |= {"sla": self.sla_hours, "limit": flt.limit, "offset": flt.offset}
        inner = (
            f"select {_SUMMARY_COLUMNS}, c.episode from cases c where {where} "  # noqa: S608 (fixed text)
            "order by priority desc, c.opened_at limit %(limit)s offset %(offset)s"
        )
        rows = self.conn.execute(_WITH_SETS.format(inner=inner), params).fetchall()
        return [self._summary(row) for row in rows]

    def capacity(self, daily_capacity: int) -> Capacity:
        row = self.conn.execute(
            """
            select
                count(*) filter (where status <> 'closed'),
                count(*) filter (where status <> 'closed' and assigned_to is null),
                count(*) filter (where opened_at >= date_trunc('day', now())),
                count(*) filter (where status = 'closed' and closed_at >= date_trunc('day', now()))
            from cases
            where status <> 'closed' or closed_at >= date_trunc('day', now())
               or opened_at >= date_trunc('day', now())
            """
        ).fetchone() or (0, 0, 0, 0)  # an aggregate always returns a row
        return Capacity(int(row[0]), int(row[1]), int(row[2]), int(row[3]), daily_capacity)

    def verdict_figures(self, days: int = 7) -> BandFigures:
        """What the team's verdicts say of the policy's bands over the last `days` (each case's latest
        verdict per episode): per action, alerts answered and the share that were fraud; and the cards
        blocked in the last 24 hours."""
        rows = self.conn.execute(
            """
            with latest as (
                select distinct on (case_id, episode) case_id, episode, is_fraud
                from case_verdicts where at > now() - make_interval(days => %s) and is_fraud is not null
                order by case_id, episode, id desc
            )
            select a.action, count(*), count(*) filter (where l.is_fraud)
            from latest l join case_alerts a using (case_id, episode)
            group by a.action
            """,
            (days,),
        ).fetchall()
        blocked = self.conn.execute(
            "select count(*) from audit_log where action = 'rule_requested' and detail->>'kind' = 'block_customer' "
            "and at > now() - interval '1 day'"
        ).fetchone() or (0,)
        return BandFigures({str(a): (int(n), int(f)) for a, n, f in rows}, int(blocked[0]))

    def summary(self, case_id: str) -> CaseSummary | None:
        inner = f"select {_SUMMARY_COLUMNS}, c.episode from cases c where c.case_id = %(case)s"  # noqa: S608
        row = self.conn.execute(
            _WITH_SETS.format(inner=inner), {"sla": self.sla_hours, "case": case_id}
        ).fetchone()
        return None if row is None else self._summary(row)

    def case(self, case_id: str, days: int = 30) -> CaseDetail | None:
        summary = self.summary(case_id)
        if summary is None:
            return None
        transactions = casepage.transactions(self.conn, summary.customer_id, days)
        since = transactions[-1].event_time if transactions else summary.opened_at
        return CaseDetail(
            summary=summary,
            transactions=tuple(transactions),
            terminals=tuple(casepage.terminals(self.conn, case_id, transactions, since)),
            notes=tuple(casepage.notes(self.conn, case_id)),
            history=tuple(casepage.history(self.conn, case_id)),
        )

    # changes --------------------------------------------------------------------------------------------

    def assign(self, case_id: str, assignee: str | None, actor: Actor) -> CaseSummary:
        status, _, _ = self._lock(case_id)
        if status == "closed":
            raise CaseError(f"case {case_id} is closed: a new alert reopens it")
        self.conn.execute(
            """
            update cases set
                assigned_to = %(who)s,
                status = case
                    when %(who)s::text is not null then 'in_review'
                    when status = 'in_review' then case when episode > 1 then 'reopened' else 'open' end
                    else status end,
                updated_at = now()
            where case_id = %(case)s
            """,
            {"who": assignee, "case": case_id},
        )
        self.audit(actor, "assigned" if assignee else "unassigned", case_id, None, {"assignee": assignee})
        return self._locked_summary(case_id)

    def note(self, case_id: str, text: str, actor: Actor) -> None:
        text = text.strip()
        if not 1 <= len(text) <= NOTE_MAX_CHARS:
            raise CaseError(f"a note has 1 to {NOTE_MAX_CHARS} characters")
        self._lock(case_id)
        self.conn.execute(
            "insert into case_notes (case_id, author, text) values (%s, %s, %s)", (case_id, actor.name, text)
        )
        self.audit(actor, "note", case_id, None, {"chars": len(text)})

    def close(
        self, case_id: str, outcome: str, actor: Actor, from_transaction_id: str | None = None
    ) -> Verdict:
        if outcome not in OUTCOMES:
            raise CaseError(f"outcome must be one of {', '.join(OUTCOMES)}, not {outcome!r}")
        if from_transaction_id is not None and outcome != "fraud":
            raise CaseError("'from transaction' applies to a fraud verdict only")
        status, episode, customer = self._lock(case_id)
        previous = self._last_verdict(case_id, episode)
        if status == "closed" and previous is not None and previous[:2] == (outcome, from_transaction_id):
            raise CaseError(f"case {case_id} is already closed as {outcome}")
        labels = self._labels(case_id, customer, episode, outcome, from_transaction_id, previous, actor)
        is_fraud = labels[0].is_fraud if labels else None
        self.conn.execute(
            """
            insert into case_verdicts (case_id, episode, outcome, analyst, from_transaction_id, labelled, is_fraud)
            values (%s, %s, %s, %s, %s, %s, %s)
            """,
            (
                case_id,
                episode,
                outcome,
                actor.name,
                from_transaction_id,
                [lb.transaction_id for lb in labels],
                is_fraud,
            ),
        )
        self.conn.execute(
            "update cases set status = 'closed', outcome = %s, closed_at = now(), updated_at = now() "
            "where case_id = %s",
            (outcome, case_id),
        )
        reversal = status == "closed"
        detail = {"outcome": outcome, "labels": len(labels), "from_transaction_id": from_transaction_id}
        self.audit(actor, "reversed" if reversal else "closed", case_id, None, detail)
        return Verdict(summary=self._locked_summary(case_id), labels=tuple(labels), reversal=reversal)

    def audit(
        self, actor: Actor, action: str, case_id: str | None, rule_id: str | None, detail: dict[str, object]
    ) -> None:
        self.conn.execute(
            "insert into audit_log (actor, action, case_id, rule_id, detail, remote_addr) "
            "values (%s, %s, %s, %s, %s::jsonb, %s)",
            (actor.name, action, case_id, rule_id, orjson.dumps(detail).decode(), actor.remote_addr),
        )

    # helpers --------------------------------------------------------------------------------------------

    def _lock(self, case_id: str) -> tuple[str, int, str]:
        """(status, episode, customer id) of the case, its row locked until the transaction ends."""
        row = self.conn.execute(
            "select status, episode, case_id from cases where case_id = %s for update", (case_id,)
        ).fetchone()
        if row is None:
            raise CaseError(f"no case {case_id!r}")
        return str(row[0]), int(row[1]), str(row[2])

    def _locked_summary(self, case_id: str) -> CaseSummary:
        summary = self.summary(case_id)
        if summary is None:  # cannot happen while the row is locked; said, not assumed
            raise CaseError(f"no case {case_id!r}")
        return summary

    def _last_verdict(
        self, case_id: str, episode: int
    ) -> tuple[str, str | None, list[str], bool | None] | None:
        """(outcome, from transaction, labelled ids, their value) of the episode's last verdict."""
        row = self.conn.execute(
            "select outcome, from_transaction_id, labelled, is_fraud from case_verdicts "
            "where case_id = %s and episode = %s order by id desc limit 1",
            (case_id, episode),
        ).fetchone()
        return None if row is None else (str(row[0]), row[1], list(row[2]), row[3])

    def _labels(
        self,
        case_id: str,
        customer: str,
        episode: int,
        outcome: str,
        from_transaction_id: str | None,
        previous: tuple[str, str | None, list[str], bool | None] | None,
        actor: Actor,
    ) -> list[LabelOut]:
        """The labels of a verdict: fraud labels the episode's alerts (or the card from a transaction on),
        genuine labels them not fraud, inconclusive labels nothing; an earlier fraud verdict of the episode
        that this one does not repeat is withdrawn (its transactions labelled not fraud)."""
        wanted: dict[str, tuple[str, datetime]] = {}
        if outcome == "fraud" and from_transaction_id is not None:
            wanted = self._card_from(customer, from_transaction_id)
        elif outcome in ("fraud", "genuine"):
            wanted = self._episode_alerts(case_id, episode)
        is_fraud = outcome == "fraud"
        if previous is not None and previous[3] and not is_fraud:
            missing = [t for t in previous[2] if t not in wanted]
            wanted |= self._decided(missing)
        return [
            LabelOut(tx, customer, terminal, is_fraud, at, case_id, actor.name)
            for tx, (terminal, at) in sorted(wanted.items(), key=lambda kv: (kv[1][1], kv[0]))
        ]

    def _episode_alerts(self, case_id: str, episode: int) -> dict[str, tuple[str, datetime]]:
        rows = self.conn.execute(
            "select transaction_id, terminal_id, event_time from case_alerts where case_id = %s and episode = %s",
            (case_id, episode),
        ).fetchall()
        return {str(r[0]): (str(r[1]), r[2]) for r in rows}

    def _card_from(self, customer: str, transaction_id: str) -> dict[str, tuple[str, datetime]]:
        start = self.conn.execute(
            "select event_time from decisions where customer_id = %s and transaction_id = %s",
            (customer, transaction_id),
        ).fetchone()
        if start is None:
            raise CaseError(f"transaction {transaction_id!r} is not one of card {customer}'s decisions")
        rows = self.conn.execute(
            "select transaction_id, terminal_id, event_time from decisions "
            "where customer_id = %s and event_time >= %s and event_day >= (%s at time zone 'UTC')::date",
            (customer, start[0], start[0]),
        ).fetchall()
        return {str(r[0]): (str(r[1]), r[2]) for r in rows}

    def _decided(self, transaction_ids: Sequence[str]) -> dict[str, tuple[str, datetime]]:
        if not transaction_ids:
            return {}
        rows = self.conn.execute(
            "select transaction_id, terminal_id, event_time from decisions where transaction_id = any(%s)",
            (list(transaction_ids),),
        ).fetchall()
        return {str(r[0]): (str(r[1]), r[2]) for r in rows}

    def _summary(self, row: Sequence[Any]) -> CaseSummary:
        case_id = str(row[0])
        actions, rules, versions = row[13], row[14], row[15]
        age = float(row[10])
        return CaseSummary(
            case_id=case_id,
            customer_id=case_id,
            status=str(row[1]),
            outcome=row[2],
            assigned_to=row[3],
            opened_at=row[4],
            last_alert_at=row[5],
            closed_at=row[6],
            alerts=int(row[7]),
            max_score=float(row[8]),
            amount_at_risk=float(row[9]),
            actions=tuple(sorted(actions)),
            rule_ids=tuple(sorted(rules)),
            model_versions=tuple(sorted(versions)),
            age_hours=age,
            over_sla=row[1] != "closed" and age > self.sla_hours,
            priority=float(row[11]),
        )


def _queue_where(flt: QueueFilter) -> tuple[str, dict[str, Any]]:
    """The queue's WHERE clause (fixed text) and its parameters."""
    bad = [s for s in flt.statuses if s not in (*OPEN_STATUSES, "closed")]
    if bad:
        raise CaseError(f"unknown status {bad[0]!r}")
    clauses = ["c.status = any(%(statuses)s)"]
    params: dict[str, Any] = {"statuses": list(flt.statuses)}
    if flt.assigned_to is not None:
        clauses.append("c.assigned_to = %(assignee)s")
        params["assignee"] = flt.assigned_to
    if flt.unassigned:
        clauses.append("c.assigned_to is null")
    episode_filters = {"action": flt.action, "rule_id": flt.rule_id, "model_version": flt.model_version}
    for column, value in episode_filters.items():
        if value is not None:
            # column is one of the three fixed names above, never input
            exists = f"exists (select 1 from case_alerts a where a.case_id = c.case_id and a.episode = c.episode and a.{column} = %({column})s)"  # noqa: S608
            clauses.append(exists)
            params[column] = value
    return " and ".join(clauses), params
