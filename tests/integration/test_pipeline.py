"""The scorer against the real broker: dead letters, metrics, health, graceful shutdown."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson

from scorer.config import Settings
from tests.integration.conftest import Proc, consume, decisions, produce

GOOD = {"customer_id": "C1", "terminal_id": "T1", "amount": 12.5, "timestamp": "2026-03-01T10:00:00Z"}


def good(i: int, customers: int = 7) -> tuple[bytes, bytes]:
    """(key, value) of a valid transaction; the key is the customer id, as the contract says."""
    customer = f"C{i % customers}"
    return customer.encode(), orjson.dumps({**GOOD, "transaction_id": f"ok-{i}", "customer_id": customer})


BAD: list[tuple[bytes | None, str]] = [
    (b'{"transaction_id": "x1", ', "invalid_json"),
    (
        orjson.dumps({k: v for k, v in {**GOOD, "transaction_id": "x2"}.items() if k != "amount"}),
        "missing_field",
    ),
    (orjson.dumps({**GOOD, "transaction_id": "x3", "amount": "12"}), "wrong_type"),
    (orjson.dumps({**GOOD, "transaction_id": "x4", "amount": -1}), "invalid_amount"),
    (
        b'{"transaction_id":"x5","customer_id":"C","terminal_id":"T","amount":NaN,"timestamp":"2026-03-01T10:00:00Z"}',
        "invalid_json",
    ),
    (orjson.dumps({**GOOD, "transaction_id": "x6", "amount": 1e12}), "invalid_amount"),
    (orjson.dumps({**GOOD, "transaction_id": "x7", "timestamp": "2026-03-01 10:00"}), "invalid_timestamp"),
    (
        orjson.dumps({**GOOD, "transaction_id": "x8", "timestamp": "2026-02-30T10:00:00Z"}),
        "invalid_timestamp",
    ),
    (b"", "empty_value"),
    (b'{"transaction_id": "' + b"x" * 70_000 + b'"}', "oversized_value"),
    (b"\xff\xfe\x00garbage", "invalid_utf8"),
    (b"[1, 2, 3]", "not_an_object"),
]


def wait_for(predicate, timeout_s: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def metric(text: str, name: str, labels: str = "") -> float:
    pattern = "^" + re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" ([0-9.e+-]+)"
    found = re.search(pattern, text, re.MULTILINE)  # a sample's line, never its HELP text
    return float(found.group(1)) if found else float("nan")


def test_bad_records_go_to_the_dlq_and_the_loop_goes_on(
    settings: Settings, tiny_model: Path, procs: list[Proc], tmp_path: Path
) -> None:
    records: list[tuple[bytes | None, bytes | None]] = []
    for i, (value, _) in enumerate(BAD):
        records.append(good(2 * i))
        records.append((b"C-bad", value))
    records.append(good(999))
    produce(settings, settings.input_topic, records)
    scorer = Proc("run", settings, tiny_model, tmp_path / "scorer.log")
    procs.append(scorer)
    dlq = consume(settings, settings.dlq_topic, len(BAD))
    got = decisions(consume(settings, settings.decisions_topic, len(BAD) + 1))
    assert sorted(d["transaction_id"] for d in got) == sorted(
        [f"ok-{2 * i}" for i in range(len(BAD))] + ["ok-999"]
    )
    reasons = sorted(r["headers"]["reason"].decode() for r in dlq)  # type: ignore[index, union-attr]
    assert reasons == sorted(reason for _, reason in BAD)
    first = next(r for r in dlq if r["headers"]["reason"] == b"invalid_json")  # type: ignore[index]
    assert first["headers"]["source.topic"] == settings.input_topic.encode()  # type: ignore[index]
    assert {"source.partition", "source.offset", "detail", "dead_lettered_at"} <= set(first["headers"])  # type: ignore[arg-type]
    assert any(r["value"] == BAD[0][0] for r in dlq)  # original bytes kept
    text = scorer.metrics()
    assert metric(text, "scorer_dead_letters_total", 'reason="invalid_json"') == 2
    assert metric(text, "scorer_events_scored_total") == len(BAD) + 1
    assert scorer.terminate() == 0


def test_metrics_health_and_sigterm_commits(
    settings: Settings, tiny_model: Path, procs: list[Proc], tmp_path: Path
) -> None:
    n = 300
    produce(settings, settings.input_topic, [good(i, customers=13) for i in range(n)])
    scorer = Proc("run", settings, tiny_model, tmp_path / "scorer.log")
    procs.append(scorer)
    got = consume(settings, settings.decisions_topic, n)
    assert len(got) == n
    base = f"http://127.0.0.1:{scorer.metrics_port}"
    assert wait_for(lambda: _status(base + "/readyz") == 200)
    assert _status(base + "/healthz") == 200
    text = scorer.metrics()
    assert metric(text, "scorer_events_consumed_total") == n
    assert metric(text, "scorer_events_scored_total") == n
    assert metric(text, "scorer_assigned_partitions") == 4
    assert metric(text, "scorer_end_to_end_latency_seconds_count") == n
    assert metric(text, "scorer_batch_size_records_sum") == n
    batches = metric(text, "scorer_batch_seconds_count")
    assert batches > 0 and metric(text, "scorer_batch_cpu_seconds_count") == batches  # one CPU time per batch
    assert 0 < metric(text, "scorer_batch_cpu_seconds_sum") <= metric(text, "scorer_batch_seconds_sum") + 0.01
    assert metric(text, "scorer_state_keys", 'kind="customer"') == 13 or wait_for(
        lambda: metric(scorer.metrics(), "scorer_state_keys", 'kind="customer"') == 13
    )
    assert "scorer_model_info{threshold=" in text
    started = time.monotonic()
    assert scorer.terminate() == 0
    assert time.monotonic() - started < 15
    # a new member of the group starts after the committed offsets: nothing is scored twice
    again = Proc("run", settings, tiny_model, tmp_path / "scorer2.log")
    procs.append(again)
    assert wait_for(lambda: _status(f"http://127.0.0.1:{again.metrics_port}/readyz") == 200)
    time.sleep(2)
    assert metric(again.metrics(), "scorer_events_consumed_total") == 0
    assert len(consume(settings, settings.decisions_topic, n + 1, timeout_s=12)) == n


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:  # noqa: S310
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0
