"""The scoring core: a batch of input values in; decisions, flags, shadow decisions and dead letters out.

No Kafka here. The caller (the `scorer run` loop, the benchmark, a test) hands over the records' values
and input partitions; the core decodes them, updates each partition's customer windows, reads the
terminal table, scores the batch with one model call per model of the deployment, checks the inputs
against the training reference, feeds drift, and returns what must be produced as plain records. The
caller produces them and commits (commits.py). One batch is decided by one deployment: a new one is
swapped in between batches (`adopt`).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt
import orjson

from scorer.config import Settings
from scorer.errors import ScorerError
from scorer.events.batches import TransactionBatch, take_transactions
from scorer.events.decode import REASONS, DecodedTransactions, decode_transactions
from scorer.events.timestamps import HOUR_MS, rfc3339_ms
from scorer.features.engine import CATEGORY_COLUMNS, FEATURE_NAMES, category_codes, stateless_features
from scorer.model.onnx import OnnxModel
from scorer.monitoring.drift import Bins, Drift
from scorer.monitoring.inputs import InputChecks, issue_labels
from scorer.policy.actions import ACTIONS
from scorer.policy.decide import Actions, decide, rescored
from scorer.policy.rules import RuleBook
from scorer.rollout.serving import Outcome, Serving
from scorer.runtime.metrics import Metrics
from scorer.scoring.customers import CustomerStore
from scorer.scoring.decisions import Explainers, ScoredBatch, encode_decisions
from scorer.scoring.scored import Counted, DeadLetter, Record, Scored

logger = logging.getLogger(__name__)
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
PROCESSING_ERROR = "processing_error"  # a batch that failed inside the scorer (see the run loop)
DEAD_LETTER_REASONS = (*REASONS, PROCESSING_ERROR)  # every reason a dead letter can carry


class TerminalLookup(Protocol):
    """Where a batch's terminal features come from: the aggregator's table (`scorer run`) or terminal
    state kept in process (`scorer score`, the embedded Scorer)."""

    def features(self, terminal_id: Sequence[str], ts_ms: I64) -> F64: ...


class SystemicFailure(ScorerError):
    """Scoring fails whatever the records: the process must stop without committing."""


def default_instance() -> str:
    """This process's name in the monitoring records: host and PID."""
    return f"{socket.gethostname()}-{os.getpid()}"


class ScoringCore:
    """Customer state of the assigned partitions, the terminal table and the deployment in force."""

    def __init__(
        self,
        settings: Settings,
        serving: Serving,
        customers: CustomerStore,
        terminals: TerminalLookup,
        metrics: Metrics,
        *,
        instance: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.customers = customers
        self.terminals = terminals
        self.metrics = metrics
        self.instance = instance or default_instance()
        self.clock = clock
        self.lap: Callable[[str], None] = _no_lap  # marks the end of each stage (the benchmark times them)
        self.vocabs: dict[str, dict[str, dict[str, int]]] = {}  # per model label: its categorical codes
        for name, reason in issue_labels(FEATURE_NAMES):
            metrics.input_issues.labels(name, reason)
        self.serving = serving
        self.vocab = self._vocab(serving.champion)
        self.rules = RuleBook()  # the rules in force (the loop swaps in new ones between batches)
        self.explainers = Explainers(FEATURE_NAMES)  # each model's reasons (TreeSHAP), built once
        self.checks, self.drift = self._reference(serving.champion)
        self.explainers.prepare(serving.champion, serving.challenger)

    def _reference(self, champion: OnnxModel) -> tuple[InputChecks, Drift]:
        """Input checks and drift against this champion's training reference."""
        s, meta = self.settings, champion.meta.raw
        checks = InputChecks.from_meta(meta, FEATURE_NAMES, s.max_future_skew_s, s.max_event_delay_s)
        drift = Drift(Bins.from_reference(meta["reference"], FEATURE_NAMES))
        return checks, drift

    def adopt(self, serving: Serving) -> list[Record]:
        """Swap in a new deployment; returns the outgoing champion's unpublished drift counts."""
        outgoing: list[Record] = []
        if serving.champion is not self.serving.champion:
            outgoing = self.drift_records()
            self.checks, self.drift = self._reference(serving.champion)
            self.vocab = self._vocab(serving.champion)
        self.explainers.prepare(serving.champion, serving.challenger)  # between batches, not in the first
        self.serving = serving
        return outgoing

    def score(
        self,
        values: Sequence[bytes | None],
        partitions: I64,
        on_decoded: Callable[[Counted], None] | None = None,
    ) -> Scored:
        """Decode a consumed batch (values and input partitions, in offset order) and score the valid.

        `on_decoded` gets the valid transactions before anything is scored: the loop writes them to
        terminal-events there, because the terminal table may wait for the close of the previous day, and
        the aggregator closes it only once the new day's transactions reach it.

        A record that makes scoring fail costs only itself: the batch is split in halves until the
        failing records stand alone, the rest is scored, and those go out as `processing_error` dead
        letters. A record that fails alone is not proof of poison, though: a fault of ours (a bug in a
        step, the terminal table unreadable, memory) fails every record alone too. So a made-up valid
        transaction is then scored at the first failing record's time and partition (its changes
        undone); if it fails as well, the fault is not the records': SystemicFailure, and the caller
        stops without committing, so no transaction loses its decision to a dead letter.
        """
        decoded = decode_transactions(values, self.settings.max_value_bytes)
        self.lap("decode")
        return self.score_decoded(decoded, partitions, on_decoded)

    def score_decoded(
        self,
        decoded: DecodedTransactions,
        partitions: I64,
        on_decoded: Callable[[Counted], None] | None = None,
    ) -> Scored:
        """`score` after the decode (the embedded Scorer decodes first to refuse a bad call whole)."""
        dead = [DeadLetter(i, r.reason, r.detail) for i, r in decoded.rejected]
        if len(decoded.batch) == 0:
            return Scored([], dead_letters=dead, scored_at_ms=self.now_ms())
        if on_decoded is not None:  # every valid transaction, scored or a processing_error later
            on_decoded(Counted(decoded.kept, decoded.batch.terminal_id, decoded.batch.event_ts_ms))
        scored = self._isolate(decoded.batch, partitions[decoded.kept])
        if scored.dead_letters:
            self._check_systemic(decoded.batch, partitions[decoded.kept], scored.dead_letters[0])
        where = decoded.kept
        failed = [DeadLetter(int(where[d.index]), d.reason, d.detail) for d in scored.dead_letters]
        scored.dead_letters = sorted(dead + failed, key=lambda d: d.index)
        scored.kept = where[scored.kept]
        return scored

    def _isolate(self, batch: TransactionBatch, partitions: I64) -> Scored:
        """score_batch, or, when it fails, each half on its own (positions are the batch's)."""
        try:
            return self.score_batch(batch, partitions)
        except Exception as exc:  # the failing records are found by halving; the rest is scored
            if len(batch) == 1:
                logger.warning("record_failed", exc_info=True)
                return Scored(
                    [], dead_letters=[DeadLetter(0, PROCESSING_ERROR, f"{type(exc).__name__}: {exc}")]
                )
            mid = len(batch) // 2
            left = self._isolate(take_transactions(batch, np.arange(mid)), partitions[:mid])
            right = self._isolate(take_transactions(batch, np.arange(mid, len(batch))), partitions[mid:])
            return left.followed_by(right, mid)

    def _check_systemic(self, batch: TransactionBatch, partitions: I64, failed: DeadLetter) -> None:
        """Records failed alone: poison, or would any record fail? A made-up valid transaction at the
        first failed record's event time and partition answers; whatever it changed is undone."""
        probe = probe_transaction(int(batch.event_ts_ms[failed.index]))
        undo: list[Callable[[], None]] = []
        try:
            self._decide(probe, partitions[failed.index : failed.index + 1], undo)
        except Exception as exc:
            raise SystemicFailure(
                f"records fail alone ({failed.detail}) and so does a valid made-up transaction: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        finally:
            _revert(undo)

    def score_batch(self, batch: TransactionBatch, partitions: I64) -> Scored:
        """Features, one call per model, the output records, then checks, drift and metrics, of a decoded
        batch; if it fails, the customer state is as it was before (so a retry counts nothing twice)."""
        undo: list[Callable[[], None]] = []
        try:
            out, serving, outcome, actions = self._decide(batch, partitions, undo)
        except Exception:
            _revert(undo)
            raise
        self._count_actions(actions)
        self._record_models(serving, outcome)
        X = out.features
        self.checks.check(batch, X, out.scored_at_ms, self._count_issue, serving.champion.label)
        self.drift.observe(X, outcome.champion_scores, batch.event_ts_ms)
        self.metrics.scored.inc(len(batch))
        self.metrics.flagged.inc(len(out.flags))
        self.lap("input checks + drift")
        return out

    def _decide(
        self, batch: TransactionBatch, partitions: I64, undo: list[Callable[[], None]]
    ) -> tuple[Scored, Serving, Outcome, Actions]:
        """Rules, features, the models and the output records of a batch: every step that can fail, and
        nothing counted yet (the probe of `_check_systemic` runs this too)."""
        ruled = self.rules.apply(batch)[0]  # first: the batch's ids are still in the CPU's caches
        self.lap("rules")
        X = self.features(batch, partitions, undo)
        serving = self.serving
        theirs = self._challenger_features(serving, batch, X)
        outcome = serving.score(X, batch, self._timed, self.settings.challenger_timeout_s, theirs)
        self.lap("model")
        out, actions = self._records(batch, X, serving, outcome, ruled)
        self.lap("decisions")
        return out, serving, outcome, actions

    def _records(
        self, batch: TransactionBatch, X: F32, serving: Serving, outcome: Outcome, ruled: I64
    ) -> tuple[Scored, Actions]:
        """Decision, flag and shadow records of a scored batch: the model's band, or a rule's action."""
        now_ms = self.now_ms()
        champion = serving.champion
        actions = decide(self.rules, ruled, outcome.scores, outcome.review, outcome.decline)
        scored = ScoredBatch(
            batch, X, outcome.scores, actions.flagged, serving.bands(champion)[0], champion.label, outcome.extra,
            actions.codes, actions.sources, self.settings.decision_features,
        )  # fmt: skip
        keys = list(map(str.encode, batch.customer_id))
        values = encode_decisions(scored, self.explainers.of(champion), now_ms)
        flag_rows = np.flatnonzero(actions.flagged)
        out = Scored(
            _records(keys, values),
            flags=[{"key": keys[i], "value": values[i]} for i in flag_rows.tolist()],
            flag_rows=flag_rows,
            kept=np.arange(len(batch), dtype=np.int64),
            scored_at_ms=now_ms,
            features=X,
            columns=[scored],
        )
        if outcome.shadow_scores is not None and serving.challenger is not None:
            model = serving.challenger
            review, decline = serving.bands(model)
            theirs = rescored(actions, outcome.shadow_scores, review, decline)
            shadow = ScoredBatch(
                batch, X, outcome.shadow_scores, theirs.flagged, review, model.label, None, theirs.codes, theirs.sources
            )  # fmt: skip
            out.shadow = _records(keys, encode_decisions(shadow, self.explainers.of(model), now_ms))
            out.shadow_columns = [shadow]
        return out, actions

    def _count_actions(self, actions: Actions) -> None:
        ruled = actions.hit >= 0
        counts = np.bincount(actions.codes.astype(np.int64) + 3 * ruled, minlength=6).tolist()
        for code, n in enumerate(counts):
            if n:
                self.metrics.decisions.labels(ACTIONS[code % 3], "rule" if code >= 3 else "model").inc(n)
        for position, n in enumerate(np.bincount(actions.hit[ruled], minlength=len(self.rules)).tolist()):
            if n:
                self.metrics.rule_hits.labels(self.rules.rules[position].rule_id).inc(n)

    def features(
        self, batch: TransactionBatch, partitions: I64, undo: list[Callable[[], None]] | None = None
    ) -> F32:
        """Stateless + customer windows (owned per partition) + terminal table, in FEATURE_NAMES order."""
        customer = self.customers.update_and_compute(
            batch.customer_id, batch.event_ts_ms, batch.amount, partitions, undo
        )
        self.lap("customer windows")
        terminal = self.terminals.features(batch.terminal_id, batch.event_ts_ms)
        self.lap("terminal lookup")
        X = np.hstack([stateless_features(batch, self.vocab), customer, terminal]).astype(np.float32)
        self.lap("stateless + assemble")
        return X

    def _vocab(self, model: OnnxModel) -> dict[str, dict[str, int]]:
        """`model`'s training vocabulary as codes (each model's own: a new model may know more values)."""
        vocab = self.vocabs.get(model.label)
        if vocab is None:
            if len(self.vocabs) > 8:  # models of past deployments: a few dicts each, dropped now and then
                self.vocabs.clear()
            vocab = self.vocabs[model.label] = model.meta.feature_config.codes()
        return vocab

    def _challenger_features(self, serving: Serving, batch: TransactionBatch, X: F32) -> F32 | None:
        """The challenger's features when its vocabulary differs from the champion's (None: the same X)."""
        if serving.challenger is None:
            return None
        vocab = self._vocab(serving.challenger)
        if vocab == self.vocab:
            return None
        theirs = X.copy()
        theirs[:, CATEGORY_COLUMNS] = category_codes(batch, vocab)
        return theirs

    def drift_records(self) -> list[Record]:
        """Per event hour, the binned counts gathered since the last call (for `scorer report`)."""
        hours = self.drift.take_hours()
        if not hours:
            return []
        bins = self.drift.bins
        sizes = np.diff([*bins.offsets.tolist(), bins.size]).tolist()
        ordered = sorted(hours)
        stamps = rfc3339_ms(np.asarray(ordered, dtype=np.int64) * HOUR_MS)
        key = self.instance.encode()
        return [
            {
                "key": key,
                "value": orjson.dumps(
                    {
                        "kind": "drift", "hour": stamp, "model_version": self.serving.champion.label,
                        "instance": self.instance, "columns": bins.columns, "bins": sizes,
                        "counts": hours[hour].tolist(),
                    }
                ),
            }
            for hour, stamp in zip(ordered, stamps, strict=True)
        ]  # fmt: skip

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _record_models(self, serving: Serving, outcome: Outcome) -> None:
        """Per model version: its score histogram, events scored and flagged; fallbacks and agreement."""
        m, champion = self.metrics, serving.champion
        champion_flags = outcome.champion_scores >= champion.threshold
        m.model_scores.observe_many(outcome.champion_scores, champion.label)
        m.model_scored.labels(champion.label).inc(len(champion_flags))
        m.model_flagged.labels(champion.label).inc(int(champion_flags.sum()))
        if serving.challenger is None:
            return
        label = serving.challenger.label
        if outcome.challenger_skipped:
            m.challenger_skipped.labels(label).inc()
        if outcome.fallbacks:
            m.fallbacks.labels(label).inc(outcome.fallbacks)
        if outcome.challenger_scores is not None:
            usable = np.isfinite(outcome.challenger_scores)
            scores = outcome.challenger_scores[usable]
            flags = scores >= serving.challenger.threshold
            m.model_scores.observe_many(scores, label)
            m.model_scored.labels(label).inc(len(scores))
            m.model_flagged.labels(label).inc(int(flags.sum()))
            m.agreement.labels(label).inc(int((flags == champion_flags[usable]).sum()))

    def _count_issue(self, name: str, reason: str, n: int) -> None:
        self.metrics.input_issues.labels(name, reason).inc(n)

    def _timed(self, label: str, seconds: float) -> None:
        self.metrics.inference.labels(label).observe(seconds)


def probe_transaction(event_ts_ms: int) -> TransactionBatch:
    """A valid transaction no real one resembles (ids start with a NUL), for telling poison from faults."""
    probe = ["\x00probe"]
    return TransactionBatch(
        transaction_id=probe,
        customer_id=probe,
        terminal_id=probe,
        amount=np.ones(1),
        event_ts_ms=np.full(1, event_ts_ms, dtype=np.int64),
        currency=[None],
        channel=[None],
        merchant_category=[None],
    )


def _revert(undo: list[Callable[[], None]]) -> None:
    for revert in reversed(undo):
        revert()


def _no_lap(stage: str) -> None:
    return None


def _records(keys: list[bytes], values: list[bytes]) -> list[Record]:
    return [{"key": k, "value": v} for k, v in zip(keys, values, strict=True)]
