"""`scorer store` on the real broker and the embedded PostgreSQL: the database equals the topics, once, whatever
happens to the store (kill -9) or to PostgreSQL (paused, restarted, refusing)."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psycopg
import pytest
from confluent_kafka import Producer

from scorer.cli.main import main
from scorer.config import DEFAULT_MODEL, Settings
from scorer.db.embedded import EmbeddedPostgres
from tests.integration.conftest import Proc, env_for
from tests.integration.test_pipeline import metric

DAYS = ("2026-03-01", "2026-03-02", "2026-03-03")


def transaction(i: int) -> dict[str, object]:
    return {
        "transaction_id": f"tx-{i}", "customer_id": f"C{i % 50}", "terminal_id": f"T{i % 20}",
        "amount": round(5 + (i % 97) * 1.5, 2), "timestamp": f"{DAYS[i % 3]}T{i % 24:02d}:00:00Z",
        "currency": "EUR",
    }  # fmt: skip


def decision(i: int) -> dict[str, object]:
    return transaction(i) | {
        "score": (i % 100) / 100, "flagged": i % 100 >= 90, "action": "review" if i % 100 >= 90 else "approve",
        "action_source": "model", "threshold": 0.9, "model_version": "m/1",
        "reasons": [{"feature": "amount", "value": 1.0}], "scored_at": f"{DAYS[i % 3]}T23:59:59.500Z",
        "features": [float(i % 7), 0.5, -2.0],
    }  # fmt: skip


def label(i: int) -> dict[str, object]:
    doc = transaction(i)
    return {k: doc[k] for k in ("transaction_id", "customer_id", "terminal_id")} | {
        "is_fraud": True, "reported_at": "2026-03-04T00:00:00Z",
    }  # fmt: skip


NOT_UTF8 = b'{"transaction_id": "bad-\xff\xfe", "amount": 1}'


def publish(settings: Settings, start: int, n: int, labels_every: int = 10) -> None:
    """Transactions start..start+n with their decisions, a label for every tenth and one dead letter (whose
    original is not UTF-8) per call."""
    producer = Producer({"bootstrap.servers": settings.brokers, "linger.ms": 20})
    for i in range(start, start + n):
        key = f"C{i % 50}".encode()
        producer.produce(settings.input_topic, orjson.dumps(transaction(i)), key)
        producer.produce(settings.decisions_topic, orjson.dumps(decision(i)), key)
        if i % labels_every == 0:
            producer.produce(settings.labels_topic, orjson.dumps(label(i)), key)
        producer.poll(0)
    headers = [
        ("reason", b"invalid_utf8"), ("detail", b"bytes 9-10"), ("source.topic", settings.input_topic.encode()),
        ("source.partition", b"0"), ("source.offset", str(1_000_000 + start).encode()),
        ("source.timestamp", b"1772409600000"), ("dead_lettered_at", b"1772409600500"),
        ("original.traceparent", b"\x00\x01"),
    ]  # fmt: skip
    producer.produce(settings.dlq_topic, NOT_UTF8 + str(start).encode(), b"\xffk", headers=headers)
    assert producer.flush(30) == 0


def counts(url: str) -> dict[str, int]:
    """Rows per table (all 0 before the store made the tables)."""
    with psycopg.connect(url) as conn:
        if conn.execute("select to_regclass('dead_letters') is null").fetchone() == (True,):
            return dict.fromkeys(("transactions", "decisions", "labels", "dead_letters"), 0)
        return {
            table: int(conn.execute(f"select count(*) from {table}").fetchone()[0])  # type: ignore[index]  # noqa: S608
            for table in ("transactions", "decisions", "labels", "dead_letters")
        }


def expected(n: int, calls: int, labels_every: int = 10) -> dict[str, int]:
    return {
        "transactions": n,
        "decisions": n,
        "labels": len(range(0, n, labels_every)),
        "dead_letters": calls,
    }


def wait_for(
    condition: Callable[[], bool], what: str, timeout_s: float = 90.0, proc: Proc | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}; " + (proc.describe() if proc else "")
        time.sleep(0.2)


def store(settings: Settings, url: str, log: Path, **extra: str) -> Proc:
    return Proc("store", settings, Path(DEFAULT_MODEL), log, SCORER_DATABASE_URL=url, **extra)


def assert_equals_the_topics(url: str, settings: Settings, n: int, calls: int) -> None:
    """Every record once, as published; the offsets stored are the topics' ends."""
    assert counts(url) == expected(n, calls)
    with psycopg.connect(url) as conn:
        ids = {r[0] for r in conn.execute("select transaction_id from decisions").fetchall()}
        assert ids == {f"tx-{i}" for i in range(n)}
        row = conn.execute(
            "select amount, score, action, features, event_time, scored_at from decisions "
            "where transaction_id = 'tx-95'"
        ).fetchone()
        assert row is not None and row[:4] == (transaction(95)["amount"], 0.95, "review", [4.0, 0.5, -2.0])
        assert row[4].isoformat() == "2026-03-03T23:00:00+00:00" and row[5].isoformat().endswith(
            "23:59:59.500000+00:00"
        )
        letters = conn.execute("select value, key, header_names, header_values from dead_letters").fetchall()
        assert sorted(v for v, *_ in letters) == sorted(
            NOT_UTF8 + str(s).encode() for s in range(0, n, n // calls)
        )
        assert all(
            k == b"\xffk" and h[-1] == "original.traceparent" and v[-1] == b"\x00\x01"
            for _, k, h, v in letters
        )
        stored = dict(
            conn.execute(
                "select topic, sum(next_offset)::bigint from store_offsets where consumer_group = %s group by topic",
                (settings.store_group,),
            ).fetchall()
        )
    ends = {
        settings.input_topic: n, settings.decisions_topic: n, settings.labels_topic: len(range(0, n, 10)),
        settings.dlq_topic: calls,
    }  # fmt: skip
    assert stored == ends


def test_the_store_writes_every_topic_once_and_sql_users_read_it(
    settings: Settings,
    database_url: str,
    procs: list[Proc],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in env_for(settings, Path(DEFAULT_MODEL), SCORER_DATABASE_URL=database_url).items():
        monkeypatch.setenv(key, value)
    assert main(["store", "--migrate"]) == 0
    assert "0001_store" in capsys.readouterr().out
    assert main(["store", "--migrate"]) == 0  # again: nothing to apply
    assert "none (the schema is up to date)" in capsys.readouterr().out
    publish(settings, 0, 300)
    proc = store(settings, database_url, tmp_path / "store.log")
    procs.append(proc)
    wait_for(lambda: counts(database_url) == expected(300, 1), "the store never caught up", proc=proc)
    assert_equals_the_topics(database_url, settings, 300, 1)
    text = proc.metrics()
    assert metric(text, "scorer_store_rows_total", 'table="decisions"') == 300
    assert metric(text, "scorer_store_database_up") == 1
    assert proc.terminate() == 0

    assert main(["sql", "select event_day, action, decisions from daily_alerts order by event_day"]) == 0
    out = capsys.readouterr().out
    assert "2026-03-01  review" in out and "(3 rows)" in out
    assert main(["sql", "select * from quality_by_day order by event_day"]) == 0
    assert "(3 rows)" in capsys.readouterr().out
    assert main(["sql", "delete from decisions"]) == 1  # read-only
    assert "read-only transaction" in capsys.readouterr().err
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("create role analyst_ann login password 'x' in role scorer_analyst")
        conn.execute("grant connect on database " + database_url.rsplit("/", 1)[1] + " to analyst_ann")
    ann = "postgresql://analyst_ann:x@" + database_url.split("@", 1)[1]
    with psycopg.connect(ann) as conn:
        assert conn.execute("select count(*) from decisions_with_labels where is_fraud").fetchone() == (30,)
        for query in documented_queries():  # docs/database.md's examples, as an analyst would paste them
            assert conn.execute(query.encode()).fetchall(), query
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("delete from labels")


def documented_queries() -> list[str]:
    text = (Path(__file__).resolve().parents[2] / "docs" / "database.md").read_text()
    blocks = [part.split("```", 1)[0] for part in text.split("```sql\n")[1:]]
    assert len(blocks) == 3
    return blocks


def test_kill_9_three_times_at_random_moments_then_the_database_equals_the_topics(
    settings: Settings, database_url: str, procs: list[Proc], tmp_path: Path
) -> None:
    publish(settings, 0, 6000)
    rng = random.Random(24)  # noqa: S311 - a seeded moment, not a secret
    for attempt in range(3):
        proc = store(settings, database_url, tmp_path / f"store{attempt}.log", SCORER_STORE_BATCH_MAX="300")
        procs.append(proc)
        wait_for(lambda: counts(database_url)["transactions"] > 0, "nothing stored", proc=proc)  # noqa: B023
        time.sleep(rng.uniform(0.0, 0.5))  # a random moment within the writing
        proc.kill()
        assert sum(counts(database_url).values()) < sum(expected(6000, 1).values()) or attempt > 0
    proc = store(settings, database_url, tmp_path / "store-last.log")
    procs.append(proc)
    wait_for(lambda: counts(database_url) == expected(6000, 1), "the last run never caught up", proc=proc)
    assert_equals_the_topics(database_url, settings, 6000, 1)


def test_postgres_paused_then_restarted_is_waited_for_and_nothing_is_lost_or_doubled(
    settings: Settings, database_url: str, postgres: EmbeddedPostgres, procs: list[Proc], tmp_path: Path
) -> None:
    proc = store(settings, database_url, tmp_path / "store.log", SCORER_DATABASE_TIMEOUT_S="2")
    procs.append(proc)
    publish(settings, 0, 500)
    wait_for(lambda: counts(database_url) == expected(500, 1), "the first records never arrived", proc=proc)
    postgres.pause()
    try:
        publish(settings, 500, 500)
        wait_for(
            lambda: metric(proc.metrics(), "scorer_store_database_up") == 0,
            "never noticed the pause",
            proc=proc,
        )
        ready = subprocess.run(  # /readyz 503 while the database is away
            [sys.executable, "-c", f"import urllib.request as u; u.urlopen('http://127.0.0.1:{proc.metrics_port}/readyz')"],
            capture_output=True, check=False,
        )  # fmt: skip
        assert ready.returncode != 0 and b"503" in ready.stderr
        time.sleep(30)  # the pause the issue names: the store keeps waiting, nothing is written
    finally:
        postgres.resume()
    wait_for(lambda: counts(database_url) == expected(1000, 2), "not caught up after the pause", proc=proc)
    postgres.restart()
    publish(settings, 1000, 500)
    wait_for(lambda: counts(database_url) == expected(1500, 3), "not caught up after a restart", proc=proc)
    assert_equals_the_topics(database_url, settings, 1500, 3)
    assert proc.popen.poll() is None and metric(proc.metrics(), "scorer_store_database_up") == 1
    assert proc.terminate() == 0


@pytest.mark.parametrize("refusal", ["statement_timeout", "insufficient_privilege"])
def test_a_database_that_refuses_stops_the_store_in_one_line_with_nothing_past_it(
    refusal: str, settings: Settings, database_url: str, procs: list[Proc], tmp_path: Path
) -> None:
    assert main(["store", "--migrate", "--database-url", database_url]) == 0
    url = database_url
    with psycopg.connect(database_url, autocommit=True) as conn:
        if refusal == "statement_timeout":  # every statement of the store's is cancelled at once
            conn.execute(
                "alter role postgres in database "
                + database_url.rsplit("/", 1)[1]
                + " set statement_timeout = '1ms'"
            )
        else:  # a user who may read and write everything but the decisions
            conn.execute("create role writer_w login password 'w'")
            conn.execute("grant all on all tables in schema public to writer_w")
            conn.execute("grant execute on all functions in schema public to writer_w")
            conn.execute("revoke insert, update on decisions from writer_w")
            url = "postgresql://writer_w:w@" + database_url.split("@", 1)[1]
    publish(settings, 0, 50)
    proc = store(settings, url, tmp_path / "store.log")
    procs.append(proc)
    assert proc.popen.wait(60) == 1
    log = (tmp_path / "store.log").read_text()
    # PostgreSQL names a statement timeout "statement_timeout", except when the timer fires as the statement
    # ends: its interrupt then finds the timeout's indicator already cleared and reports "query_canceled ...
    # due to user request" (seen once in CI on a loaded machine); the store stops the same way either way
    reasons = (refusal, "query_canceled") if refusal == "statement_timeout" else (refusal,)
    assert any(r in log for r in reasons) and "Traceback" not in log, log
    with psycopg.connect(database_url) as conn:
        conn.execute("set statement_timeout = 0")  # this session's own, whatever the role's setting
        assert conn.execute("select count(*) from store_offsets").fetchone() == (0,)


def test_an_unreachable_database_at_start_is_one_line_and_exit_1(settings: Settings, tmp_path: Path) -> None:
    env = env_for(settings, Path(DEFAULT_MODEL), SCORER_DATABASE_URL="postgresql://u:secret@127.0.0.1:9/x")
    done = subprocess.run(
        [sys.executable, "-m", "scorer", "store"], env=env, capture_output=True, timeout=60, check=False
    )
    err = done.stderr.decode()
    assert done.returncode == 1 and len(err.strip().splitlines()) == 1, err
    assert "127.0.0.1:9" in err and "secret" not in err


def analyst_verdicts(
    docs: list[dict[str, Any]], fraud: Any, reported_ms: Any, stamps: list[str]
) -> list[bytes]:
    """Analysts' labels beside the chargebacks, in the order the console publishes them: a fraud verdict an
    hour before the chargeback of 60 frauds (counted once), a fraud verdict reversed an hour later on 40
    genuine transactions (genuine again, and dating no card), and a standing fraud verdict on 30 more."""
    from scorer.events.timestamps import rfc3339_ms

    frauds, genuine = np.flatnonzero(fraud)[:60].tolist(), np.flatnonzero(~fraud)[:70].tolist()
    out = []
    for i, fraud_at, genuine_at in (
        [(i, reported_ms[i] - 3_600_000, None) for i in frauds]
        + [(i, reported_ms[i], reported_ms[i] + 3_600_000) for i in genuine[:40]]
        + [(i, reported_ms[i], None) for i in genuine[40:]]
    ):
        base = {k: docs[i][k] for k in ("transaction_id", "customer_id", "terminal_id")} | {
            "timestamp": stamps[i], "source": "analyst", "analyst_id": "alice", "case_id": docs[i]["customer_id"],
        }  # fmt: skip
        out.append(
            orjson.dumps(base | {"is_fraud": True, "reported_at": rfc3339_ms(np.asarray([fraud_at]))[0]})
        )
        if genuine_at is not None:
            out.append(
                orjson.dumps(
                    base | {"is_fraud": False, "reported_at": rfc3339_ms(np.asarray([genuine_at]))[0]}
                )
            )
    return out


def test_quality_by_day_gives_the_monitors_figures(database_url: str) -> None:
    """The same decisions and labels through `scorer monitor`'s LiveQuality and into the database: the view
    gives each day's precision, recall, Average Precision (ties grouped) and Card Precision@100 (cards
    reported compromised before the day left out) as the monitor computes them, with analysts' verdicts
    beside the chargebacks (a duplicate counts once, a reversed verdict is genuine and dates no card)."""
    import numpy as np
    from confluent_kafka import Message

    from scorer.events.decode import decode_labels
    from scorer.events.timestamps import MS_PER_DAY, rfc3339_ms
    from scorer.monitoring.livequality import LiveQuality, decision_rows
    from scorer.store.batch import read_batch
    from scorer.store.database import PostgresTarget

    s = Settings()
    rng = np.random.default_rng(3)
    n, first_day = 4000, 20_513
    day = first_day + rng.integers(0, 5, n)
    event_ms = day * MS_PER_DAY + rng.integers(0, MS_PER_DAY, n)
    score = np.round(rng.random(n), 2)  # ties, which Average Precision groups
    fraud = rng.random(n) < 0.02 + 0.2 * score
    reported_ms = event_ms + rng.integers(3_600_000, 3 * MS_PER_DAY, n)  # some before a later day's decisions
    stamps, reports = rfc3339_ms(event_ms), rfc3339_ms(reported_ms)
    docs = [
        {
            "transaction_id": f"q{i}", "customer_id": f"C{rng.integers(0, 400)}", "terminal_id": "T1", "amount": 1.0,
            "timestamp": stamps[i], "score": float(score[i]), "flagged": bool(score[i] >= 0.8),
            "action": "review" if score[i] >= 0.8 else "approve", "action_source": "model", "threshold": 0.8,
            "model_version": "m/1", "reasons": [], "scored_at": stamps[i],
        }
        for i in range(n)
    ]  # fmt: skip
    labels = [
        orjson.dumps({k: docs[i][k] for k in ("transaction_id", "customer_id", "terminal_id")}
                     | {"is_fraud": True, "reported_at": reports[i], "timestamp": stamps[i]})
        for i in np.flatnonzero(fraud).tolist()
    ]  # fmt: skip
    labels += analyst_verdicts(docs, fraud, reported_ms, stamps)  # duplicates, reversals, standing verdicts
    msgs = [
        Message(topic=s.decisions_topic, partition=0, offset=i, value=orjson.dumps(d))
        for i, d in enumerate(docs)
    ]
    msgs += [Message(topic=s.labels_topic, partition=0, offset=i, value=v) for i, v in enumerate(labels)]
    target = PostgresTarget(database_url, "quality", 30.0)
    try:
        target.migrate()
        target.write(read_batch(msgs, s))
    finally:
        target.close()
    live = LiveQuality(max_rows=10 * n, keep_days=365)
    for rows in decision_rows(docs, event_ms):
        live.add(rows)
    live.add_labels(decode_labels(labels).batch)
    with psycopg.connect(database_url) as conn:
        view = conn.execute(
            "select event_day - date '1970-01-01', decisions, frauds, flagged, precision, recall, "
            "average_precision, card_precision_at_100 from quality_by_day where model_version = 'm/1'"
        ).fetchall()
    assert len(view) == 5
    for d, decided, frauds, flagged, *figures in view:
        want = live.figures("m/1", [d])
        assert (decided, frauds, flagged) == (want["decisions"], want["frauds"], want["flagged"])
        names = ("precision", "recall", "average_precision", "card_precision_at_100")
        assert figures == pytest.approx([want[k] for k in names], abs=1e-12), d


def test_two_stores_meeting_the_same_new_day_both_go_on(database_url: str) -> None:
    """Two instances create the same day's partition at once: the second waits for the first's lock, then
    finds the partition made (before 0002_partition_race its create failed with "already exists", which
    stopped it: seen with two stores in the benchmark)."""
    import threading

    from scorer.db.migrate import migrate

    with psycopg.connect(database_url, autocommit=True) as setup:
        migrate(setup)
    first = psycopg.connect(database_url)
    errors: list[BaseException] = []
    try:
        first.execute("select store_ensure_partition('decisions', date '2026-05-01')")  # made, not committed

        def second() -> None:
            try:
                with psycopg.connect(database_url) as conn:
                    conn.execute("select store_ensure_partition('decisions', date '2026-05-01')")
                    conn.commit()
            except BaseException as exc:  # reported to the test below
                errors.append(exc)

        waiter = threading.Thread(target=second)
        waiter.start()
        waiter.join(1.0)
        assert waiter.is_alive()  # waiting for the first instance's lock
        first.commit()
        waiter.join(30)
        assert not waiter.is_alive() and errors == []
    finally:
        first.close()
    with psycopg.connect(database_url) as conn:
        row = conn.execute("select to_regclass('decisions_20260501') is not null").fetchone()
    assert row == (True,)
