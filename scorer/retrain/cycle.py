"""One retrain cycle: the state machine that trains a candidate, shadows it and promotes or retires it.

A cycle, with the kill switch off and the database lock held (else it does nothing):
1. a run in shadow: read both models' scores of the shadow window with the labels that arrived
   (db/history.shadow_rows), judge them (compare.py): wait, promote (a blend over `blend_days`, or the
   champion changed at once) or retire (the plan withdrawn);
2. a run blending: once the blend's end has passed in event time, make the challenger the champion;
3. nothing in flight and the schedule due: read the window from the store, train, gate; a refused
   candidate is recorded with its reasons and nothing is published; a passed one goes onto the models
   topic and into a shadow plan on the control topic.
Times are the stream's (the store's newest event time), never the wall clock, so a replay or a simulation
runs the same loop. Every step is written to retrain_runs and the audit log before the cycle returns; a
deployment changed by hand under a run in flight (a rollback) retires the run rather than fighting it.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson
import psycopg
from psycopg.rows import TupleRow

from scorer.db import history as store
from scorer.db import retrainruns as runs
from scorer.db.deadline import Deadline
from scorer.errors import DataError, ScorerError
from scorer.events.timestamps import MS_PER_DAY
from scorer.model.onnx import OnnxModel
from scorer.retrain.candidate import Candidate, CandidateSpec, rewrite_meta, train_candidate
from scorer.retrain.compare import Evidence, Judgement, gather, judge
from scorer.retrain.metrics import RetrainMetrics
from scorer.rollout.deployment import Deployment, RetrainSwitch
from scorer.rollout.plans import Plan
from scorer.training.train import WARM_UP_DAYS

logger = logging.getLogger(__name__)
Connection = psycopg.Connection[TupleRow]
READ_FACTOR = 30.0  # a training window or a shadow's decisions: up to 30 database timeouts (300 s by default)


class ControlPort(Protocol):
    """The control topic as the cycle uses it (kafka/control.py; a fake in unit tests)."""

    def read(self) -> tuple[Deployment | None, RetrainSwitch | None]: ...

    def publish(self, deployment: Deployment) -> None: ...


class ModelPort(Protocol):
    """Where model versions are found and put (the registry directory and the models topic)."""

    def load(self, label: str) -> OnnxModel:
        """The version `label`, from the registry or the models topic; ModelError when neither has it."""

    def directory(self, label: str) -> Path:
        """A directory holding the version's artefact (to update its card)."""

    def publish(self, directory: Path) -> None:
        """Put a version on the models topic (again, when its card changed); ScorerError on failure."""


@dataclass(frozen=True, slots=True)
class Schedule:
    """When to train and how a candidate is judged."""

    every_ms: int | None = 7 * MS_PER_DAY  # None: train whenever nothing is in flight (--once)
    shadow_days: float = 3.0
    min_frauds: int = 20
    margin: float = 0.01  # the AP a challenger must gain over the champion
    blend_days: float = 1.0  # 0: the challenger becomes champion at once


class Retrainer:
    """Runs cycles against the store's database, the control topic and the model store."""

    def __init__(
        self,
        connect: Callable[[], Connection],
        control: ControlPort,
        models: ModelPort,
        spec: CandidateSpec,
        schedule: Schedule,
        workdir: Path,
        default_champion: str,
        metrics: RetrainMetrics,
        db_timeout_s: float = 10.0,
    ) -> None:
        self.connect = connect
        self.db_timeout_s = (
            db_timeout_s  # each database step; reading a window or a shadow: READ_FACTOR times
        )
        self.control = control
        self.models = models
        self.spec = spec
        self.schedule = schedule
        self.workdir = workdir
        self.default_champion = default_champion  # the model the scorers run before any deployment
        self.metrics = metrics

    def cycle(self) -> str:
        """One cycle; its outcome (metrics.OUTCOMES). ScorerError when the database or the broker fails
        (the run in flight, if any, is left as the database has it: the next cycle takes it up)."""
        outcome = self._cycle()
        self.metrics.cycles.labels(outcome).inc()
        self.metrics.last_cycle.set(time.time())
        logger.info("retrain_cycle", extra={"outcome": outcome})
        return outcome

    def _cycle(self) -> str:
        deployment, switch = self.control.read()
        paused = switch is not None and switch.paused
        self.metrics.paused.set(1.0 if paused else 0.0)
        if paused:
            return "paused"
        with self._locked() as conn:
            if conn is None:
                return "locked"
            with self._db(conn, "reading the stream's time"):
                now_ms = store.stream_time_ms(conn)
            if now_ms is None:
                return "no_data"
            self.metrics.stream_time.set(now_ms / 1000)
            with self._db(conn, "reading the runs"):
                stale = runs.interrupted(conn)
            for run_id in stale:  # this instance holds the lock: nobody else is training
                self._end(
                    conn, run_id, "failed", "interrupted: the instance stopped while it was training", {}
                )
            with self._db(conn, "reading the runs"):
                active, latest = runs.active_run(conn), runs.latest_run(conn)
            if active is not None:
                return self._advance(conn, active, deployment, now_ms)
            self.metrics.set_state("none")
            every = self.schedule.every_ms
            if every is not None and latest is not None and now_ms - _ms(latest.cutoff) < every:
                return "not_due"
            return self._train(conn, deployment, now_ms)

    @contextmanager
    def _locked(self) -> Iterator[Connection | None]:
        """A connection holding the retrain lock, or None when another instance holds it."""
        with self.connect() as conn:
            with self._db(conn, "taking the retrain lock"):
                locked = runs.try_lock(conn)
            if not locked:
                yield None
                return
            try:
                yield conn
            finally:
                # a connection lost to a deadline took its lock with it: nothing left to release
                with contextlib.suppress(psycopg.Error, ScorerError), self._db(conn, "releasing the lock"):
                    runs.unlock(conn)

    @contextmanager
    def _db(self, conn: Connection, what: str, factor: float = 1.0) -> Iterator[None]:
        """A deadline on the database calls of the body (db/deadline.py): a server that stops answering
        fails the cycle with DeadlineExceeded (a ScorerError) instead of holding it, and the lock, for ever."""
        with Deadline(conn, self.db_timeout_s * factor, what=what):
            yield

    # training -----------------------------------------------------------------------------------------

    def _train(self, conn: Connection, deployment: Deployment | None, now_ms: int) -> str:
        started = time.monotonic()
        champion = self.models.load(deployment.champion if deployment else self.default_champion)
        since_ms = now_ms - (self.spec.train_days + _history_days(champion, self.spec)) * MS_PER_DAY
        window = (_iso(since_ms), _iso(now_ms))
        with self._db(conn, "opening a run"):
            run_id = runs.open_run(conn, champion.label, now_ms)
            runs.update_run(conn, run_id, window_from=_dt(since_ms), window_to=_dt(now_ms))
        try:
            with self._db(conn, "reading the training window", READ_FACTOR):
                history = store.read_history(conn, since_ms, now_ms)
            if len(history.transactions) == 0:
                raise DataError(f"the store holds no transactions between {window[0]} and {window[1]}")
            info = {"run_id": run_id, "window": list(window), "cutoff": _iso(now_ms)}
            out = self.workdir / self.spec.name / str(run_id)
            if out.exists():  # run ids are the database's: what is there is left from another database
                logger.warning("retrain_workdir_replaced", extra={"path": str(out)})
                shutil.rmtree(out)
            candidate = train_candidate(history, champion, self.spec, out, info, logger.info)
        except DataError as exc:
            return self._end(conn, run_id, "failed", f"cannot train: {exc}", {})
        finally:
            self.metrics.training_seconds.set(time.monotonic() - started)
        self._record(conn, run_id, candidate)
        if not candidate.passed:
            reason = f"refused by the gate: {candidate.refusals()}"
            self._decide_card(
                candidate.directory, f"refused at run {run_id}: {candidate.refusals()}", publish=False
            )
            return self._end(conn, run_id, "refused", reason, {"candidate": candidate.label})
        plan = Plan(f"retrain-{run_id}", "shadow", champion.label, candidate.label, now_ms)
        try:
            self.models.publish(candidate.directory)
            self.control.publish(_with(deployment, champion.label, plan))
        except ScorerError as exc:  # the broker refused: no shadow started, the next due cycle trains again
            return self._end(
                conn, run_id, "failed", f"could not publish: {exc}", {"candidate": candidate.label}
            )
        with self._db(conn, "recording the shadow"):
            runs.update_run(conn, run_id, status="shadow", shadow_from=_dt(now_ms))
            runs.audit(
                conn,
                "retrain_shadow",
                {"run_id": run_id, "candidate": candidate.label, "plan": plan.to_dict()},
            )
        self.metrics.set_state("shadow")
        return "trained"

    def _record(self, conn: Connection, run_id: int, candidate: Candidate) -> None:
        with self._db(conn, "recording the candidate"):
            self._record_candidate(conn, run_id, candidate)

    def _record_candidate(self, conn: Connection, run_id: int, candidate: Candidate) -> None:
        runs.update_run(
            conn,
            run_id,
            candidate=candidate.label,
            data_sha256=candidate.data_sha256,
            onnx_sha256=candidate.onnx_sha256,
            labels_by_source=candidate.labels_by_source,
            alarms=candidate.alarms,
            gate=[{"name": c.name, "ok": c.ok, "detail": c.detail} for c in candidate.checks],
            evidence={"validation_week": candidate.comparison},
        )

    # a run in flight ----------------------------------------------------------------------------------

    def _advance(self, conn: Connection, run: runs.Run, deployment: Deployment | None, now_ms: int) -> str:
        candidate = str(run.candidate)
        plan = deployment.plan if deployment else None
        if deployment is None or plan is None or plan.challenger != candidate:
            why = f"the deployment was changed by hand (now {deployment.champion if deployment else 'none'})"
            return self._end(conn, run.run_id, "retired", why, {"candidate": candidate})
        if run.status == "blending":
            return self._finish_blend(conn, run, deployment, now_ms)
        self.metrics.set_state("shadow")
        shadow_from = _ms(run.shadow_from) if run.shadow_from else now_ms
        with self._db(conn, "reading the shadow's decisions", READ_FACTOR):
            rows = store.shadow_rows(conn, candidate, shadow_from, now_ms + 1, now_ms)
        evidence = gather(rows, (now_ms - shadow_from) / MS_PER_DAY)
        self._show(evidence)
        s = self.schedule
        verdict = judge(evidence, s.shadow_days, s.min_frauds, s.margin)
        with self._db(conn, "recording the evidence"):
            runs.update_run(conn, run.run_id, evidence={**(run.evidence or {}), "live": evidence.to_dict()})
        if verdict.outcome == "wait":
            return "waiting"
        if verdict.outcome == "retire":
            self.control.publish(
                Deployment(deployment.champion, None, deployment.previous, now_ms, deployment.policy)
            )
            self._decide_card(
                self.models.directory(candidate), f"retired at run {run.run_id}: {verdict.reason}"
            )
            return self._end(
                conn, run.run_id, "retired", verdict.reason, {"candidate": candidate, **evidence.to_dict()}
            )
        return self._promote(conn, run, deployment, now_ms, verdict, evidence)

    def _promote(
        self,
        conn: Connection,
        run: runs.Run,
        deployment: Deployment,
        now_ms: int,
        verdict: Judgement,
        evidence: Evidence,
    ) -> str:
        candidate = str(run.candidate)
        detail = {"candidate": candidate, **evidence.to_dict()}
        self._decide_card(self.models.directory(candidate), f"promoted at run {run.run_id}: {verdict.reason}")
        if self.schedule.blend_days <= 0:
            self.control.publish(Deployment(candidate, None, deployment.champion, now_ms, deployment.policy))
            with self._db(conn, "recording the promotion"):
                runs.update_run(conn, run.run_id, promoted_from=_dt(now_ms))
            return self._end(conn, run.run_id, "promoted", verdict.reason, detail)
        end_ms = now_ms + round(self.schedule.blend_days * MS_PER_DAY)
        plan = Plan(f"retrain-{run.run_id}-blend", "blend", deployment.champion, candidate, now_ms, end_ms)
        self.control.publish(
            Deployment(deployment.champion, plan, deployment.previous, now_ms, deployment.policy)
        )
        with self._db(conn, "recording the blend"):
            runs.update_run(
                conn,
                run.run_id,
                status="blending",
                promoted_from=_dt(now_ms),
                blend_to=_dt(end_ms),
                reasons=verdict.reason,
            )
            runs.audit(conn, "retrain_blending", {"run_id": run.run_id, **detail, "blend_to": _iso(end_ms)})
        self.metrics.set_state("blending")
        return "promoted"

    def _finish_blend(self, conn: Connection, run: runs.Run, deployment: Deployment, now_ms: int) -> str:
        self.metrics.set_state("blending")
        if run.blend_to is not None and now_ms < _ms(run.blend_to):
            return "waiting"
        candidate = str(run.candidate)
        self.control.publish(Deployment(candidate, None, deployment.champion, now_ms, deployment.policy))
        reason = f"{run.reasons or 'promoted'}; the blend ended and {candidate} is the champion"
        return self._end(conn, run.run_id, "promoted", reason, {"candidate": candidate})

    # records ------------------------------------------------------------------------------------------

    def _end(self, conn: Connection, run_id: int, status: str, reason: str, detail: dict[str, Any]) -> str:
        """Close a run with its status and reason, in the runs table and the audit log."""
        with self._db(conn, "recording a decision"):
            runs.update_run(conn, run_id, status=status, reasons=reason, decided_at=datetime.now(UTC))
            runs.audit(conn, f"retrain_{status}", {"run_id": run_id, "reason": reason, **detail})
        self.metrics.set_state("none")
        logger.info("retrain_decided", extra={"run_id": run_id, "status": status, "reason": reason})
        return status

    def _decide_card(self, directory: Path, decision: str, publish: bool = True) -> None:
        """The card of the version records what became of it; the models topic gets the new card when the
        version is there (a refused candidate never goes onto it)."""
        meta = orjson.loads((directory / "model.json").read_bytes())
        retrain = {**meta.get("retrain", {}), "decision": decision}
        rewrite_meta(directory, {"retrain": retrain})
        if not publish:
            return
        try:
            self.models.publish(directory)
        except ScorerError as exc:  # the decision stands; the card on the topic is one step behind
            logger.warning("retrain_card_not_published", extra={"error": str(exc)})

    def _show(self, evidence: Evidence) -> None:
        m = self.metrics
        m.average_precision.labels("champion").set(evidence.champion_ap)
        m.average_precision.labels("challenger").set(evidence.challenger_ap)
        m.band_precision.labels("champion").set(evidence.champion_precision)
        m.band_precision.labels("challenger").set(evidence.challenger_precision)
        m.shadow_frauds.set(evidence.frauds)


def _with(deployment: Deployment | None, champion: str, plan: Plan) -> Deployment:
    """The deployment in force with `plan` added (its policy and previous champion kept)."""
    if deployment is None:
        return Deployment(champion, plan, None, plan.start_ms)
    return Deployment(champion, plan, deployment.previous, plan.start_ms, deployment.policy)


def _history_days(champion: OnnxModel, spec: CandidateSpec) -> int:
    """Days of history beyond the fit days that training needs: the warm-up, the label delay three times
    (before the fit, before the validation week and after it), the validation week and a day of slack
    (training/train.plan_periods)."""
    delay = champion.meta.feature_config.label_delay_days
    return WARM_UP_DAYS + 3 * delay + spec.validation_days + 1


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _iso(ms: int) -> str:
    return _dt(ms).isoformat(timespec="seconds")
