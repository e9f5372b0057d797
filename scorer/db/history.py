"""What `scorer retrain` reads from the store's tables: the stream's time, a training window of transactions
and labels, and the shadow comparison's rows (both models' scores of each event with its label).

Times cross the boundary as milliseconds since the epoch (converted by PostgreSQL, so no row becomes a Python
datetime). Labels follow the store's rule (migration 0001): one row per (transaction, source), the newest
report of each source; a transaction is fraud when any source's label says so. Only labels reported at or
before the cut-off are read: what the system knew then, as the offline replay sees it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg.rows import TupleRow

from scorer.events.batches import LabelBatch, TransactionBatch, take_transactions
from scorer.training.dataset import History

Connection = psycopg.Connection[TupleRow]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


def _columns(rows: list[TupleRow], n: int) -> list[tuple[Any, ...]]:
    """Rows turned into n columns (n empty ones for no rows)."""
    return list(zip(*rows, strict=True)) if rows else [() for _ in range(n)]


def stream_time_ms(conn: Connection) -> int | None:
    """The newest transaction's event time in the store (the stream's clock), None when it holds none.

    Reads one day's partition: the newest day is found on the primary key's index first."""
    row = conn.execute(
        "select (extract(epoch from max(event_time)) * 1000)::bigint from transactions "
        "where event_day = (select max(event_day) from transactions)"
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def read_history(conn: Connection, since_ms: int, cutoff_ms: int) -> History:
    """Transactions with event time in [since_ms, cutoff_ms] (sorted by time) and the labels reported in
    the same span. A DataError-free read: an empty window gives an empty History (the caller says why)."""
    params = {"since": since_ms, "cutoff": cutoff_ms}
    rows = conn.execute(
        "select transaction_id, customer_id, terminal_id, amount, (extract(epoch from event_time) * 1000)::bigint, "
        "currency, channel, merchant_category from transactions "
        "where event_day between (to_timestamp(%(since)s / 1000.0) at time zone 'UTC')::date "
        "and (to_timestamp(%(cutoff)s / 1000.0) at time zone 'UTC')::date "
        "and event_time between to_timestamp(%(since)s / 1000.0) and to_timestamp(%(cutoff)s / 1000.0)",
        params,
    ).fetchall()
    columns = _columns(rows, 8)
    tx = TransactionBatch(
        transaction_id=list(columns[0]),
        customer_id=list(columns[1]),
        terminal_id=list(columns[2]),
        amount=np.asarray(columns[3], dtype=np.float64),
        event_ts_ms=np.asarray(columns[4], dtype=np.int64),
        currency=list(columns[5]),
        channel=list(columns[6]),
        merchant_category=list(columns[7]),
    )
    order = np.argsort(tx.event_ts_ms, kind="stable")
    return History(take_transactions(tx, order), _labels(conn, params))


def _labels(conn: Connection, params: dict[str, int]) -> LabelBatch:
    rows = conn.execute(
        "select transaction_id, customer_id, terminal_id, is_fraud, (extract(epoch from reported_at) * 1000)::bigint, "
        "coalesce((extract(epoch from event_time) * 1000)::bigint, -1), source, analyst, case_id from labels "
        "where reported_at between to_timestamp(%(since)s / 1000.0) and to_timestamp(%(cutoff)s / 1000.0) "
        "order by reported_at, transaction_id, source",
        params,
    ).fetchall()
    columns = _columns(rows, 9)
    return LabelBatch(
        transaction_id=list(columns[0]),
        customer_id=list(columns[1]),
        terminal_id=list(columns[2]),
        is_fraud=np.asarray(columns[3], dtype=np.bool_),
        reported_ts_ms=np.asarray(columns[4], dtype=np.int64),
        tx_ts_ms=np.asarray(columns[5], dtype=np.int64),
        source=list(columns[6]),
        analyst_id=list(columns[7]),
        case_id=list(columns[8]),
    )


@dataclass(frozen=True, slots=True)
class ShadowRows:
    """Every event a shadow challenger scored in a span: its day, both scores, whether the champion's
    decision alerted (review or decline), and whether it is fraud by the labels reported by the cut-off
    (False: genuine or not yet labelled)."""

    day: I64
    champion: F64
    challenger: F64
    alerted: npt.NDArray[np.bool_]
    fraud: npt.NDArray[np.bool_]

    def __len__(self) -> int:
        return len(self.day)


def shadow_rows(conn: Connection, challenger: str, from_ms: int, to_ms: int, cutoff_ms: int) -> ShadowRows:
    """The decisions in [from_ms, to_ms) that carry `challenger`'s score (a shadow plan writes it beside
    the champion's, rollout/serving.py), with their labels as known at `cutoff_ms`.

    Under a shadow plan a decision's `score` is the champion's alone, so the two columns compare the
    models on the same events."""
    rows = conn.execute(
        "select (d.event_day - date '1970-01-01'), d.score, d.challenger_score, d.flagged, "
        "coalesce(l.fraud, false) from decisions d "
        "left join lateral (select bool_or(x.is_fraud) as fraud from labels x "
        "  where x.transaction_id = d.transaction_id and x.reported_at <= to_timestamp(%(cutoff)s / 1000.0)) l "
        "  on true "
        "where d.event_day between (to_timestamp(%(lo)s / 1000.0) at time zone 'UTC')::date "
        "and (to_timestamp(%(hi)s / 1000.0) at time zone 'UTC')::date "
        "and d.event_time >= to_timestamp(%(lo)s / 1000.0) and d.event_time < to_timestamp(%(hi)s / 1000.0) "
        "and d.challenger_version = %(challenger)s and d.challenger_score is not null "
        "and coalesce(d.blend_weight, 0) = 0",
        {"lo": from_ms, "hi": to_ms, "cutoff": cutoff_ms, "challenger": challenger},
    ).fetchall()
    columns = _columns(rows, 5)
    return ShadowRows(
        np.asarray(columns[0], dtype=np.int64),
        np.asarray(columns[1], dtype=np.float64),
        np.asarray(columns[2], dtype=np.float64),
        np.asarray(columns[3], dtype=np.bool_),
        np.asarray(columns[4], dtype=np.bool_),
    )


def decided_actions(conn: Connection, from_ms: int, to_ms: int) -> list[tuple[str, int, str]]:
    """(transaction_id, event time ms, action) of every stored decision with event time in [from_ms, to_ms],
    the action being the model's (`approve` where a rule, such as an analyst's block, decided instead)."""
    rows = conn.execute(
        "select transaction_id, (extract(epoch from event_time) * 1000)::bigint, "
        "case when action_source = 'model' then action else 'approve' end from decisions "
        "where event_day between (to_timestamp(%(lo)s / 1000.0) at time zone 'UTC')::date "
        "and (to_timestamp(%(hi)s / 1000.0) at time zone 'UTC')::date "
        "and event_time between to_timestamp(%(lo)s / 1000.0) and to_timestamp(%(hi)s / 1000.0)",
        {"lo": from_ms, "hi": to_ms},
    ).fetchall()
    return [(str(t), int(ts), str(a)) for t, ts, a in rows]
