"""Settings: the one typed, frozen config object; built from TOML file < SCORER_* env vars < CLI flags.

Any librdkafka property passes through (`[kafka]` table, `SCORER_KAFKA_<PROP>` with dots as underscores,
or `--kafka-opt key=value`), so SASL/SSL need no code. `SCORER_X_FILE=/path` reads X from a file
(Kubernetes/Docker secrets). Invalid settings raise ConfigError (the CLI exits 2).
"""

from __future__ import annotations

import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from scorer.errors import ConfigError
from scorer.masking import is_secret, mask_url

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "default" / "2"
ENV_PREFIX = "SCORER_"
GUARANTEES = ("at_least_once", "exactly_once")
SERVE_ON_DEADLINE = ("fallback", "504")
SERVE_AUTH = ("keys", "none")
ACTIONS = ("approve", "review", "decline")
TERMINAL_EVENT_WRITERS = ("scorer", "aggregator")  # who writes transactions to terminal-events
DEAD_LETTER_HEADROOM_BYTES = 65_536  # a dead letter's key and headers at most (kafka/deadletters.py)
DATABASE_SCHEMES = ("postgresql", "postgres")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the scorer and aggregator can be told; read once at startup, never changed."""

    brokers: str = "localhost:9092"
    group: str = "fraud-scorer"
    input_topic: str = "transactions"
    decisions_topic: str = "fraud-decisions"
    flags_topic: str = "fraud-flags"
    dlq_topic: str = "transactions-dlq"
    labels_topic: str = "fraud-labels"
    terminal_topic: str = "terminal-features"  # compacted table published by `scorer aggregate`
    terminal_events_topic: str = "terminal-events"  # transactions + labels re-keyed by terminal
    # who re-keys transactions into terminal-events: "scorer" (each scorer, from the batch it decoded anyway)
    # or "aggregator" (its re-key stage reads and decodes the transactions topic again). One writer only.
    terminal_events_from: str = "scorer"
    state_topic: str = "scorer-state"  # compacted changelog of per-customer window state
    control_topic: str = "scorer-control"  # compacted: model deployment plans
    rules_topic: str = "scorer-rules"  # compacted: the rules beside the model (key = rule id)
    monitoring_topic: str = "scorer-monitoring"  # hourly binned feature/score counts for `scorer report`
    registry: str = "models"  # model registry root: deployments name models as name/version in it
    models_topic: str = "scorer-models"  # compacted: versions a scorer without the registry fetches
    model_cache: str = ""  # where fetched versions are unpacked (empty: <tmp>/scorer-models-<uid>)
    challenger_timeout_s: float = 1.0  # a challenger slower than this (after the champion) falls back
    aggregator_group: str = "fraud-scorer-aggregator"
    monitor_group: str = "fraud-scorer-monitor"
    monitoring_interval_s: float = 60.0  # how often a scorer publishes its drift counts (0: never)
    max_future_skew_s: float = 300.0  # events this far ahead of the clock count as future_timestamp (0: off)
    max_event_delay_s: float = 86_400.0  # events this far behind the clock count as late_timestamp (0: off)
    quality_window_days: int = 7  # live quality over this many days whose labels are complete
    quality_drop_margin: float = 0.1  # live quality this far below the model card raises the drop alert
    quality_max_decisions: int = 2_000_000  # decisions the monitor keeps for the label join (oldest go)
    model: str = str(DEFAULT_MODEL)
    batch_max: int = 2000  # records per consume() call
    batch_wait_s: float = 0.02  # how long consume() may wait to fill a batch
    commit_interval_s: float = 1.0  # state snapshot + offset commit cadence (exactly_once: a transaction)
    processing_guarantee: str = "at_least_once"  # or "exactly_once": Kafka transactions (see README)
    transactional_id_prefix: str = ""  # exactly_once: <prefix>-<input topic>-<partition>; default: the group
    fetch_wait_max_ms: int = 10  # broker-side fetch wait: latency vs CPU (see README)
    table_fetch_wait_max_ms: int = 100  # the same for consumers off the decision path (tables, aggregator)
    onnx_threads: int = 1
    max_value_bytes: int = 65_536  # larger records are dead-lettered as oversized_value (see producer_config)
    dead_letter_prefix_bytes: int = 4096  # what an oversized record's dead letter keeps of its value
    terminal_wait_s: float = 0.0  # how long to wait for the aggregator's close of the previous day
    day_close_grace_s: float = 0.0  # aggregator: event-time slack before closing a day
    reply_window: int = 10_000  # serve requests remembered per partition: a retry gets the first decision
    decision_features: bool = True  # each decision carries its feature vector as scored (`features`)
    store_group: str = "fraud-scorer-store"  # scorer store: its consumer group
    store_batch_max: int = 5000  # scorer store: records per database transaction at most
    store_batch_wait_s: float = 0.2  # scorer store: how long a batch may wait to fill
    store_overlap: bool = True  # scorer store: write a batch on a thread of its own while reading the next
    store_retention_days: int = 0  # scorer store: event days kept behind the newest (0: all), by partition
    http_host: str = "0.0.0.0"  # noqa: S104 - scorer serve: the scoring API listens here
    http_port: int = 8080  # scorer serve
    reply_topic: str = ""  # scorer serve: its reply topic (default: scorer-replies-<hostname>)
    serve_deadline_ms: int = 200  # scorer serve: a request's default deadline (header X-Scorer-Deadline-Ms)
    serve_on_deadline: str = "fallback"  # or "504": what a request gets when its deadline passes
    serve_fallback_action: str = "approve"  # the fallback decision's action (approve | review | decline)
    serve_batch_max: int = 100  # scorer serve: transactions per /v1/score:batch request
    serve_cache_size: int = 100_000  # scorer serve: decisions kept for retried transaction_ids
    # scorer serve: "keys" (each scoring request needs an API key from serve_api_keys_path; no key file:
    # it refuses to start) or "none" (anyone who reaches the port is served: the demo, a trusted network)
    serve_auth: str = "keys"
    serve_api_keys_path: str = ""  # scorer serve: the key file (NAME sha256:HEX [RATE]), read again on change
    serve_key_rate_per_s: float = 1000.0  # scorer serve: transactions per second per key (0: no limit)
    serve_tls_cert_path: str = ""  # scorer serve: TLS on the API port with this PEM certificate (chain)
    serve_tls_key_path: str = ""  # ... and its PEM private key (unencrypted: a mounted secret)
    serve_tls_client_ca_path: str = ""  # mutual TLS: a client needs a certificate this CA signed
    # scorer store: postgresql://USER:PASSWORD@HOST:PORT/DATABASE (the password is masked in the startup log)
    database_url: str = ""
    database_timeout_s: float = 10.0  # a connection attempt or a batch write that takes longer has failed
    console_port: int = 8090  # scorer console: the analysts' pages and API (binds http_host)
    console_sla_hours: float = 4.0  # scorer console: an alert waiting longer for a verdict is over SLA
    console_daily_capacity: int = 100  # scorer console: cards the team can answer in a day
    # scorer console: the labels' reported_at: "now" (the clock), or "event" (the card's newest decision's event
    # time: for a replay or a simulation, where event time is not the clock, as in the demo)
    console_label_time: str = "now"
    # scorer console: the proxies (addresses or CIDRs, comma-separated) whose X-Forwarded-For it trusts for the
    # client's address (sign-in throttling per address, the audit log); empty: the socket's peer, no header
    console_trusted_proxies: str = ""
    # scorer console: mark cookies Secure (set it behind a TLS-terminating proxy; on with --tls-cert anyway)
    console_secure_cookies: bool = False
    metrics_host: str = "0.0.0.0"  # noqa: S104 - a metrics endpoint is meant to be scraped
    metrics_port: int = 9108  # 0 disables the endpoint
    log_level: str = "INFO"
    kafka: Mapping[str, str] = field(default_factory=dict)  # passed through to librdkafka

    def consumer_config(
        self, group: str | None = None, background: bool = False
    ) -> dict[str, str | int | bool | float]:
        """librdkafka consumer settings; offsets are committed by the commit tracker, never automatically.

        `background` consumers (terminal table, aggregator) are off the decision path: they fetch less
        often, which saves broker and client CPU at no cost to decision latency.
        """
        return {
            "bootstrap.servers": self.brokers,
            "group.id": group or self.group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": self.table_fetch_wait_max_ms if background else self.fetch_wait_max_ms,
            "session.timeout.ms": 10_000,
            "partition.assignment.strategy": "range",
            **self.kafka,
        }

    def producer_config(self) -> dict[str, str | int | bool | float]:
        """Idempotent, acks=all: a decision acknowledged once is never lost or reordered."""
        return {
            "bootstrap.servers": self.brokers,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 200_000,
            "message.max.bytes": self.producer_max_bytes,
            **{k: v for k, v in self.kafka.items() if not _consumer_only(k)},
        }

    @property
    def producer_max_bytes(self) -> int:
        """The producer's message.max.bytes: room for any value the decoder accepts (max_value_bytes) in a
        dead letter, with its key and headers (bounded in kafka/deadletters.py), never below the default."""
        return max(1_000_000, self.max_value_bytes + DEAD_LETTER_HEADROOM_BYTES)

    def admin_config(self) -> dict[str, str | int | float | bool]:
        """Connection settings (security included) for admin and metadata requests."""
        return {
            "bootstrap.servers": self.brokers,
            **{k: v for k, v in self.kafka.items() if not _consumer_only(k)},
        }

    def masked(self) -> dict[str, Any]:
        """The settings as a dict with every secret replaced, for the startup log."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["kafka"] = {k: ("***" if is_secret(k) else v) for k, v in self.kafka.items()}
        out["database_url"] = mask_url(self.database_url)
        return out


def _consumer_only(key: str) -> bool:
    return key in {
        "session.timeout.ms",
        "fetch.wait.max.ms",
        "auto.offset.reset",
        "group.id",
        "max.poll.interval.ms",
    }


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(Settings)


def coerce(name: str, raw: Any) -> Any:
    """Convert a raw value (TOML value or string) to the field's type, or raise ConfigError."""
    kind = _field_types()[name]
    if name == "kafka":
        if not isinstance(raw, Mapping):
            raise ConfigError("kafka must be a table of librdkafka properties")
        return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in raw.items()}
    try:
        if kind is bool:
            value: Any = _boolean(raw)
        elif kind is int and not isinstance(raw, bool):
            value = int(raw)
        elif kind is float and not isinstance(raw, bool):
            value = float(raw)
        elif kind is str and isinstance(raw, str | int | float) and not isinstance(raw, bool):
            value = str(raw)
        else:
            raise TypeError
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: expected {getattr(kind, '__name__', kind)}, got {raw!r}") from exc
    return value


def _boolean(raw: Any) -> bool:
    """true/false (TOML), or the words an environment variable or a flag gives: true/false, 1/0, yes/no."""
    if isinstance(raw, bool):
        return raw
    word = str(raw).strip().lower()
    if word in ("true", "1", "yes", "on"):
        return True
    if word in ("false", "0", "no", "off"):
        return False
    raise ValueError(raw)


def from_toml(path: Path) -> dict[str, Any]:
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: config file not found") from exc
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not a valid TOML file ({exc})") from exc
    return doc


def from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """SCORER_<FIELD> and SCORER_KAFKA_<PROP>; a `_FILE` suffix reads the value from that file."""
    names = {f.name for f in fields(Settings)} - {"kafka"}
    out: dict[str, Any] = {}
    kafka: dict[str, str] = {}
    for key, value in sorted(environ.items()):
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name.endswith("_file"):
            name, value = name[: -len("_file")], _read_secret_file(key, value)
        if name.startswith("kafka_"):
            kafka[name[len("kafka_") :].replace("_", ".")] = value
        elif name in names:
            out[name] = value
        elif name not in {"config"}:
            raise ConfigError(
                f"{key}: unknown setting (known: {', '.join(sorted(names))}, or SCORER_KAFKA_<prop>)"
            )
    if kafka:
        out["kafka"] = kafka
    return out


def _read_secret_file(key: str, path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path} ({exc.strerror})") from exc


def parse_kafka_opts(opts: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for opt in opts:
        key, sep, value = opt.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--kafka-opt {opt!r}: expected key=value")
        out[key.strip()] = value
    return out


def load_settings(
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge code defaults < TOML file < env vars < CLI overrides (None means 'not given'); validate."""
    environ = os.environ if environ is None else environ
    config_file = config_file or environ.get(ENV_PREFIX + "CONFIG")
    layers = [from_toml(Path(config_file)) if config_file else {}, from_env(environ)]
    layers.append({k: v for k, v in (overrides or {}).items() if v is not None})
    merged: dict[str, Any] = {}
    kafka: dict[str, str] = {}
    known = {f.name for f in fields(Settings)}
    for layer in layers:
        for name, raw in layer.items():
            if name not in known:
                raise ConfigError(f"unknown setting {name!r} (known: {', '.join(sorted(known))})")
            if name == "kafka":
                kafka.update(coerce("kafka", raw))
            else:
                merged[name] = coerce(name, raw)
    settings = Settings(**merged, kafka=kafka)
    validate(settings)
    return settings


def validate(s: Settings) -> None:
    """Reject values that would only fail later, far from their cause."""
    problems = []
    for name in (
        "batch_max",
        "onnx_threads",
        "max_value_bytes",
        "quality_window_days",
        "quality_max_decisions",
        "serve_deadline_ms",
        "serve_batch_max",
        "store_batch_max",
        "console_daily_capacity",
    ):
        if getattr(s, name) < 1:
            problems.append(f"{name} must be at least 1")
    for name in (
        "batch_wait_s",
        "commit_interval_s",
        "terminal_wait_s",
        "day_close_grace_s",
        "fetch_wait_max_ms",
        "table_fetch_wait_max_ms",
        "challenger_timeout_s",
        "monitoring_interval_s",
        "max_future_skew_s",
        "max_event_delay_s",
        "quality_drop_margin",
        "reply_window",
        "serve_cache_size",
        "serve_key_rate_per_s",
        "store_batch_wait_s",
        "store_retention_days",
    ):
        if getattr(s, name) < 0:
            problems.append(f"{name} must not be negative")
    for name, allowed in (
        ("processing_guarantee", GUARANTEES),
        ("terminal_events_from", TERMINAL_EVENT_WRITERS),
        ("serve_on_deadline", SERVE_ON_DEADLINE),
        ("serve_fallback_action", ACTIONS),
        ("serve_auth", SERVE_AUTH),
        ("console_label_time", ("now", "event")),
    ):
        if getattr(s, name) not in allowed:
            problems.append(f"{name} {getattr(s, name)!r} is not one of {', '.join(allowed)}")
    if not 0 <= s.dead_letter_prefix_bytes <= s.max_value_bytes:
        problems.append("dead_letter_prefix_bytes must be between 0 and max_value_bytes")
    asked = s.kafka.get("message.max.bytes")
    if asked is not None and (not str(asked).isdigit() or int(asked) < s.producer_max_bytes):
        problems.append(
            f"kafka message.max.bytes={asked} is below {s.producer_max_bytes}, what a dead letter of the largest "
            "accepted value (max_value_bytes) needs: lower max_value_bytes instead"
        )
    if not 0 <= s.http_port <= 65535:
        problems.append(f"http_port {s.http_port} is not a TCP port")
    if not 0 <= s.console_port <= 65535:
        problems.append(f"console_port {s.console_port} is not a TCP port")
    if not s.console_sla_hours > 0:
        problems.append("console_sla_hours must be positive")
    if not 0 <= s.metrics_port <= 65535:
        problems.append(f"metrics_port {s.metrics_port} is not a TCP port")
    problems += _tls_problems(s)
    problems += _database_problems(s)
    if s.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        problems.append(f"log_level {s.log_level!r} is not DEBUG, INFO, WARNING or ERROR")
    if not s.brokers.strip():
        problems.append("brokers must not be empty")
    topics = [f.name for f in fields(s) if f.name.endswith("_topic") and f.name != "reply_topic"]
    problems += [f"{t} must not be empty" for t in topics if not getattr(s, t).strip()]
    if problems:
        raise ConfigError("invalid settings: " + "; ".join(problems))


def _database_problems(s: Settings) -> list[str]:
    """database_url is a postgresql:// URL or empty (only scorer store needs one); the timeout is positive."""
    problems = []
    if not s.database_timeout_s > 0:
        problems.append("database_timeout_s must be positive")
    if s.database_url:
        try:
            scheme = urlsplit(s.database_url).scheme
        except ValueError:
            scheme = ""
        if scheme not in DATABASE_SCHEMES:
            problems.append(
                f"database_url {mask_url(s.database_url)!r} is not a postgresql://USER:PASSWORD@HOST:PORT/DATABASE URL"
            )
    return problems


def _tls_problems(s: Settings) -> list[str]:
    """serve's TLS files come as a certificate and its key, and a client CA only with them."""
    if bool(s.serve_tls_cert_path) != bool(s.serve_tls_key_path):
        return ["serve_tls_cert_path and serve_tls_key_path go together (TLS needs both)"]
    if s.serve_tls_client_ca_path and not s.serve_tls_cert_path:
        return ["serve_tls_client_ca_path needs serve_tls_cert_path and serve_tls_key_path (mTLS is TLS)"]
    return []
