"""Terminal risk takes analysts' verdicts like chargebacks: each transaction counts once as a fraud, a reversed
verdict takes its count back, and the aggregator (with a restore in the middle), the offline replay and the
embedded scorer count the same."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from scorer import Scorer
from scorer.aggregate.partition import PartitionAgg, label_record, transaction_record
from scorer.aggregate.table import terminal_codec
from scorer.events.batches import LabelBatch
from scorer.events.labelstate import fraud_as_of
from scorer.events.timestamps import MS_PER_DAY
from scorer.features.engine import FeatureConfig, TerminalFeatures
from scorer.features.rows import LABEL_MEMORY_PREFIX, PartitionLog
from tests.unit.fakes import Crash
from tests.unit.test_aggregate import drain, table

CONFIG = FeatureConfig()
DAY = 20_500
SOURCES = ("chargeback", "analyst")


def labels(rows: list[tuple[str, str, str, bool, int, int]]) -> LabelBatch:
    """(transaction, terminal, source, is_fraud, tx ms, reported ms) per label."""
    n = len(rows)
    return LabelBatch(
        transaction_id=[r[0] for r in rows], customer_id=["C"] * n, terminal_id=[r[1] for r in rows],
        is_fraud=np.asarray([r[3] for r in rows], dtype=bool), reported_ts_ms=np.asarray([r[5] for r in rows]),
        tx_ts_ms=np.asarray([r[4] for r in rows]), source=[r[2] for r in rows],
    )  # fmt: skip


def frauds_on(terminals: TerminalFeatures, terminal: str, day: int) -> float:
    slot = terminals.ring.slots([terminal], create=False)
    assert slot[0] >= 0
    return float(terminals.ring.day_sums(("fraud",), slot, np.full((1, 1), day), (1,))[0, 0, 0, 0])


def test_a_transaction_counts_once_and_a_reversal_takes_it_back_at_its_close() -> None:
    t = TerminalFeatures(CONFIG)
    tx_ms = DAY * MS_PER_DAY + 1000
    t.add_transactions(["T", "T", "T"], np.full(3, tx_ms))
    day_ms = (DAY + 1) * MS_PER_DAY
    t.buffer_labels(labels([
        ("a", "T", "analyst", True, tx_ms, day_ms + 10), ("a", "T", "chargeback", True, tx_ms, day_ms + 20),
        ("b", "T", "analyst", True, tx_ms, day_ms + 30), ("a", "T", "analyst", True, tx_ms, day_ms + 40),
    ]))  # fmt: skip
    t.close(DAY + 1)
    assert frauds_on(t, "T", DAY) == 2.0  # a (three labels) and b
    t.buffer_labels(labels([("b", "T", "analyst", False, tx_ms, day_ms + MS_PER_DAY)]))  # b reversed
    t.buffer_labels(
        labels([("a", "T", "analyst", False, tx_ms, day_ms + MS_PER_DAY)])
    )  # a: the chargeback stands
    assert frauds_on(t, "T", DAY) == 2.0  # not before the close of the day it was reported on
    t.close(DAY + 2)
    assert frauds_on(t, "T", DAY) == 1.0
    t.buffer_labels(labels([("b", "T", "analyst", True, tx_ms, day_ms + 5)]))  # older than the reversal
    t.close(DAY + 3)
    assert frauds_on(t, "T", DAY) == 1.0


def test_a_genuine_label_alone_counts_nothing_and_labels_without_a_transaction_id_count_as_before() -> None:
    t = TerminalFeatures(CONFIG)
    tx_ms = DAY * MS_PER_DAY
    t.add_transactions(["T"], np.full(1, tx_ms))
    reported = (DAY + 1) * MS_PER_DAY
    t.buffer_labels(labels([("a", "T", "analyst", False, tx_ms, reported)]))
    t.buffer_labels(
        labels(
            [("", "T", "chargeback", True, tx_ms, reported), ("", "T", "chargeback", True, tx_ms, reported)]
        )
    )
    t.close(DAY + 1)
    assert frauds_on(t, "T", DAY) == 2.0  # older terminal-events records: each fraud one counts


def stream(seed: int) -> list[tuple[int, str, tuple[object, ...]]]:
    """(time, kind, fields) in arrival order: transactions on 4 terminals over 12 days, and labels of
    some of them (duplicates, both sources, reversals, some reported out of order)."""
    rng = np.random.default_rng(seed)
    events: list[tuple[int, str, tuple[object, ...]]] = []
    for i in range(400):
        ts = DAY * MS_PER_DAY + int(rng.integers(0, 12 * MS_PER_DAY))
        terminal = f"T{rng.integers(0, 4)}"
        events.append((ts, "tx", (terminal, ts)))
        for _ in range(int(rng.integers(0, 4)) if rng.random() < 0.3 else 0):
            reported = ts + int(rng.integers(1, 4 * MS_PER_DAY))
            fields = (f"t{i}", terminal, str(rng.choice(SOURCES)), bool(rng.random() < 0.6), ts, reported)
            events.append((reported, "label", fields))
    events.sort(key=lambda e: e[0])
    return events


@pytest.mark.parametrize("seed", range(3))
def test_the_aggregator_restored_mid_stream_counts_as_the_offline_replay(seed: int) -> None:
    events = stream(seed)
    offline = TerminalFeatures(CONFIG)  # what training's replay and the embedded scorer do
    for _, kind, f in events:
        if kind == "tx":
            offline.features_then_count([str(f[0])], np.asarray([f[1]], dtype=np.int64))
        else:
            offline.buffer_labels(labels([f]))  # type: ignore[list-item]
    last = max(e[0] for e in events) // MS_PER_DAY
    offline.close(last)

    records = [
        transaction_record(str(f[0]), int(f[1]), 0, i)  # type: ignore[call-overload]
        if kind == "tx"
        else label_record(str(f[1]), int(f[5]), int(f[4]), bool(f[3]), 1, i, str(f[0]), str(f[2]))  # type: ignore[call-overload]
        for i, (_, kind, f) in enumerate(events)
    ]
    days = [e[0] // MS_PER_DAY for e in events]
    codec, log = terminal_codec(CONFIG), PartitionLog()
    part = PartitionAgg(TerminalFeatures(CONFIG))
    at, restore_after = 0, DAY + 6
    for day in range(DAY, last + 1):
        upto = max([i + 1 for i, d in enumerate(days) if d <= day], default=at)
        part.fold(
            [(i, r["key"], r["value"]) for i, r in enumerate(records) if at <= i < upto], closed_day=day - 1
        )
        at = upto
        out, _, _ = part.close(day, codec)
        for r in out:
            log.add(r["key"], r["value"])
        if day == restore_after:  # a new process: the table and the label memory from the topic only
            part = PartitionAgg.restore(CONFIG, codec, log.result())
            at = part.position
    assert any(k.startswith(LABEL_MEMORY_PREFIX) for k in log.result().rows)
    terminals = ["T0", "T1", "T2", "T3"]
    slots = [r.ring.slots(terminals, create=False) for r in (offline, part.terminals)]
    np.testing.assert_array_equal(
        offline.ring.buckets["fraud"][slots[0]], part.terminals.ring.buckets["fraud"][slots[1]]
    )
    # and what they count is the transactions that are fraud by their labels, each once
    label_rows = labels([f for _, kind, f in events if kind == "label"])  # type: ignore[misc]
    fraud = fraud_as_of(label_rows)
    where = {str(f[0]): (str(f[1]), int(f[4]) // MS_PER_DAY) for _, kind, f in events if kind == "label"}
    for terminal in terminals:
        for day in range(DAY, last + 1):
            want = sum(1 for t in fraud if where[t] == (terminal, day))
            assert frauds_on(offline, terminal, day) == want


def test_the_embedded_scorer_takes_a_duplicate_once_and_applies_a_reversal(tiny_model: Path) -> None:
    scorer = Scorer.load(tiny_model)
    tx = [
        {"transaction_id": f"t{i}", "customer_id": f"C{i}", "terminal_id": "T1", "amount": 40.0,
         "timestamp": f"2026-03-{1 + i:02d}T12:00:00Z"}
        for i in range(12)
    ]  # fmt: skip
    scorer.score(tx[:10])

    def label(i: int, source: str, fraud: bool, reported: str) -> dict[str, object]:
        return {"transaction_id": f"t{i}", "customer_id": f"C{i}", "terminal_id": "T1", "is_fraud": fraud,
                "reported_at": reported, "timestamp": f"2026-03-{1 + i:02d}T12:00:00Z", "source": source}  # fmt: skip

    scorer.label(
        [label(2, "analyst", True, "2026-03-10T13:00:00Z"), label(3, "analyst", True, "2026-03-10T13:00:00Z")]
    )
    scorer.label([label(2, "chargeback", True, "2026-03-10T14:00:00Z")])  # the same fraud again
    scorer.score(tx[10:11])  # the 11th: closes the 10th
    state = scorer.terminals.state
    day = lambda i: (np.datetime64(f"2026-03-{1 + i:02d}") - np.datetime64("1970-01-01")).astype(int)  # noqa: E731
    assert frauds_on(state, "T1", int(day(2))) == 1.0 and frauds_on(state, "T1", int(day(3))) == 1.0
    scorer.label([label(3, "analyst", False, "2026-03-11T15:00:00Z")])  # reversed
    scorer.score(tx[11:])  # the 12th: closes the 11th
    assert frauds_on(state, "T1", int(day(3))) == 0.0 and frauds_on(state, "T1", int(day(2))) == 1.0


def test_label_records_of_the_older_layout_still_count_and_unknown_tails_are_skipped() -> None:
    part = PartitionAgg(TerminalFeatures(CONFIG))
    tx_ms, reported = DAY * MS_PER_DAY + 5, (DAY + 1) * MS_PER_DAY + 5
    older = label_record("T", reported, tx_ms, True, 0, 1)  # no transaction id: 30 bytes, as before
    newer = label_record("T", reported, tx_ms, True, 0, 2, "tx9", "analyst")
    unknown = {
        "key": b"T",
        "value": newer["value"][:30] + b"?tx8",
    }  # a source byte this version does not know
    records = [transaction_record("T", tx_ms, 1, 0), older, newer, unknown]
    assert len(older["value"]) == 30 and newer["value"].endswith(b"atx9")
    folded = part.fold([(i, r["key"], r["value"]) for i, r in enumerate(records)], closed_day=DAY - 1)
    assert folded.labels == 2
    part.close(DAY + 1, terminal_codec(CONFIG))
    assert frauds_on(part.terminals, "T", DAY) == 2.0


def with_verdicts(crash: bool) -> tuple[dict[bytes, bytes | None], list[int]]:
    """The real Aggregator on the fake broker (tests/unit/test_aggregate.py) over the same history with
    analysts' labels added: a fraud verdict a day after every chargeback (the same fraud twice), and on genuine
    transactions a fraud verdict reversed a day later (counted at one close, taken back at a later one).
    With `crash`, the re-key stage dies mid-stream and the process restarts from the topics."""
    from tests.unit.test_aggregate import COUNTS, FakeBroker, history, start

    broker = FakeBroker(counts=dict(COUNTS))
    events = history()
    tx_docs = [orjson.loads(v) for t, _, _, v in events if t == "tx"]
    flipped = {d["transaction_id"]: d for d in reversed_ones(tx_docs)}
    extra: list[tuple[int, bytes]] = []
    for doc in flipped.values():
        at = stamp_ms(doc["timestamp"]) + 3_600_000
        base = {k: doc[k] for k in ("transaction_id", "customer_id", "terminal_id", "timestamp")} | {
            "source": "analyst", "analyst_id": "alice", "case_id": doc["customer_id"],
        }  # fmt: skip
        for fraud, when in ((True, at), (False, at + MS_PER_DAY)):
            extra.append((when, orjson.dumps(base | {"is_fraud": fraud, "reported_at": iso(when)})))
    # a fraud verdict a day after each chargeback (at another close), but for the last days: labels reported
    # after the clean run's last one would let this run close days that one never closes
    last = max(stamp_ms(orjson.loads(v)["reported_at"]) for t, _, _, v in events if t == "labels")
    for topic, _, _, value in events:
        doc = orjson.loads(value)
        when = stamp_ms(doc["reported_at"]) + MS_PER_DAY if topic == "labels" else last
        if topic == "labels" and doc["transaction_id"] not in flipped and when < last - MS_PER_DAY:
            analyst = doc | {"source": "analyst", "analyst_id": "bob", "case_id": doc["customer_id"]}
            extra.append((when, orjson.dumps(analyst | {"reported_at": iso(when)})))
    extra.sort(key=lambda e: e[0])
    for topic, p, key, value in events:
        if topic == "labels":
            doc = orjson.loads(value)
            if doc["transaction_id"] in flipped:
                continue  # a chargeback too would keep it fraud: leave these to the analyst alone
            while extra and extra[0][0] <= stamp_ms(doc["reported_at"]):
                broker.put("labels", 0, b"", extra.pop(0)[1])
            broker.put(topic, p, key, value)
        else:
            broker.put(topic, p, key, value)
    for _, value in extra:
        broker.put("labels", 0, b"", value)
    if crash:
        agg = start(broker)
        agg.rekey.crash_after = 10  # type: ignore[attr-defined]
        with pytest.raises(Crash):
            drain(agg)
    agg = start(broker)
    drain(agg)
    agg.close()
    return table(broker)


def reversed_ones(tx_docs: list[dict[str, str]]) -> list[dict[str, str]]:
    """Every 37th transaction, but for the last 3 days (whose reversal would come after the last close)."""
    end = max(stamp_ms(d["timestamp"]) for d in tx_docs) - 3 * MS_PER_DAY
    return [d for d in tx_docs[::37] if stamp_ms(d["timestamp"]) < end]


def stamp_ms(text: str) -> int:
    return int(np.datetime64(text.rstrip("Z"), "ms").astype(np.int64))


def iso(ms: int) -> str:
    return str(np.datetime64(ms, "ms")) + "Z"


@pytest.mark.parametrize("crash", [False, True])
def test_the_aggregator_counts_duplicates_once_and_applies_reversals(crash: bool) -> None:
    """Against the clean run without analysts' labels, minus the chargebacks of the reversed transactions:
    every terminal row ends equal."""
    from tests.unit.test_aggregate import COUNTS, FakeBroker, history, start

    broker = FakeBroker(counts=dict(COUNTS))
    tx_docs = [orjson.loads(v) for t, _, _, v in history() if t == "tx"]
    flipped = {d["transaction_id"] for d in reversed_ones(tx_docs)}
    for topic, p, key, value in history():
        if topic != "labels" or orjson.loads(value)["transaction_id"] not in flipped:
            broker.put(topic, p, key, value)
    agg = start(broker)
    drain(agg)
    agg.close()
    want, want_days = terminal_rows(*table(broker))
    got, got_days = terminal_rows(*with_verdicts(crash))
    assert len(got) == len(want) > 20 and got_days == want_days
    assert got == want


def terminal_rows(
    rows: dict[bytes, bytes | None], days: list[int]
) -> tuple[dict[bytes, bytes | None], list[int]]:
    """The terminals' rows of a table, without the label memory beside them (which must be there)."""
    kept = {k: v for k, v in rows.items() if not k.startswith(LABEL_MEMORY_PREFIX)}
    assert len(kept) < len(rows)
    return kept, days
