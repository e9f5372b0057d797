"""`scorer retrain` (continuous learning: train on the store's window, shadow, promote or retire) and its
kill switch and record: `scorer retrain pause|resume|status`."""

from __future__ import annotations

import argparse
import getpass
import re
import time
from pathlib import Path

import orjson

from scorer.cli.args import HelpFormatter, add_kafka_args, database_settings, settings_from
from scorer.config import Settings
from scorer.errors import ConfigError, ScorerError

DURATION = re.compile(r"^(\d+(?:\.\d+)?)([dh])$")
UNIT_MS = {"d": 86_400_000, "h": 3_600_000}


def add_retrain_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "retrain",
        formatter_class=HelpFormatter,
        help="retrain on the store's fresh data, shadow the candidate, promote or retire it on live labels",
    )
    add_kafka_args(p, "retrain")
    when = p.add_mutually_exclusive_group()
    when.add_argument(
        "--once", action="store_true", help="one cycle, then exit (a CronJob); 1 when it failed"
    )
    when.add_argument(
        "--every", default="7d", help="train again when the stream's time has moved this far (e.g. 7d, 12h)"
    )
    p.add_argument("--poll-seconds", type=float, default=60.0, help="how often the loop looks (wall clock)")
    p.add_argument("--train-days", type=int, default=28, help="labelled days the candidate is fitted on")
    p.add_argument(
        "--validation-days", type=int, default=7, help="the most recent labelled days it is judged on"
    )
    p.add_argument(
        "--shadow-days", type=float, default=3.0, help="event-time days a candidate is shadowed at least"
    )
    p.add_argument(
        "--min-frauds", type=int, default=20, help="labelled frauds the shadow needs before a decision"
    )
    p.add_argument(
        "--margin", type=float, default=0.01, help="the live AP a challenger must gain to be promoted"
    )
    p.add_argument(
        "--gate-tolerance", type=float, default=0.01,
        help="the validation week: how far below the champion's AP and AUC a candidate may be",
    )  # fmt: skip
    ramp = p.add_mutually_exclusive_group()
    ramp.add_argument("--blend-days", type=float, default=1.0, help="a promotion blends over this many days")
    ramp.add_argument(
        "--direct", action="store_true", help="a promotion makes the challenger champion at once"
    )
    p.add_argument("--name", default="retrained", help="the candidates' model name (versions: the run ids)")
    p.add_argument("--workdir", help="where candidates are written (default: a temporary directory)")
    p.set_defaults(func=cmd_retrain)
    switch = p.add_subparsers(dest="retrain_command", metavar="{pause,resume,status}")
    for verb, text in (
        (
            "pause",
            "stop retraining (the kill switch on the control topic): nothing trains, shadows or promotes",
        ),
        ("resume", "let retraining go on"),
    ):
        q = switch.add_parser(verb, formatter_class=HelpFormatter, help=text)
        add_kafka_args(q, "retrain-switch")
        q.add_argument("--reason", default="", help="why (kept with the switch)")
        q.set_defaults(func=cmd_switch, paused=verb == "pause")
    status = switch.add_parser("status", formatter_class=HelpFormatter, help="the switch and the latest runs")
    add_kafka_args(status, "retrain-switch")
    status.add_argument("--runs", type=int, default=10, help="how many runs to show")
    status.set_defaults(func=cmd_status)


def parse_every(text: str) -> int:
    """`7d`, `12h`, `0.5d` -> milliseconds; ConfigError otherwise."""
    match = DURATION.match(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(f"--every {text!r}: expected a positive number of days or hours, e.g. 7d or 12h")
    return round(float(match.group(1)) * UNIT_MS[match.group(2)])


def _settings(args: argparse.Namespace) -> Settings:
    return database_settings(args)


def _check(args: argparse.Namespace) -> None:
    problems = [
        f"--{name.replace('_', '-')} must be positive"
        for name in ("poll_seconds", "train_days", "validation_days", "shadow_days")
        if not getattr(args, name) > 0
    ]
    problems += [
        f"--{name.replace('_', '-')} must not be negative"
        for name in ("min_frauds", "margin", "gate_tolerance", "blend_days")
        if getattr(args, name) < 0
    ]
    if problems:
        raise ConfigError("; ".join(problems))


def cmd_retrain(args: argparse.Namespace) -> int:
    """Cycle until SIGTERM (or once). One line and exit 2 for a bad option, 1 when the database cannot be
    reached at start or the train extra is missing."""
    import threading

    from scorer.runtime import logs
    from scorer.runtime.process import install_signal_handlers

    settings = _settings(args)
    _check(args)
    every_ms = None if args.once else parse_every(args.every)
    try:
        from scorer.retrain.app import RetrainOptions, run_retrain
        from scorer.retrain.candidate import CandidateSpec
        from scorer.retrain.cycle import Schedule
    except ImportError as exc:
        raise ScorerError(
            f"scorer retrain needs the train extra ({exc.name} is missing): pip install 'scorer[train]'"
        ) from None
    logs.configure(settings.log_level)
    options = RetrainOptions(
        once=args.once,
        poll_s=args.poll_seconds,
        workdir=Path(args.workdir) if args.workdir else None,
        spec=CandidateSpec(args.name, args.train_days, args.validation_days, args.gate_tolerance),
        schedule=Schedule(
            every_ms, args.shadow_days, args.min_frauds, args.margin, 0.0 if args.direct else args.blend_days
        ),
    )
    stop = threading.Event()
    install_signal_handlers(stop)
    return run_retrain(settings, options, stop)


def cmd_switch(args: argparse.Namespace) -> int:
    """Set the kill switch; one line saying what is now in force."""
    from scorer.kafka.control import publish_retrain_switch
    from scorer.rollout.deployment import RetrainSwitch

    settings = settings_from(args)
    switch = RetrainSwitch(args.paused, getpass.getuser(), args.reason, int(time.time() * 1000))
    publish_retrain_switch(settings, switch)
    print(f"retraining {'paused' if args.paused else 'resumed'} on {settings.control_topic}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """The kill switch and the newest runs, as JSON lines."""
    from scorer.db import retrainruns
    from scorer.db.connect import connect
    from scorer.kafka.control import read_control

    settings = _settings(args)
    _, switch = read_control(settings)
    paused = switch is not None and switch.paused
    print(orjson.dumps({"paused": paused, "by": switch.by if switch else None}).decode())
    with connect(
        settings.database_url,
        application_name="scorer-retrain-status",
        connect_timeout_s=settings.database_timeout_s,
    ) as conn:
        for run in retrainruns.runs(conn, args.runs):
            print(orjson.dumps(run.to_dict()).decode())
    return 0
