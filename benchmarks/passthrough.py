"""The Kafka I/O limit: consume a batch, produce one small record per event, commit; nothing else.

It reads the same topic with the same client and batch size as the scorer, so the difference between
the two is what parsing, features, the model and decision encoding cost. Each output value is
"partition offset produce_ms" of its input: enough to check that every input came out exactly once and
to measure latency, with no parsing of the input.

With --echo-replies it is the floor of the serve workload: it takes what is there (as `scorer run` does
when a request waits) and sends each `scorer serve` request's value back to its reply topic, keyed by its
correlation id: the request-reply round trip with no scoring at all.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time

from confluent_kafka import Consumer, Message, Producer, TopicPartition

from scorer.kafka.clients import take_available
from scorer.kafka.requests import CORRELATION_ID, REPLY_TO


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.passthrough")
    p.add_argument("--brokers", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--batch-max", type=int, default=2000)
    p.add_argument("--batch-wait-s", type=float, default=0.02)
    p.add_argument("--fetch-wait-max-ms", type=int, default=10)
    p.add_argument("--session-timeout-ms", type=int, default=6000)
    p.add_argument(
        "--echo-replies", action="store_true", help="answer scorer serve's requests with their value"
    )
    return p.parse_args(argv)


def record(m: Message) -> dict[str, bytes | None]:
    """The output record of one input: same key, value 'partition offset produce_ms'."""
    return {"key": m.key(), "value": b"%d %d %d" % (m.partition() or 0, m.offset() or 0, m.timestamp()[1])}


def group_consumer(args: argparse.Namespace) -> Consumer:
    """The input consumer of a benchmark loop (passthrough and naive read alike)."""
    return Consumer(
        {
            "bootstrap.servers": args.brokers,
            "group.id": args.group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": args.fetch_wait_max_ms,
            "session.timeout.ms": args.session_timeout_ms,
        }
    )


def run(args: argparse.Namespace, stop: threading.Event) -> None:
    consumer = group_consumer(args)
    producer = Producer({"bootstrap.servers": args.brokers, "linger.ms": 2, "compression.type": "lz4"})

    def on_assign(c: Consumer, partitions: list[TopicPartition]) -> None:
        print("ready", flush=True)

    consumer.subscribe([args.input], on_assign=on_assign)
    last_commit = time.monotonic()
    while not stop.is_set():
        if args.echo_replies:
            msgs = [m for m in take_available(consumer, args.batch_max, 0.05) if _ok(m)]
        else:
            msgs = [m for m in consumer.consume(args.batch_max, args.batch_wait_s) if _ok(m)]
        if msgs:
            _produce(producer, args.output, [record(m) for m in msgs])
            if args.echo_replies:
                _echo(producer, msgs)
        producer.poll(0)
        if time.monotonic() - last_commit > 1.0:
            consumer.commit(asynchronous=True)  # no wait for delivery: the cheapest possible loop
            last_commit = time.monotonic()
    producer.flush(10)
    consumer.commit(asynchronous=False)
    consumer.close()


def _produce(producer: Producer, topic: str, messages: list[dict[str, bytes | None]]) -> None:
    while messages:
        producer.produce_batch(topic, messages)
        messages = [m for m in messages if "_error" in m]
        for m in messages:
            m.pop("_error")
        if messages:
            producer.poll(0.05)  # queue full: wait for room


def _echo(producer: Producer, msgs: list[Message]) -> None:
    """Each request's value to its reply topic (partition 0), keyed by its correlation id."""
    for m in msgs:
        headers = dict(m.headers() or [])
        reply_to, correlation = headers.get(REPLY_TO), headers.get(CORRELATION_ID)
        if reply_to and correlation:
            topic = reply_to.decode() if isinstance(reply_to, bytes) else str(reply_to)
            producer.produce(topic, value=m.value(), key=correlation, partition=0)


def _ok(m: Message) -> bool:
    return m.error() is None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    run(args, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
