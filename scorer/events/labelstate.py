"""What a transaction's labels say, the one rule every label consumer applies (schemas/label.schema.json).

A transaction may be labelled by several sources (a chargeback, an analyst's verdict) and more than once by
each (a duplicate chargeback, a verdict reversed). Per (transaction, source) the latest label wins: the
greatest `reported_at`, and on a tie the one taken later (arrival order); an older label that arrives late
changes nothing. A transaction is fraud when the latest label of any source says fraud. So a chargeback
after an analyst's fraud verdict does not count twice, and an analyst's genuine verdict that reverses their
own fraud verdict removes the fraud unless a chargeback still says fraud. This is what the store's
`transaction_labels` view computes (bool_or over the (transaction, source) rows it keeps).

The result of any sequence of labels depends only on the labels and their arrival order, never on how they
were split into batches, so the live consumers (monitor, aggregator, embedded scorer) and the offline
replay of training agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from scorer.events.batches import LabelBatch

B = npt.NDArray[np.bool_]


@dataclass(slots=True)
class Change:
    """What one label did to its transaction: whether it was taken (it is now its source's latest) and
    whether the transaction was fraud before and after it."""

    taken: bool
    was_fraud: bool
    is_fraud: bool

    @property
    def flipped(self) -> bool:
        return self.was_fraud != self.is_fraud


class LabelState:
    """The latest label of each source per transaction (transaction id -> source -> (reported ms, fraud)).

    Memory grows with the labelled transactions (a small share of all); owners bound it with `forget`.
    """

    def __init__(self) -> None:
        self.latest: dict[str, dict[str, tuple[int, bool]]] = {}

    def __len__(self) -> int:
        return len(self.latest)

    def __contains__(self, transaction_id: str) -> bool:
        return transaction_id in self.latest

    def fraud(self, transaction_id: str) -> bool:
        """True when the latest label of any source says fraud (False for an unlabelled transaction)."""
        sources = self.latest.get(transaction_id)
        return sources is not None and any(fraud for _, fraud in sources.values())

    def take(self, transaction_id: str, source: str, reported_ms: int, is_fraud: bool) -> Change:
        """Apply one label; an older one than its source's latest (by reported_at) is not taken."""
        sources = self.latest.setdefault(transaction_id, {})
        before = any(fraud for _, fraud in sources.values())
        held = sources.get(source)
        if held is not None and reported_ms < held[0]:
            return Change(False, before, before)
        sources[source] = (reported_ms, is_fraud)
        return Change(True, before, any(fraud for _, fraud in sources.values()))

    def take_batch(self, labels: LabelBatch) -> list[Change]:
        """`take` for each label of a batch, in order."""
        return [
            self.take(tid, source, reported, fraud)
            for tid, source, reported, fraud in zip(
                labels.transaction_id,
                labels.source,
                labels.reported_ts_ms.tolist(),
                labels.is_fraud.tolist(),
                strict=True,
            )
        ]

    def forget(self, transaction_ids: Iterable[str]) -> None:
        """Drop transactions no consumer can use any more (past every window): a later label for one of
        them is then taken as its first."""
        for tid in transaction_ids:
            self.latest.pop(tid, None)

    def dump(self, transaction_id: str) -> dict[str, tuple[int, bool]]:
        """The latest label per source of a transaction (for a snapshot; empty when unknown)."""
        return dict(self.latest.get(transaction_id, {}))

    def load(self, transaction_id: str, sources: dict[str, tuple[int, bool]]) -> None:
        """Put back what `dump` gave (a restore)."""
        self.latest[transaction_id] = dict(sources)


def fraud_as_of(labels: LabelBatch, known: B | None = None) -> set[str]:
    """The transactions that are fraud after the labels (those where `known` is true), in arrival order."""
    state = LabelState()
    rows = range(len(labels)) if known is None else np.flatnonzero(known).tolist()
    for i in rows:
        state.take(
            labels.transaction_id[i],
            labels.source[i],
            int(labels.reported_ts_ms[i]),
            bool(labels.is_fraud[i]),
        )
    return {tid for tid in state.latest if state.fraud(tid)}


def first_fraud_reports(labels: LabelBatch) -> dict[str, int]:
    """Per card (customer id): the earliest report time among the labels that are, after all of them, the
    latest of their (transaction, source) and say fraud. A fraud verdict later reversed does not date a
    card's compromise (the store's `quality_by_day` view dates it the same way)."""
    latest: dict[tuple[str, str], tuple[int, bool, str]] = {}
    for tid, source, reported, fraud, card in zip(
        labels.transaction_id, labels.source, labels.reported_ts_ms.tolist(), labels.is_fraud.tolist(),
        labels.customer_id, strict=True,
    ):  # fmt: skip
        held = latest.get((tid, source))
        if held is None or reported >= held[0]:
            latest[(tid, source)] = (reported, fraud, card)
    first: dict[str, int] = {}
    for reported, fraud, card in latest.values():
        if fraud and reported < first.get(card, reported + 1):
            first[card] = reported
    return first
