"""argparse -> the commands. Every failure a user can cause ends as one clear line and a non-zero exit."""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from confluent_kafka import KafkaException

from scorer import __version__
from scorer.config import DEFAULT_MODEL, Settings
from scorer.errors import ConfigError, ScorerError
from scorer.models_cli import add_models_parser

if TYPE_CHECKING:
    from scorer.simulate import SimulationParams


def _date(text: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from exc


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def add_simulation_args(p: argparse.ArgumentParser) -> None:
    from scorer.simulate import SimulationParams

    d = SimulationParams()
    p.add_argument("--customers", type=_positive, default=d.customers, help="number of customers (cards)")
    p.add_argument("--terminals", type=_positive, default=d.terminals, help="number of terminals")
    p.add_argument("--days", type=_positive, default=d.days, help="days of history to generate")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed: same seed, same bytes")
    p.add_argument("--start", type=_date, default=d.start, help="first day, YYYY-MM-DD (UTC)")
    g = p.add_argument_group("drift (from --drift-from-day on; the days before are unchanged)")
    g.add_argument("--drift-from-day", type=int, help="first drifted day (0-based); no drift without it")
    g.add_argument("--amount-factor", type=float, default=1.0, help="multiply every amount by this")
    g.add_argument("--new-terminals", type=int, default=0, help="a new terminal population of this size")
    g.add_argument("--new-currency", help="a currency the model never saw, on 30%% of transactions")
    g.add_argument("--card-testing", type=int, default=0, help="cards per day hit by a new fraud pattern")


def simulation_params(args: argparse.Namespace) -> SimulationParams:
    """SimulationParams from the flags of add_simulation_args."""
    from scorer.simulate import Drift, SimulationParams

    drift = None
    asked = args.amount_factor != 1.0 or args.new_terminals or args.new_currency or args.card_testing
    if args.drift_from_day is None and asked:
        raise ConfigError("drift options need --drift-from-day (the first drifted day)")
    if args.drift_from_day is not None:
        if (
            args.drift_from_day < 0
            or args.new_terminals < 0
            or args.card_testing < 0
            or args.amount_factor <= 0
        ):
            raise ConfigError("drift options must not be negative (and --amount-factor must be positive)")
        drift = Drift(
            from_day=args.drift_from_day,
            amount_factor=args.amount_factor,
            new_terminals=args.new_terminals,
            currency=args.new_currency,
            card_testing=args.card_testing,
        )
    return SimulationParams(
        customers=args.customers, terminals=args.terminals, days=args.days, seed=args.seed, start=args.start,
        drift=drift,
    )  # fmt: skip


def cmd_simulate(args: argparse.Namespace) -> int:
    from scorer.simulate import simulate, write_jsonl

    params = simulation_params(args)
    data = simulate(params)
    tx_path, label_path = write_jsonl(data, Path(args.out))
    print(
        f"wrote {len(data.transaction_id):,} transactions to {tx_path} and {len(data.label_index):,} labels to {label_path}"
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from scorer.console import ProgressBar
    from scorer.dataset import load_history
    from scorer.evaluate import metrics_table
    from scorer.quality import ThresholdPolicy
    from scorer.train import TrainParams, train, write_artefact

    out = Path(args.out)
    params = TrainParams(
        name=args.name or out.parent.name,
        version=args.version or out.name,
        seed=args.seed,
        train_days=args.train_days,
        holdout_days=args.holdout_days,
        policy=ThresholdPolicy(args.policy, args.policy_value),
    )
    history = load_history(Path(args.data))
    result = train(history, Path(args.data), params, say=_err, progress=ProgressBar("replaying features"))
    write_artefact(out, result)
    print(f"model {params.name}/{params.version} written to {out}")
    print("validation metrics (the week after the training fold, after the label-delay gap):")
    print(metrics_table(result.validation))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from scorer.console import ProgressBar
    from scorer.dataset import load_history
    from scorer.evaluate import evaluate, metrics_table, write_scores
    from scorer.model import OnnxModel

    model = OnnxModel(Path(args.model))
    history = load_history(Path(args.data))
    progress = None if args.json else ProgressBar("replaying features")
    result = evaluate(history, model, args.test_days, progress)
    if args.scores_out:
        write_scores(Path(args.scores_out), result)
    if args.json:
        print(orjson.dumps({**result.report, "test_days": list(result.test_days)}).decode())
    else:
        print(f"model {model.label}, test days {result.test_days[0]} .. {result.test_days[1]}")
        print(metrics_table(result.report))
    return 0


def add_kafka_args(p: argparse.ArgumentParser) -> None:
    """Flags shared by every command that talks to Kafka; each beats SCORER_* env vars and --config."""
    p.add_argument("--config", help="TOML settings file (also SCORER_CONFIG)")
    p.add_argument("--brokers", help="bootstrap servers, HOST:PORT[,HOST:PORT]")
    p.add_argument("--group", help="consumer group of the scorers")
    p.add_argument("--input-topic", help="transactions topic")
    p.add_argument("--decisions-topic", help="decisions topic")
    p.add_argument("--model", help="model artefact directory")
    p.add_argument("--metrics-port", type=int, help="Prometheus /metrics, /healthz, /readyz port (0: off)")
    p.add_argument("--batch-max", type=int, help="records per batch")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    p.add_argument(
        "--kafka-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="librdkafka property (repeatable)",
    )


def settings_from(args: argparse.Namespace) -> Settings:
    from scorer.config import load_settings, parse_kafka_opts

    names = (
        "brokers",
        "group",
        "input_topic",
        "decisions_topic",
        "model",
        "metrics_port",
        "batch_max",
        "log_level",
    )
    overrides: dict[str, object] = {n: getattr(args, n, None) for n in names}
    kafka = parse_kafka_opts(getattr(args, "kafka_opt", []) or [])
    if kafka:
        overrides["kafka"] = kafka
    return load_settings(getattr(args, "config", None), overrides=overrides)


def cmd_run(args: argparse.Namespace) -> int:
    import threading

    from scorer import logs
    from scorer.model import OnnxModel
    from scorer.pipeline import Pipeline, install_signal_handlers

    settings = settings_from(args)
    logs.configure(settings.log_level)
    model = OnnxModel(Path(settings.model), threads=settings.onnx_threads)
    stop = threading.Event()
    install_signal_handlers(stop)
    return Pipeline(settings, model).run(stop)


def cmd_aggregate(args: argparse.Namespace) -> int:
    import threading

    from scorer import logs
    from scorer.aggregate import Aggregator
    from scorer.model import read_meta, resolve_artefact
    from scorer.pipeline import install_signal_handlers

    settings = settings_from(args)
    logs.configure(settings.log_level)
    meta = read_meta(resolve_artefact(Path(settings.model)))
    stop = threading.Event()
    install_signal_handlers(stop)
    return Aggregator(settings, meta.feature_config).run(stop)


def cmd_monitor(args: argparse.Namespace) -> int:
    import threading

    from scorer import logs
    from scorer.monitor import Monitor
    from scorer.pipeline import install_signal_handlers

    settings = settings_from(args)
    logs.configure(settings.log_level)
    stop = threading.Event()
    install_signal_handlers(stop)
    return Monitor(settings).run(stop)


def cmd_report(args: argparse.Namespace) -> int:
    from scorer.report import build_report, write_report

    settings = settings_from(args)
    out = Path(args.out or f"scorer-report-{args.start}-{args.end}.html")
    write_report(out, build_report(settings, args.start, args.end))
    print(f"wrote {out}")
    return 0


def cmd_stream(args: argparse.Namespace) -> int:
    import threading

    from scorer import logs
    from scorer.pipeline import install_signal_handlers
    from scorer.simulate import simulate
    from scorer.stream import run_stream

    if not args.rate > 0:
        raise ConfigError(f"--rate must be positive, got {args.rate}")
    settings = settings_from(args)
    logs.configure(settings.log_level)
    data = simulate(simulation_params(args))
    stop = threading.Event()
    install_signal_handlers(stop)
    return run_stream(settings, data, args.rate, stop)


def cmd_topics(args: argparse.Namespace) -> int:
    from scorer.topics import create_topics, topic_specs

    settings = settings_from(args)
    create_topics(settings, args.partitions)
    for spec in topic_specs(settings, args.partitions):
        print(f"{spec.name}: {spec.partitions} partition(s){' compacted' if spec.compacted else ''}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.offline:
        from scorer.demo import run_offline_demo

        return run_offline_demo(args)
    from scorer.livedemo import run_live_demo

    return run_live_demo(args)


def _err(message: str) -> None:
    print(message, file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scorer", description="Real-time streaming fraud scorer.")
    parser.add_argument("--version", action="version", version=f"scorer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("simulate", help="generate transactions.jsonl and labels.jsonl")
    p.add_argument("--out", required=True, help="output directory")
    add_simulation_args(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("train", help="train a model on a simulate-format directory, export to ONNX")
    p.add_argument("--data", required=True, help="directory with transactions.jsonl and labels.jsonl")
    p.add_argument("--out", required=True, help="artefact directory, e.g. models/default/2")
    p.add_argument("--name", help="model name (default: the parent directory of --out)")
    p.add_argument("--version", help="model version (default: the name of --out)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--train-days", type=_positive, help="keep only the last N labelled days")
    p.add_argument(
        "--holdout-days", type=int, default=0, help="ignore the last N days (keep them for evaluate)"
    )
    p.add_argument("--policy", choices=["alert_budget", "precision_target", "fixed"], default="alert_budget")
    p.add_argument(
        "--policy-value", type=float, default=100.0, help="alerts/day, a precision, or a threshold"
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a model on the last test days of a directory")
    p.add_argument("--data", required=True, help="directory with transactions.jsonl and labels.jsonl")
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="model artefact directory")
    p.add_argument("--test-days", type=_positive, default=7)
    p.add_argument("--scores-out", help="write transaction_id,score for every scored transaction")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("run", help="score transactions from Kafka (a member of the consumer group)")
    add_kafka_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("aggregate", help="publish terminal features for every scorer (own consumer group)")
    add_kafka_args(p)
    p.set_defaults(func=cmd_aggregate)

    p = sub.add_parser("monitor", help="live model quality from delayed fraud labels (one per deployment)")
    add_kafka_args(p)
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser("report", help="an HTML report: drift, live quality per day and version, flag volume")
    add_kafka_args(p)
    p.add_argument(
        "--from", dest="start", type=_date, required=True, help="first event day, YYYY-MM-DD (UTC)"
    )
    p.add_argument("--to", dest="end", type=_date, required=True, help="last event day, inclusive")
    p.add_argument("--out", help="HTML file to write (default: scorer-report-FROM-TO.html)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("stream", help="stream simulated transactions and labels into Kafka at a fixed rate")
    add_kafka_args(p)
    p.add_argument("--rate", type=float, default=200.0, help="transactions per second")
    add_simulation_args(p)
    p.set_defaults(func=cmd_stream)

    p = sub.add_parser("topics", help="create the topics (partitions, compaction) the system needs")
    add_kafka_args(p)
    p.add_argument("--partitions", type=_positive, default=4, help="partitions of the keyed topics")
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser(
        "demo", help="the whole system live on an embedded broker (--offline: simulate/train/evaluate)"
    )
    p.add_argument("--brokers", help="use this Kafka instead of starting the embedded broker")
    p.add_argument("--rate", type=float, default=1000.0, help="transactions per second to stream")
    p.add_argument("--duration", type=float, default=0.0, help="seconds to run (0: until Ctrl-C)")
    p.add_argument("--model", help="model artefact (default: models/default/1)")
    p.add_argument("--metrics-port", type=int, default=9108, help="the scorer's metrics port")
    p.add_argument("--offline", action="store_true", help="run simulate -> train -> evaluate instead")
    p.add_argument("--workdir", default="demo-data", help="--offline: where data and the demo model go")
    add_simulation_args(p)
    p.set_defaults(func=cmd_demo)

    add_models_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ConfigError as exc:
        print(f"scorer: error: {exc}", file=sys.stderr)
        return 2
    except ScorerError as exc:
        print(f"scorer: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("scorer: interrupted", file=sys.stderr)
        return 130
    except KafkaException as exc:
        print(f"scorer: error: Kafka: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 1
