"""`scorer demo`: the whole system live on the embedded broker and PostgreSQL (or the user's own), or with
--offline the pipeline simulate -> train -> evaluate."""

from __future__ import annotations

import argparse
from pathlib import Path

from scorer.cli.args import HelpFormatter, add_simulation_args, check_rate, simulation_params
from scorer.errors import ConfigError


def add_demo_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        formatter_class=HelpFormatter,
        help="the whole system live on an embedded broker (--offline: simulate/train/evaluate)",
    )
    p.add_argument("--brokers", help="use this Kafka instead of starting the embedded broker")
    p.add_argument(
        "--database-url",
        help="scorer store writes into this PostgreSQL (postgresql://USER:PASSWORD@HOST:PORT/DATABASE) "
        "instead of an embedded one that goes with the demo",
    )
    p.add_argument("--rate", type=float, default=1000.0, help="transactions per second to stream")
    p.add_argument("--duration", type=float, default=0.0, help="seconds to run (0: until Ctrl-C)")
    p.add_argument("--model", help="model artefact directory (default: models/default/2)")
    p.add_argument(
        "--metrics-port", type=int, default=9108, help="the scorer's metrics port (taken if busy: another)"
    )
    p.add_argument(
        "--console-port", type=int, default=8090, help="the analysts' console's port (taken if busy: another)"
    )
    p.add_argument(
        "--analyst-capacity", type=int, default=20,
        help="cards the automatic analyst answers per simulated day (0: none, the queue is yours alone)",
    )  # fmt: skip
    p.add_argument("--live-days", type=int, default=7, help="the last days of the history streamed live")
    g = p.add_argument_group("continuous learning (docs/models.md)")
    g.add_argument(
        "--retrain", action="store_true",
        help="write the history before the live days into the database and run `scorer retrain` beside the scorer",
    )  # fmt: skip
    g.add_argument(
        "--shadow-days", type=float, default=2.0, help="--retrain: event-time days of shadow at least"
    )
    g.add_argument("--min-frauds", type=int, default=10, help="--retrain: labelled frauds a shadow needs")
    g.add_argument(
        "--gate-tolerance", type=float, default=0.01,
        help="--retrain: how far below the champion a candidate may score on the validation week",
    )  # fmt: skip
    g.add_argument(
        "--corrupt-labels", type=float, default=0.0,
        help="--retrain: this share of the history's fraud labels become lies (a broken label feed)",
    )  # fmt: skip
    p.add_argument("--offline", action="store_true", help="run simulate -> train -> evaluate instead")
    p.add_argument("--workdir", default="demo-data", help="--offline: where data and the demo model go")
    add_simulation_args(p)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    """The live demo (exit 1 when a child stops by itself), or the offline one. A --rate or --duration it
    cannot use is refused in one line (exit 2), as is a --database-url that does not parse."""
    params = simulation_params(args)
    if args.offline:
        from scorer.demo.offline import run_offline_demo

        return run_offline_demo(params, Path(args.workdir))
    check_rate(args)
    from scorer.demo.live import LiveDemo, run_live_demo
    from scorer.demo.retrain import RetrainDemo

    if args.analyst_capacity < 0:
        raise ConfigError("--analyst-capacity must not be negative")
    if not 0 < args.live_days < params.days:
        raise ConfigError(
            f"--live-days must be between 1 and {params.days - 1} (the simulated days less one)"
        )
    if not 0.0 <= args.corrupt_labels <= 1.0:
        raise ConfigError("--corrupt-labels must be a share between 0 and 1")
    if args.shadow_days <= 0 or args.min_frauds < 0 or args.gate_tolerance < 0:
        raise ConfigError("--shadow-days must be positive, --min-frauds and --gate-tolerance not negative")
    retrain = (
        RetrainDemo(
            args.shadow_days,
            args.min_frauds,
            gate_tolerance=args.gate_tolerance,
            corrupt_labels=args.corrupt_labels,
        )
        if args.retrain
        else None
    )
    options = LiveDemo(
        params, args.model, args.brokers, args.rate, args.duration, args.metrics_port, args.database_url,
        args.console_port, args.analyst_capacity, args.live_days, retrain,
    )  # fmt: skip
    return run_live_demo(options)
