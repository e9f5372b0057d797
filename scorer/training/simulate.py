"""Seeded, vectorised card-transaction simulator after the Fraud Detection Handbook's published design.

Customers and terminals live on a 100x100 grid; each customer uses the terminals within `radius` of it,
with its own amount and frequency profile. Three fraud scenarios: (1) any amount above 220; (2) two
terminals a day are compromised and every transaction on them in the next 28 days is fraud; (3) three
customers a day are compromised and, for 14 days, a third of their transactions get five times the amount
and are fraud. Every fraud is labelled after a report delay drawn uniformly between 1 hour and
`label_delay_days` (cardholder calls come early, chargebacks late): every label is known once the
delay has passed, as the handbook's protocol assumes, and some are known sooner.
Same parameters, same bytes.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import orjson

from scorer.errors import DataError
from scorer.events.timestamps import MS_PER_DAY, rfc3339_ms

GRID = 100.0
WRITE_CHUNK = 16_384  # lines encoded and written at a time
FRAUD_AMOUNT = 220.0
TERMINAL_COMPROMISED_PER_DAY, TERMINAL_COMPROMISE_DAYS = 2, 28
CUSTOMER_COMPROMISED_PER_DAY, CUSTOMER_COMPROMISE_DAYS = 3, 14
MCC_CODES = ("5411", "5812", "5541", "5912", "5311", "5732", "5999", "4111", "5814", "7011")


@dataclass(frozen=True, slots=True)
class SimulationParams:
    customers: int = 5000
    terminals: int = 10000
    days: int = 120
    seed: int = 42
    start: datetime.date = datetime.date(2026, 1, 1)
    radius: float = 5.0
    label_delay_days: float = 7.0
    fixed_label_delay: bool = False  # every label exactly label_delay_days late (the handbook's)
    drift: Drift | None = None  # changes from a given day on, for drift and quality-drop tests


@dataclass(frozen=True, slots=True)
class Drift:
    """What changes from `from_day` (0-based) on; the history before it is byte-for-byte the undrifted one.

    - amount_factor: every amount is multiplied (prices, a currency switch, a new customer segment);
    - new_terminals: a new terminal population (fresh ids) that takes `new_terminal_share` of the traffic;
    - currency: a currency the model never saw, on `currency_share` of the transactions;
    - card_testing: a fraud pattern the model never saw; per day that many cards make, at night, small
      purchases (1 to 5) that are all fraud (and labelled like every other fraud).
    """

    from_day: int
    amount_factor: float = 1.0
    new_terminals: int = 0
    new_terminal_share: float = 0.5
    currency: str | None = None
    currency_share: float = 0.3
    card_testing: int = 0


@dataclass(slots=True)
class SimulatedData:
    """Columnar transactions sorted by event time, and one label per fraud sorted by report time."""

    transaction_id: list[str]
    customer_id: list[str]
    terminal_id: list[str]
    amount: npt.NDArray[np.float64]
    event_ts_ms: npt.NDArray[np.int64]
    currency: list[str]
    channel: list[str]
    merchant_category: list[str]
    is_fraud: npt.NDArray[np.bool_]
    fraud_scenario: npt.NDArray[np.int8]
    label_index: npt.NDArray[np.int64]
    label_reported_ts_ms: npt.NDArray[np.int64]


def _ids(prefix: str, n: int) -> list[str]:
    width = len(str(max(n - 1, 0)))
    return [f"{prefix}{i:0{width}d}" for i in range(n)]


def terminal_lists(
    rng: np.random.Generator, p: SimulationParams
) -> tuple[npt.NDArray[np.float64], list[npt.NDArray[np.int64]]]:
    """Customer profiles and, per customer, the terminals within the radius (grid-cell lookup)."""
    cust_xy = rng.uniform(0, GRID, (p.customers, 2))
    term_xy = rng.uniform(0, GRID, (p.terminals, 2))
    reach: list[npt.NDArray[np.int64]] = []
    block = 128  # small distance blocks: ~10 MB each, reused by the allocator instead of faulted in anew
    tx, ty = term_xy[:, 0], term_xy[:, 1]
    for start in range(0, p.customers, block):
        dx = cust_xy[start : start + block, 0, None] - tx
        dy = cust_xy[start : start + block, 1, None] - ty
        inside = dx * dx + dy * dy < p.radius**2
        reach.extend(np.flatnonzero(row).astype(np.int64) for row in inside)
    return cust_xy, reach


def simulate(p: SimulationParams) -> SimulatedData:
    rng = np.random.default_rng(p.seed)
    _, reach = terminal_lists(rng, p)
    mean_amount = rng.uniform(5, 100, p.customers)
    std_amount = mean_amount / 2
    tx_per_day = rng.uniform(0, 4, p.customers)
    n_reach = np.asarray([len(r) for r in reach], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(n_reach)])
    flat_reach = np.concatenate(reach) if reach else np.zeros(0, np.int64)

    counts = rng.poisson(tx_per_day[None, :], (p.days, p.customers))
    counts[:, n_reach == 0] = 0
    day_idx, cust_idx = np.nonzero(counts)
    reps = counts[day_idx, cust_idx]
    day = np.repeat(day_idx, reps).astype(np.int64)
    cust = np.repeat(cust_idx, reps).astype(np.int64)
    n = len(day)
    seconds = rng.normal(43_200, 20_000, n)
    keep = (seconds >= 0) & (seconds < 86_400)
    day, cust, seconds = day[keep], cust[keep], seconds[keep]
    n = len(day)
    amount = rng.normal(mean_amount[cust], std_amount[cust])
    negative = amount < 0
    amount[negative] = rng.uniform(0, 2 * mean_amount[cust[negative]])
    amount = np.round(amount, 2)
    term = flat_reach[offsets[cust] + (rng.random(n) * n_reach[cust]).astype(np.int64)]
    start_ms = int(datetime.datetime.combine(p.start, datetime.time(), datetime.UTC).timestamp() * 1000)
    ts = start_ms + day * MS_PER_DAY + (seconds * 1000).astype(np.int64)
    order = np.lexsort((term, cust, ts))
    day, cust, term, amount, ts = day[order], cust[order], term[order], amount[order], ts[order]

    scenario = np.zeros(n, dtype=np.int8)
    scenario[amount > FRAUD_AMOUNT] = 1
    _terminal_fraud(rng, p, day, term, scenario)
    amount = _customer_fraud(rng, p, day, cust, amount, scenario)
    currency = np.full(n, "EUR", dtype=object)
    n_base = int(np.count_nonzero(scenario))  # the main random stream draws this many label delays
    if p.drift is not None:
        amount, term, ts = _drift(p, p.drift, day, cust, amount, term, ts, currency, scenario)
    is_fraud = scenario > 0

    label_index = np.flatnonzero(is_fraud).astype(np.int64)
    delay = _label_delays(rng, p, n_base, len(label_index))
    reported = ts[label_index] + delay
    lorder = np.argsort(reported, kind="stable")
    channel_of = np.where(rng.random(p.terminals) < 0.8, "pos", "ecom")
    mcc_of = np.asarray(MCC_CODES)[rng.integers(0, len(MCC_CODES), p.terminals)]
    extra = p.drift.new_terminals if p.drift is not None else 0
    channel_of = np.r_[channel_of, np.full(extra, "ecom")]
    mcc_of = np.r_[mcc_of, np.asarray(MCC_CODES)[np.zeros(extra, dtype=np.int64)]]
    cust_ids, term_ids = _ids("C", p.customers), _ids("T", p.terminals) + _ids("TN", extra)
    width = max(8, len(str(n)))
    return SimulatedData(
        transaction_id=[f"tx{i:0{width}d}" for i in range(n)],
        customer_id=[cust_ids[c] for c in cust.tolist()],
        terminal_id=[term_ids[t] for t in term.tolist()],
        amount=amount,
        event_ts_ms=ts,
        currency=currency.tolist(),
        channel=channel_of[term].tolist(),
        merchant_category=mcc_of[term].tolist(),
        is_fraud=is_fraud,
        fraud_scenario=scenario,
        label_index=label_index[lorder],
        label_reported_ts_ms=reported[lorder],
    )


def _terminal_fraud(
    rng: np.random.Generator,
    p: SimulationParams,
    day: npt.NDArray[np.int64],
    term: npt.NDArray[np.int64],
    scenario: npt.NDArray[np.int8],
) -> None:
    """Scenario 2: per day, compromised terminals; their next 28 days of transactions are fraud."""
    until = np.full(p.terminals, -1, dtype=np.int64)  # last compromised day (exclusive end) per terminal
    day_starts = np.searchsorted(day, np.arange(p.days + 1))
    for d in range(p.days):
        picked = rng.choice(p.terminals, size=min(TERMINAL_COMPROMISED_PER_DAY, p.terminals), replace=False)
        until[picked] = np.maximum(until[picked], d + TERMINAL_COMPROMISE_DAYS)
        lo, hi = day_starts[d], day_starts[d + 1]
        hit = until[term[lo:hi]] > d
        scenario[lo:hi][hit] = 2


def _customer_fraud(
    rng: np.random.Generator,
    p: SimulationParams,
    day: npt.NDArray[np.int64],
    cust: npt.NDArray[np.int64],
    amount: npt.NDArray[np.float64],
    scenario: npt.NDArray[np.int8],
) -> npt.NDArray[np.float64]:
    """Scenario 3: per day, compromised cards; for 14 days a third of their transactions are x5 frauds."""
    amount = amount.copy()
    until = np.full(p.customers, -1, dtype=np.int64)
    day_starts = np.searchsorted(day, np.arange(p.days + 1))
    for d in range(p.days):
        picked = rng.choice(p.customers, size=min(CUSTOMER_COMPROMISED_PER_DAY, p.customers), replace=False)
        until[picked] = np.maximum(until[picked], d + CUSTOMER_COMPROMISE_DAYS)
        lo, hi = day_starts[d], day_starts[d + 1]
        hit = (until[cust[lo:hi]] > d) & (rng.random(hi - lo) < 1 / 3)
        amount[lo:hi][hit] = np.round(amount[lo:hi][hit] * 5, 2)
        scenario[lo:hi][hit] = 3
    return amount


def _label_delays(
    rng: np.random.Generator, p: SimulationParams, n_base: int, n: int
) -> npt.NDArray[np.int64]:
    """Report delays: `n_base` from the main stream (as without drift), any more from a stream of their own;
    all exactly `label_delay_days` with `fixed_label_delay`."""
    high = p.label_delay_days * MS_PER_DAY
    delay = rng.uniform(3_600_000, high, n_base)[:n]
    extra = np.random.default_rng(p.seed + 2).uniform(3_600_000, high, n - len(delay))
    out: npt.NDArray[np.int64] = np.r_[delay, extra].astype(np.int64)
    if p.fixed_label_delay:  # drawn all the same, so the transactions stay those of the uniform run
        out[:] = int(high)
    return out


def _drift(
    p: SimulationParams,
    drift: Drift,
    day: npt.NDArray[np.int64],
    cust: npt.NDArray[np.int64],
    amount: npt.NDArray[np.float64],
    term: npt.NDArray[np.int64],
    ts: npt.NDArray[np.int64],
    currency: npt.NDArray[np.object_],
    scenario: npt.NDArray[np.int8],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Apply `drift` to the transactions of its days, with its own random stream (seed + 1)."""
    rng = np.random.default_rng(p.seed + 1)
    after = day >= drift.from_day
    amount, term, ts = amount.copy(), term.copy(), ts.copy()
    amount[after] = np.round(amount[after] * drift.amount_factor, 2)
    if drift.new_terminals > 0:
        moved = after & (rng.random(len(day)) < drift.new_terminal_share)
        term[moved] = p.terminals + rng.integers(0, drift.new_terminals, int(moved.sum()))
    if drift.currency is not None:
        currency[after & (rng.random(len(day)) < drift.currency_share)] = drift.currency
    for d in range(drift.from_day, p.days):
        cards = rng.choice(p.customers, size=min(drift.card_testing, p.customers), replace=False)
        rows = np.flatnonzero((day == d) & np.isin(cust, cards))
        amount[rows] = np.round(rng.uniform(1.0, 5.0, len(rows)), 2)
        night = (ts[rows] // MS_PER_DAY) * MS_PER_DAY + rng.integers(0, 5 * 3_600_000, len(rows))
        ts[rows] = night
        scenario[rows] = 4
    if drift.card_testing:  # night-time moves broke the event-time order: restore it
        order = np.argsort(ts, kind="stable")
        for array in (day, cust, scenario, currency):
            array[:] = array[order]
        amount, term, ts = amount[order], term[order], ts[order]
    return amount, term, ts


def transaction_values(data: SimulatedData, idx: npt.NDArray[np.int64]) -> list[bytes]:
    """JSON values (schemas/transaction.schema.json) of the transactions `idx`: for files and streams."""
    stamps = rfc3339_ms(data.event_ts_ms[idx])
    amounts = data.amount[idx].tolist()
    return [
        orjson.dumps(
            {
                "transaction_id": data.transaction_id[i],
                "timestamp": stamps[j],
                "customer_id": data.customer_id[i],
                "terminal_id": data.terminal_id[i],
                "amount": amounts[j],
                "currency": data.currency[i],
                "channel": data.channel[i],
                "merchant_category": data.merchant_category[i],
            }
        )
        for j, i in enumerate(idx.tolist())
    ]


def label_values(data: SimulatedData, labels: npt.NDArray[np.int64]) -> list[bytes]:
    """JSON values (schemas/label.schema.json) of the labels at positions `labels` of label_index."""
    tx = data.label_index[labels]
    reported, stamps = rfc3339_ms(data.label_reported_ts_ms[labels]), rfc3339_ms(data.event_ts_ms[tx])
    return [
        orjson.dumps(
            {
                "transaction_id": data.transaction_id[i],
                "customer_id": data.customer_id[i],
                "terminal_id": data.terminal_id[i],
                "is_fraud": True,
                "reported_at": reported[j],
                "timestamp": stamps[j],
            }
        )
        for j, i in enumerate(tx.tolist())
    ]


def write_jsonl(data: SimulatedData, out_dir: Path) -> tuple[Path, Path]:
    """DIR/transactions.jsonl and DIR/labels.jsonl, one compact JSON object per line; DataError (one line)
    when DIR cannot be made or written."""
    try:
        return _write_jsonl(data, out_dir)
    except OSError as exc:
        where = exc.filename or out_dir
        raise DataError(f"{where}: cannot write there ({exc.strerror})") from exc


def _write_jsonl(data: SimulatedData, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    tx_path, label_path = out_dir / "transactions.jsonl", out_dir / "labels.jsonl"
    # in chunks: a million small bytes objects alive at once is slow here (page faults dominate)
    with tx_path.open("wb") as fh:
        for start in range(0, len(data.amount), WRITE_CHUNK):
            idx = np.arange(start, min(start + WRITE_CHUNK, len(data.amount)))
            fh.write(b"\n".join(transaction_values(data, idx)) + b"\n")
    with label_path.open("wb") as fh:
        for start in range(0, len(data.label_index), WRITE_CHUNK):
            idx = np.arange(start, min(start + WRITE_CHUNK, len(data.label_index)))
            fh.write(b"\n".join(label_values(data, idx)) + b"\n")
    return tx_path, label_path
