"""FEATURE_NAMES and the one feature engine used by training, evaluation and the streaming scorer.

Training replays recorded history through exactly this code, so offline and online features cannot drift
apart. No Kafka or onnxruntime here. Every step works on a whole batch with numpy; the only per-event
Python work is the key -> slot dictionary lookup.

Windows are day buckets (see state.py): a w-day window ending at instant t counts the buckets of the w
days up to t's day and the share of the day before them that lies inside (t - w, t]. Events are applied
in the order given (the replay sorts by event time); a late event joins its own day's bucket while that
day is still in the key's ring and is scored on the window that ends at its own event time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat

import numpy as np
import numpy.typing as npt

from scorer.events.batches import LabelBatch, TransactionBatch, concat_labels, pick, take_labels
from scorer.events.timestamps import MS_PER_DAY, NEVER
from scorer.features.frauds import TransactionFrauds, horizon
from scorer.features.state import DayRing, RingUndo, occurrence_rank

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

WINDOW_DAYS = (1, 7, 30)
CATEGORICAL_FIELDS = ("currency", "channel", "merchant_category")
MISSING_CODE = -1.0  # optional field absent
UNSEEN_CODE = -2.0  # a value the model never saw in training
NO_HISTORY = -1.0  # ratio features when the customer has no earlier transaction in the window
SINCE_LAST_CAP_S = 30 * 86_400.0  # "no transaction for 30 days or more" and "never seen" look the same
LATE_GRACE_DAYS = 2  # keys outlive their ring by this much, so events up to this late still see them

STATELESS_NAMES = (
    "amount",
    "log_amount",
    "hour_of_day",
    "is_weekend",
    "is_night",
    *(f"{name}_code" for name in CATEGORICAL_FIELDS),
)
CUSTOMER_NAMES = (
    *(f"cust_tx_count_{w}d" for w in WINDOW_DAYS),
    *(f"cust_amount_mean_{w}d" for w in WINDOW_DAYS),
    "cust_amount_ratio_7d",
    "cust_amount_ratio_30d",
    "cust_seconds_since_last",
)
TERMINAL_NAMES = (
    *(f"term_tx_count_{w}d" for w in WINDOW_DAYS),
    *(f"term_risk_{w}d" for w in WINDOW_DAYS),
    *(f"term_fresh_risk_{w}d" for w in WINDOW_DAYS),
)
FEATURE_NAMES: tuple[str, ...] = STATELESS_NAMES + CUSTOMER_NAMES + TERMINAL_NAMES
CATEGORY_COLUMNS = [FEATURE_NAMES.index(f"{name}_code") for name in CATEGORICAL_FIELDS]
STATE_SHAPING = ("label_delay_days", "customer_ring_days")  # FeatureConfig fields the kept state depends on


@dataclass(frozen=True, slots=True)
class FeatureConfig:
    """What shapes the features; stored in model.json so serving uses the training values."""

    label_delay_days: int = 7  # terminal risk covers windows ending this long before the event
    customer_ring_days: int = 32  # >= 31 so a 30-day window is complete; the rest is slack for late events
    categories: Mapping[str, Sequence[str]] = field(default_factory=dict)  # training vocabulary per field

    @property
    def terminal_ring_days(self) -> int:
        return self.label_delay_days + 32

    def codes(self) -> dict[str, dict[str, int]]:
        """value -> code per categorical field, from the training vocabulary."""
        return {k: {v: i for i, v in enumerate(vals)} for k, vals in self.categories.items()}

    def state_difference(self, model: FeatureConfig) -> str | None:
        """Why scorers whose state was built with this configuration cannot serve a model trained with
        `model`'s (None: they can). Vocabularies may differ, since each model's categorical codes are
        computed per batch from its own; what shapes the kept state (windows, label delay) may not,
        since state built one way cannot be read another without replaying the history."""
        differ = [
            f"{name} {getattr(model, name)} (the running scorers keep {getattr(self, name)})"
            for name in STATE_SHAPING
            if getattr(model, name) != getattr(self, name)
        ]
        return "; ".join(differ) or None


def stateless_features(batch: TransactionBatch, vocab: Mapping[str, Mapping[str, int]]) -> F64:
    """Amount, time-of-day and categorical codes: nothing that needs history."""
    ts = batch.event_ts_ms
    day = ts // MS_PER_DAY
    hour = (ts % MS_PER_DAY) / 3_600_000.0
    weekday = (day + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    columns = np.column_stack([batch.amount, np.log1p(batch.amount), hour, weekday >= 5, hour < 6.0])
    return np.hstack([columns, category_codes(batch, vocab)]).astype(np.float64)


def category_codes(batch: TransactionBatch, vocab: Mapping[str, Mapping[str, int]]) -> F64:
    """(n, len(CATEGORICAL_FIELDS)): each categorical field's codes under `vocab`."""
    return np.column_stack([encode_category(getattr(batch, n), vocab.get(n, {})) for n in CATEGORICAL_FIELDS])


def encode_category(values: Sequence[str | None], codes: Mapping[str, int]) -> F64:
    """Training vocabulary index, MISSING_CODE when absent, UNSEEN_CODE for a value never trained on."""
    lookup: dict[str | None, float] = {None: MISSING_CODE}
    lookup.update(codes)
    return np.fromiter(map(lookup.get, values, repeat(UNSEEN_CODE)), dtype=np.float64, count=len(values))


def rounds(slots: I64) -> list[I64]:
    """Split batch positions into rounds in which every key appears once, keeping each key's order.

    A round is vectorised; successive rounds let a key's later event see its earlier ones in the batch.
    """
    if len(slots) == 0:
        return []
    rank = occurrence_rank(slots)
    top = int(rank.max())
    if top == 0:
        return [np.arange(len(slots))]
    order = np.argsort(rank, kind="stable")
    bounds = np.searchsorted(rank[order], np.arange(1, top + 1))
    return np.split(order, bounds)


class CustomerFeatures:
    """Per-customer counts, mean amounts and amount ratios over 1/7/30 days, including the current event."""

    def __init__(self, config: FeatureConfig) -> None:
        self.ring = DayRing(config.customer_ring_days, ("count", "amount"), MS_PER_DAY, counts=("count",))

    def update_and_compute(
        self, customer_id: Sequence[str], ts_ms: I64, amount: F64, undo: list[RingUndo] | None = None
    ) -> F64:
        """Features of each event including itself; with `undo`, what reverts the update is appended."""
        created: list[int] = []
        slots = self.ring.slots(customer_id, created=created)
        return self.update_slots(slots, ts_ms, amount, created, undo)

    def update_slots(
        self, slots: I64, ts_ms: I64, amount: F64, created: list[int], undo: list[RingUndo] | None = None
    ) -> F64:
        """`update_and_compute` for slots already looked up (of any owners; `created`: the new ones)."""
        if undo is not None:
            undo.append(self.ring.save(slots, created))
        out = np.empty((len(slots), len(CUSTOMER_NAMES)), dtype=np.float64)
        for idx in rounds(slots):
            out[idx] = self._round(slots[idx], ts_ms[idx], amount[idx])
        return out

    def _round(self, slots: I64, ts_ms: I64, amount: F64) -> F64:
        ring = self.ring
        since_last = np.clip((ts_ms - ring.newest_ms[slots]) / 1000.0, 0.0, SINCE_LAST_CAP_S)
        ring.advance(slots, ts_ms)
        sums = ring.window_sums(("count", "amount"), slots, ts_ms, WINDOW_DAYS)
        counts, totals = sums[:, 0], sums[:, 1]  # (n, windows), before this event
        day = ts_ms // MS_PER_DAY
        ring.add("count", slots, day, np.ones(len(slots)))
        ring.add("amount", slots, day, amount)
        means = (totals + amount[:, None]) / (counts + 1.0)
        ratios = [_ratio(amount, counts[:, i], totals[:, i]) for i in (1, 2)]
        return np.column_stack([counts + 1.0, means, *ratios, since_last])


def _ratio(amount: F64, count: F64, total: F64) -> F64:
    """Amount over the customer's earlier mean in the window (NO_HISTORY when there is none)."""
    ratio = np.full(len(amount), NO_HISTORY)
    has = count > 0
    np.divide(amount * count, total, out=ratio, where=has & (total > 0))
    ratio[has & (total <= 0)] = NO_HISTORY
    return ratio


class TerminalFeatures:
    """Per-terminal counts and fraud risk over *closed* days, from transactions and delayed labels.

    An event on day D sees the terminal as it stood when day D-1 closed: transactions of days <= D-1
    and the fraud labels reported before D began (labels wait in a buffer until the close after their
    report time). A transaction counts as one fraud however many labels say so, and a later label that
    makes it genuine (a reversed verdict) takes it back at the close after its report: days already
    closed keep the features they were scored with (no day's published state is rewritten).
    `term_*` windows end `label_delay_days` before D (their labels are complete);
    `term_fresh_risk_*` windows end at D-1 with whatever labels had arrived. Because the state a day
    sees is fixed at its close, a remote aggregator can publish it and every scorer gets the same value.
    """

    def __init__(self, config: FeatureConfig) -> None:
        self.ring = DayRing(
            config.terminal_ring_days, ("count", "fraud"), MS_PER_DAY, counts=("count", "fraud")
        )
        self.delay_days = config.label_delay_days
        self.closed_day = NEVER  # newest day whose close has been applied
        self._pending: list[LabelBatch] = []
        self.frauds = TransactionFrauds()  # which labelled transactions the fraud buckets count

    def compute(self, slots: I64, day: I64) -> F64:
        """Features of events on `day` from the closed-day state of `slots` (no update)."""
        ends = np.column_stack([day - 1 - self.delay_days, day - 1])  # labels complete | as they came
        sums = self.ring.day_sums(("count", "fraud"), slots, ends, WINDOW_DAYS)  # (n, field, end, window)
        counts, frauds = sums[:, 0, 0], sums[:, 1, 0]
        return np.hstack([counts, _share(frauds, counts), _share(sums[:, 1, 1], sums[:, 0, 1])])

    def add_transactions(self, terminal_id: Sequence[str], ts_ms: I64) -> I64:
        """Count transactions into their day buckets; returns their slots."""
        slots = self.ring.slots(terminal_id)
        self.ring.advance(slots, ts_ms)
        self.ring.add("count", slots, ts_ms // MS_PER_DAY, np.ones(len(slots)))
        return slots

    def features_then_count(self, terminal_id: Sequence[str], ts_ms: I64) -> F64:
        """Day by day: close the previous day, read the closed state, then count the day's transactions.

        What the aggregator and the terminal table do between them, in one process (offline replay,
        the embedded scorer)."""
        day = ts_ms // MS_PER_DAY
        out = np.empty((len(day), len(TERMINAL_NAMES)), dtype=np.float64)
        for d in np.unique(day).tolist():
            idx = np.flatnonzero(day == d)
            if d - 1 > self.closed_day:
                self.close(d - 1)
            ids = pick(terminal_id, idx)
            slots = self.ring.slots(ids)
            out[idx] = self.compute(slots, day[idx])
            self.add_transactions(ids, ts_ms[idx])
        return out

    def buffer_labels(self, labels: LabelBatch) -> None:
        """Hold labels until the close of the day they were reported on: the fraud ones, and the genuine
        ones that name their transaction (they may reverse a fraud already counted)."""
        named = np.fromiter(map(bool, labels.transaction_id), dtype=bool, count=len(labels))
        keep = np.flatnonzero(labels.is_fraud | named)
        if len(keep):
            self._pending.append(take_labels(labels, keep))

    def close(self, day: int) -> None:
        """Close every day up to `day`: apply the labels reported before day+1 (ring.dirty tracks changes),
        then forget the labelled transactions no ring can hold any more (frauds.horizon)."""
        self.closed_day = max(self.closed_day, day)
        if self._pending:
            pending = concat_labels(self._pending)
            due = pending.reported_ts_ms < (day + 1) * MS_PER_DAY
            self._apply(take_labels(pending, np.flatnonzero(due)))
            self._pending = [take_labels(pending, np.flatnonzero(~due))] if (~due).any() else []
        if len(self.frauds):
            self.frauds.forget_before(horizon(self.closed_day, self.ring.n_days, LATE_GRACE_DAYS))

    def _apply(self, labels: LabelBatch) -> None:
        """Count frauds on their transaction's day (the report day minus the delay if unknown), each
        transaction once, by the rule of events/labelstate.py: a transaction that becomes fraud adds 1 to
        its terminal's day, one that stops being fraud takes it back (features/frauds.py). The labels go in
        arrival order; only a transaction's state after all of them matters."""
        fallback = labels.reported_ts_ms - self.delay_days * MS_PER_DAY
        days = np.where(labels.tx_ts_ms >= 0, labels.tx_ts_ms, fallback) // MS_PER_DAY
        named = np.fromiter(map(bool, labels.transaction_id), dtype=bool, count=len(labels))
        anonymous = np.flatnonzero(~named & labels.is_fraud)  # cannot be told apart: each counts
        if len(anonymous):
            slots = self.ring.slots(pick(labels.terminal_id, anonymous), create=False)
            known = slots >= 0
            self.ring.add("fraud", slots[known], days[anonymous][known], np.ones(int(known.sum())))
        touched: dict[str, None] = {}
        for i in np.flatnonzero(named).tolist():
            tid = labels.transaction_id[i]
            self.frauds.take(
                tid, labels.source[i], int(labels.reported_ts_ms[i]), bool(labels.is_fraud[i]),
                labels.terminal_id[i], int(days[i]),
            )  # fmt: skip
            touched[tid] = None
        self._recount(list(touched))

    def _recount(self, transaction_ids: list[str]) -> None:
        """Add or take back the +1 of each transaction whose fraud state no longer matches its count."""
        frauds = self.frauds
        add = [t for t in transaction_ids if frauds.labels.fraud(t) and not frauds.where[t].counted]
        drop = [t for t in transaction_ids if not frauds.labels.fraud(t) and frauds.where[t].counted]
        for tids, sign in ((add, 1), (drop, -1)):
            if not tids:
                continue
            where = [frauds.where[t] for t in tids]
            slots = self.ring.slots([c.terminal for c in where], create=False)
            days = np.fromiter((c.day for c in where), dtype=np.int64, count=len(where))
            held = self.ring.holds(slots, days)
            if sign > 0:
                self.ring.add("fraud", slots[held], days[held], np.ones(int(held.sum())))
            else:
                self.ring.take_back("fraud", slots, days, np.ones(len(slots)))
            for c, h in zip(where, held.tolist(), strict=True):
                c.counted = sign > 0 and h
            frauds.changed.update(tids)


def _share(part: F64, whole: F64) -> F64:
    out = np.zeros(part.shape)
    np.divide(part, whole, out=out, where=whole > 0)
    return out


class FeatureEngine:
    """Stateless + customer + terminal features for a batch, in FEATURE_NAMES order, as float32."""

    def __init__(self, config: FeatureConfig | None = None) -> None:
        self.config = config or FeatureConfig()
        self.vocab = self.config.codes()
        self.customers = CustomerFeatures(self.config)
        self.terminals = TerminalFeatures(self.config)
        self.today = NEVER  # expiry clock: newest 'oldest day of a batch' seen

    def update_and_compute(self, batch: TransactionBatch) -> F32:
        if len(batch) == 0:
            return np.zeros((0, len(FEATURE_NAMES)), dtype=np.float32)
        self._expire(int(batch.event_ts_ms.min()) // MS_PER_DAY)
        ts = batch.event_ts_ms
        parts = (
            stateless_features(batch, self.vocab),
            self.customers.update_and_compute(batch.customer_id, ts, batch.amount),
            self.terminals.features_then_count(batch.terminal_id, ts),
        )
        return np.hstack(parts).astype(np.float32)

    def apply_labels(self, labels: LabelBatch) -> None:
        """Labels become visible to terminal features from the day after their report (see TerminalFeatures)."""
        self.terminals.buffer_labels(labels)

    def _expire(self, day: int) -> None:
        """Drop keys no window can reach any more, so memory follows the active keys.

        `day` is the oldest event day of the batch, so spread inside a batch never expires a key too
        early. A key idle for longer than its ring plus LATE_GRACE_DAYS has only empty windows for
        every event at most LATE_GRACE_DAYS older than that, so dropping it changes no feature.
        """
        if day > self.today:
            self.today = day
            for ring in (self.customers.ring, self.terminals.ring):
                ring.expire_idle(day, LATE_GRACE_DAYS)

    @property
    def state_keys(self) -> int:
        return len(self.customers.ring) + len(self.terminals.ring)

    @property
    def state_bytes(self) -> int:
        return self.customers.ring.nbytes + self.terminals.ring.nbytes
