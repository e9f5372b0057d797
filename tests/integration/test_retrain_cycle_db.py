"""`scorer retrain`'s cycle (retrain/cycle.py) on the real PostgreSQL, with the control and models topics faked:
train from the store's window, gate, shadow, then promote or retire on live evidence; the label cut-off, the
kill switch, the lock, a refused candidate and a deployment changed by hand."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from prometheus_client import CollectorRegistry
from psycopg.rows import TupleRow

from scorer.db import retrainruns
from scorer.db.backfill import backfill
from scorer.db.deadline import DeadlineExceeded
from scorer.db.embedded import EmbeddedPostgres
from scorer.db.history import read_history, stream_time_ms
from scorer.db.migrate import migrate
from scorer.errors import ScorerError
from scorer.events.timestamps import MS_PER_DAY
from scorer.model.onnx import OnnxModel, read_meta
from scorer.retrain.candidate import CandidateSpec, train_candidate
from scorer.retrain.cycle import Retrainer, Schedule
from scorer.retrain.metrics import RetrainMetrics
from scorer.rollout.deployment import Deployment, RetrainSwitch
from scorer.training.dataset import history_hash, load_history

SPEC = CandidateSpec(train_days=14)
DIRECT = Schedule(every_ms=7 * MS_PER_DAY, shadow_days=1.0, min_frauds=5, margin=0.01, blend_days=0.0)


class FakeControl:
    """The control topic: the newest deployment and switch, and everything published."""

    def __init__(self) -> None:
        self.deployment: Deployment | None = None
        self.switch: RetrainSwitch | None = None
        self.published: list[Deployment] = []

    def read(self) -> tuple[Deployment | None, RetrainSwitch | None]:
        return self.deployment, self.switch

    def publish(self, deployment: Deployment) -> None:
        self.published.append(deployment)
        self.deployment = deployment


class FakeModels:
    """The champion from its directory, candidates from the workdir; what was put on the models topic."""

    def __init__(self, champion: Path, workdir: Path) -> None:
        self.champion, self.workdir = champion, workdir
        self.published: list[str] = []

    def load(self, label: str) -> OnnxModel:
        return OnnxModel(self.directory(label))

    def directory(self, label: str) -> Path:
        if label == read_meta(self.champion).label:
            return self.champion
        name, _, version = label.partition("/")
        return self.workdir / name / version

    def publish(self, directory: Path) -> None:
        self.published.append(read_meta(directory).label)


@pytest.fixture
def conn(database_url: str, tiny_data: Path) -> Iterator[psycopg.Connection[TupleRow]]:
    with psycopg.connect(database_url, autocommit=True) as c:
        migrate(c)
        history = load_history(tiny_data)
        backfill(c, history.transactions, history.labels)
        yield c


def retrainer(
    database_url: str,
    tiny_model: Path,
    tmp_path: Path,
    schedule: Schedule = DIRECT,
    spec: CandidateSpec = SPEC,
) -> tuple[Retrainer, FakeControl, FakeModels]:
    control, models = FakeControl(), FakeModels(tiny_model, tmp_path / "work")

    def connect() -> psycopg.Connection[TupleRow]:
        return psycopg.connect(database_url, autocommit=True)

    r = Retrainer(
        connect,
        control,
        models,
        spec,
        schedule,
        tmp_path / "work",
        "tiny/1",
        RetrainMetrics(CollectorRegistry()),
    )
    return r, control, models


def audit_actions(conn: psycopg.Connection[TupleRow]) -> list[str]:
    return [
        row[0]
        for row in conn.execute("select action from audit_log where actor = 'scorer retrain' order by id")
    ]


def live_day(
    conn: psycopg.Connection[TupleRow], after_ms: int, challenger: str, challenger_better: bool, seed: int
) -> int:
    """A day of live traffic after `after_ms` as the store would hold it under the shadow plan: transactions,
    decisions with both models' scores, and the frauds' labels (reported an hour later). Its last event time."""
    rng = np.random.default_rng(seed)
    n = 600
    ts = after_ms + 1000 + np.sort(rng.integers(0, MS_PER_DAY - 2 * 3_600_000, n))
    fraud = rng.random(n) < 0.04
    noise = rng.random(n)
    informed = np.where(fraud, 0.6 + 0.4 * noise, 0.7 * noise)
    champion, theirs = (noise, informed) if challenger_better else (informed, noise)
    for day in sorted({int(t) // MS_PER_DAY for t in ts}):
        for table in ("transactions", "decisions"):
            conn.execute("select store_ensure_partition(%s, %s::date)", (table, _day(day)))
    with conn.cursor() as cur:
        for i in range(n):
            tid, at = f"live-{seed}-{i}", datetime.fromtimestamp(int(ts[i]) / 1000, UTC)
            common = (at.date(), tid, at, f"C{i % 50}", f"T{i % 70}", 12.5)
            cur.execute(
                "insert into transactions (event_day, transaction_id, event_time, customer_id, terminal_id, amount, "
                "source_partition, source_offset) values (%s, %s, %s, %s, %s, %s, 0, %s)",
                (*common, i),
            )
            action = "review" if champion[i] > 0.9 else "approve"
            cur.execute(
                "insert into decisions (event_day, transaction_id, event_time, customer_id, terminal_id, amount, score, "
                "flagged, action, action_source, threshold, model_version, reasons, challenger_version, challenger_score, "
                "blend_weight, scored_at, source_partition, source_offset) values (%s, %s, %s, %s, %s, %s, %s, %s, %s, "
                "'model', 0.9, 'tiny/1', '[]', %s, %s, 0, %s, 0, %s)",
                (
                    *common,
                    float(champion[i]),
                    action != "approve",
                    action,
                    challenger,
                    float(theirs[i]),
                    at,
                    i,
                ),
            )
            if fraud[i]:
                cur.execute(
                    "insert into labels (transaction_id, source, customer_id, terminal_id, is_fraud, reported_at, "
                    "source_partition, source_offset) values (%s, 'chargeback', %s, %s, true, %s, 0, %s)",
                    (
                        tid,
                        f"C{i % 50}",
                        f"T{i % 70}",
                        datetime.fromtimestamp((int(ts[i]) + 3_600_000) / 1000, UTC),
                        i,
                    ),
                )
    return int(ts[-1])


def _day(day: int) -> str:
    return datetime.fromtimestamp(day * 86_400, UTC).date().isoformat()


def test_a_cycle_trains_gates_shadows_then_promotes_on_live_evidence(
    conn: psycopg.Connection[TupleRow], database_url: str, tiny_model: Path, tmp_path: Path
) -> None:
    r, control, models = retrainer(database_url, tiny_model, tmp_path)
    assert r.cycle() == "trained"
    run = retrainruns.active_run(conn)
    assert run is not None and run.status == "shadow" and run.candidate == f"retrained/{run.run_id}"
    assert run.labels_by_source.get("chargeback", 0) > 0 and run.data_sha256 and run.onnx_sha256
    assert [g["ok"] for g in run.gate] == [True] * len(run.gate) and {g["name"] for g in run.gate} >= {
        "metrics",
        "feature_state",
    }
    shadow = control.published[-1]
    assert shadow.champion == "tiny/1" and shadow.plan is not None and shadow.plan.strategy == "shadow"
    assert shadow.plan.challenger == run.candidate and models.published == [run.candidate]
    card = (models.directory(run.candidate) / "MODEL_CARD.md").read_text()
    assert "## Retraining" in card and "chargeback" in card and "Decision: pending" in card
    assert r.cycle() == "waiting"  # no live evidence yet
    now = stream_time_ms(conn)
    assert now is not None
    end = live_day(conn, now, run.candidate, challenger_better=True, seed=1)
    live_day(conn, end, run.candidate, challenger_better=True, seed=2)
    assert r.cycle() == "promoted"
    assert control.deployment == Deployment(run.candidate, None, "tiny/1", control.deployment.published_ms)
    done = retrainruns.runs(conn, 1)[0]
    assert (
        done.status == "promoted"
        and done.promoted_from is not None
        and "better by more than" in (done.reasons or "")
    )
    assert (
        done.evidence is not None
        and done.evidence["live"]["challenger_ap"] > done.evidence["live"]["champion_ap"]
    )
    assert "Decision: promoted" in (models.directory(run.candidate) / "MODEL_CARD.md").read_text()
    assert models.published == [run.candidate, run.candidate]  # again, with the card that says so
    assert audit_actions(conn) == ["retrain_shadow", "retrain_promoted"]
    assert r.cycle() == "not_due"  # the next candidate comes when the stream has moved a week on


def test_a_worse_challenger_is_retired_and_its_plan_withdrawn(
    conn: psycopg.Connection[TupleRow], database_url: str, tiny_model: Path, tmp_path: Path
) -> None:
    r, control, _ = retrainer(database_url, tiny_model, tmp_path)
    assert r.cycle() == "trained"
    run = retrainruns.active_run(conn)
    assert run is not None and run.candidate is not None
    now = stream_time_ms(conn)
    assert now is not None
    end = live_day(conn, now, run.candidate, challenger_better=False, seed=3)
    live_day(conn, end, run.candidate, challenger_better=False, seed=4)
    assert r.cycle() == "retired"
    assert (
        control.deployment is not None
        and control.deployment.champion == "tiny/1"
        and control.deployment.plan is None
    )
    done = retrainruns.runs(conn, 1)[0]
    assert done.status == "retired" and "not better" in (done.reasons or "") and done.promoted_from is None
    assert audit_actions(conn) == ["retrain_shadow", "retrain_retired"]


def test_a_deployment_changed_by_hand_retires_the_run_in_flight(
    conn: psycopg.Connection[TupleRow], database_url: str, tiny_model: Path, tmp_path: Path
) -> None:
    r, control, _ = retrainer(database_url, tiny_model, tmp_path)
    assert r.cycle() == "trained"
    control.deployment = Deployment("tiny/1")  # an operator's rollback: the plan is gone
    assert r.cycle() == "retired"
    assert "changed by hand" in (retrainruns.runs(conn, 1)[0].reasons or "")
    assert len(control.published) == 1  # nothing published over the operator's deployment


def test_a_candidate_the_gate_refuses_is_recorded_with_its_reasons_and_nothing_is_published(
    conn: psycopg.Connection[TupleRow], database_url: str, tiny_model: Path, tmp_path: Path
) -> None:
    strict = CandidateSpec(train_days=14, tolerance=-1.0)  # it would have to beat the champion by 1.0 AP
    r, control, models = retrainer(database_url, tiny_model, tmp_path, spec=strict)
    stale = tmp_path / "work" / "retrained" / "1"  # left by a run of another database with the same id
    stale.mkdir(parents=True)
    (stale / "model.onnx").write_bytes(b"stale")
    assert r.cycle() == "refused"
    assert (stale / "model.onnx").read_bytes() != b"stale"
    run = retrainruns.runs(conn, 1)[0]
    assert run.status == "refused" and "metrics" in (run.reasons or "") and run.candidate is not None
    assert control.published == [] and models.published == []
    assert "Decision: refused" in (models.directory(run.candidate) / "MODEL_CARD.md").read_text()
    assert audit_actions(conn) == ["retrain_refused"]


def test_a_broker_that_refuses_the_candidate_fails_the_run_and_starts_no_shadow(
    conn: psycopg.Connection[TupleRow], database_url: str, tiny_model: Path, tmp_path: Path
) -> None:
    r, control, models = retrainer(database_url, tiny_model, tmp_path)

    def refuse(directory: Path) -> None:
        raise ScorerError("could not publish to scorer-models: timed out")

    models.publish = refuse  # type: ignore[method-assign]
    assert r.cycle() == "failed"
    run = retrainruns.runs(conn, 1)[0]
    assert run.status == "failed" and "could not publish" in (run.reasons or "") and run.candidate is not None
    assert control.published == [] and retrainruns.active_run(conn) is None


def test_the_kill_switch_and_the_lock_stop_a_cycle_before_it_touches_anything(
    conn: psycopg.Connection[TupleRow], database_url: str, tiny_model: Path, tmp_path: Path
) -> None:
    r, control, _ = retrainer(database_url, tiny_model, tmp_path)
    control.switch = RetrainSwitch(True, "ops", "incident 42")
    assert r.cycle() == "paused"
    control.switch = RetrainSwitch(False, "ops")
    with psycopg.connect(database_url, autocommit=True) as other:
        assert retrainruns.try_lock(other)  # another instance is at work
        assert r.cycle() == "locked"
    assert retrainruns.runs(conn) == [] and control.published == []


def test_too_little_history_fails_the_run_and_a_run_left_training_is_closed_as_interrupted(
    database_url: str, tiny_model: Path, tmp_path: Path
) -> None:
    with psycopg.connect(database_url, autocommit=True) as c:
        migrate(c)
        c.execute("select store_ensure_partition('transactions', date '2026-01-01')")
        c.execute(
            "insert into transactions (event_day, transaction_id, event_time, customer_id, terminal_id, amount, "
            "source_partition, source_offset) values ('2026-01-01', 't1', '2026-01-01T10:00:00Z', 'C', 'T', 1, 0, 0)"
        )
        stale = retrainruns.open_run(c, "tiny/1", 0)  # an instance killed while it trained
        r, control, _ = retrainer(database_url, tiny_model, tmp_path)
        assert r.cycle() == "failed"
        run, left = retrainruns.runs(c, 2)
        assert run.status == "failed" and "not enough history" in (run.reasons or "")
        assert left.run_id == stale and left.status == "failed" and "interrupted" in (left.reasons or "")
        assert control.published == []


def test_a_label_reported_after_the_cut_off_changes_nothing(
    conn: psycopg.Connection[TupleRow], tiny_model: Path, tmp_path: Path
) -> None:
    cutoff = stream_time_ms(conn)
    assert cutoff is not None
    since = cutoff - 75 * MS_PER_DAY
    champion = OnnxModel(tiny_model)

    def trained(tag: str) -> tuple[str, str]:
        history = read_history(conn, since, cutoff)
        info: dict[str, Any] = {"run_id": 1, "window": ["a", "b"], "cutoff": "c"}
        candidate = train_candidate(history, champion, SPEC, tmp_path / tag, info, lambda _: None)
        return history_hash(history), hashlib.sha256(
            (candidate.directory / "model.onnx").read_bytes()
        ).hexdigest()

    before = trained("before")
    genuine = conn.execute(
        "select transaction_id, customer_id, terminal_id from transactions t where event_time between "
        "to_timestamp(%s / 1000.0) - interval '19 days' and to_timestamp(%s / 1000.0) - interval '8 days' "
        "and not exists "
        "(select 1 from labels l where l.transaction_id = t.transaction_id) limit 50",
        (cutoff, cutoff),
    ).fetchall()
    assert len(genuine) == 50  # in the fit period (the last 14 labelled days)
    for i, (tid, cust, term) in enumerate(genuine):  # called fraud after the cut-off
        conn.execute(
            "insert into labels (transaction_id, source, customer_id, terminal_id, is_fraud, reported_at, "
            "source_partition, source_offset) values (%s, 'analyst', %s, %s, true, to_timestamp(%s / 1000.0), 0, %s)",
            (tid, cust, term, cutoff + 1000, i),
        )
    assert trained("late") == before
    conn.execute(
        "update labels set reported_at = to_timestamp(%s / 1000.0) where source = 'analyst'", (cutoff - 1000,)
    )
    changed = trained("known")  # reported before the cut-off, the same labels change the data and the model
    assert changed[0] != before[0] and changed[1] != before[1]


def test_a_database_that_stops_answering_fails_the_cycle_at_its_deadline_and_the_next_one_goes_on(
    postgres: EmbeddedPostgres, database_url: str, tiny_model: Path, tmp_path: Path
) -> None:
    with psycopg.connect(database_url, autocommit=True) as c:
        migrate(c)
    opened = psycopg.connect(
        database_url, autocommit=True
    )  # before the freeze: the cycle's first call blocks
    r, _, _ = retrainer(database_url, tiny_model, tmp_path)
    r.connect, r.db_timeout_s = (lambda: opened), 1.0
    outcome: dict[str, BaseException | str] = {}

    def run() -> None:
        try:
            outcome["result"] = r.cycle()
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            outcome["result"] = exc

    postgres.pause()  # SIGSTOP: the server holds the connection without a word
    try:
        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        worker.join(60)
        frozen = worker.is_alive()
    finally:
        postgres.resume()
    worker.join(60)
    assert not frozen, "the cycle waited on the frozen database past its deadline"
    error = outcome["result"]
    assert isinstance(error, DeadlineExceeded) and "taking the retrain lock" in str(error)
    r.connect = lambda: psycopg.connect(database_url, autocommit=True)
    assert r.cycle() == "no_data"  # the next cycle, on a new connection, goes on
