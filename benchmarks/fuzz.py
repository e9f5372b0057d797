"""An adversarial input run: a seeded corpus of valid and broken transactions through `scorer run`.

`python -m benchmarks.fuzz --records 100000` starts the embedded broker and one scorer, sends the corpus
(30 % mutations of valid transactions: fields dropped, renamed or repeated, wrong types, NaN / Infinity /
huge / negative / string amounts, malformed, out-of-range and non-ASCII timestamps, deep nesting, invalid
UTF-8, truncation at a random byte, random bytes, a byte order mark, unknown fields, tombstones, and a
few values over 1 MiB) and checks the invariant: every record comes out exactly once, as a decision
(the valid) or as a dead letter with the decoder's reason (the others), and the process never exits.
tests/integration/test_adversarial.py runs the same at 20,000 records.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from scorer.config import DEFAULT_MODEL, Settings
from scorer.demo.broker import EmbeddedBroker, free_port
from scorer.events.decode import decode_transactions
from scorer.kafka.topics import create_topics
from scorer.training.simulate import SimulationParams, simulate, transaction_values

BIG_BYTES = 1_100_000  # over librdkafka's default message.max.bytes and 1 MiB
Record = tuple[bytes | None, bytes | None]  # key, value


def _mutations() -> list[Callable[[dict[str, Any], random.Random], bytes | None]]:
    def drop(d: dict[str, Any], r: random.Random) -> bytes:
        d.pop(r.choice(["transaction_id", "customer_id", "terminal_id", "amount", "timestamp"]))
        return orjson.dumps(d)

    def rename(d: dict[str, Any], r: random.Random) -> bytes:
        name = r.choice(list(d))
        d[name.upper() if r.random() < 0.5 else name + "_"] = d.pop(name)
        return orjson.dumps(d)

    def repeat(d: dict[str, Any], r: random.Random) -> bytes:
        name = r.choice(["amount", "customer_id", "timestamp"])
        again = {"amount": r.choice(["-1", "12", '"x"']), "customer_id": '"C-dup"', "timestamp": '"bad"'}[
            name
        ]
        return orjson.dumps(d)[:-1] + f', "{name}": {again}}}'.encode()

    def wrong_type(d: dict[str, Any], r: random.Random) -> bytes:
        name = r.choice(["amount", "transaction_id", "timestamp", "currency", "channel"])
        d[name] = r.choice([True, None, [1], {"a": 1}, 12, "12", 1.5])
        return orjson.dumps(d)

    def bad_amount(d: dict[str, Any], r: random.Random) -> bytes:
        text = r.choice(["NaN", "Infinity", "-Infinity", "1e400", "1e12", "-0.01", '"10"', "1e-400", "0x10"])
        body = orjson.dumps({k: v for k, v in d.items() if k != "amount"})
        return body[:-1] + f', "amount": {text}}}'.encode()

    def bad_time(d: dict[str, Any], r: random.Random) -> bytes:
        d["timestamp"] = r.choice([
            "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z", "yesterday", "", "2026-01-01T00:00:60Z",
            "2٠٢٦-01-01T00:00:00Z", "２０２６-01-01T00:00:00Z", "2026-01-01T00:00:00.١Z", "1969-12-31T23:59:59Z",
            "2026-01-01T00:00:00+01:00", "2026-01-01 00:00:00", "10000-01-01T00:00:00Z", "2026-01-01T00:00:00Z\n",
        ])  # fmt: skip
        return orjson.dumps(d)

    def nest(d: dict[str, Any], r: random.Random) -> bytes:
        depth = r.choice([10, 200, 2000])  # past orjson's limit of 1024 the record is no JSON to us
        return orjson.dumps(d)[:-1] + b', "deep": ' + b"[" * depth + b"]" * depth + b"}"

    def bad_utf8(d: dict[str, Any], r: random.Random) -> bytes:
        raw = bytearray(orjson.dumps(d))
        raw.insert(r.randrange(2, len(raw) - 2), r.choice([0xFF, 0xC3, 0xED]))
        return bytes(raw)

    def truncate(d: dict[str, Any], r: random.Random) -> bytes:
        raw = orjson.dumps(d)
        return raw[: r.randrange(0, len(raw))]

    def noise(d: dict[str, Any], r: random.Random) -> bytes:
        return r.randbytes(r.randrange(1, 300))

    def bom(d: dict[str, Any], r: random.Random) -> bytes:
        return b"\xef\xbb\xbf" + orjson.dumps(d)

    def unknown(d: dict[str, Any], r: random.Random) -> bytes:
        d["x_" + str(r.randrange(1000))] = r.choice([None, [1, {"a": "b"}], "é" * 50, 3.5])
        return orjson.dumps(d)  # still valid: unknown fields are allowed

    def other(d: dict[str, Any], r: random.Random) -> bytes | None:
        return r.choice([None, b"", b"null", b"[]", b'"tx"', b"42", b"{}", b" ", orjson.dumps([d])])

    def long_id(d: dict[str, Any], r: random.Random) -> bytes:
        d[r.choice(["customer_id", "terminal_id", "channel"])] = "x" * r.choice([129, 5000])
        return orjson.dumps(d)

    return [drop, rename, repeat, wrong_type, bad_amount, bad_time, nest, bad_utf8, truncate, noise, bom,
            unknown, other, long_id]  # fmt: skip


def corpus(n: int, seed: int = 13, big: int = 4, mutated: float = 0.3) -> list[Record]:
    """n records: valid transactions (ids f<i>, keyed by customer), `mutated` of them broken, `big` huge."""
    data = simulate(
        SimulationParams(customers=400, terminals=300, days=5, seed=seed, start=datetime.date(2026, 6, 1))
    )
    values = transaction_values(data, np.arange(len(data.transaction_id), dtype=np.int64))
    r = random.Random(seed)  # noqa: S311 - a reproducible corpus, not a secret
    mutations = _mutations()
    out: list[Record] = []
    for i in range(n):
        doc = orjson.loads(values[i % len(values)])
        doc["transaction_id"] = f"f{i}"
        key = doc["customer_id"].encode() if r.random() > 0.01 else r.choice([None, b"", r.randbytes(40)])
        out.append((key, r.choice(mutations)(doc, r) if r.random() < mutated else orjson.dumps(doc)))
    for j, position in enumerate(sorted(r.sample(range(n), min(big, n)))):
        huge = {"transaction_id": f"f{position}", "padding": "p" * BIG_BYTES} if j % 2 else None
        out[position] = (out[position][0], orjson.dumps(huge) if huge else r.randbytes(BIG_BYTES))
    return out


@dataclass
class FuzzResult:
    records: int
    valid: int
    expected_decisions: collections.Counter[str] = field(default_factory=collections.Counter)
    decisions: collections.Counter[str] = field(default_factory=collections.Counter)
    dead_letters: collections.Counter[tuple[int, int]] = field(default_factory=collections.Counter)
    wrong_reasons: list[tuple[int, str, str]] = field(default_factory=list)
    missing_decisions: set[str] = field(default_factory=set)
    missing_dead_letters: set[tuple[int, int]] = field(default_factory=set)
    big_dead_letters: int = 0
    alive: bool = False
    exit_code: int | None = None
    seconds: float = 0.0

    @property
    def exactly_once(self) -> bool:
        return (
            not self.missing_decisions and not self.missing_dead_letters and not self.wrong_reasons
            and self.decisions == self.expected_decisions and all(c == 1 for c in self.dead_letters.values())
        )  # fmt: skip


def run_fuzz(records: list[Record], model: Path, workdir: Path, timeout_s: float = 300.0) -> FuzzResult:
    """The corpus through one `scorer run` on a fresh embedded broker; every process stopped by PID."""
    started = time.monotonic()
    with EmbeddedBroker(log_path=workdir / "tansu.log") as broker:
        settings = Settings(
            brokers=broker.bootstrap, kafka={"session.timeout.ms": "6000"}, fetch_wait_max_ms=5
        )
        create_topics(settings, 2)
        scorer = _scorer(settings, model, workdir / "scorer.log")
        try:
            where = _produce(settings, records)
            result = _check(settings, records, where, timeout_s)
            result.alive = scorer.poll() is None
            scorer.send_signal(signal.SIGTERM)
            result.exit_code = scorer.wait(30)
        finally:
            if scorer.poll() is None:
                scorer.kill()
                scorer.wait(10)
    result.seconds = time.monotonic() - started
    return result


def _scorer(settings: Settings, model: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCORER_")}
    env |= {"SCORER_BROKERS": settings.brokers, "SCORER_MODEL": str(model), "SCORER_METRICS_PORT": str(free_port()),
            "SCORER_KAFKA_SESSION_TIMEOUT_MS": "6000", "SCORER_FETCH_WAIT_MAX_MS": "5"}  # fmt: skip
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "scorer", "run"], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def _produce(settings: Settings, records: list[Record]) -> list[tuple[int, int]]:
    """Send the corpus; (partition, offset) of each record, from its delivery report."""
    where: list[tuple[int, int]] = [(-1, -1)] * len(records)
    producer = Producer(
        {"bootstrap.servers": settings.brokers, "linger.ms": 5, "message.max.bytes": 4_000_000}
    )

    def delivered(i: int) -> Callable[[Any, Any], None]:
        def cb(err: Any, msg: Any) -> None:
            if err is None:
                where[i] = (msg.partition(), msg.offset())

        return cb

    for i, (key, value) in enumerate(records):
        producer.produce(
            settings.input_topic, value=value, key=key, partition=i % 2, on_delivery=delivered(i)
        )
        producer.poll(0)
    if producer.flush(60) or (-1, -1) in where:
        raise RuntimeError("the corpus could not be sent whole")
    return where


def _check(
    settings: Settings, records: list[Record], where: list[tuple[int, int]], timeout_s: float
) -> FuzzResult:
    decoded = decode_transactions([v for _, v in records], settings.max_value_bytes)
    valid = collections.Counter(decoded.batch.transaction_id)  # a mutation may leave another valid id
    expected = {where[i]: r.reason for i, r in decoded.rejected}
    result = FuzzResult(len(records), len(decoded.kept), expected_decisions=valid)
    reader = Consumer(
        {"bootstrap.servers": settings.brokers, "group.id": "fuzz-check", "enable.auto.commit": False}
    )
    topics = (settings.decisions_topic, settings.dlq_topic)
    meta = reader.list_topics(timeout=10).topics
    reader.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in meta[t].partitions])
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and (
            result.decisions.total() < valid.total() or len(result.dead_letters) < len(expected)
        ):
            for msg in reader.consume(2000, 0.5):
                if msg.error() is None:
                    _tally(result, msg, settings.decisions_topic, expected)
    finally:
        reader.close()
    result.missing_decisions = set((valid - result.decisions).elements())
    result.missing_dead_letters = set(expected) - set(result.dead_letters)
    return result


def _tally(result: FuzzResult, msg: Any, decisions_topic: str, expected: dict[tuple[int, int], str]) -> None:
    if msg.topic() == decisions_topic:
        result.decisions[orjson.loads(msg.value())["transaction_id"]] += 1
        return
    headers = {k: v for k, v in msg.headers() or []}
    source = (int(headers["source.partition"]), int(headers["source.offset"]))
    result.dead_letters[source] += 1
    reason = headers["reason"].decode()
    if expected.get(source) != reason:
        result.wrong_reasons.append((*source, reason))
    if b"value.size" in {k.encode() for k in headers} and int(headers["value.size"]) >= BIG_BYTES:
        result.big_dead_letters += 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__)
    p.add_argument("--records", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--big", type=int, default=6, help="records over 1 MiB")
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="scorer-fuzz-") as tmp:
        result = run_fuzz(
            corpus(args.records, args.seed, args.big), Path(args.model), Path(tmp), timeout_s=1200
        )
    invalid = result.records - result.valid
    print(
        f"{result.records:,} records ({result.valid:,} valid, {invalid:,} broken, {args.big} over 1 MiB) in {result.seconds:.0f} s"
    )
    print(f"decisions: {result.decisions.total():,} (expected {result.expected_decisions.total():,}); "
          f"dead letters: {sum(result.dead_letters.values()):,} for {len(result.dead_letters):,} records "
          f"({result.big_dead_letters} cut from over 1 MiB)")  # fmt: skip
    print(f"missing: {len(result.missing_decisions)} decisions, {len(result.missing_dead_letters)} dead letters; "
          f"wrong reasons: {len(result.wrong_reasons)}; alive at the end: {result.alive}; exit code {result.exit_code}")  # fmt: skip
    ok = result.exactly_once and result.alive and result.exit_code == 0
    print("every record exactly once, the process never exited" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
