"""The scorer's work written as an idiomatic Quix Streams app: the peer it is compared with.

One `StreamingDataFrame` over the transactions topic, keyed by customer (as the scorer's input is):

1. `apply(score, stateful=True)`: per message (Quix calls the callback once per message, there is no
   batch API) the naive profile's field check and feature arithmetic (`benchmarks.naive.stateless_row`
   and `customer_row`, which a unit test checks against the engine), with the customer's state - its
   last event time and a list of [day, count, amount] buckets - read from and written back to the
   Quix State store (RocksDB, with its changelog topic at Quix's defaults) with one `get` and one `set`
   per message; the terminal features looked up in the scorer's terminal table (below); one
   onnxruntime call with one row per message, like an app written one event at a time would make,
   and the same reasons (`Explainer`) and decision fields as the naive profile;
2. `to_topic(route)`: the decision to the output topic, or a dead letter (a record failing the naive
   check) to the dead-letter topic.

Terminal features: `scorer run` does not compute them; it looks them up in the aggregator's compacted
`terminal-features` topic, read in full by a side consumer (`TopicReader`) into a `TerminalTable` that
applies each day's close before the first event of the next day. This app does the same with the same
classes, polling the side consumer at most every 100 ms from inside the callback (the scorer polls it
once per batch). Quix Streams has no table-as-lookup primitive for a compacted Kafka topic (its lookup
join reads external configuration services) and a second StreamingDataFrame over the table would be
co-partitioned with the input, whereas every scorer must see every terminal; a side consumer filling
a lookup is the idiomatic way out. (The naive profile instead counts terminals from its own stream,
which works only because one process reads every partition; without the aggregator the scorer's table
stays empty, and so does this app's: both pay for the lookup, neither finds a row.)

Not done: a record that is not JSON fails Quix's deserializer and is skipped with a log line (Quix's
consumer-error callback), not dead-lettered; the scorer and naive dead-letter it.

tansu: Quix derives the changelog topic's config from the input topic's `retention.ms`, which tansu's
DescribeConfigs reports only when it was set at creation, so the benchmark creates its input topics
with it (`harness.INPUT_TOPIC_CONFIG`); Quix creates the changelog topic itself, with its config set at
creation, so that needs nothing.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from quixstreams import Application, State
from quixstreams.models import Topic

from benchmarks.naive import check, customer_row, decision_doc, parse_ms, per_event_session, stateless_row
from scorer.aggregate.table import TerminalTable
from scorer.config import Settings
from scorer.features.engine import FEATURE_NAMES
from scorer.kafka.tables import TopicReader
from scorer.model.onnx import read_meta, resolve_artefact
from scorer.scoring.decisions import Explainer

logger = logging.getLogger("benchmarks.quix")
TABLE_POLL_S = 0.1  # how often the terminal table's side consumer is read


class QuixScorer:
    """The model, the feature definitions and the terminal table shared by every message's callback."""

    def __init__(self, model: Path, table: TerminalTable) -> None:
        self.session, meta = per_event_session(model)
        self.version = meta.label
        self.threshold = meta.threshold
        fc = meta.feature_config
        self.codes = fc.codes()
        self.ring_days = fc.customer_ring_days
        self.explainer = Explainer.for_model(resolve_artefact(model), FEATURE_NAMES, meta.label)
        self.table = table
        self.polled = 0.0

    def score(self, tx: Any, state: State[str, Any]) -> dict[str, Any]:
        """The decision for one transaction (the customer's state updated), or a dead letter."""
        try:
            why = check(tx)
            ts_ms = parse_ms(tx["timestamp"]) if why is None else 0
        except (ValueError, TypeError, KeyError) as exc:
            why = f"invalid: {exc}"
        if why is not None:
            return {"reason": why, "value": tx}
        amount = float(tx["amount"])
        row = stateless_row(tx, ts_ms, amount, self.codes)
        saved = state.get("customer")
        days = {d: [c, a] for d, c, a in saved["days"]} if saved else {}
        customer, last_ms = customer_row(days, saved and saved["last_ms"], ts_ms, amount, self.ring_days)
        state.set("customer", {"last_ms": last_ms, "days": [[d, c, a] for d, (c, a) in days.items()]})
        row += customer
        row += self.terminal(tx["terminal_id"], ts_ms)
        x = np.asarray([row], dtype=np.float32)
        (proba,) = self.session.run(["probabilities"], {"features": x})
        score = float(proba[0][1])
        return decision_doc(tx, score, self.threshold, self.version, row, self.explainer)

    def terminal(self, terminal_id: str, ts_ms: int) -> list[float]:
        """The terminal's 9 features from the table as of the previous day's close (the scorer's lookup)."""
        now = time.monotonic()
        if now - self.polled >= TABLE_POLL_S:
            self.table.poll()
            self.polled = now
        features: list[float] = self.table.features([terminal_id], np.asarray([ts_ms], dtype=np.int64))[
            0
        ].tolist()
        return features


def build(args: argparse.Namespace, state_dir: Path) -> tuple[Application, TerminalTable]:
    """The Application and its dataframe; the terminal table it reads (caught up, to be closed by the caller)."""
    app = Application(
        broker_address=args.brokers,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        consumer_extra_config={
            "fetch.wait.max.ms": args.fetch_wait_max_ms,  # tansu holds a fetch for about half of it
            "session.timeout.ms": args.session_timeout_ms,  # tansu: a group join otherwise waits ~20 s
        },
        state_dir=state_dir,
        loglevel="WARNING",
        on_consumer_error=_skip_unreadable,
    )
    table_reader = Settings(brokers=args.brokers, kafka={"session.timeout.ms": str(args.session_timeout_ms)})
    source = TopicReader(
        table_reader.consumer_config(group=f"{args.group}-reader", background=True), args.terminal_topic
    )
    table = TerminalTable(
        read_meta(resolve_artefact(Path(args.model))).feature_config, source.start(), args.terminal_wait_s
    )
    table.catch_up(timeout_s=10.0)
    scorer = QuixScorer(Path(args.model), table)
    transactions = app.topic(args.input, value_deserializer="json")
    decisions = app.topic(args.output, value_serializer="json")
    dead_letters = app.topic(args.dlq, value_serializer="json")

    def route(value: dict[str, Any], key: Any, timestamp: int, headers: Any) -> Topic:
        return decisions if "score" in value else dead_letters

    sdf = app.dataframe(transactions)
    sdf = sdf.apply(scorer.score, stateful=True)
    # Quix gives an output the input's timestamp; the scorer's decision records carry the time they were
    # made (CreateTime), which the paced workload's latency is measured from: stamp the decision so too
    sdf = sdf.set_timestamp(_now_ms)
    sdf.to_topic(route)
    return app, table


def _now_ms(value: Any, key: Any, timestamp: int, headers: Any) -> int:
    return int(time.time() * 1000)


def _skip_unreadable(exc: Exception, message: Any, log: logging.Logger) -> bool:
    """A record Quix cannot deserialize (not JSON) is logged and skipped: True suppresses the error."""
    log.warning("skipped an unreadable record: %s", exc)
    return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quix")
    for name in ("brokers", "input", "output", "group", "dlq", "model", "terminal-topic"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--fetch-wait-max-ms", type=int, default=10)
    p.add_argument("--session-timeout-ms", type=int, default=6000)
    p.add_argument("--terminal-wait-s", type=float, default=0.0, help="the scorer's terminal_wait_s")
    p.add_argument("--state-dir", type=Path, help="Quix's RocksDB state (default: a temporary directory)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run until SIGTERM/SIGINT (Application.run stops on them and commits)."""
    args = parse_args(argv)
    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="quix-state-"))
    app, table = build(args, state_dir)
    try:
        app.run()
    finally:
        table.close()
        if args.state_dir is None:
            shutil.rmtree(state_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
