"""Broker growth: does the broker's cost per fetch grow with what a partition holds? No scorer code at all.

A bare librdkafka producer writes fixed-size records to a 4-partition topic at a steady rate on a fresh
embedded broker, while two consumers read it: one in a consumer group, one assigned to the partitions
outside any group. Every 10 s it prints records sent and read by each and the broker's CPU over those
10 s. On tansu the broker's CPU per interval rises with the records held while the rate stays fixed, and
both readers fall behind together: the soak workload's stall is the broker's, whatever reads the topic.
Loopback only, bounded by --seconds; the broker is stopped by PID.

    python -m benchmarks.broker_growth --rate 500 --seconds 150 --bytes 300
"""

from __future__ import annotations

import argparse
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition

from benchmarks.harness import cpu_seconds
from scorer.demo.broker import EmbeddedBroker
from scorer.kafka.admin import TopicSpec, ensure_topics

INTERVAL_S = 10.0
PARTITIONS = 4


def run(rate: float, seconds: float, size: int, retention_ms: int = 0) -> list[dict[str, float]]:
    """One row per interval: sent, read by the group member and by the assigned reader, broker CPU share."""
    rows: list[dict[str, float]] = []
    with EmbeddedBroker() as broker:
        config = {"retention.ms": str(retention_ms)} if retention_ms else {}
        ensure_topics(broker.bootstrap, [TopicSpec("growth", PARTITIONS, config=config)])
        producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
        common = {"bootstrap.servers": broker.bootstrap, "fetch.wait.max.ms": 5, "enable.auto.commit": False}
        member = Consumer(
            {**common, "group.id": "growth", "session.timeout.ms": 6000, "auto.offset.reset": "earliest"}
        )
        member.subscribe(["growth"])
        assigned = Consumer({**common, "group.id": "growth-unused"})
        assigned.assign([TopicPartition("growth", p, 0) for p in range(PARTITIONS)])
        sent = read_member = read_assigned = 0
        started = time.monotonic()
        next_row, cpu_then = started + INTERVAL_S, cpu_seconds(broker.pid)
        try:
            while (elapsed := time.monotonic() - started) < seconds:
                for _ in range(max(0, int(elapsed * rate) - sent)):
                    producer.produce("growth", value=b"x" * size, key=str(sent).encode())
                    sent += 1
                producer.poll(0)
                read_member += sum(1 for m in member.consume(500, 0.01) if m.error() is None)
                read_assigned += sum(1 for m in assigned.consume(500, 0.01) if m.error() is None)
                if time.monotonic() >= next_row:
                    cpu_now = cpu_seconds(broker.pid)
                    row = {"t": round(elapsed), "sent": sent, "group_member": read_member,
                           "assigned": read_assigned, "broker_cpu": round((cpu_now - cpu_then) / INTERVAL_S, 2)}  # fmt: skip
                    rows.append(row)
                    print(row, flush=True)
                    next_row, cpu_then = next_row + INTERVAL_S, cpu_now
        finally:
            producer.purge()  # what the broker has not taken by now is not part of the measurement
            producer.flush(1)
            member.close()
            assigned.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.broker_growth", description=__doc__.split("\n")[0])
    p.add_argument("--rate", type=float, default=500.0, help="records/s")
    p.add_argument("--seconds", type=float, default=150.0)
    p.add_argument("--bytes", type=int, default=300, help="record value size (a transaction is ~300)")
    p.add_argument(
        "--retention-ms", type=int, default=0, help="the topic's retention.ms (0: the broker's default)"
    )
    args = p.parse_args(argv)
    run(args.rate, args.seconds, args.bytes, args.retention_ms)
    return 0


if __name__ == "__main__":
    sys.exit(main())
