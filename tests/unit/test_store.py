"""`scorer store`'s loop on fakes: the topics on the fake broker, a database in memory that keys rows as the
tables do and can be unavailable or refuse. The real PostgreSQL is in tests/integration/test_store_live.py."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import orjson
import pytest

from scorer.config import Settings
from scorer.errors import ScorerError
from scorer.store.app import Store
from scorer.store.batch import StoreBatch
from scorer.store.target import DatabaseUnavailable
from tests.unit.fakes import FakeBroker, FakeConsumer

S = Settings(metrics_port=0, store_batch_wait_s=0, store_batch_max=7)
KEYS = {
    "transactions": ("day", "transaction_id"),
    "decisions": ("day", "transaction_id"),
    "labels": ("transaction_id", "source"),
    "dead_letters": ("day", "source_topic", "source_partition", "source_offset"),
}


class MemoryDatabase:
    """The StoreTarget in memory: rows by the tables' keys, a later record's row replacing an earlier one's,
    offsets that never move back. `unavailable` makes the next calls raise DatabaseUnavailable; `refuse`,
    ScorerError (as a full disk would)."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {t: {} for t in KEYS}
        self.written: dict[str, int] = dict.fromkeys(KEYS, 0)  # upserts, including replays
        self.stored: dict[tuple[str, int], int] = {}
        self.unavailable = 0
        self.refuse: str | None = None
        self.reconnects = 0
        self.closed = False

    def _call(self) -> None:
        if self.refuse is not None:
            raise ScorerError(self.refuse)
        if self.unavailable:
            self.unavailable -= 1
            raise DatabaseUnavailable("connection_lost", "server closed the connection unexpectedly")

    def write(self, batch: StoreBatch) -> None:
        self._call()
        for rows in batch.tables:
            names = list(rows.columns)
            for values in zip(*rows.columns.values(), strict=True):
                row = dict(zip(names, values, strict=True))
                key = tuple(row[k] for k in KEYS[rows.table])
                old = self.tables[rows.table].get(key)
                if old is None or old["source_offset"] < row["source_offset"]:
                    self.tables[rows.table][key] = row
                self.written[rows.table] += 1
        for tp, offset in batch.offsets.items():
            self.stored[tp] = max(self.stored.get(tp, 0), offset)

    def offsets(self, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        self._call()
        return {tp: self.stored[tp] for tp in partitions if tp in self.stored}

    def drop_before(self, day: int) -> int:
        self._call()
        return 0

    def reconnect(self) -> None:
        self.reconnects += 1
        self._call()

    def close(self) -> None:
        self.closed = True


def tx(i: int) -> bytes:
    return orjson.dumps(
        {"transaction_id": f"t{i}", "customer_id": f"C{i % 3}", "terminal_id": "T1", "amount": 10.0 + i,
         "timestamp": f"2026-03-0{1 + i % 3}T10:00:00Z"}
    )  # fmt: skip


def decision(i: int) -> bytes:
    doc = orjson.loads(tx(i)) | {
        "score": 0.1, "flagged": False, "action": "approve", "action_source": "model", "threshold": 0.5,
        "model_version": "m/1", "reasons": [], "scored_at": "2026-03-04T00:00:00Z", "features": [1.0, 2.0],
    }  # fmt: skip
    return orjson.dumps(doc)


def loaded(n: int = 30) -> FakeBroker:
    """n transactions and their decisions, two labels, a dead letter and a record that is no decision."""
    broker = FakeBroker(partitions=2)
    for i in range(n):
        broker.put(S.input_topic, i % 2, None, tx(i))
        broker.put(S.decisions_topic, i % 2, None, decision(i))
    label = {"transaction_id": "t3", "customer_id": "C0", "terminal_id": "T1", "is_fraud": True,
             "reported_at": "2026-03-05T00:00:00Z"}  # fmt: skip
    broker.put(S.labels_topic, 0, None, orjson.dumps(label))
    broker.put(S.labels_topic, 1, None, orjson.dumps(label | {"source": "analyst", "analyst_id": "ana"}))
    broker.put(S.dlq_topic, 0, None, b"\xff\xfe")
    broker.headers[(S.dlq_topic, 0, 0)] = [("reason", b"invalid_utf8"), ("source.topic", b"tx"),
                                           ("source.partition", b"1"), ("source.offset", b"9")]  # fmt: skip
    broker.put(S.decisions_topic, 0, None, b"{not a decision")
    return broker


def consumer(broker: FakeBroker) -> FakeConsumer:
    counts = {t: 2 for t in (S.input_topic, S.decisions_topic, S.labels_topic, S.dlq_topic)}
    return FakeConsumer(broker, S.store_group, counts)


def drain(
    broker: FakeBroker, db: MemoryDatabase, stop_after: int | None = None, threaded: bool = True
) -> tuple[Store, int]:
    """A store over the fakes until it has read everything (or `stop_after` steps), its last batch finished
    (or, with `stop_after`, left as a crash leaves it)."""
    c = consumer(broker)
    store = Store(S, db, consumer=c, threaded=threaded)
    stop = threading.Event()
    store.stop = stop
    c.subscribe(
        [S.input_topic, S.decisions_topic, S.labels_topic, S.dlq_topic],
        on_assign=store._on_assign, on_revoke=store._on_revoke,
    )  # fmt: skip
    steps = 0
    while not c.idle.is_set() and store.fatal is None and (stop_after is None or steps < stop_after):
        store.step()
        steps += 1
    if stop_after is None:
        store.flush()
    else:
        store.writer.close()  # the batch in flight ends as it would; the process then dies
    return store, steps


def assert_equals_the_topics(db: MemoryDatabase, broker: FakeBroker, n: int = 30) -> None:
    assert {k[1] for k in db.tables["transactions"]} == {f"t{i}" for i in range(n)}
    assert {k[1] for k in db.tables["decisions"]} == {f"t{i}" for i in range(n)}
    assert set(db.tables["labels"]) == {("t3", "chargeback"), ("t3", "analyst")}
    (letter,) = db.tables["dead_letters"].values()
    assert letter["value"] == b"\xff\xfe" and letter["source_offset"] == 9
    ends = {(t, p): len(records) for (t, p), records in broker.log.items()}
    assert db.stored == ends


@pytest.mark.parametrize("threaded", [True, False])
def test_a_run_stores_every_record_once_with_the_offsets_it_read_to(threaded: bool) -> None:
    broker, db = loaded(), MemoryDatabase()
    store, _ = drain(broker, db, threaded=threaded)
    assert store.fatal is None
    assert_equals_the_topics(db, broker)
    assert (
        store.registry.get_sample_value(
            "scorer_store_skipped_records_total", {"table": "decisions", "reason": "invalid_decision"}
        )
        == 1
    )


@pytest.mark.parametrize("threaded", [True, False])
def test_a_crash_between_batches_and_a_restart_stores_everything_once(threaded: bool) -> None:
    broker, db = loaded(), MemoryDatabase()
    drain(
        broker, db, stop_after=3, threaded=threaded
    )  # the process dies here: nothing of it survives but the database
    assert 0 < sum(db.written.values()) < 60
    store, _ = drain(broker, db)
    assert store.fatal is None
    assert_equals_the_topics(db, broker)


def test_a_database_that_goes_away_is_waited_for_and_the_batch_written_once_it_is_back() -> None:
    broker, db = loaded(), MemoryDatabase()
    c = consumer(broker)
    store = Store(S, db, consumer=c)
    store.stop = threading.Event()
    c.subscribe([S.input_topic, S.decisions_topic, S.labels_topic, S.dlq_topic], on_assign=store._on_assign)
    store.step()  # assigned (offsets read) and a first batch written
    db.unavailable = 3  # the next write and two reconnections fail
    states: list[bool] = []
    original = db.reconnect

    def reconnect() -> None:
        states.append(store.ready())
        original()

    db.reconnect = reconnect  # type: ignore[method-assign]
    store.first_wait_s = store.max_wait_s = 0.001  # no real waiting in a unit test
    while not c.idle.is_set() and store.fatal is None:
        store.step()
    store.flush()
    assert states and not any(states)  # /readyz 503 all the while
    assert store.ready() and store.fatal is None and db.reconnects == 3  # two failed, the third took
    assert_equals_the_topics(db, broker)
    assert (
        store.registry.get_sample_value("scorer_store_commit_failures_total", {"reason": "connection_lost"})
        == 3
    )


def test_a_database_that_refuses_stops_the_store_with_nothing_written_past_it() -> None:
    broker, db = loaded(), MemoryDatabase()
    c = consumer(broker)
    store = Store(S, db, consumer=c, threaded=False)
    store.stop = threading.Event()
    c.subscribe([S.input_topic, S.decisions_topic, S.labels_topic, S.dlq_topic], on_assign=store._on_assign)
    store.step()
    before = dict(db.stored)
    db.refuse = "could not extend file: No space left on device"
    store.step()  # the next batch handed to the writer, which fails
    store.step()  # its end seen: the store stops, this step's batch not handed over
    assert store.fatal == "could not extend file: No space left on device"
    assert db.stored == before


def test_stopping_while_the_database_is_away_ends_the_run_without_the_batch() -> None:
    broker, db = loaded(), MemoryDatabase()
    stop = threading.Event()
    stop.set()
    c = consumer(broker)
    store = Store(S, db, consumer=c, threaded=False)
    store.stop = stop
    db.unavailable = 1
    c.subscribe([S.input_topic, S.decisions_topic, S.labels_topic, S.dlq_topic], on_assign=store._on_assign)
    store.step()
    assert store.fatal is not None and "stopped while the database was unavailable" in store.fatal
    assert db.stored == {}


@pytest.mark.parametrize("stored", [0, 5])
def test_a_partition_starts_where_the_database_says(stored: int) -> None:
    broker, db = loaded(), MemoryDatabase()
    if stored:
        db.stored[(S.input_topic, 0)] = stored
    store, _ = drain(broker, db)
    first = min(k[1] for k in db.tables["transactions"] if int(k[1][1:]) % 2 == 0)
    assert store.fatal is None and (first == "t0") == (stored == 0)


class GatedDatabase(MemoryDatabase):
    """A database whose writes wait at a gate: the test decides when the batch in flight lands."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def write(self, batch: StoreBatch) -> None:
        self.entered.set()
        assert self.gate.wait(10), "the test never opened the gate"
        super().write(batch)


def gated_store(broker: FakeBroker) -> tuple[Store, FakeConsumer, GatedDatabase]:
    """A threaded store whose first batch is in flight, held at the gate."""
    db = GatedDatabase()
    c = consumer(broker)
    store = Store(S, db, consumer=c, threaded=True)
    store.stop = threading.Event()
    c.subscribe(
        [S.input_topic, S.decisions_topic, S.labels_topic, S.dlq_topic],
        on_assign=store._on_assign, on_revoke=store._on_revoke,
    )  # fmt: skip
    store.step()
    assert db.entered.wait(5) and store.writer.busy
    return store, c, db


def step_in_background(store: Store) -> threading.Thread:
    worker = threading.Thread(target=store.step, daemon=True)
    worker.start()
    return worker


def test_the_next_batch_is_read_while_the_one_before_is_written_and_handed_over_only_after_it() -> None:
    broker = loaded()
    store, c, db = gated_store(broker)
    read_before = sum(c.positions.values())
    worker = step_in_background(store)
    worker.join(0.5)
    assert worker.is_alive()  # waiting for the write at the gate ...
    assert sum(c.positions.values()) > read_before  # ... with the next batch already read
    assert db.stored == {}  # nothing lands before the gate opens
    db.gate.set()
    worker.join(5)
    assert not worker.is_alive()
    while not c.idle.is_set() and store.fatal is None:
        store.step()
    store.flush()
    assert store.fatal is None
    assert_equals_the_topics(db, broker)


def test_a_revocation_waits_for_the_batch_in_flight_so_its_rows_go_with_the_partitions() -> None:
    broker = loaded()
    store, c, db = gated_store(broker)
    seen_at_revoke_end: list[dict[tuple[str, int], int]] = []

    def on_revoke(consumer: Any, partitions: list[Any]) -> None:
        store._on_revoke(consumer, partitions)
        seen_at_revoke_end.append(dict(db.stored))

    c.callbacks["revoke"] = on_revoke
    c.rebalance("revoke", S.input_topic, [0, 1])
    worker = step_in_background(store)
    worker.join(0.5)
    assert worker.is_alive() and not seen_at_revoke_end  # the revocation waits at the gate ...
    assert any(t == S.input_topic for t, _ in c.positions)  # ... the partitions still the store's
    db.gate.set()
    worker.join(5)
    assert store.fatal is None and not any(t == S.input_topic for t, _ in c.positions)
    (at_end,) = seen_at_revoke_end
    assert {tp for tp in at_end if tp[0] == S.input_topic}  # the batch's rows landed before they went


def test_a_write_refused_in_flight_stops_the_store_and_nothing_after_it_is_written() -> None:
    broker = loaded()
    store, _, db = gated_store(broker)
    db.refuse = "permission denied for table decisions"
    db.gate.set()
    store.step()  # the refusal is seen; the batch this step read is not handed over
    assert store.fatal == "permission denied for table decisions"
    assert db.stored == {} and not store.writer.busy


def test_stopping_while_the_batch_in_flight_waits_for_the_database_ends_the_run_without_it() -> None:
    broker = loaded()
    store, _, db = gated_store(broker)
    db.unavailable = 1_000
    store.stop.set()
    db.gate.set()
    store.flush()
    assert store.fatal is not None and "stopped while the database was unavailable" in store.fatal
    assert db.stored == {}
