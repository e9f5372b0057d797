"""Settings: file < env < flags, librdkafka pass-through, secrets from files and masked, clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scorer.config import Settings, load_settings
from scorer.errors import ConfigError
from scorer.masking import mask_url


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text(
        'brokers = "file:9092"\ngroup = "from-file"\nbatch_max = 10\n[kafka]\n"security.protocol" = "SSL"\n'
    )
    env = {
        "SCORER_GROUP": "from-env",
        "SCORER_BATCH_MAX": "20",
        "SCORER_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    }
    s = load_settings(str(toml), environ=env, overrides={"batch_max": 30, "brokers": None})
    assert (s.brokers, s.group, s.batch_max) == ("file:9092", "from-env", 30)
    assert s.kafka == {"security.protocol": "SSL", "sasl.mechanism": "SCRAM-SHA-512"}
    assert s.consumer_config()["security.protocol"] == "SSL"
    assert s.producer_config()["acks"] == "all" and s.producer_config()["enable.idempotence"] is True


def test_secret_from_file_is_used_and_masked(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("hunter2\n")
    s = load_settings(environ={"SCORER_KAFKA_SASL_PASSWORD_FILE": str(secret)})
    assert s.kafka["sasl.password"] == "hunter2"
    assert s.masked()["kafka"]["sasl.password"] == "***"
    assert "hunter2" not in repr(s.masked())


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"SCORER_BATCH_MAX": "many"}, "batch_max"),
        ({"SCORER_BATCH_MAX": "0"}, "batch_max must be at least 1"),
        ({"SCORER_METRICS_PORT": "70000"}, "not a TCP port"),
        ({"SCORER_NOPE": "1"}, "unknown setting"),
        ({"SCORER_LOG_LEVEL": "LOUD"}, "log_level"),
        (
            {"SCORER_TERMINAL_EVENTS_FROM": "both"},
            "terminal_events_from 'both' is not one of scorer, aggregator",
        ),
        ({"SCORER_KAFKA_SASL_PASSWORD_FILE": "/no/such/file"}, "cannot read"),
        ({"SCORER_DATABASE_TIMEOUT_S": "0"}, "database_timeout_s must be positive"),
        ({"SCORER_DATABASE_TIMEOUT_S": "soon"}, "database_timeout_s: expected float"),
        (
            {"SCORER_DATABASE_URL": "mysql://u:hunter2@h/db"},
            r"database_url 'mysql://u:\*\*\*@h/db' is not a postgresql://USER:PASSWORD@HOST:PORT/DATABASE URL",
        ),
        (
            {"SCORER_DATABASE_URL": "host=h password=hunter2"},
            r"database_url 'host=h password=\*\*\*' is not a",
        ),
    ],
)
def test_invalid_settings_are_one_clear_error(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ=environ)


def test_database_url_from_a_file_and_masked_in_the_startup_log(tmp_path: Path) -> None:
    secret = tmp_path / "url"
    secret.write_text("postgresql://store:hunter2@db.internal:5432/scoring?sslmode=require\n")
    s = load_settings(environ={"SCORER_DATABASE_URL_FILE": str(secret), "SCORER_DATABASE_TIMEOUT_S": "2.5"})
    assert s.database_url == "postgresql://store:hunter2@db.internal:5432/scoring?sslmode=require"
    assert s.database_timeout_s == 2.5
    assert s.masked()["database_url"] == "postgresql://store:***@db.internal:5432/scoring?sslmode=require"
    assert "hunter2" not in repr(s.masked())
    assert (
        Settings().database_url == "" and Settings().masked()["database_url"] == ""
    )  # only the store needs one


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://u:p%40ss@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgres://u:pw@h1:5432,h2:5433/db?password=pw2&sslpassword=k", "postgres://u:***@h1:5432,h2:5433/db?password=***&sslpassword=***"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://h/db?application_name=x", "postgresql://h/db?application_name=x"),
        ("host=h password=hunter2 dbname=d", "host=h password=*** dbname=d"),
        ("host=h password = 'two words' dbname=d", "host=h password = *** dbname=d"),
        ("postgresql://u:hunter2@[::1/db", "***"),
    ],
)  # fmt: skip
def test_mask_url_hides_every_form_of_password(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_bad_toml_and_unknown_keys(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("brokers = \n")
    with pytest.raises(ConfigError, match="not a valid TOML"):
        load_settings(str(bad), environ={})
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('brokerz = "x"\n')
    with pytest.raises(ConfigError, match="unknown setting 'brokerz'"):
        load_settings(str(unknown), environ={})
    with pytest.raises(ConfigError, match="not found"):
        load_settings(str(tmp_path / "missing.toml"), environ={})


def test_cli_exits_2_on_invalid_config() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "scorer", "run", "--kafka-opt", "novalue"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "key=value" in proc.stderr
    env_proc = subprocess.run(
        [sys.executable, "-m", "scorer", "run"], capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin", "SCORER_BATCH_MAX": "-5"},
    )  # fmt: skip
    assert env_proc.returncode == 2 and "batch_max" in env_proc.stderr


def test_defaults_are_valid() -> None:
    s = load_settings(environ={})
    assert s == Settings(model=s.model)


def test_a_boolean_setting_takes_toml_booleans_and_the_usual_words(tmp_path: Path) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text("decision_features = false\n")
    assert load_settings(str(toml)).decision_features is False
    assert load_settings(environ={"SCORER_DECISION_FEATURES": "no"}).decision_features is False
    assert load_settings(environ={"SCORER_DECISION_FEATURES": "1"}).decision_features is True
    with pytest.raises(ConfigError, match="decision_features: expected bool, got 'maybe'"):
        load_settings(environ={"SCORER_DECISION_FEATURES": "maybe"})
