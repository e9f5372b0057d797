"""The backfill (scorer/db/backfill.py, `scorer store --backfill`) on the real PostgreSQL: a simulated history
goes into the store's tables as the store would write it, once (a second run writes nothing), up to a time
when asked, and never over a row the store wrote live."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from scorer.db.backfill import BACKFILL_PARTITION, Backfilled, backfill
from scorer.db.migrate import migrate
from scorer.events.timestamps import MS_PER_DAY, rfc3339_ms
from scorer.runtime.ports import free_port
from scorer.training.dataset import History, load_history

Conn = psycopg.Connection[tuple[Any, ...]]


@pytest.fixture
def conn(database_url: str) -> Iterator[Conn]:
    with psycopg.connect(database_url) as c:
        migrate(c)
        yield c


@pytest.fixture(scope="module")
def history(tiny_data: Path) -> History:
    return load_history(tiny_data)


def count(conn: Conn, query: str, *params: Any) -> int:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCORER_")}
    return subprocess.run(
        [sys.executable, "-m", "scorer", "store", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_a_backfill_writes_every_row_of_the_files_once(conn: Conn, history: History) -> None:
    tx, labels = history.transactions, history.labels
    done = backfill(conn, tx, labels)
    assert done == Backfilled(transactions=len(tx), labels=len(labels), skipped=0)
    assert count(conn, "select count(*) from transactions") == len(tx)
    assert count(conn, "select count(*) from labels") == len(labels)
    days = set((tx.event_ts_ms // MS_PER_DAY).tolist())
    assert count(conn, "select count(*) from pg_inherits where inhparent = 'transactions'::regclass") == len(
        days
    )

    # the rows are the files' rows, with the store's values and the backfill's marker
    i = len(tx) // 2
    row = conn.execute(
        "select event_day - date '1970-01-01', (extract(epoch from event_time) * 1000)::bigint, customer_id,"
        " terminal_id, amount, currency, channel, merchant_category, source_partition, source_offset"
        " from transactions where transaction_id = %s",
        (tx.transaction_id[i],),
    ).fetchone()
    ms = int(tx.event_ts_ms[i])
    assert row == (
        ms // MS_PER_DAY, ms, tx.customer_id[i], tx.terminal_id[i], float(tx.amount[i]), tx.currency[i],
        tx.channel[i], tx.merchant_category[i], BACKFILL_PARTITION, i,
    )  # fmt: skip
    j = len(labels) - 1
    label = conn.execute(
        "select source, is_fraud, (extract(epoch from reported_at) * 1000)::bigint,"
        " (extract(epoch from event_time) * 1000)::bigint, source_partition, source_offset"
        " from labels where transaction_id = %s",
        (labels.transaction_id[j],),
    ).fetchone()
    event_ms = int(labels.tx_ts_ms[j])
    assert label == (
        labels.source[j], bool(labels.is_fraud[j]), int(labels.reported_ts_ms[j]),
        event_ms if event_ms >= 0 else None, BACKFILL_PARTITION, j,
    )  # fmt: skip
    assert count(conn, "select count(*) from labels where source = 'chargeback'") == len(labels)

    again = backfill(conn, tx, labels)
    assert again == Backfilled(transactions=0, labels=0, skipped=len(tx) + len(labels))
    assert count(conn, "select count(*) from transactions") == len(tx)
    assert count(conn, "select count(*) from labels") == len(labels)


def test_until_leaves_out_later_transactions_and_later_reported_labels(conn: Conn, history: History) -> None:
    tx, labels = history.transactions, history.labels
    until_ms = int(np.median(tx.event_ts_ms))
    want_tx = int((tx.event_ts_ms <= until_ms).sum())
    want_labels = int((labels.reported_ts_ms <= until_ms).sum())
    assert 0 < want_tx < len(tx) and 0 < want_labels < len(labels)  # the cut falls inside both files

    done = backfill(conn, tx, labels, until_ms=until_ms)
    assert (done.transactions, done.labels, done.skipped) == (want_tx, want_labels, 0)
    cut = (until_ms,)
    assert count(conn, "select count(*) from transactions") == want_tx
    assert (
        count(conn, "select count(*) from transactions where event_time > to_timestamp(%s / 1000.0)", *cut)
        == 0
    )
    assert count(conn, "select count(*) from labels where reported_at > to_timestamp(%s / 1000.0)", *cut) == 0

    rest = backfill(conn, tx, labels)  # the rest of the history later: only what is new goes in
    assert (rest.transactions, rest.labels) == (len(tx) - want_tx, len(labels) - want_labels)
    assert rest.skipped == want_tx + want_labels


def test_a_row_the_store_wrote_live_is_never_overwritten(conn: Conn, history: History) -> None:
    tx, labels = history.transactions, history.labels
    i = 0  # the first label, and a transaction of the first day, written live first
    live_tx = tx.transaction_id[5]
    day = int(tx.event_ts_ms[5]) // MS_PER_DAY
    conn.execute("select store_ensure_partition('transactions', date '1970-01-01' + %s::integer)", (day,))
    conn.execute(
        "insert into transactions (event_day, transaction_id, event_time, customer_id, terminal_id, amount,"
        " source_partition, source_offset)"
        " values (date '1970-01-01' + %s::integer, %s, to_timestamp(%s / 1000.0), 'C-live', 'T-live', 1.5, 0, 7)",
        (day, live_tx, int(tx.event_ts_ms[5])),
    )
    conn.execute(
        "insert into labels (transaction_id, source, customer_id, terminal_id, is_fraud, reported_at,"
        " source_partition, source_offset)"
        " values (%s, %s, 'C-live', 'T-live', %s, to_timestamp(%s / 1000.0 + 86400), 0, 42)",
        (labels.transaction_id[i], labels.source[i], not labels.is_fraud[i], int(labels.reported_ts_ms[i])),
    )
    conn.commit()

    done = backfill(conn, tx, labels)
    assert done == Backfilled(transactions=len(tx) - 1, labels=len(labels) - 1, skipped=2)
    kept_tx = conn.execute(
        "select customer_id, amount, source_partition, source_offset from transactions where transaction_id = %s",
        (live_tx,),
    ).fetchone()
    assert kept_tx == ("C-live", 1.5, 0, 7)
    kept_label = conn.execute(
        "select customer_id, is_fraud, source_partition, source_offset from labels"
        " where transaction_id = %s and source = %s",
        (labels.transaction_id[i], labels.source[i]),
    ).fetchone()
    assert kept_label == ("C-live", not labels.is_fraud[i], 0, 42)


def test_the_command_backfills_a_directory_and_says_how_many(
    database_url: str, tiny_data: Path, history: History
) -> None:
    tx, labels = history.transactions, history.labels
    first = cli("--backfill", str(tiny_data), "--database-url", database_url)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == str(Backfilled(len(tx), len(labels), 0))
    assert f"{len(tx):,} transactions" in first.stdout

    until = rfc3339_ms(np.array([tx.event_ts_ms[len(tx) // 2]], dtype=np.int64))[0]
    second = cli("--backfill", str(tiny_data), "--until", until, "--database-url", database_url)
    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith("backfilled 0 transactions and 0 labels;")

    with psycopg.connect(database_url) as c:
        assert count(c, "select count(*) from transactions where source_partition = -1") == len(tx)
        assert count(c, "select count(*) from labels where source_partition = -1") == len(labels)


def test_the_command_refuses_a_missing_directory_or_a_bad_line_in_one_line(
    database_url: str, tmp_path: Path
) -> None:
    missing = cli("--backfill", str(tmp_path / "nowhere"), "--database-url", database_url)
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1 and "nowhere" in missing.stderr
    assert "Traceback" not in missing.stderr

    (tmp_path / "transactions.jsonl").write_text('{"transaction_id": "tx1"}\n')
    (tmp_path / "labels.jsonl").write_text("")
    bad = cli("--backfill", str(tmp_path), "--database-url", database_url)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "transactions.jsonl" in bad.stderr
    assert "Traceback" not in bad.stderr

    bad_until = cli("--backfill", str(tmp_path), "--until", "yesterday", "--database-url", database_url)
    assert bad_until.returncode == 2 and bad_until.stderr.count("\n") == 1


def test_the_command_says_in_one_line_when_the_database_cannot_be_reached(tiny_data: Path) -> None:
    url = f"postgresql://nobody@127.0.0.1:{free_port()}/nothing"
    unreachable = cli("--backfill", str(tiny_data), "--database-url", url)  # refused at once
    assert unreachable.returncode == 1
    assert unreachable.stderr.count("\n") == 1 and "cannot connect to the database" in unreachable.stderr


def test_a_key_given_twice_keeps_what_the_store_would_and_a_nul_is_left_out(conn: Conn) -> None:
    from scorer.events.batches import LabelBatch, TransactionBatch

    day_ms = 20_500 * MS_PER_DAY
    tx = TransactionBatch(
        transaction_id=["a", "b", "a", "c"],
        customer_id=["C1", "C2", "C3", "C\x004"],
        terminal_id=["T1"] * 4,
        amount=np.array([1.0, 2.0, 3.0, 4.0]),
        event_ts_ms=np.array([day_ms, day_ms + 1, day_ms + 2, day_ms + 3], dtype=np.int64),
        currency=[None] * 4,
        channel=[None] * 4,
        merchant_category=[None] * 4,
    )
    labels = LabelBatch(  # "a" reported twice: the later report wins even though it comes first
        transaction_id=["a", "a", "b"],
        customer_id=["C1", "C1", "C2"],
        terminal_id=["T1"] * 3,
        is_fraud=np.array([True, False, True]),
        reported_ts_ms=np.array([day_ms + 9, day_ms + 5, day_ms + 9], dtype=np.int64),
        tx_ts_ms=np.array([day_ms, day_ms, -1], dtype=np.int64),
    )
    done = backfill(conn, tx, labels)
    assert done == Backfilled(transactions=2, labels=2, skipped=2, unstorable=1)
    rows = conn.execute(
        "select transaction_id, customer_id, source_offset from transactions order by 1"
    ).fetchall()
    assert rows == [("a", "C3", 2), ("b", "C2", 1)]  # the last of "a", as the store keeps a key's last record
    got = conn.execute(
        "select transaction_id, is_fraud, event_time is null, source_offset from labels order by 1"
    )
    assert got.fetchall() == [("a", True, False, 0), ("b", True, True, 2)]
