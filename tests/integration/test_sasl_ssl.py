"""SASL_SSL with SCRAM-SHA-512, configured only through the librdkafka pass-through, password from a file.

The broker is tansu behind tests/integration/sasl_proxy.py (TLS with a test CA, SCRAM verified there, see
its docstring for why). The settings are the production overlay's (deploy/k8s/overlays/production), with
the broker address and file paths of this test. Checked: topics are created, transactions are scored end
to end through TLS and SCRAM, a wrong password or an untrusted CA ends as one clear error line, and the
password appears in no log line, no error and no metrics page.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import yaml
from confluent_kafka import Consumer, Producer

from scorer.demo.broker import EmbeddedBroker, free_port
from tests.integration.conftest import Proc
from tests.integration.sasl_proxy import SaslSslProxy, ScramUser, make_certificates

OVERLAY_CONFIG = Path(__file__).resolve().parents[2] / "deploy/k8s/overlays/production/config-sasl-ssl.yaml"
USER, PASSWORD = "fraud-scorer", "pw-7f3c9e-never-logged"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SaslSslProxy, dict[str, str], Path]]:
    """(proxy, SCORER_* environment as in the overlay, directory with the CA and the password file)."""
    work = tmp_path_factory.mktemp("sasl")
    ca, cert, key = make_certificates(work)
    (work / "password").write_text(PASSWORD + "\n")
    proxy_port = free_port()
    proxy = SaslSslProxy(proxy_port, free_port(), ScramUser.create(USER, PASSWORD), cert, key).start()
    broker = EmbeddedBroker(
        proxy.upstream_port, log_path=work / "tansu.log", advertised=f"127.0.0.1:{proxy_port}"
    )
    broker.start()
    overlay = yaml.safe_load(OVERLAY_CONFIG.read_text())["data"]
    env = {k: v for k, v in overlay.items() if k.startswith("SCORER_KAFKA_")}
    env.update(
        SCORER_BROKERS=f"127.0.0.1:{proxy_port}",
        SCORER_KAFKA_SASL_PASSWORD_FILE=str(work / "password"),
        SCORER_KAFKA_SSL_CA_LOCATION=str(ca),
        SCORER_KAFKA_SESSION_TIMEOUT_MS="6000",
    )
    try:
        yield proxy, env, work
    finally:
        broker.stop()
        proxy.stop()


def librdkafka_config(env: dict[str, str]) -> dict[str, str]:
    """The same properties for the test's own producer and reader."""
    return {
        "bootstrap.servers": env["SCORER_BROKERS"],
        "security.protocol": env["SCORER_KAFKA_SECURITY_PROTOCOL"],
        "sasl.mechanism": env["SCORER_KAFKA_SASL_MECHANISM"],
        "sasl.username": env["SCORER_KAFKA_SASL_USERNAME"],
        "sasl.password": PASSWORD,
        "ssl.ca.location": env["SCORER_KAFKA_SSL_CA_LOCATION"],
    }


def cli(env: dict[str, str], *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in __import__("os").environ.items() if not k.startswith("SCORER_")}
    return subprocess.run(
        [sys.executable, "-m", "scorer", *args], env={**clean, **env}, capture_output=True, text=True,
        timeout=timeout_s, check=False,
    )  # fmt: skip


def test_scoring_end_to_end_over_sasl_ssl(
    secured: tuple[SaslSslProxy, dict[str, str], Path], tiny_model: Path, tmp_path: Path
) -> None:
    proxy, env, _ = secured
    topics = cli(env, "topics", "--partitions", "2")
    assert topics.returncode == 0, topics.stderr
    assert proxy.authenticated >= 1
    procs = [
        Proc(
            command,
            _settings_stub(),
            tiny_model,
            tmp_path / f"{command}.log",
            **_env_for_proc(env, tiny_model),
        )
        for command in ("aggregate", "run")
    ]
    try:
        producer = Producer(librdkafka_config(env))
        for i in range(50):
            doc = {"transaction_id": f"s{i}", "timestamp": "2026-03-01T10:00:00Z", "customer_id": f"C{i % 7}",
                   "terminal_id": f"T{i % 3}", "amount": 12.5 + i}  # fmt: skip
            producer.produce("transactions", key=doc["customer_id"].encode(), value=orjson.dumps(doc))
        assert producer.flush(30) == 0
        decided = read_decisions(env, 50)
        assert sorted(d["transaction_id"] for d in decided) == sorted(f"s{i}" for i in range(50))
        page = procs[1].metrics()
    finally:
        for p in procs:
            p.terminate()
    logs = "".join((tmp_path / f"{c}.log").read_text() for c in ("aggregate", "run"))
    assert '"security.protocol": "SASL_SSL"' in logs or '"security.protocol":"SASL_SSL"' in logs
    assert PASSWORD not in logs + topics.stdout + topics.stderr + page
    assert proxy.refused == []


def read_decisions(env: dict[str, str], n: int, timeout_s: float = 60.0) -> list[dict[str, object]]:
    reader = Consumer(
        {**librdkafka_config(env), "group.id": f"r{time.monotonic_ns()}", "auto.offset.reset": "earliest"}
    )
    reader.subscribe(["fraud-decisions"])
    out: list[dict[str, object]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < n and time.monotonic() < deadline:
            out += [orjson.loads(m.value() or b"") for m in reader.consume(100, 0.5) if m.error() is None]
    finally:
        reader.close()
    return out


def test_wrong_password_is_one_clear_error(
    secured: tuple[SaslSslProxy, dict[str, str], Path], tmp_path: Path
) -> None:
    proxy, env, _ = secured
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    done = cli({**env, "SCORER_KAFKA_SASL_PASSWORD_FILE": str(wrong)}, "topics", "--partitions", "2")
    assert done.returncode == 1
    assert done.stderr.startswith("scorer: error: cannot reach Kafka at") and "Traceback" not in done.stderr
    assert "SASL authentication error: wrong password" in done.stderr, done.stderr  # the broker's reason
    assert len(done.stderr.strip().splitlines()) == 1
    assert "not-the-password" not in done.stderr + done.stdout
    assert "wrong password" in proxy.refused


def test_untrusted_certificate_is_refused(
    secured: tuple[SaslSslProxy, dict[str, str], Path], tmp_path: Path
) -> None:
    _, env, _ = secured
    other_ca, _, _ = make_certificates(tmp_path)  # a CA that did not sign the broker's certificate
    done = cli({**env, "SCORER_KAFKA_SSL_CA_LOCATION": str(other_ca)}, "topics", "--partitions", "2")
    assert done.returncode == 1
    assert done.stderr.startswith("scorer: error: cannot reach Kafka at") and "Traceback" not in done.stderr
    assert "certificate verify failed" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def _settings_stub() -> object:
    """Proc wants Settings for its environment; the SASL environment below replaces all of it."""
    from scorer.config import Settings

    return Settings(brokers="unused:1")


def _env_for_proc(env: dict[str, str], model: Path) -> dict[str, str]:
    return {
        **env,
        "SCORER_MODEL": str(model),
        "SCORER_FETCH_WAIT_MAX_MS": "5",
        "SCORER_COMMIT_INTERVAL_S": "0.3",
    }
