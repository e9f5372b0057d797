"""argparse -> the commands. Every failure a user can cause ends as one clear line and a non-zero exit."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from confluent_kafka import KafkaError, KafkaException

from scorer.cli.apikeys import add_api_keys_parser
from scorer.cli.args import (
    HelpFormatter,
    add_kafka_args,
    add_simulation_args,
    check_rate,
    date_arg,
    positive_int,
    settings_from,
    simulation_params,
)
from scorer.cli.broker import add_broker_parser
from scorer.cli.console import add_console_parser
from scorer.cli.demo import add_demo_parser
from scorer.cli.models import add_models_parser
from scorer.cli.postgres import add_postgres_parser
from scorer.cli.retrain import add_retrain_parser
from scorer.cli.rules import add_rules_parser
from scorer.cli.score import add_score_parser
from scorer.cli.store import add_store_parser
from scorer.config import DEFAULT_MODEL
from scorer.errors import ConfigError, ScorerError
from scorer.version import __version__

if TYPE_CHECKING:
    pass


def cmd_simulate(args: argparse.Namespace) -> int:
    from scorer.training.simulate import simulate, write_jsonl

    params = simulation_params(args)
    data = simulate(params)
    tx_path, label_path = write_jsonl(data, Path(args.out))
    print(
        f"wrote {len(data.transaction_id):,} transactions to {tx_path} and {len(data.label_index):,} labels to {label_path}"
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from scorer.model.quality import ThresholdPolicy
    from scorer.runtime.console import ProgressBar
    from scorer.training.dataset import load_history
    from scorer.training.evaluate import metrics_table
    from scorer.training.train import MIN_TRAIN_DAYS, TrainParams, refuse_existing, train, write_artefact

    out = Path(args.out)
    if args.policy_value is None and args.policy != "alert_budget":
        raise ConfigError(
            f"--policy {args.policy} needs --policy-value (a precision in (0, 1] or a threshold)"
        )
    if args.train_days is not None and args.train_days < MIN_TRAIN_DAYS:
        raise ConfigError(
            f"--train-days must be at least {MIN_TRAIN_DAYS} (a week to fit on), got {args.train_days}"
        )
    params = TrainParams(
        name=args.name or out.parent.name,
        version=args.version or out.name,
        seed=args.seed,
        train_days=args.train_days,
        holdout_days=args.holdout_days,
        policy=ThresholdPolicy(args.policy, 100.0 if args.policy_value is None else args.policy_value),
    )
    refuse_existing(out)  # before minutes of work, not after
    started = time.monotonic()
    _err(f"loading {args.data} ...")
    history = load_history(Path(args.data))
    _err(
        f"loaded {len(history.transactions):,} transactions and {len(history.labels):,} labels in {time.monotonic() - started:.0f} s"
    )
    result = train(history, Path(args.data), params, say=_err, progress=ProgressBar("replaying features"))
    write_artefact(out, result)
    _err(f"done in {time.monotonic() - started:.0f} s")
    print(f"model {params.name}/{params.version} written to {out}")
    print("validation metrics (the week after the training fold, after the label-delay gap):")
    print(metrics_table(result.validation))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from scorer.model.onnx import OnnxModel
    from scorer.runtime.console import ProgressBar
    from scorer.training.dataset import load_history
    from scorer.training.evaluate import evaluate, metrics_table, write_scores

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


def cmd_run(args: argparse.Namespace) -> int:
    import threading

    from scorer.model.onnx import OnnxModel
    from scorer.runtime import logs
    from scorer.runtime.process import install_signal_handlers
    from scorer.scoring.loop import ScorerLoop

    settings = settings_from(args)
    logs.configure(settings.log_level)
    model = OnnxModel(Path(settings.model), threads=settings.onnx_threads)
    stop = threading.Event()
    install_signal_handlers(stop)
    return ScorerLoop(settings, model).run(stop)


def cmd_serve(args: argparse.Namespace) -> int:
    from scorer.runtime import logs

    try:
        from scorer.serve.server import run_serve
    except ModuleNotFoundError as exc:
        if exc.name not in ("uvicorn", "uvloop", "httptools"):
            raise
        raise ConfigError("scorer serve needs the serve extra: pip install 'scorer[serve]'") from exc

    settings = settings_from(args)
    logs.configure(settings.log_level)
    return run_serve(settings)


def cmd_aggregate(args: argparse.Namespace) -> int:
    import threading

    from scorer.aggregate.aggregator import Aggregator
    from scorer.model.onnx import read_meta, resolve_artefact
    from scorer.runtime import logs
    from scorer.runtime.process import install_signal_handlers

    settings = settings_from(args)
    logs.configure(settings.log_level)
    meta = read_meta(resolve_artefact(Path(settings.model)))
    stop = threading.Event()
    install_signal_handlers(stop)
    return Aggregator(settings, meta.feature_config).run(stop)


def cmd_monitor(args: argparse.Namespace) -> int:
    import threading

    from scorer.monitoring.monitor import Monitor
    from scorer.runtime import logs
    from scorer.runtime.process import install_signal_handlers

    settings = settings_from(args)
    logs.configure(settings.log_level)
    stop = threading.Event()
    install_signal_handlers(stop)
    return Monitor(settings).run(stop)


def _retrain_runs(database_url: str) -> list[dict[str, object]]:
    """The retrain runs for the report, newest first ([] without a database)."""
    if not database_url:
        return []
    from scorer.db import retrainruns
    from scorer.db.connect import connect

    with connect(database_url, application_name="scorer-report", connect_timeout_s=10.0) as conn:
        return [run.to_dict() for run in retrainruns.runs(conn, 50)]


def cmd_report(args: argparse.Namespace) -> int:
    from scorer.monitoring.report import build_report, write_report

    settings = settings_from(args)
    out = Path(args.out or f"scorer-report-{args.start}-{args.end}.html")
    write_report(out, build_report(settings, args.start, args.end, _retrain_runs(settings.database_url)))
    print(f"wrote {out}")
    return 0


def cmd_stream(args: argparse.Namespace) -> int:
    import threading

    from scorer.demo.stream import run_stream
    from scorer.runtime import logs
    from scorer.runtime.process import install_signal_handlers
    from scorer.training.simulate import simulate

    check_rate(args)
    settings = settings_from(args)
    logs.configure(settings.log_level)
    data = simulate(simulation_params(args))
    stop = threading.Event()
    install_signal_handlers(stop)
    return run_stream(settings, data, args.rate, stop)


def cmd_topics(args: argparse.Namespace) -> int:
    from scorer.kafka.topics import create_topics, topic_specs

    settings = settings_from(args)
    create_topics(settings, args.partitions)
    for spec in topic_specs(settings, args.partitions):
        print(f"{spec.name}: {spec.partitions} partition(s){' compacted' if spec.compacted else ''}")
    return 0


def _err(message: str) -> None:
    print(message, file=sys.stderr)


HELP = HelpFormatter


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scorer",
        description="Real-time streaming fraud scorer. `scorer COMMAND --help` for a command's flags.",
    )
    parser.add_argument("--version", action="version", version=f"scorer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("simulate", formatter_class=HELP, help="generate transactions.jsonl and labels.jsonl")
    p.add_argument("--out", required=True, help="output directory")
    add_simulation_args(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser(
        "train", formatter_class=HELP, help="train a model on a simulate-format directory, export to ONNX"
    )
    p.add_argument("--data", required=True, help="directory with transactions.jsonl and labels.jsonl")
    p.add_argument("--out", required=True, help="artefact directory, e.g. models/default/2")
    p.add_argument("--name", help="model name (default: the parent directory of --out)")
    p.add_argument("--version", help="model version (default: the name of --out)")
    p.add_argument(
        "--seed", type=int, default=7, help="random seed of the fit (same data and seed, same model)"
    )
    p.add_argument(
        "--train-days",
        type=positive_int,
        help="fit on the last N labelled days only, N >= 7 (default: all after the warm-up)",
    )
    p.add_argument(
        "--holdout-days", type=int, default=0, help="ignore the last N days (keep them for evaluate)"
    )
    p.add_argument(
        "--policy", choices=["alert_budget", "precision_target", "fixed"], default="alert_budget",
        help="how the alert threshold is chosen on the validation week",
    )  # fmt: skip
    p.add_argument(
        "--policy-value",
        type=float,
        help="alert_budget: alerts per day (default 100); precision_target: a precision in (0, 1]; fixed: the threshold",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "evaluate", formatter_class=HELP, help="evaluate a model on the last test days of a directory"
    )
    p.add_argument("--data", required=True, help="directory with transactions.jsonl and labels.jsonl")
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="model artefact directory")
    p.add_argument("--test-days", type=positive_int, default=7, help="score the last N days of the data")
    p.add_argument("--scores-out", help="write transaction_id,score for every scored transaction")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(func=cmd_evaluate)

    add_score_parser(sub)

    p = sub.add_parser(
        "run", formatter_class=HELP, help="score transactions from Kafka (a member of the consumer group)"
    )
    add_kafka_args(p, "run")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "serve", formatter_class=HELP,
        help="HTTP scoring API: each decision made by the stream's scorers (request-reply over Kafka)",
    )  # fmt: skip
    add_kafka_args(p, "serve")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "aggregate",
        formatter_class=HELP,
        help="publish terminal features for every scorer (own consumer group)",
    )
    add_kafka_args(p, "aggregate")
    p.set_defaults(func=cmd_aggregate)

    p = sub.add_parser(
        "monitor",
        formatter_class=HELP,
        help="live model quality from delayed fraud labels (one per deployment)",
    )
    add_kafka_args(p, "monitor")
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser(
        "report",
        formatter_class=HELP,
        help="an HTML report: drift, live quality per day and version, flag volume",
    )
    add_kafka_args(p, "report")
    p.add_argument(
        "--from", dest="start", type=date_arg, required=True, help="first event day, YYYY-MM-DD (UTC)"
    )
    p.add_argument("--to", dest="end", type=date_arg, required=True, help="last event day, inclusive")
    p.add_argument("--out", help="HTML file to write (default: scorer-report-FROM-TO.html)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "stream",
        formatter_class=HELP,
        help="stream simulated transactions and labels into Kafka at a fixed rate",
    )
    add_kafka_args(p, "stream")
    p.add_argument("--rate", type=float, default=200.0, help="transactions per second")
    add_simulation_args(p)
    p.set_defaults(func=cmd_stream)

    p = sub.add_parser(
        "topics", formatter_class=HELP, help="create the topics (partitions, compaction) the system needs"
    )
    add_kafka_args(p, "topics")
    p.add_argument("--partitions", type=positive_int, default=4, help="partitions of the keyed topics")
    p.set_defaults(func=cmd_topics)

    add_demo_parser(sub)
    add_models_parser(sub)
    add_rules_parser(sub)
    add_broker_parser(sub)
    add_postgres_parser(sub)
    add_store_parser(sub)
    add_console_parser(sub)
    add_retrain_parser(sub)
    add_api_keys_parser(sub)
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
        err = exc.args[0] if exc.args else exc
        if isinstance(err, KafkaError) and err.code() == KafkaError._INVALID_ARG:  # a bad --kafka-opt
            print(f"scorer: error: Kafka option: {err.str()}", file=sys.stderr)
            return 2
        print(f"scorer: error: Kafka: {err.str() if isinstance(err, KafkaError) else err}", file=sys.stderr)
        return 1
