"""`scorer demo`: the whole system live on the embedded tansu broker (or `--brokers`), zero configuration.

It starts the embedded PostgreSQL in the background (database.py; or uses `--database-url`), starts the broker,
creates the topics, warms the state on the history's first days (warm.py: as if the system had run through
them), runs `scorer store` (the topics into PostgreSQL), `scorer aggregate` and `scorer run` as child
processes, streams the last LIVE_DAYS days of simulated transactions (in event-time order, with each fraud
label released when the stream reaches its report time) at `--rate` events/s, and reads the decisions back to
show events/s, p50/p99 end-to-end latency, lag, flag rate and the precision of the flags (the simulator knows
the truth). At the end it counts the decisions the store wrote. With the default simulation, the live days are
the week the default model was tested on.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
from confluent_kafka import Consumer

from scorer.config import DEFAULT_MODEL, Settings
from scorer.demo.analyst import Answered, AutoAnalyst, DemoConsole, demo_accounts, truth_of
from scorer.demo.broker import EmbeddedBroker, free_port
from scorer.demo.children import Running, last_lines, port_free, stop_children, wait_ready
from scorer.demo.database import (
    STORE_WAIT_S,
    Stored,
    count_decisions,
    open_database,
    scorer_command,
    sql_command,
    wait_stored,
)
from scorer.demo.retrain import RetrainDemo, first_candidate, start_retrain, summary_rows
from scorer.demo.stream import Streamer
from scorer.demo.tally import VERDICT_RULES, Tally
from scorer.demo.warm import live_start, warm_state
from scorer.events.timestamps import MS_PER_DAY
from scorer.kafka import clients
from scorer.kafka.topics import create_topics
from scorer.model.onnx import read_meta, resolve_artefact
from scorer.runtime.console import ProgressBar, table
from scorer.runtime.process import StopRequest
from scorer.training.simulate import SimulatedData, SimulationParams, simulate

PARTITIONS = 4
LIVE_DAYS = 7  # streamed live; the days before are replayed in process to warm the state
DRAIN_S = 10.0  # after the stop, how long the demo waits for the decisions of what it sent
STOP_GRACE_S = 1.0  # a child that stopped: how long to wait for the stop signal that may have stopped it


@dataclass(frozen=True, slots=True)
class LiveDemo:
    """What `scorer demo` was asked for."""

    params: SimulationParams
    model: str | None = None  # default: models/default/2
    brokers: str | None = None  # default: start the embedded broker
    rate: float = 1000.0  # transactions per second
    duration: float = 0.0  # seconds; 0: until Ctrl-C
    metrics_port: int = 9108
    database_url: str | None = None  # default: start the embedded PostgreSQL
    console_port: int = 8090  # the analysts' console (another free port when this one is taken)
    analyst_capacity: int = 20  # cards the automatic analyst answers per simulated day
    live_days: int = LIVE_DAYS  # the last days streamed live; the ones before warm the state
    retrain: RetrainDemo | None = None  # run `scorer retrain` on the history and the live days


def run_live_demo(args: LiveDemo) -> int:
    model = str(args.model or DEFAULT_MODEL)
    logs = Path(tempfile.mkdtemp(prefix="scorer-demo-"))
    with ExitStack() as stack:
        # first: the embedded PostgreSQL starts in the background while the history is simulated
        try:
            database = open_database(args.database_url, logs / "postgres.log")
        except BaseException:
            logs.rmdir()  # refused before any work: an empty directory is not worth keeping
            raise
        stack.callback(database.close)  # last: after the children, the store among them, have stopped
        params = args.params
        print(
            f"simulating {params.customers:,} customers / {params.terminals:,} terminals / {params.days} days ...",
            flush=True,
        )
        data = simulate(params)
        start = live_start(data, args.live_days)
        index = {tx: i for i, tx in enumerate(data.transaction_id)}
        settings = _broker(args, logs, stack)
        running = Running(logs, database)
        stack.callback(stop_children, running.children.values())  # before the broker and the database stop
        create_topics(settings, PARTITIONS)
        warm_days = int(data.event_ts_ms[start] - data.event_ts_ms[0]) // MS_PER_DAY + 1
        print(
            f"warming the state on the first {warm_days} days ({start:,} transactions), as if the system had run through them"
        )
        config = read_meta(resolve_artefact(Path(model))).feature_config
        warm_state(settings, data, start, config, PARTITIONS, ProgressBar("warming state", sys.stdout))
        metrics_port = (
            args.metrics_port if args.metrics_port and port_free(args.metrics_port) else free_port()
        )
        _start_store(settings, model, running)  # by now the embedded PostgreSQL has had seconds to start
        running.start("aggregate", settings, model, free_port())
        running.start("run", settings, model, metrics_port)
        print(f"scorer metrics: http://127.0.0.1:{metrics_port}/metrics  (/healthz, /readyz); logs in {logs}")
        print(
            "starting the aggregator and the scorer (they join their groups and restore the warm state) ..."
        )
        late = wait_ready(running.ports, running.children)
        if not late:  # the store has migrated the database: the console's accounts can be made
            console = _start_console(args, settings, model, running)
            if args.retrain is not None:
                start_retrain(running, settings, model, data, start, args.retrain, params.seed)
            late = wait_ready(running.ports, running.children)
        if late:
            names = " and ".join(f"scorer {command}" for command in late)
            print(f"scorer demo: {names} did not get ready: {last_lines(logs)}", file=sys.stderr)
            return 1
        if args.retrain is not None and not first_candidate(running):
            return 1
        print(f"query the database from another terminal:\n  {sql_command(database.url())}")
        print(
            f"analysts' console: {console.url()}  sign in as {console.login} / {console.password}; an automatic "
            f"analyst answers the top {args.analyst_capacity} cases of each simulated day"
        )
        print(
            f"streaming the last {args.live_days} days live at {args.rate:,.0f} transactions/s; Ctrl-C to stop"
        )
        return _loop(args, settings, data, start, index, running, console)


def _broker(args: LiveDemo, logs: Path, stack: ExitStack) -> Settings:
    """The user's Kafka (`--brokers`), or the embedded broker started on the stack.

    The demo's reader, like its children, joins its group with the shortest session timeout Kafka allows:
    tansu (also as `scorer broker` runs it) holds a new group's first member for the session timeout, which
    at librdkafka's default (45 s) outlasted a short demo before a single decision was read."""
    fast = {"session.timeout.ms": "6000"}
    if args.brokers:
        return Settings(brokers=args.brokers, kafka=fast)
    broker = stack.enter_context(EmbeddedBroker(log_path=logs / "tansu.log"))
    print(f"embedded tansu broker on {broker.bootstrap} (pid {broker.pid})")
    return Settings(brokers=broker.bootstrap, kafka=fast)


def _start_store(settings: Settings, model: str, running: Running) -> None:
    """`scorer store` into the demo's database, once that accepts connections (the embedded one may still be
    starting: ScorerError, one line, if it failed to)."""
    url = running.database.url()
    print(f"{running.database.describe()}: scorer store writes the topics into it")
    running.start("store", settings, model, free_port(), SCORER_DATABASE_URL=url)


def _start_console(args: LiveDemo, settings: Settings, model: str, running: Running) -> DemoConsole:
    """`scorer console` on 127.0.0.1 (the asked port when free), with the demo's accounts."""
    port = args.console_port if args.console_port and port_free(args.console_port) else free_port()
    console = demo_accounts(running.database.url(), port)
    running.start(
        "console", settings, model, free_port(), SCORER_DATABASE_URL=running.database.url(),
        SCORER_CONSOLE_PORT=str(port), SCORER_HTTP_HOST="127.0.0.1", SCORER_CONSOLE_LABEL_TIME="event",
    )  # fmt: skip
    return console


def _loop(
    args: LiveDemo,
    settings: Settings,
    data: SimulatedData,
    start: int,
    index: dict[str, int],
    running: Running,
    console: DemoConsole,
) -> int:
    """Stream and show until `--duration` or a stop signal, wait for the decisions in flight, summarise.

    Exit 0 when the user (or the duration) stopped the demo, 1 when a child stopped by itself; the
    summary, with the decisions the store wrote (waited for), is printed either way.
    """
    streamer = Streamer(settings, data, args.rate, start)
    reader = clients.consumer(
        {
            "bootstrap.servers": settings.brokers,
            "group.id": "scorer-demo-monitor",
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 5,
            **settings.kafka,
        }
    )
    reader.subscribe([settings.decisions_topic])
    tally = Tally(seen=np.zeros(len(data.transaction_id), dtype=bool))
    stop = StopRequest()
    restore = stop.install()  # a Ctrl-C sets a flag the loops check: never an exception inside a Kafka call
    children = list(running.children.values())
    analyst = AutoAnalyst(
        console.port,
        console.token,
        args.analyst_capacity,
        truth_of(data.transaction_id, data.is_fraud),
        lambda: int(data.event_ts_ms[max(streamer.start, streamer.next_tx - 1)]),
    ).start()
    try:
        failed = _stream(args, streamer, reader, tally, index, children, stop, running.logs)
        delivered = streamer.close()
        if not failed and delivered:
            _drain(streamer, reader, tally, index, children, stop)
        stored = _stored(streamer, tally, running, stop)
    finally:
        analyst.close()
        restore()
        reader.close()
    _summary(tally, streamer, running, stored, analyst.answered)
    if args.retrain is not None and streamer.next_tx > start:
        span = (int(data.event_ts_ms[start]), int(data.event_ts_ms[streamer.next_tx - 1]))
        drift = args.params.drift
        drift_ms = (
            int(data.event_ts_ms[0]) // MS_PER_DAY * MS_PER_DAY + drift.from_day * MS_PER_DAY
            if drift
            else None
        )
        print(
            table(
                ["scorer retrain", "value"], summary_rows(running.database.url(), data, index, span, drift_ms)
            )
        )
    return 1 if failed else 0


def _stream(
    args: LiveDemo,
    streamer: Streamer,
    reader: Consumer,
    tally: Tally,
    index: dict[str, int],
    children: list[subprocess.Popen[bytes]],
    stop: StopRequest,
    logs: Path,
) -> bool:
    """Stream and show the status line until the duration is over or a stop; True if a child failed."""
    deadline = time.monotonic() + args.duration if args.duration else float("inf")
    last_print = 0.0
    while time.monotonic() < deadline and not stop.requested.is_set():
        if any(c.poll() is not None for c in children):
            if stop.expected(STOP_GRACE_S):
                break
            print(f"\nscorer demo: a child process stopped unexpectedly: {last_lines(logs)}", file=sys.stderr)
            return True
        streamer.pump()
        _read(reader, tally, index, streamer)
        if time.monotonic() - last_print > 1.0:
            last_print = time.monotonic()
            _status(tally, streamer)
    return False


def _drain(
    streamer: Streamer,
    reader: Consumer,
    tally: Tally,
    index: dict[str, int],
    children: list[subprocess.Popen[bytes]],
    stop: StopRequest,
) -> None:
    """Read decisions until every sent transaction has one, DRAIN_S pass, a second Ctrl-C or a child
    stops: what is left is reported as in flight."""
    sent = streamer.next_tx - streamer.start
    if tally.decided >= sent:
        return
    print(f"\nstopped streaming; waiting up to {DRAIN_S:.0f} s for the decisions in flight (Ctrl-C: skip)")
    deadline, skip = time.monotonic() + DRAIN_S, _skip(stop)
    while tally.decided < sent and time.monotonic() < deadline and not skip.is_set():
        if any(c.poll() is not None for c in children):
            return
        _read(reader, tally, index, streamer)
        _status(tally, streamer)


def _skip(stop: StopRequest) -> threading.Event:
    """What the next Ctrl-C sets, which skips a wait at the end: `hurry` once a stop was asked for, else
    `requested` (the demo ended by its --duration)."""
    return stop.hurry if stop.requested.is_set() else stop.requested


def _stored(streamer: Streamer, tally: Tally, running: Running, stop: StopRequest) -> Stored:
    """The decisions of the transactions sent that the database holds, once the store has written every one
    the demo saw decided (up to STORE_WAIT_S, a Ctrl-C skips the wait, or the store stops)."""
    if streamer.next_tx <= streamer.start:
        return Stored(tally.decided, 0)
    times = streamer.data.event_ts_ms
    first_ms, last_ms = int(times[streamer.start]), int(times[streamer.next_tx - 1])
    url, store = running.database.url(), running.children["store"]

    def count() -> int:
        stored = count_decisions(url, first_ms, last_ms)
        if stored < tally.decided:
            _status_line(
                f"the store has written {stored:,} of {tally.decided:,} decisions; waiting up to {STORE_WAIT_S:g} s (Ctrl-C: skip)"
            )
        return stored

    return wait_stored(count, tally.decided, _skip(stop), lambda: store.poll() is None)


def _read(reader: Consumer, tally: Tally, index: dict[str, int], streamer: Streamer) -> None:
    """Count decisions; latency = the decision's Kafka timestamp minus when the demo sent the transaction."""
    for msg in reader.consume(5000, 0.05):
        if msg.error() or msg.value() is None:
            continue
        doc = orjson.loads(msg.value() or b"{}")
        i = index.get(doc.get("transaction_id", ""))
        if i is None or tally.seen[i]:
            continue
        tally.seen[i] = True
        tally.decided += 1
        fraud = bool(streamer.data.is_fraud[i])
        tally.frauds_decided += fraud
        if str(doc.get("action_source", "")).startswith(VERDICT_RULES):  # a card an analyst blocked
            tally.blocked += 1
            tally.blocked_fraud += fraud
        elif doc["flagged"]:
            tally.flagged += 1
            tally.flagged_fraud += fraud
        decided_ms = msg.timestamp()[1]
        if decided_ms > 0 and streamer.produced_ms[i] > 0:
            tally.latencies_ms.append(max(0.0, decided_ms - streamer.produced_ms[i]))
    tally.count(time.monotonic())


def _status(tally: Tally, streamer: Streamer) -> None:
    sent = streamer.next_tx - streamer.start
    if not tally.decided:
        line = f"sent {sent:>9,}  waiting for the first decisions (the scorer joins its group and restores its state)"
    else:
        flag_rate = tally.flagged / tally.decided
        line = (
            f"sent {sent:>9,}  decided {tally.decided:>9,}  {_num(tally.rate(), '{:,.0f}')} ev/s  "
            f"p50 {_num(tally.percentile(50), '{:,.0f}')} ms  p99 {_num(tally.percentile(99), '{:,.0f}')} ms  "
            f"lag {sent - tally.decided:>7,}  flag rate {flag_rate:.2%}  flag precision {_num(tally.precision, '{:.0%}')}"
        )
    _status_line(line)


def _status_line(line: str) -> None:
    """The one line that is rewritten in place."""
    print(f"\r{line:<140}", end="", flush=True)


def _num(value: float | None, fmt: str) -> str:
    """A figure, or "-" while there is none yet (never nan)."""
    return "-" if value is None else fmt.format(value)


def _summary(tally: Tally, streamer: Streamer, running: Running, stored: Stored, answered: Answered) -> None:
    sent = streamer.next_tx - streamer.start
    in_flight = (
        [("in flight", f"{sent - tally.decided:,} (sent, no decision yet)")] if tally.decided < sent else []
    )
    rows = [
        ("transactions sent", f"{sent:,}"),
        ("decisions received", f"{tally.decided:,}"),
        *in_flight,
        ("decisions in PostgreSQL", stored.cell()),
        ("flagged", f"{tally.flagged:,}"),
        ("precision of flags", _num(tally.precision, "{:.1%}")),
        ("recall of flags", _num(tally.recall, "{:.1%}")),
        ("latency p50", _num(tally.percentile(50), "{:,.1f} ms")),
        ("latency p99", _num(tally.percentile(99), "{:,.1f} ms")),
        ("analyst verdicts", f"{answered.fraud:,} fraud (cards blocked), {answered.genuine:,} genuine"),
        (
            "declined by those blocks",
            f"{tally.blocked:,} ({tally.blocked_fraud:,} of them fraud; not in the flags above)",
        ),
        *([("verdicts refused", f"{answered.refused:,}: {answered.reasons[0]}")] if answered.refused else []),
    ]
    print("\n" + table(["summary", "value"], rows))
    port = running.ports["run"]
    print(f"metrics were at http://127.0.0.1:{port}/metrics (the scorer has stopped with the demo)")
    database = running.database
    if database.kept:
        print(
            f"the decisions stay in {database.describe()}; query them with:\n  {sql_command(database.url())}"
        )
    else:
        print(
            "PostgreSQL stops with the demo and its data goes with it; to keep the decisions, run "
            f"`{scorer_command()} postgres --dir DIR` in another terminal and give the demo the --database-url "
            "it prints"
        )
