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
    p.add_argument(
        "--label-delay",
        choices=("uniform", "fixed"),
        default="uniform",
        help="fraud reports arrive 1 h to 7 days after the fraud (uniform) or exactly 7 days after (fixed: "
        "the Fraud Detection Handbook's feedback model; the transactions are the same)",
    )
    g = p.add_argument_group("drift (from --drift-from-day on; the days before are unchanged)")
    g.add_argument("--drift-from-day", type=int, help="first drifted day (0-based); no drift without it")
    g.add_argument("--amount-factor", type=float, default=1.0, help="multiply every amount by this")
    g.add_argument("--new-terminals", type=int, default=0, help="a new terminal population of this size")
    g.add_argument("--new-currency", help="a currency the model never saw, on 30%% of transactions")
    g.add_argument("--card-testing", type=int, default=0, help="cards per day hit by a new fraud pattern")


def check_rate(args: argparse.Namespace) -> None:
    """--rate (and --duration, where there is one) as numbers a stream can use: one line, exit 2."""
    if not 0 < args.rate < float("inf"):
        raise ConfigError(f"--rate must be positive, got {args.rate}")
    if not 0 <= getattr(args, "duration", 0.0) < float("inf"):
        raise ConfigError(f"--duration must be 0 (until Ctrl-C) or more seconds, got {args.duration}")


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
        fixed_label_delay=args.label_delay == "fixed", drift=drift,
    )  # fmt: skip


class HelpFormatter(argparse.HelpFormatter):
    """Each flag's default after its help line, when it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        shown = not (default is None or default is False or default == [] or default == argparse.SUPPRESS)
        return f"{text} (default: %(default)s)" if shown and "default" not in text else text


# flag -> (setting, help); the default shown is the code's, which SCORER_* variables and --config override
KAFKA_FLAGS: dict[str, tuple[str, str]] = {
    "--brokers": ("brokers", "bootstrap servers, HOST:PORT[,HOST:PORT]"),
    "--group": ("group", "consumer group of the scorers"),
    "--input-topic": ("input_topic", "the transactions topic"),
    "--decisions-topic": ("decisions_topic", "the decisions topic (flags and shadow topics follow its name)"),
    "--model": ("model", "model artefact directory (the champion until a deployment is published)"),
    "--metrics-port": ("metrics_port", "port of /metrics, /healthz and /readyz (0: off)"),
    "--metrics-host": ("metrics_host", "address the metrics port binds (127.0.0.1: this machine only)"),
    "--batch-max": ("batch_max", "records per consumed batch"),
    "--log-level": ("log_level", "DEBUG, INFO, WARNING or ERROR (JSON lines on stderr)"),
    "--http-port": ("http_port", "port of the scoring API (and its /metrics, /healthz, /readyz)"),
    "--http-host": ("http_host", "address the scoring API binds (0.0.0.0: every interface)"),
    "--api-keys": (
        "serve_api_keys_path",
        "the API key file, read again when it changes (scorer api-keys new)",
    ),
    "--tls-cert": ("serve_tls_cert_path", "TLS on the API port: the PEM certificate (chain)"),
    "--tls-key": ("serve_tls_key_path", "TLS on the API port: the certificate's PEM private key"),
    "--tls-client-ca": (
        "serve_tls_client_ca_path",
        "mutual TLS: accept only clients with a certificate this CA signed",
    ),
    "--reply-topic": ("reply_topic", "this instance's reply topic (empty: scorer-replies-<hostname>)"),
    "--deadline-ms": ("serve_deadline_ms", "default deadline of a scoring request"),
    "--database-url": (
        "database_url",
        "PostgreSQL, postgresql://USER:PASSWORD@HOST:PORT/DATABASE (scorer postgres prints one)",
    ),
}
# a flag that sets another setting for one command: the console's --http-port is its own port
COMMAND_FLAG_SETTINGS: dict[tuple[str, str], tuple[str, str]] = {
    ("console", "--http-port"): ("console_port", "port of the analysts' console (its pages and /api/v1)"),
}
# what each Kafka command reads: a flag it would ignore is not offered
LONG_RUNNING = (
    "--brokers",
    "--group",
    "--input-topic",
    "--decisions-topic",
    "--model",
    "--metrics-port",
    "--metrics-host",
    "--batch-max",
    "--log-level",
)
COMMAND_FLAGS: dict[str, tuple[str, ...]] = {
    "run": LONG_RUNNING,
    "aggregate": (
        "--brokers",
        "--input-topic",
        "--model",
        "--metrics-port",
        "--metrics-host",
        "--batch-max",
        "--log-level",
    ),
    "monitor": (
        "--brokers",
        "--decisions-topic",
        "--model",
        "--metrics-port",
        "--metrics-host",
        "--log-level",
    ),
    "report": ("--brokers", "--decisions-topic", "--model", "--database-url"),
    "stream": ("--brokers", "--input-topic", "--log-level"),
    "topics": ("--brokers", "--input-topic", "--decisions-topic"),
    "models": ("--brokers", "--group", "--model"),
    "rules": ("--brokers",),
    "store": (
        "--brokers",
        "--input-topic",
        "--decisions-topic",
        "--database-url",
        "--metrics-port",
        "--metrics-host",
        "--log-level",
    ),
    "sql": ("--database-url",),
    "console": (
        "--brokers",
        "--database-url",
        "--http-host",
        "--http-port",
        "--tls-cert",
        "--tls-key",
        "--metrics-host",
        "--metrics-port",
        "--log-level",
    ),
    "console-admin": ("--database-url",),
    "retrain": (
        "--brokers",
        "--group",
        "--database-url",
        "--model",
        "--metrics-host",
        "--metrics-port",
        "--log-level",
    ),
    "retrain-switch": ("--brokers", "--group", "--database-url"),
    "serve": (
        "--brokers",
        "--group",
        "--input-topic",
        "--http-host",
        "--http-port",
        "--reply-topic",
        "--deadline-ms",
        "--api-keys",
        "--tls-cert",
        "--tls-key",
        "--tls-client-ca",
        "--metrics-host",
        "--metrics-port",
        "--log-level",
    ),
}


def add_kafka_args(p: argparse.ArgumentParser, command: str) -> None:
    """The flags `command` uses, each over its SCORER_* variable and the --config file."""
    from scorer.config import Settings

    defaults = Settings()
    p.add_argument("--config", metavar="FILE", help="TOML settings file (also SCORER_CONFIG)")
    for flag in COMMAND_FLAGS[command]:
        name, text = COMMAND_FLAG_SETTINGS.get((command, flag), KAFKA_FLAGS[flag])
        default = getattr(defaults, name)
        shown = "the shipped models/default/2" if name == "model" else default if default != "" else "none"
        p.add_argument(
            flag, type=type(default), metavar=name.upper(), dest=name,
            help=f"{text} (default: {shown}; env SCORER_{name.upper()})",
        )  # fmt: skip
    if command == "serve":
        p.add_argument(
            "--no-auth",
            action="store_true",
            help='serve anyone who reaches the port, without API keys (serve_auth = "none"; env SCORER_SERVE_AUTH)',
        )
    p.add_argument(
        "--kafka-opt", action="append", default=[], metavar="KEY=VALUE",
        help="any librdkafka property, e.g. security.protocol=SASL_SSL (repeatable; env SCORER_KAFKA_<KEY>)",
    )  # fmt: skip


def database_settings(args: argparse.Namespace) -> Settings:
    """settings_from(args) for a command that needs the database; ConfigError (exit 2) without one."""
    from scorer.errors import ConfigError

    settings = settings_from(args)
    if not settings.database_url:
        raise ConfigError(
            "no database: give --database-url (or SCORER_DATABASE_URL); `scorer postgres` runs one"
        )
    return settings


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
        "http_port",
        "reply_topic",
        "serve_deadline_ms",
        "http_host",
        "metrics_host",
        "serve_api_keys_path",
        "serve_tls_cert_path",
        "serve_tls_key_path",
        "serve_tls_client_ca_path",
        "database_url",
        "console_port",
    )
    overrides: dict[str, object] = {n: getattr(args, n, None) for n in names}
    if getattr(args, "no_auth", False):
        overrides["serve_auth"] = "none"
    kafka = parse_kafka_opts(getattr(args, "kafka_opt", []) or [])
    if kafka:
        overrides["kafka"] = kafka
    return load_settings(getattr(args, "config", None), overrides=overrides)
