"""Live model quality: decisions joined with the fraud labels that arrive days later.

Each decision (served or shadow) becomes a row keyed by (model version, transaction id): a later copy of
the same decision (at-least-once delivery) replaces the earlier one. Labels mark rows as fraud whenever
they arrive, before or after their decision, by the rule of scorer/events/labelstate.py: per (transaction,
source) the latest label wins and a transaction is fraud when any source's latest says so. So a second
chargeback for a transaction counts once, and a reversed verdict (fraud, then genuine) unmarks its rows.
From the rows of any set of event days the same figures as `scorer evaluate` follow, computed by the
same functions in scorer.quality: precision and recall at the threshold the decision used, Average
Precision and Card Precision@100 (cards with a fraud reported before the day are left out: dated by the
earliest report among the labels that are their (transaction, source)'s latest and say fraud, as the
store's `quality_by_day` view dates them). A transaction without a fraud label counts as genuine, as in
training.

The store is bounded: rows older than the retention and, past `max_rows`, the oldest days are dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from scorer.events.batches import LabelBatch
from scorer.events.labelstate import LabelState
from scorer.events.timestamps import MS_PER_DAY, NEVER
from scorer.model.quality import average_precision, card_precision_at_k

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]
METRICS = ("precision", "recall", "average_precision", "card_precision_at_100")


@dataclass(slots=True)
class DecisionRows:
    """Decisions of one version in columns, as `add` takes them."""

    version: str
    transaction_id: list[str]
    customer_id: list[str]
    event_ts_ms: I64
    score: F64
    flagged: B
    action: npt.NDArray[np.int8] | None = None  # 0 approve, 1 review, 2 decline (None: review if flagged)


class _Column:
    """A growable numpy column (amortised doubling), so a batch is appended with one slice assignment."""

    def __init__(self, dtype: Any, fill: Any = 0) -> None:
        self.data = np.full(1024, fill, dtype=dtype)
        self.fill = fill

    def ensure(self, size: int) -> None:
        if size > len(self.data):
            grown = np.full(max(size, 2 * len(self.data)), self.fill, dtype=self.data.dtype)
            grown[: len(self.data)] = self.data
            self.data = grown


class LiveQuality:
    """The bounded decision store with its labels, and the quality figures over any days."""

    def __init__(self, max_rows: int, keep_days: int, only_days: tuple[int, int] | None = None) -> None:
        self.max_rows, self.keep_days = max_rows, keep_days
        self.only_days = only_days  # (first, last) event day: decisions outside are not kept (reports)
        self._ranks: tuple[int, I64] = (-1, np.zeros(0, dtype=np.int64))
        self.index: dict[tuple[int, str], int] = {}  # (version code, transaction id) -> row
        self.versions: list[str] = []
        self.cards: dict[str, int] = {}
        self.card_names: list[str] = []
        self.first_report = _Column(np.int64, NEVER)  # per card: first fraud report time (NEVER: none)
        self.labels = LabelState()  # what each labelled transaction's labels say
        self.label_days: dict[str, int] = {}  # labelled transaction id -> its event day (for the retention)
        # per card, the report time of each (transaction, source) whose latest label says fraud ...
        self.card_frauds: dict[int, dict[tuple[str, str], int]] = {}
        self.settled_report = _Column(np.int64, NEVER)  # ... and the earliest of those past the retention
        self.cols = {
            "version": _Column(np.int32), "day": _Column(np.int64), "card": _Column(np.int64),
            "score": _Column(np.float64), "flagged": _Column(np.bool_), "fraud": _Column(np.bool_),
            "action": _Column(np.int8),
        }  # fmt: skip
        self.size = 0
        self.newest_day = NEVER
        self.label_watermark_ms = -1
        self.labels_seen = 0

    # -- ingest ----------------------------------------------------------------------------------------

    def add(self, rows: DecisionRows) -> None:
        """Append (or replace) a batch of one version's decisions."""
        if self.only_days is not None:
            rows = _within(rows, *self.only_days)
        if not rows.transaction_id:
            return
        code = self._code(rows.version)
        at = np.fromiter(
            (self._row(code, t) for t in rows.transaction_id), dtype=np.int64, count=len(rows.transaction_id)
        )
        self.size = len(self.index)
        for c in self.cols.values():
            c.ensure(self.size)
        day = rows.event_ts_ms // MS_PER_DAY
        cols = self.cols
        cols["version"].data[at] = code
        cols["day"].data[at] = day
        cols["card"].data[at] = [self._card(c) for c in rows.customer_id]
        cols["score"].data[at] = rows.score
        cols["flagged"].data[at] = rows.flagged
        cols["action"].data[at] = rows.flagged if rows.action is None else rows.action
        cols["fraud"].data[at] = [self.labels.fraud(t) for t in rows.transaction_id]
        self.newest_day = max(self.newest_day, int(day.max()))
        self._bound()

    def add_labels(self, labels: LabelBatch) -> None:
        """Take labels (scorer/events/labelstate.py): a transaction whose state flips from genuine to fraud or
        back has its decisions marked (now, or when they come); the cards they touch are dated again."""
        self.labels_seen += len(labels.transaction_id)
        if len(labels.reported_ts_ms):
            self.label_watermark_ms = max(self.label_watermark_ms, int(labels.reported_ts_ms.max()))
        tx_day = np.where(labels.tx_ts_ms >= 0, labels.tx_ts_ms, labels.reported_ts_ms) // MS_PER_DAY
        touched: set[int] = set()
        rows = zip(
            labels.transaction_id, labels.customer_id, labels.source, labels.reported_ts_ms.tolist(),
            labels.is_fraud.tolist(), tx_day.tolist(), strict=True,
        )  # fmt: skip
        for tid, customer, source, reported, fraud, day in rows:
            change = self.labels.take(tid, source, reported, fraud)
            if not change.taken:
                continue
            self.label_days[tid] = day
            card = self._card(customer)
            reports = self.card_frauds.setdefault(card, {})
            if fraud:
                reports[(tid, source)] = reported
            else:
                reports.pop((tid, source), None)
            touched.add(card)
            if change.flipped:
                for code in range(len(self.versions)):
                    row = self.index.get((code, tid))
                    if row is not None:
                        self.cols["fraud"].data[row] = change.is_fraud
        for card in touched:
            self._date(card)

    def _date(self, card: int) -> None:
        """The card's first fraud report: the earliest current fraud label, or one past the retention."""
        live = min(self.card_frauds.get(card, {}).values(), default=NEVER)
        settled = int(self.settled_report.data[card])
        both = [t for t in (live, settled) if t != NEVER]
        self.first_report.data[card] = min(both) if both else NEVER

    def _code(self, version: str) -> int:
        if version not in self.versions:
            self.versions.append(version)
        return self.versions.index(version)

    def _row(self, code: int, tid: str) -> int:
        return self.index.setdefault((code, tid), len(self.index))

    def _card(self, name: str) -> int:
        code = self.cards.get(name)
        if code is None:
            code = self.cards[name] = len(self.card_names)
            self.card_names.append(name)
            self.first_report.ensure(len(self.card_names))
            self.settled_report.ensure(len(self.card_names))
        return code

    def _bound(self) -> None:
        """Drop days past the retention, then the oldest days while the store is over `max_rows`."""
        day = self.cols["day"].data[: self.size]
        cutoff = self.newest_day - self.keep_days
        if self.size > self.max_rows:
            days, counts = np.unique(day, return_counts=True)
            kept_from_newest = np.cumsum(counts[::-1])[::-1]  # rows on or after each day
            over = days[kept_from_newest > self.max_rows * 9 // 10]
            cutoff = max(cutoff, int(over.max()) + 1 if len(over) else cutoff)
        if self.size and int(day.min()) < cutoff:
            self._drop_before(cutoff)

    def _drop_before(self, cutoff: int) -> None:
        keep = self.cols["day"].data[: self.size] >= cutoff
        old_rows = np.flatnonzero(keep)
        new_of_old = np.full(self.size, -1, dtype=np.int64)
        new_of_old[old_rows] = np.arange(len(old_rows))
        self.index = {k: int(new_of_old[r]) for k, r in self.index.items() if keep[r]}
        for c in self.cols.values():
            c.data[: len(old_rows)] = c.data[old_rows]
        self.size = len(old_rows)
        self._forget_labels_before(cutoff)

    def _forget_labels_before(self, cutoff: int) -> None:
        """Forget the labels of transactions before `cutoff` (no row holds them any more); the fraud reports
        among them keep dating their cards (the earliest of them is settled, no longer correctable)."""
        old = {t for t, d in self.label_days.items() if d < cutoff}
        if not old:
            return
        for card, reports in self.card_frauds.items():
            gone = [key for key in reports if key[0] in old]
            for key in gone:
                reported = reports.pop(key)
                settled = int(self.settled_report.data[card])
                self.settled_report.data[card] = reported if settled == NEVER else min(settled, reported)
        self.card_frauds = {card: reports for card, reports in self.card_frauds.items() if reports}
        self.labels.forget(old)
        self.label_days = {t: d for t, d in self.label_days.items() if d >= cutoff}

    # -- figures ---------------------------------------------------------------------------------------

    def days(self, version: str) -> list[int]:
        """Event days holding decisions of `version`, ascending."""
        if version not in self.versions:
            return []
        mine = self.cols["version"].data[: self.size] == self.versions.index(version)
        return [int(d) for d in np.unique(self.cols["day"].data[: self.size][mine])]

    def mature_days(self, version: str, label_delay_days: int, count: int) -> list[int]:
        """The newest `count` days whose labels are all in: the label stream has passed day end + delay."""
        ripe = (self.label_watermark_ms - label_delay_days * MS_PER_DAY) // MS_PER_DAY  # last complete day
        return [d for d in self.days(version) if d < ripe][-count:]

    def figures(self, version: str, days: Iterable[int]) -> dict[str, float | int]:
        """The quality of `version` over `days`: the figures of `scorer evaluate`, from live decisions."""
        n = self.size
        if version not in self.versions:
            return _empty()
        c = {k: v.data[:n] for k, v in self.cols.items()}
        rows = (c["version"] == self.versions.index(version)) & np.isin(c["day"], list(days))
        if not rows.any():
            return _empty()
        day, card, y, s, flagged = (c[k][rows] for k in ("day", "card", "fraud", "score", "flagged"))
        first = self.first_report.data[card]
        known = (first != NEVER) & (first < day * MS_PER_DAY)
        tp = int((flagged & y).sum())
        return {
            "precision": tp / max(1, int(flagged.sum())),
            "recall": tp / max(1, int(y.sum())),
            "average_precision": average_precision(y, s),
            "card_precision_at_100": card_precision_at_k(day, self._card_ranks()[card], y, s, known, k=100),
            "decisions": int(rows.sum()),
            "frauds": int(y.sum()),
            "flagged": int(flagged.sum()),
        }

    def bands(self, version: str, days: Iterable[int]) -> dict[str, dict[str, float]]:
        """Per action band (review, decline): its decisions, the precision of its flags and the share of
        all frauds it caught, over `days` (an analyst queue's yield, a decline band's collateral)."""
        n = self.size
        if version not in self.versions:
            return {}
        c = {k: v.data[:n] for k, v in self.cols.items()}
        rows = (c["version"] == self.versions.index(version)) & np.isin(c["day"], list(days))
        action, y = c["action"][rows], c["fraud"][rows]
        frauds = max(1, int(y.sum()))
        out = {}
        for code, name in ((1, "review"), (2, "decline")):
            band = action == code
            caught = int((band & y).sum())
            out[name] = {"decisions": int(band.sum()), "precision": caught / max(1, int(band.sum())),
                         "recall": caught / frauds}  # fmt: skip
        return out

    def _card_ranks(self) -> I64:
        """Card codes ordered as the card ids sort, so Card Precision@k breaks ties as `scorer evaluate` does.

        Cards are only ever added, so the ranks are recomputed only when their number changed.
        """
        if self._ranks[0] != len(self.card_names):
            ranks = np.empty(len(self.card_names), dtype=np.int64)
            ranks[np.argsort(np.asarray(self.card_names, dtype=object), kind="stable")] = np.arange(
                len(ranks)
            )
            self._ranks = (len(self.card_names), ranks)
        return self._ranks[1]


def _within(rows: DecisionRows, first: int, last: int) -> DecisionRows:
    day = rows.event_ts_ms // MS_PER_DAY
    keep = np.flatnonzero((day >= first) & (day <= last))
    if len(keep) == len(day):
        return rows
    return DecisionRows(
        rows.version, [rows.transaction_id[i] for i in keep.tolist()], [rows.customer_id[i] for i in keep.tolist()],
        rows.event_ts_ms[keep], rows.score[keep], rows.flagged[keep],
        None if rows.action is None else rows.action[keep],
    )  # fmt: skip


_ACTION_CODES = {"approve": 0, "review": 1, "decline": 2}


def _actions(names: list[Any], flagged: B) -> npt.NDArray[np.int8]:
    """Action codes; a decision from before actions existed counts as review when flagged."""
    codes = np.asarray([_ACTION_CODES.get(a, -1) for a in names], dtype=np.int8)
    return np.where(codes < 0, flagged.astype(np.int8), codes).astype(np.int8)


def _empty() -> dict[str, float | int]:
    return {"decisions": 0, "frauds": 0, "flagged": 0}


def decision_rows(docs: Sequence[dict[str, Any]], stamps_ms: I64) -> list[DecisionRows]:
    """Decision documents grouped by the version that scored them (served, and a challenger's own score)."""
    by_version: dict[str, list[int]] = {}
    for i, doc in enumerate(docs):
        by_version.setdefault(str(doc["model_version"]), []).append(i)
    out = []
    for version, idx in by_version.items():
        flagged = np.asarray([bool(docs[i]["flagged"]) for i in idx], dtype=np.bool_)
        out.append(
            DecisionRows(
                version=version,
                transaction_id=[str(docs[i]["transaction_id"]) for i in idx],
                customer_id=[str(docs[i]["customer_id"]) for i in idx],
                event_ts_ms=stamps_ms[idx],
                score=np.asarray([float(docs[i]["score"]) for i in idx], dtype=np.float64),
                flagged=flagged,
                action=_actions([docs[i].get("action") for i in idx], flagged),
            )
        )
    return out
