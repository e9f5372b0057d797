"""The scoring core without Kafka: same features and scores as the offline engine, dead letters by
position and reason, flags, shadow decisions, deployment swaps and metrics."""

from __future__ import annotations

import datetime
import threading
import zlib
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry

from scorer.aggregate.partition import PartitionAgg, transaction_record
from scorer.aggregate.table import MemorySource, TerminalTable, terminal_codec
from scorer.config import DEFAULT_MODEL, Settings
from scorer.events.batches import LabelBatch
from scorer.events.decode import decode_transactions
from scorer.events.timestamps import MS_PER_DAY
from scorer.features.engine import FEATURE_NAMES, FeatureEngine, TerminalFeatures
from scorer.model.onnx import OnnxModel
from scorer.rollout.plans import Plan
from scorer.rollout.serving import Serving
from scorer.runtime.metrics import Metrics
from scorer.scoring.core import DEAD_LETTER_REASONS, ScoringCore, SystemicFailure
from scorer.scoring.customers import CustomerStore
from scorer.training.history import replay
from scorer.training.simulate import SimulationParams, simulate, transaction_values
from tests.variants import currency_aware

NO_LABELS = LabelBatch([], [], [], np.zeros(0, bool), np.zeros(0, np.int64), np.zeros(0, np.int64))


@cache
def history() -> tuple[list[bytes], np.ndarray[Any, Any]]:
    data = simulate(
        SimulationParams(customers=120, terminals=50, days=9, seed=2, start=datetime.date(2026, 5, 1))
    )
    values = transaction_values(data, np.arange(len(data.transaction_id), dtype=np.int64))
    partitions = np.array([zlib.crc32(c.encode()) % 3 for c in data.customer_id], dtype=np.int64)
    return values, partitions


def core(
    model: OnnxModel | None = None,
    registry: CollectorRegistry | None = None,
    settings: Settings | None = None,
) -> tuple[ScoringCore, MemorySource]:
    model = model or OnnxModel(DEFAULT_MODEL)
    config = model.meta.feature_config
    source = MemorySource([0])
    metrics = Metrics(registry or CollectorRegistry(), DEAD_LETTER_REASONS)
    scorer = ScoringCore(
        settings or Settings(),
        Serving(model),
        CustomerStore(config),
        TerminalTable(config, source),
        metrics,
        instance="test-1",
    )
    return scorer, source


def test_decisions_equal_the_offline_engine_with_customer_state_split_by_partition() -> None:
    """Terminal closes come through the table as the aggregator would publish them, one day at a time."""
    values, partitions = history()
    scorer, source = core()
    model = scorer.serving.champion
    codec = terminal_codec(model.meta.feature_config)
    aggregator = PartitionAgg(TerminalFeatures(model.meta.feature_config))
    decoded = decode_transactions(values)
    assert not decoded.rejected
    day = decoded.batch.event_ts_ms // MS_PER_DAY
    scores = np.empty(len(values))
    features = np.empty((len(values), len(FEATURE_NAMES)), dtype=np.float32)
    for d in np.unique(day).tolist():
        records, _, _ = aggregator.close(d - 1, codec)  # the close of the day before, then its events
        source.add(0, records)
        scorer.terminals.poll()
        rows = np.flatnonzero(day == d)
        for chunk in np.array_split(rows, max(1, len(rows) // 97)):
            out = scorer.score([values[i] for i in chunk.tolist()], partitions[chunk])
            scores[chunk] = [orjson.loads(r["value"])["score"] for r in out.decisions]
            features[chunk] = out.features
            aggregator.fold([fold_record(decoded.batch, i) for i in chunk.tolist()], d - 1)
    offline = replay(decoded.batch, NO_LABELS, FeatureEngine(model.meta.feature_config))
    assert np.array_equal(features, offline)
    assert scores == pytest.approx(model.predict(offline), abs=1e-9)


def fold_record(batch: Any, i: int) -> tuple[int, bytes, bytes]:
    """Transaction i as the aggregator's re-key stage writes it to terminal-events (at offset i)."""
    record = transaction_record(batch.terminal_id[i], int(batch.event_ts_ms[i]), 0, i)
    return i, record["key"], record["value"]


def test_bad_records_become_dead_letters_by_position_and_the_rest_is_scored() -> None:
    values, partitions = history()
    scorer, _ = core()
    bad = [b"", b"{not json", b"[1, 2]", b'{"transaction_id": 5}', b"\xff\xfe"]
    batch = [values[0], bad[0], values[1], bad[1], bad[2], values[2], bad[3], bad[4]]
    out = scorer.score(batch, np.zeros(len(batch), dtype=np.int64))
    assert [(d.index, d.reason) for d in out.dead_letters] == [
        (1, "empty_value"), (3, "invalid_json"), (4, "not_an_object"), (6, "wrong_type"), (7, "invalid_utf8"),
    ]  # fmt: skip
    assert out.kept.tolist() == [0, 2, 5]
    ids = [orjson.loads(r["value"])["transaction_id"] for r in out.decisions]
    assert ids == [orjson.loads(values[i])["transaction_id"] for i in (0, 1, 2)]
    assert [r["key"] for r in out.decisions] == [
        orjson.loads(values[i])["customer_id"].encode() for i in (0, 1, 2)
    ]
    assert {d.reason for d in out.dead_letters} <= set(DEAD_LETTER_REASONS)


def test_a_batch_of_only_bad_records_touches_no_state() -> None:
    scorer, _ = core()
    out = scorer.score([b"", b"null"], np.array([0, 1], dtype=np.int64))
    assert (
        out.decisions == [] and len(out.dead_letters) == 2 and out.features.shape == (0, len(FEATURE_NAMES))
    )
    assert scorer.customers.keys == 0


def test_flags_are_the_decisions_at_or_over_the_threshold_and_are_counted() -> None:
    values, partitions = history()
    model = OnnxModel(DEFAULT_MODEL)
    model.predict = lambda X: np.where(np.arange(len(X)) % 4 == 0, 0.99, 0.0)  # type: ignore[method-assign]
    registry = CollectorRegistry()
    scorer, _ = core(model, registry)
    out = scorer.score(values[:40], partitions[:40])
    flagged = [r for r in out.decisions if orjson.loads(r["value"])["flagged"]]
    assert [r["value"] for r in out.flags] == [r["value"] for r in flagged] and len(flagged) == 10
    assert registry.get_sample_value("scorer_events_scored_total") == 40
    assert registry.get_sample_value("scorer_events_flagged_total") == 10
    assert registry.get_sample_value("scorer_model_scored_total", {"model_version": model.label}) == 40


def test_a_shadow_plan_puts_the_challengers_decisions_apart_and_never_flags_with_them() -> None:
    values, partitions = history()
    champion, challenger = OnnxModel(DEFAULT_MODEL), OnnxModel(DEFAULT_MODEL)
    champion.predict = lambda X: np.zeros(len(X))  # type: ignore[method-assign]
    challenger.predict = lambda X: np.full(len(X), 0.99)  # type: ignore[method-assign]
    scorer, _ = core(champion)
    plan = Plan("p", "shadow", champion.label, challenger.label, 0)
    scorer.adopt(Serving(champion, challenger, plan))
    out = scorer.score(values[:30], partitions[:30])
    assert out.flags == [] and len(out.shadow) == len(out.decisions) == 30
    shadow = [orjson.loads(r["value"]) for r in out.shadow]
    assert {d["score"] for d in shadow} == {0.99} and all(d["flagged"] for d in shadow)
    assert [r["key"] for r in out.shadow] == [r["key"] for r in out.decisions]


def test_a_shadow_challenger_still_busy_is_skipped_without_shadow_decisions_and_counted() -> None:
    values, partitions = history()
    champion, challenger = OnnxModel(DEFAULT_MODEL), OnnxModel(DEFAULT_MODEL)
    release = threading.Event()

    def stuck(X: Any) -> Any:
        release.wait(30)
        return np.full(len(X), 0.99)

    challenger.predict = stuck  # type: ignore[method-assign]
    registry = CollectorRegistry()
    scorer, _ = core(champion, registry, Settings(challenger_timeout_s=0.0))
    scorer.adopt(Serving(champion, challenger, Plan("p", "shadow", champion.label, challenger.label, 0)))
    try:
        outs = [scorer.score(values[i : i + 10], partitions[i : i + 10]) for i in range(0, 30, 10)]
    finally:
        release.set()
    assert [len(out.decisions) for out in outs] == [10, 10, 10] and not any(out.shadow for out in outs)
    skipped = registry.get_sample_value(
        "scorer_challenger_skipped_batches_total", {"model_version": challenger.label}
    )
    assert skipped == 2  # the first batch timed out; the next two found it still scoring the first


def test_a_new_champion_gets_its_own_reference_and_the_old_ones_drift_counts_are_handed_back() -> None:
    values, partitions = history()
    scorer, _ = core()
    old = scorer.serving.champion
    scorer.score(values[:50], partitions[:50])
    assert scorer.adopt(Serving(old)) == []  # the same champion: nothing to hand back, counts go on
    outgoing = scorer.adopt(Serving(OnnxModel(DEFAULT_MODEL)))
    docs = [orjson.loads(r["value"]) for r in outgoing]
    assert docs and {d["kind"] for d in docs} == {"drift"} and {d["instance"] for d in docs} == {"test-1"}
    assert sum(sum(d["counts"][: d["bins"][0]]) for d in docs) == 50  # every event in the first column
    assert all(r["key"] == b"test-1" for r in outgoing)
    assert scorer.drift_records() == []  # the new champion's drift starts empty


def test_every_input_issue_and_dead_letter_reason_is_pre_created() -> None:
    registry = CollectorRegistry()
    core(registry=registry)
    for reason in DEAD_LETTER_REASONS:
        assert registry.get_sample_value("scorer_dead_letters_total", {"reason": reason}) == 0
    assert (
        registry.get_sample_value(
            "scorer_input_issues_total", {"field": "currency", "reason": "unseen_category"}
        )
        == 0
    )


def test_the_documented_example_of_the_public_api_runs() -> None:
    readme = (Path(__file__).resolve().parents[2] / "docs" / "development.md").read_text()
    code = (
        readme.split("Using the scoring core from Python", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    )
    scope: dict[str, Any] = {}
    exec(compile(code, "docs/development.md", "exec"), scope)  # noqa: S102 - our own documentation
    scored = scope["scored"]
    assert len(scored.decisions) == 1 and orjson.loads(scored.decisions[0]["value"])["transaction_id"] == "t1"
    assert [(d.index, d.reason) for d in scored.dead_letters] == [(1, "invalid_json")]


def poisoned(model: OnnxModel, amount: float) -> OnnxModel:
    """The model, failing on any batch holding a transaction of `amount` (a record that breaks scoring)."""
    column = FEATURE_NAMES.index("amount")
    predict = model.predict

    def picky(X: Any) -> Any:
        if (X[:, column] == amount).any():
            raise ValueError(f"cannot score amount {amount}")
        return predict(X)

    model.predict = picky  # type: ignore[method-assign]
    return model


def test_a_poison_record_costs_only_itself_and_the_rest_is_scored_as_without_it() -> None:
    values, partitions = history()
    batch = [orjson.loads(v) for v in values[:60]]
    for i in (7, 41):
        batch[i]["amount"] = 666.0
    raw = [orjson.dumps(d) for d in batch]
    raw.insert(20, b"{broken")  # a decoding reject in the same batch keeps its own position
    parts = np.insert(partitions[:60], 20, 0)
    scorer, _ = core(poisoned(OnnxModel(DEFAULT_MODEL), 666.0))
    out = scorer.score(raw, parts)
    assert [(d.index, d.reason) for d in out.dead_letters] == [
        (7, "processing_error"), (20, "invalid_json"), (42, "processing_error"),
    ]  # fmt: skip
    assert "cannot score amount 666" in out.dead_letters[0].detail
    clean, _ = core()
    keep = [i for i in range(len(raw)) if i not in (7, 20, 42)]
    want = clean.score([raw[i] for i in keep], parts[keep])
    assert out.kept.tolist() == keep
    assert [r["value"][:60] for r in out.decisions] == [r["value"][:60] for r in want.decisions]
    assert np.array_equal(out.features, want.features)  # no customer counted twice by the retries
    assert scorer.customers.nbytes == clean.customers.nbytes


def test_a_model_that_fails_on_everything_is_no_poison_and_changes_no_state() -> None:
    values, partitions = history()
    model = OnnxModel(DEFAULT_MODEL)
    registry = CollectorRegistry()
    scorer, _ = core(model, registry)
    scorer.score(values[:10], partitions[:10])
    keys = scorer.customers.keys

    def broken(X: Any) -> Any:
        raise RuntimeError("onnxruntime: session lost")

    model.predict = broken  # type: ignore[method-assign]
    with pytest.raises(SystemicFailure, match="session lost"):
        scorer.score(values[10:20], partitions[10:20])
    assert scorer.customers.keys == keys
    assert registry.get_sample_value("scorer_events_scored_total") == 10  # nothing counted for the failure


def test_a_model_broken_from_the_start_is_told_from_poison_by_its_reference_sample() -> None:
    values, partitions = history()
    model = OnnxModel(DEFAULT_MODEL)
    model.predict = lambda X: (_ for _ in ()).throw(RuntimeError("no session"))  # type: ignore[method-assign]
    scorer, _ = core(model)
    with pytest.raises(SystemicFailure):
        scorer.score(values[:3], partitions[:3])


def test_one_pass_over_partitions_equals_a_store_per_partition() -> None:
    """The shared ring scores a batch spanning partitions exactly as separate per-partition windows do,
    expiry by each partition's own clock included."""
    from scorer.events.timestamps import MS_PER_DAY
    from scorer.features.engine import LATE_GRACE_DAYS, CustomerFeatures, FeatureConfig
    from scorer.scoring.customers import CustomerStore

    config = FeatureConfig()
    rng = np.random.default_rng(7)
    store, alone = CustomerStore(config), {p: CustomerFeatures(config) for p in range(3)}
    start = 1_767_225_600_000
    for batch in range(40):
        n = 60
        ids = [f"C{i}" for i in rng.integers(0, 25, n)]
        parts = rng.integers(0, 3, n).astype(np.int64)  # the same id may sit in two partitions: two keys
        ts = start + batch * 2 * MS_PER_DAY + np.sort(rng.integers(0, MS_PER_DAY, n)).astype(np.int64)
        amount = rng.gamma(2.0, 30.0, n)
        got = store.update_and_compute(ids, ts, amount, parts)
        for p in range(3):
            idx = np.flatnonzero(parts == p)
            if len(idx):
                day = int(ts[idx].min()) // MS_PER_DAY
                alone[p].ring.expire_idle(day, LATE_GRACE_DAYS)
                want = alone[p].update_and_compute([ids[i] for i in idx], ts[idx], amount[idx])
                np.testing.assert_array_equal(got[idx], want)
    assert store.keys == sum(len(f.ring) for f in alone.values())
    none = np.zeros(0, dtype=np.int64)
    assert store.update_and_compute([], none, np.zeros(0), none).shape[0] == 0  # a batch of dead letters only


def with_currency(values: list[bytes], currency: str) -> list[bytes]:
    """The transactions, every other one paid in `currency`."""
    docs = [orjson.loads(v) for v in values]
    for doc in docs[::2]:
        doc["currency"] = currency
    return [orjson.dumps(d) for d in docs]


def test_a_champion_adopted_with_a_new_currency_scores_it_with_its_own_vocabulary(tmp_path: Path) -> None:
    """Before: the core kept the vocabulary of the model it started with, so the new champion saw USD as
    unseen (its code -2) and scored it as if it did not know it."""
    values, partitions = history()
    variant = OnnxModel(currency_aware(Path(DEFAULT_MODEL), tmp_path / "default" / "usd", "USD", "usd"))
    batch = with_currency(values[40:80], "USD")
    adopted, _ = core()
    adopted.score(values[:40], partitions[:40])
    adopted.adopt(Serving(variant))
    got = adopted.score(batch, partitions[40:80])
    fresh, _ = core(variant)
    fresh.score(values[:40], partitions[:40])
    want = fresh.score(batch, partitions[40:80])
    scores = [orjson.loads(r["value"])["score"] for r in got.decisions]
    assert scores == [orjson.loads(r["value"])["score"] for r in want.decisions]
    usd = FEATURE_NAMES.index("currency_code")
    assert (got.features[::2, usd] == 1).all()  # USD is the variant's code 1, not unseen


def test_a_shadow_challenger_with_another_vocabulary_scores_with_its_own(tmp_path: Path) -> None:
    values, partitions = history()
    variant = OnnxModel(currency_aware(Path(DEFAULT_MODEL), tmp_path / "default" / "usd", "USD", "usd"))
    champion = OnnxModel(DEFAULT_MODEL)
    batch = with_currency(values[:60], "USD")
    scorer, _ = core(champion)
    scorer.adopt(Serving(champion, variant, Plan("p", "shadow", champion.label, variant.label, 0)))
    out = scorer.score(batch, partitions[:60])
    alone, _ = core(variant)
    want = alone.score(batch, partitions[:60])
    shadow = [orjson.loads(r["value"])["score"] for r in out.shadow]
    assert shadow == [orjson.loads(r["value"])["score"] for r in want.decisions]
    mine = [orjson.loads(r["value"])["score"] for r in out.decisions]
    assert shadow[0] == pytest.approx(min(mine[0] + 0.5, 1.0))  # a USD row: the variant's own code
    assert out.features[0, FEATURE_NAMES.index("currency_code")] == -2.0  # the champion's: unseen
