"""`scorer demo --retrain`: the continuous-learning loop live. The history before the live days is written into
the demo's database as if the store had run through it (db/backfill.py), `scorer retrain` runs beside the
scorer on a short schedule, and the summary shows what it did: each run's fate, the recall on the drift's new
fraud pattern before and after the promotion, the days from the drift's start to the promotion and the
analysts' share of the labels the promoted model learned from.

`corrupt_labels` (a share) spoils the backfilled labels the way a broken label feed would: that share of the
frauds is labelled genuine and as many genuine transactions are labelled fraud. A candidate trained on them
must be retired (or refused), never promoted.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from scorer.config import Settings
from scorer.demo.broker import free_port
from scorer.demo.children import Running, last_lines
from scorer.events.batches import LabelBatch, TransactionBatch, pick
from scorer.events.timestamps import MS_PER_DAY
from scorer.training.simulate import SimulatedData

CARD_TESTING = 4  # the simulator's fraud_scenario code of the drift's card testing
FIRST_RUN_WAIT_S = 600.0  # training on the default history takes about a minute on 2 cores
POLL_S = 1.0


@dataclass(frozen=True, slots=True)
class RetrainDemo:
    """How the demo runs `scorer retrain` (short, so a demo sees a whole cycle)."""

    shadow_days: float = 2.0
    min_frauds: int = 10
    train_days: int = 14
    blend_days: float = 0.0  # 0: the challenger takes over at once
    margin: float = 0.01
    gate_tolerance: float = 0.01
    corrupt_labels: float = 0.0  # share of the backfilled fraud labels turned into lies
    poll_s: float = 2.0

    def argv(self, workdir: str) -> list[str]:
        """The `scorer retrain` flags."""
        ramp = ["--direct"] if self.blend_days <= 0 else ["--blend-days", str(self.blend_days)]
        return [
            "--every",
            "7d",
            "--poll-seconds",
            str(self.poll_s),
            "--train-days",
            str(self.train_days),
            "--shadow-days",
            str(self.shadow_days),
            "--min-frauds",
            str(self.min_frauds),
            "--margin",
            str(self.margin),
            "--gate-tolerance",
            str(self.gate_tolerance),
            "--workdir",
            workdir,
            *ramp,
        ]


def history_batches(
    data: SimulatedData, until: int, corrupt: float, seed: int
) -> tuple[TransactionBatch, LabelBatch]:
    """Transactions [0, until) and the labels reported before the first live one (corrupted when asked)."""
    rows = np.arange(until)
    tx = TransactionBatch(
        transaction_id=pick(data.transaction_id, rows),
        customer_id=pick(data.customer_id, rows),
        terminal_id=pick(data.terminal_id, rows),
        amount=data.amount[rows],
        event_ts_ms=data.event_ts_ms[rows],
        currency=list(pick(data.currency, rows)),
        channel=list(pick(data.channel, rows)),
        merchant_category=list(pick(data.merchant_category, rows)),
    )
    cut_ms = int(data.event_ts_ms[until])
    known = data.label_reported_ts_ms < cut_ms
    labelled, reported = data.label_index[known], data.label_reported_ts_ms[known]
    is_fraud = np.ones(len(labelled), dtype=bool)
    if corrupt > 0:
        labelled, reported, is_fraud = _corrupt(data, labelled, reported, until, corrupt, seed)
    labels = LabelBatch(
        transaction_id=pick(data.transaction_id, labelled),
        customer_id=pick(data.customer_id, labelled),
        terminal_id=pick(data.terminal_id, labelled),
        is_fraud=is_fraud,
        reported_ts_ms=reported,
        tx_ts_ms=data.event_ts_ms[labelled],
    )
    return tx, labels


def _corrupt(
    data: SimulatedData,
    labelled: npt.NDArray[np.int64],
    reported: npt.NDArray[np.int64],
    until: int,
    share: float,
    seed: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """`share` of the fraud labels say genuine; as many random genuine transactions get a fraud label a day
    after their time (within the backfilled history)."""
    rng = np.random.default_rng(seed)
    is_fraud = rng.random(len(labelled)) >= share
    genuine = np.flatnonzero(~data.is_fraud[:until])
    liars = np.sort(rng.choice(genuine, size=min(len(genuine), int((~is_fraud).sum())), replace=False))
    liar_reported = np.minimum(data.event_ts_ms[liars] + MS_PER_DAY, int(data.event_ts_ms[until]) - 1)
    return (
        np.concatenate([labelled, liars]),
        np.concatenate([reported, liar_reported]),
        np.concatenate([is_fraud, np.ones(len(liars), dtype=bool)]),
    )


@dataclass(frozen=True, slots=True)
class PatternFigures:
    """The drift's pattern before and after the promotion (None: no promotion, or no such events)."""

    recall_before: float | None
    recall_after: float | None
    precision_before: float | None
    precision_after: float | None


def pattern_figures(
    decided: Sequence[tuple[str, int, str]],
    index: dict[str, int],
    data: SimulatedData,
    promoted_ms: int | None,
) -> PatternFigures:
    """From (transaction_id, event time ms, the model's action) of the live decisions: the share of the
    card-testing frauds the model alerted on (recall on the pattern) and the share of frauds among its alerts,
    before and after `promoted_ms`. A card an analyst blocked is declined by a rule, not by the model: its
    later transactions count as not alerted, so these are the model's figures alone."""
    rows = [(index[t], ts, action != "approve") for t, ts, action in decided if t in index]
    if not rows:
        return PatternFigures(None, None, None, None)
    i = np.asarray([r[0] for r in rows], dtype=np.int64)
    ts = np.asarray([r[1] for r in rows], dtype=np.int64)
    alerted = np.asarray([r[2] for r in rows], dtype=bool)
    pattern = data.fraud_scenario[i] == CARD_TESTING
    fraud = data.is_fraud[i]
    after = ts >= promoted_ms if promoted_ms is not None else np.zeros(len(ts), dtype=bool)

    def share(hits: npt.NDArray[np.bool_], of: npt.NDArray[np.bool_]) -> float | None:
        return float(hits[of].mean()) if of.any() else None

    return PatternFigures(
        share(alerted, pattern & ~after),
        share(alerted, pattern & after),
        share(fraud, alerted & ~after),
        share(fraud, alerted & after),
    )


def summary_rows(
    url: str, data: SimulatedData, index: dict[str, int], span_ms: tuple[int, int], drift_from_ms: int | None
) -> list[tuple[str, str]]:
    """The retrain rows of the demo's summary, read from the database the store and `scorer retrain` wrote."""
    from scorer.db import retrainruns
    from scorer.db.connect import connect
    from scorer.db.history import decided_actions

    with connect(url, application_name="scorer-demo", connect_timeout_s=10.0) as conn:
        runs = list(reversed(retrainruns.runs(conn, 20)))
        decided = decided_actions(conn, span_ms[0], span_ms[1])
    rows = [
        (f"retrain run {r.run_id}", f"{r.status}: {r.candidate or '-'}, {(r.reasons or '')[:150]}")
        for r in runs
    ]
    promoted = [r for r in runs if r.promoted_from is not None]
    promoted_ms = (
        int(promoted[0].promoted_from.timestamp() * 1000) if promoted and promoted[0].promoted_from else None
    )
    figures = pattern_figures(decided, index, data, promoted_ms)
    if drift_from_ms is not None:
        recall = f"{_pct(figures.recall_before)} / {_pct(figures.recall_after)}"
        rows.append(("card testing: model recall before / after", recall))
    rows += [
        (
            "model alert precision before / after",
            f"{_pct(figures.precision_before)} / {_pct(figures.precision_after)}",
        ),
    ]
    if promoted and promoted_ms is not None and drift_from_ms is not None:
        rows.append(
            (
                "drift start to promotion",
                f"{(promoted_ms - drift_from_ms) / MS_PER_DAY:.1f} days of event time",
            )
        )
    if promoted:
        by_source = promoted[0].labels_by_source
        total = sum(by_source.values())
        share = by_source.get("analyst", 0) / total if total else 0.0
        rows.append(("labels it learned from", f"{total:,}, analysts' verdicts {share:.1%} of them"))
    return rows


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def start_retrain(
    running: Running,
    settings: Settings,
    model: str,
    data: SimulatedData,
    until: int,
    options: RetrainDemo,
    seed: int,
) -> None:
    """Backfill the history, then start `scorer retrain` on the demo's database (its candidates go to
    <logs>/retrain, never to the registry the scorer reads: the scorer fetches them from the models topic)."""
    url = running.database.url()
    backfill(url, data, until, options, seed)
    argv = options.argv(str(running.logs / "retrain"))
    running.start("retrain", settings, model, free_port(), argv, SCORER_DATABASE_URL=url)


def first_candidate(running: Running, timeout_s: float = FIRST_RUN_WAIT_S) -> bool:
    """Wait until `scorer retrain` has decided its first run (trained on the history before the live days),
    so the live days show what it does with them; False (and one line) when it stopped or took too long."""
    from scorer.db import retrainruns
    from scorer.db.connect import connect

    print("scorer retrain trains its first candidate on the history (the stream starts when it is done) ...")
    deadline = time.monotonic() + timeout_s
    child = running.children["retrain"]
    while time.monotonic() < deadline and child.poll() is None:
        with connect(running.database.url(), application_name="scorer-demo", connect_timeout_s=10.0) as conn:
            runs = retrainruns.runs(conn, 1)
        if runs and runs[0].status != "training":
            run = runs[0]
            print(f"retrain run {run.run_id}: {run.status} {run.candidate or ''} {(run.reasons or '')[:200]}")
            return True
        time.sleep(POLL_S)
    print(
        f"scorer demo: scorer retrain did not decide its first run: {last_lines(running.logs)}",
        file=sys.stderr,
    )
    return False


def backfill(url: str, data: SimulatedData, until: int, options: RetrainDemo, seed: int) -> None:
    """Write transactions [0, until) and the labels reported by then into the demo's database, as if the
    store had run through them (what `scorer retrain` trains its first candidate on)."""
    from scorer.db.backfill import backfill as write
    from scorer.db.connect import connect

    tx, labels = history_batches(data, until, options.corrupt_labels, seed)
    spoiled = (
        f", {options.corrupt_labels:.0%} of the fraud labels corrupted" if options.corrupt_labels else ""
    )
    print(
        f"writing the history into the database for scorer retrain: {len(tx):,} transactions, {len(labels):,} labels{spoiled}"
    )
    with connect(url, application_name="scorer-demo-backfill", connect_timeout_s=10.0) as conn:
        write(conn, tx, labels)
        conn.commit()
