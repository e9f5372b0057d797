"""Model quality on data the project did not make: the Fraud Detection Handbook's dataset and protocol.

`python -m benchmarks.quality --handbook DIR` reads the handbook's published simulated transactions (the daily
pandas pickles of its `simulated-data-raw` repository: `git clone` it, pass its `data/` folder), writes them in
this project's JSONL format (fraud labels reported exactly 7 days after the transaction, the book's feedback
model) to `--jsonl-out`, and runs the book's prequential protocol, re-implemented from its description:

- four folds whose 7-day training windows start 2018-07-25, 08-01, 08-08 and 08-15; 7 days of label delay
  follow each, then 7 test days;
- the test set leaves out the cards already known to be compromised: those with a fraud in the training week,
  and on test day k also those with a fraud on the first k days of the delay period;
- ROC AUC, Average Precision and Card Precision@100 (per test day, the 100 cards with the highest score; cards
  detected on an earlier test day left out), averaged over the folds.

It checks itself against one of the book's published baselines first (a logistic regression on the book's 15
features, computed here from their definitions), then scores the project's own model, trained by `scorer
train`'s code on the book's one-week window (`--train-days 7`) and on all history before the fold, and prints
the table (mean and standard deviation over the folds) to paste into benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import orjson

from scorer.events.batches import LabelBatch, TransactionBatch, take_labels, take_transactions
from scorer.events.timestamps import MS_PER_DAY, rfc3339_ms
from scorer.model.quality import average_precision, card_precision_at_k_detected, roc_auc
from scorer.training.dataset import History

FOLD_STARTS = ("2018-07-25", "2018-08-01", "2018-08-08", "2018-08-15")
TRAIN_DAYS = DELAY_DAYS = TEST_DAYS = 7
BOOK = {  # the book's published prequential figures on this data (mean over its test folds)
    "logistic regression, 15 features (book)": (0.868, 0.623, 0.297),
    "XGBoost, 15 features (book's best)": (0.869, 0.687, 0.303),
}
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]


@dataclass(slots=True)
class Data:
    """The handbook's transactions as columns, sorted by time."""

    ts_ms: I64
    customer: I64
    terminal: I64
    amount: F64
    fraud: B
    scenario: npt.NDArray[np.int8]  # the simulator's fraud scenario: 0 genuine, 1 amount, 2 terminal, 3 card

    def __len__(self) -> int:
        return len(self.ts_ms)

    @property
    def day(self) -> I64:
        return self.ts_ms // MS_PER_DAY


def read_handbook(folder: Path) -> Data:
    """Every daily pickle of the handbook's `simulated-data-raw/data` folder (needs pandas)."""
    import pandas as pd  # the `quality` extra: only this benchmark reads pickles

    files = sorted(folder.glob("*.pkl"))
    if not files:
        raise SystemExit(
            f"no .pkl files in {folder}: pass the data/ folder of the handbook's simulated-data-raw"
        )
    days = [pd.read_pickle(f) for f in files]  # noqa: S301 - the handbook's published files, fetched by the user
    frame = pd.concat(days, ignore_index=True).sort_values("TX_DATETIME", kind="stable")
    ts = frame["TX_DATETIME"].to_numpy().astype("datetime64[ms]").astype(np.int64)
    return Data(
        ts_ms=ts,
        customer=frame["CUSTOMER_ID"].to_numpy().astype(np.int64),
        terminal=frame["TERMINAL_ID"].to_numpy().astype(np.int64),
        amount=frame["TX_AMOUNT"].to_numpy().astype(np.float64),
        fraud=frame["TX_FRAUD"].to_numpy().astype(bool),
        scenario=frame["TX_FRAUD_SCENARIO"].to_numpy().astype(np.int8),
    )


def history_of(data: Data) -> History:
    """The project's view: transactions keyed by customer, a fraud label each reported 7 days later."""
    n = len(data)
    ids = [f"tx{i:07d}" for i in range(n)]
    customers = [f"C{c:05d}" for c in data.customer.tolist()]
    terminals = [f"T{t:05d}" for t in data.terminal.tolist()]
    tx = TransactionBatch(
        ids, customers, terminals, data.amount, data.ts_ms, [None] * n, [None] * n, [None] * n
    )
    frauds = np.flatnonzero(data.fraud)
    reported = data.ts_ms[frauds] + DELAY_DAYS * MS_PER_DAY
    order = np.argsort(reported, kind="stable")
    frauds = frauds[order]
    labels = LabelBatch(
        transaction_id=[ids[i] for i in frauds.tolist()],
        customer_id=[customers[i] for i in frauds.tolist()],
        terminal_id=[terminals[i] for i in frauds.tolist()],
        is_fraud=np.ones(len(frauds), dtype=bool),
        reported_ts_ms=reported[order],
        tx_ts_ms=data.ts_ms[frauds],
    )
    return History(tx, labels)


def write_jsonl(history: History, out: Path) -> None:
    """The dataset as `scorer simulate` writes it, so `scorer train` / `evaluate` take it as it is."""
    out.mkdir(parents=True, exist_ok=True)
    t = history.transactions
    stamps = rfc3339_ms(t.event_ts_ms)
    with (out / "transactions.jsonl").open("wb") as fh:
        for tx, c, term, a, s in zip(
            t.transaction_id, t.customer_id, t.terminal_id, t.amount.tolist(), stamps, strict=True
        ):
            fh.write(
                orjson.dumps(
                    {"transaction_id": tx, "customer_id": c, "terminal_id": term, "amount": a, "timestamp": s}
                )
                + b"\n"
            )
    lab = history.labels
    reported, at = rfc3339_ms(lab.reported_ts_ms), rfc3339_ms(lab.tx_ts_ms)
    with (out / "labels.jsonl").open("wb") as fh:
        for i, tx in enumerate(lab.transaction_id):
            doc = {"transaction_id": tx, "customer_id": lab.customer_id[i], "terminal_id": lab.terminal_id[i],
                   "is_fraud": True, "reported_at": reported[i], "timestamp": at[i]}  # fmt: skip
            fh.write(orjson.dumps(doc) + b"\n")


# -- the protocol -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fold:
    start_day: int  # first training day (days since the epoch)

    @property
    def train(self) -> tuple[int, int]:
        return self.start_day, self.start_day + TRAIN_DAYS

    @property
    def test(self) -> tuple[int, int]:
        first = self.start_day + TRAIN_DAYS + DELAY_DAYS
        return first, first + TEST_DAYS


def folds() -> list[Fold]:
    return [Fold(int(np.datetime64(s, "D").astype(np.int64))) for s in FOLD_STARTS]


def test_rows(data: Data, fold: Fold) -> B:
    """The fold's test transactions without cards already known to be compromised (the book's rule)."""
    day = data.day
    known = set(data.customer[(day >= fold.train[0]) & (day < fold.train[1]) & data.fraud].tolist())
    keep = np.zeros(len(data), dtype=bool)
    for k in range(TEST_DAYS):
        delay = (
            (day >= fold.train[1]) & (day < fold.train[1] + k) & data.fraud
        )  # delay days before test day k
        known_k = known | set(data.customer[delay].tolist())
        today = day == fold.test[0] + k
        keep |= today & ~np.isin(data.customer, np.fromiter(known_k, dtype=np.int64, count=len(known_k)))
    return keep


def fold_metrics(data: Data, rows: B, scores: F64) -> tuple[float, float, float]:
    y = data.fraud[rows]
    cp = card_precision_at_k_detected(data.day[rows], data.customer[rows], y, scores, 100)
    return roc_auc(y, scores), average_precision(y, scores), cp


# -- the book's 15 features and its logistic-regression baseline -------------------------------------------


def _window_sums(key: I64, ts: I64, values: F64, older_ms: int, newer_ms: int) -> F64:
    """Per row: the sum of `values` over the rows of the same key with time in (t - older, t - newer]."""
    order = np.lexsort((np.arange(len(ts)), ts, key))  # by key, then time, then input order
    k, t = key[order], ts[order]
    composite = (k << 40) + t - int(ts.min()) + (1 << 38)  # key-major, time-minor; offsets stay positive
    cum = np.concatenate([[0.0], np.cumsum(values[order])])
    rank = np.empty(len(ts), dtype=np.int64)
    rank[order] = np.arange(len(ts))
    here = composite[rank]
    # newer 0: the row itself and the rows before it in time (a rolling window up to the current row)
    hi = rank + 1 if newer_ms == 0 else np.searchsorted(composite, here - newer_ms, side="right")
    lo = np.searchsorted(composite, here - older_ms, side="right")
    return cum[hi] - cum[lo]


def book_features(data: Data) -> F64:
    """The book's 15 features from their definitions: amount, weekend, night; per customer the number of
    transactions and mean amount over 1/7/30 days up to the transaction; per terminal the number of
    transactions and the share of frauds over 1/7/30 days ending 7 days before it."""
    day_ms = MS_PER_DAY
    seconds = (data.ts_ms % day_ms) // 1000
    weekday = (data.day + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    columns: list[F64] = [data.amount, (weekday >= 5).astype(float), (seconds // 3600 <= 6).astype(float)]
    ones = np.ones(len(data))
    counts, means = [], []
    for w in (1, 7, 30):
        n = _window_sums(data.customer, data.ts_ms, ones, w * day_ms, 0)
        total = _window_sums(data.customer, data.ts_ms, data.amount, w * day_ms, 0)
        counts.append(n)
        means.append(total / np.maximum(n, 1))
    columns += counts + means
    fraud = data.fraud.astype(float)
    t_counts, risks = [], []
    for w in (1, 7, 30):
        older, newer = (DELAY_DAYS + w) * day_ms, DELAY_DAYS * day_ms
        n = _window_sums(data.terminal, data.ts_ms, ones, older, newer)
        f = _window_sums(data.terminal, data.ts_ms, fraud, older, newer)
        t_counts.append(n)
        risks.append(np.divide(f, n, out=np.zeros_like(f), where=n > 0))
    return np.column_stack(columns + t_counts + risks)


def logistic_baseline(data: Data, X: F64, fold: Fold) -> F64:
    """Scores of the test week from a logistic regression on the fold's training week (scaled inputs)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    day = data.day
    train = (day >= fold.train[0]) & (day < fold.train[1])
    scaler = StandardScaler().fit(X[train])
    model = LogisticRegression(random_state=0, max_iter=1000).fit(
        scaler.transform(X[train]), data.fraud[train]
    )
    rows = test_rows(data, fold)
    return np.asarray(model.predict_proba(scaler.transform(X[rows]))[:, 1], dtype=np.float64)


# -- the project's model --------------------------------------------------------------------------------


def truncate(history: History, until_day: int) -> History:
    """The history as a live system has it at the start of `until_day`: earlier transactions, and the
    labels reported by then."""
    t = history.transactions
    rows = np.flatnonzero(t.event_ts_ms < until_day * MS_PER_DAY)
    lab = history.labels
    known = np.flatnonzero(lab.reported_ts_ms < until_day * MS_PER_DAY)
    return History(take_transactions(t, rows), take_labels(lab, known))


def project_scores(
    history: History,
    data: Data,
    data_dir: Path,
    fold: Fold,
    train_days: int | None,
    say: Callable[[str], None],
) -> F64:
    """`scorer train`'s code at the start of the test week (labels known then), then the test week scored
    with features replayed as the stream computes them."""
    from scorer.model.onnx import OnnxModel
    from scorer.training.dataset import replay_features
    from scorer.training.train import TrainParams, train, write_artefact

    known = truncate(history, fold.test[0])
    result = train(known, data_dir, TrainParams(name="handbook", train_days=train_days), say=say)
    out = Path("data") / "handbook-models" / f"{fold.start_day}-{train_days or 'all'}-{time.time_ns()}"
    model = OnnxModel(write_artefact(out, result))
    upto = truncate(history, fold.test[1])
    X = replay_features(upto, model.meta.feature_config)
    rows = test_rows(data, fold)[: len(upto.transactions)]
    return model.predict(X[rows])


# -- the table ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Row:
    name: str
    per_fold: list[tuple[float, float, float]]

    def line(self) -> str:
        a = np.asarray(self.per_fold)
        mean, std = a.mean(axis=0), a.std(axis=0)
        cells = " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in zip(mean.tolist(), std.tolist(), strict=True))
        return f"| {self.name} | {cells} |"


SCENARIOS = {1: "amount above 220", 2: "compromised terminal", 3: "compromised card"}


def by_scenario(data: Data, per_fold: Sequence[tuple[B, F64]]) -> str:
    """Where the misses are: per fraud scenario, its share of the test frauds, the ROC AUC of its frauds
    against every genuine test transaction, and the share of its frauds made on a terminal with no fraud
    known yet (none in the 28 days up to 7 days before: the label delay hides a fresh compromise from
    every terminal feature). Means over the folds."""
    day = MS_PER_DAY
    unseen = _window_sums(data.terminal, data.ts_ms, data.fraud.astype(float), 35 * day, 7 * day) == 0
    lines = [
        "| fraud scenario | share of test frauds | ROC AUC against genuine | on a terminal with no fraud known |",
        "|---|---:|---:|---:|",
    ]
    for code, name in SCENARIOS.items():
        shares, aucs, blind = [], [], []
        for rows, scores in per_fold:
            scenario, fraud = data.scenario[rows], data.fraud[rows]
            mine = scenario == code
            shares.append(mine.sum() / max(int(fraud.sum()), 1))
            pick = mine | ~fraud
            aucs.append(roc_auc(mine[pick], scores[pick]))
            blind.append(unseen[rows][mine].mean() if mine.any() else 0.0)
        lines.append(
            f"| {code}: {name} | {np.mean(shares):.2f} | {np.mean(aucs):.3f} | {np.mean(blind):.2f} |"
        )
    return "\n".join(lines)


def table(rows: Sequence[Row]) -> str:
    lines = ["| model | ROC AUC | Average Precision | Card Precision@100 |", "|---|---:|---:|---:|"]
    lines += [r.line() for r in rows]
    lines += [f"| {name} | {a:.3f} | {p:.3f} | {c:.3f} |" for name, (a, p, c) in BOOK.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__)
    p.add_argument("--handbook", type=Path, required=True, help="the data/ folder of simulated-data-raw")
    p.add_argument(
        "--jsonl-out", type=Path, default=Path("data/handbook"), help="the dataset as JSONL (out of git)"
    )
    p.add_argument(
        "--skip-project", action="store_true", help="only the book's baseline (checks the protocol)"
    )
    args = p.parse_args(argv)
    started = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:6.0f} s] {text}", file=sys.stderr, flush=True)

    data = read_handbook(args.handbook)
    say(f"{len(data):,} transactions, {int(data.fraud.sum()):,} frauds")
    history = history_of(data)
    if not (args.jsonl_out / "transactions.jsonl").exists():
        write_jsonl(history, args.jsonl_out)
        say(f"wrote {args.jsonl_out}/transactions.jsonl and labels.jsonl")
    X = book_features(data)
    rows = [Row("logistic regression, 15 features (this protocol)", [])]
    for fold in folds():
        rows[0].per_fold.append(fold_metrics(data, test_rows(data, fold), logistic_baseline(data, X, fold)))
    say("baseline done:\n" + table(rows))
    if not args.skip_project:
        for name, days in (
            ("scorer, one week of training (--train-days 7)", 7),
            ("scorer, all history before the fold", None),
        ):
            row, scored = Row(name, []), []
            for fold in folds():
                scores = project_scores(history, data, args.jsonl_out, fold, days, say)
                scored.append((test_rows(data, fold), scores))
                row.per_fold.append(fold_metrics(data, scored[-1][0], scores))
                say(f"{name}, fold {fold.start_day}: {row.per_fold[-1]}")
            rows.append(row)
        print(f"{rows[-1].name}, by fraud scenario:\n{by_scenario(data, scored)}\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
