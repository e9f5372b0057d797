"""Flags shared by several commands, and how they become Settings or SimulationParams."""

from __future__ import annotations

import argparse
import datetime
from typing import TYPE_CHECKING

from scorer.config import Settings
from scorer.errors import ConfigError

if TYPE_CHECKING:
    from scorer.training.simulate import SimulationParams


def date_arg(text: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from exc


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def add_simulation_args(p: argparse.ArgumentParser) -> None:
    from scorer.training.simulate import SimulationParams

    d = SimulationParams()
    p.add_argument("--customers", type=positive_int, default=d.customers, help="number of customers (cards)")
    p.add_argument("--terminals", type=positive_int, default=d.terminals, help="number of terminals")
    p.add_argument("--days", type=positive_int, default=d.days, help="days of history to generate")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed: same seed, same bytes")
    p.add_argument("--start", type=date_arg, default=d.start, help="first day, YYYY-MM-DD (UTC)")
    g = p.add_argument_group("drift (from --drift-from-day on; the days before are unchanged)")
    g.add_argument("--drift-from-day", type=int, help="first drifted day (0-based); no drift without it")
    g.add_argument("--amount-factor", type=float, default=1.0, help="multiply every amount by this")
    g.add_argument("--new-terminals", type=int, default=0, help="a new terminal population of this size")
    g.add_argument("--new-currency", help="a currency the model never saw, on 30%% of transactions")
    g.add_argument("--card-testing", type=int, default=0, help="cards per day hit by a new fraud pattern")


def simulation_params(args: argparse.Namespace) -> SimulationParams:
    """SimulationParams from the flags of add_simulation_args."""
    from scorer.training.simulate import Drift, SimulationParams

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
