"""The obvious per-event scorer: what the shipped one is measured against.

For each record: json.loads, a check of the fields, the 26 features computed in plain Python from dicts
of day buckets (the same definitions as scorer.features: customer windows including the event, terminal
windows over closed days), one onnxruntime call with a single row, the same reasons (one TreeSHAP call
per alerted event), json.dumps and one produce call. Invalid records go to a dead-letter topic. Offsets are
committed every second, like the passthrough, so the naive loop carries no delivery bookkeeping the
shipped scorer pays for (its ratio to the scorer is therefore in the naive loop's favour).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import signal
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from confluent_kafka import Producer

from benchmarks.passthrough import group_consumer
from scorer.features.engine import (
    CATEGORICAL_FIELDS,
    FEATURE_NAMES,
    MISSING_CODE,
    NO_HISTORY,
    SINCE_LAST_CAP_S,
    UNSEEN_CODE,
    WINDOW_DAYS,
)
from scorer.model.onnx import ModelMeta, read_meta, resolve_artefact
from scorer.scoring.decisions import Explainer

MS_PER_DAY = 86_400_000
REQUIRED = ("transaction_id", "customer_id", "terminal_id", "amount", "timestamp")


def stateless_row(
    tx: dict[str, Any], ts_ms: int, amount: float, codes: dict[str, dict[str, int]]
) -> list[float]:
    """Amount, log amount, hour, weekend, night, then the category codes (features 0..6)."""
    day, in_day = divmod(ts_ms, MS_PER_DAY)
    hour = in_day / 3_600_000.0
    row = [amount, math.log1p(amount), hour, float((day + 3) % 7 >= 5), float(hour < 6.0)]
    for name in CATEGORICAL_FIELDS:
        value = tx.get(name)
        row.append(MISSING_CODE if value is None else codes.get(name, {}).get(value, UNSEEN_CODE))
    return row


def customer_row(
    days: dict[int, list[float]], last_ms: int | None, ts_ms: int, amount: float, ring_days: int
) -> tuple[list[float], int]:
    """One customer's window features including this event (features 7..16), and its new last event time.

    `days` (day -> [count, amount]) is updated in place: the event is added and days older than the
    ring are dropped. A module function, not a method, so that another implementation holding the
    same per-customer state elsewhere (the quix profile keeps it in its state store) runs exactly this
    arithmetic.
    """
    day, in_day = divmod(ts_ms, MS_PER_DAY)
    frac = in_day / MS_PER_DAY
    since = (
        SINCE_LAST_CAP_S if last_ms is None else min(max((ts_ms - last_ms) / 1000.0, 0.0), SINCE_LAST_CAP_S)
    )
    counts, sums = [], []
    for w in WINDOW_DAYS:
        count = total = 0.0
        for d, (c, a) in days.items():
            weight = 1.0 if day - w < d <= day else (1.0 - frac if d == day - w else 0.0)
            count += weight * c
            total += weight * a
        counts.append(count)
        sums.append(total)
    bucket = days.setdefault(day, [0.0, 0.0])
    bucket[0] += 1.0
    bucket[1] += amount
    for d in [d for d in days if d <= day - ring_days]:
        del days[d]
    means = [(s + amount) / (c + 1.0) for c, s in zip(counts, sums, strict=True)]
    ratios = [amount * counts[i] / sums[i] if counts[i] > 0 and sums[i] > 0 else NO_HISTORY for i in (1, 2)]
    return [*(c + 1.0 for c in counts), *means, *ratios, since], max(ts_ms, last_ms or ts_ms)


def decision_doc(
    tx: dict[str, Any], score: float, threshold: float, version: str, row: list[float], explainer: Explainer
) -> dict[str, Any]:
    """The decision of one event, field by field as the decision schema orders them (naive and quix); an
    alerted one with its reasons, from one TreeSHAP call for its row."""
    flagged = score >= threshold
    reasons: list[dict[str, Any]] = []
    if flagged:
        found = explainer.reasons(np.asarray([row], dtype=np.float32))
        reasons = [
            {"feature": FEATURE_NAMES[c], "value": v, "contribution": w}
            for c, v, w in zip(found.columns[0], found.values[0], found.contributions[0], strict=True)
        ]
    return {
        "transaction_id": tx["transaction_id"],
        "customer_id": tx["customer_id"],
        "terminal_id": tx["terminal_id"],
        "amount": tx["amount"],
        "timestamp": tx["timestamp"],
        "score": score,
        "flagged": flagged,
        "threshold": threshold,
        "model_version": version,
        "reasons": reasons,
        "scored_at": datetime.datetime.now(datetime.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
    }


class NaiveFeatures:
    """Per-event features from dicts: customer -> {day: [count, amount]}, terminal -> {day: [count, fraud]}."""

    def __init__(self, categories: dict[str, list[str]], label_delay_days: int, ring_days: int) -> None:
        self.codes = {f: {v: i for i, v in enumerate(vals)} for f, vals in categories.items()}
        self.delay = label_delay_days
        self.ring_days = ring_days
        self.customers: dict[str, dict[int, list[float]]] = defaultdict(dict)
        self.last_ms: dict[str, int] = {}
        self.terminals: dict[str, dict[int, list[float]]] = defaultdict(dict)

    def compute(self, tx: dict[str, Any], ts_ms: int) -> list[float]:
        amount = float(tx["amount"])
        row = stateless_row(tx, ts_ms, amount, self.codes)
        cid = tx["customer_id"]
        customer, self.last_ms[cid] = customer_row(
            self.customers[cid], self.last_ms.get(cid), ts_ms, amount, self.ring_days
        )
        return row + customer + self._terminal(tx["terminal_id"], ts_ms // MS_PER_DAY)

    def _terminal(self, tid: str, day: int) -> list[float]:
        days = self.terminals[tid]
        delayed_end, fresh_end = day - 1 - self.delay, day - 1
        counts, risks, fresh = [], [], []
        for w in WINDOW_DAYS:
            c = sum(v[0] for d, v in days.items() if delayed_end - w < d <= delayed_end)
            f = sum(v[1] for d, v in days.items() if delayed_end - w < d <= delayed_end)
            fc = sum(v[0] for d, v in days.items() if fresh_end - w < d <= fresh_end)
            ff = sum(v[1] for d, v in days.items() if fresh_end - w < d <= fresh_end)
            counts.append(c)
            risks.append(f / c if c > 0 else 0.0)
            fresh.append(ff / fc if fc > 0 else 0.0)
        days.setdefault(day, [0.0, 0.0])[0] += 1.0
        for d in [d for d in days if d <= day - self.delay - 32]:
            del days[d]
        return [*counts, *risks, *fresh]


def parse_ms(text: str) -> int:
    stamp = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int(stamp.timestamp() * 1000)


def check(tx: Any) -> str | None:
    """Why a record is not a transaction, or None."""
    if not isinstance(tx, dict):
        return "not_an_object"
    missing = [f for f in REQUIRED if f not in tx]
    if missing:
        return f"missing_field: {missing[0]}"
    amount = tx["amount"]
    if isinstance(amount, bool) or not isinstance(amount, int | float) or not 0 <= amount <= 1e9:
        return "bad_amount"
    return None


def per_event_session(model: Path) -> tuple[ort.InferenceSession, ModelMeta]:
    """The model's onnxruntime session, one thread (a per-event scorer calls it once per event), and its meta."""
    directory = resolve_artefact(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(directory / "model.onnx"), options, providers=["CPUExecutionProvider"])
    return session, read_meta(directory)


class Naive:
    def __init__(self, args: argparse.Namespace) -> None:
        self.session, meta = per_event_session(Path(args.model))
        self.version = meta.label
        self.threshold = meta.threshold
        fc = meta.feature_config
        self.features = NaiveFeatures(dict(fc.categories), fc.label_delay_days, fc.customer_ring_days)  # type: ignore[arg-type]
        self.explainer = Explainer.for_model(resolve_artefact(Path(args.model)), FEATURE_NAMES, meta.label)
        self.args = args

    def score(self, value: bytes | None) -> tuple[str, bytes]:
        """(topic, record) for one input: a decision, or a dead letter saying why."""
        try:
            tx = json.loads(value or b"")
            why = check(tx)
            ts_ms = parse_ms(tx["timestamp"]) if why is None else 0
        except (ValueError, TypeError, KeyError) as exc:
            why = f"invalid: {exc}"
        if why is not None:
            return self.args.dlq, json.dumps(
                {"reason": why, "value": (value or b"").decode("utf-8", "replace")}
            ).encode()
        row = self.features.compute(tx, ts_ms)
        x = np.asarray([row], dtype=np.float32)
        (proba,) = self.session.run(["probabilities"], {"features": x})
        score = float(proba[0][1])
        decision = decision_doc(tx, score, self.threshold, self.version, row, self.explainer)
        return self.args.output, json.dumps(decision).encode()

    def run(self, stop: threading.Event) -> None:
        args = self.args
        consumer = group_consumer(args)
        producer = Producer({"bootstrap.servers": args.brokers, "linger.ms": 2})
        consumer.subscribe([args.input])
        last_commit = time.monotonic()
        while not stop.is_set():
            msg = consumer.poll(0.1)  # one event at a time
            if msg is not None and msg.error() is None:
                topic, record = self.score(msg.value())
                while True:
                    try:
                        producer.produce(topic, record, key=msg.key())
                        break
                    except BufferError:
                        producer.poll(0.05)
            producer.poll(0)
            if time.monotonic() - last_commit > 1.0:
                consumer.commit(asynchronous=True)
                last_commit = time.monotonic()
        producer.flush(10)
        consumer.commit(asynchronous=False)
        consumer.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.naive")
    for name in ("brokers", "input", "output", "group", "dlq", "model"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--fetch-wait-max-ms", type=int, default=10)
    p.add_argument("--session-timeout-ms", type=int, default=6000)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    Naive(parse_args(argv)).run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
