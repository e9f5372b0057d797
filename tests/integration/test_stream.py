"""`scorer stream`: the simulated source the compose stack runs, against the real broker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from scorer.config import Settings
from scorer.demo.broker import EmbeddedBroker, free_port
from scorer.kafka.topics import create_topics
from scorer.training.simulate import SimulationParams, simulate
from tests.integration.conftest import consume, env_for
from tests.integration.kafka_proxy import KafkaProxy


def test_stream_sends_every_transaction_and_label(settings: Settings, tiny_model: Path) -> None:
    flags = ["--customers", "50", "--terminals", "100", "--days", "12", "--seed", "4"]
    data = simulate(SimulationParams(customers=50, terminals=100, days=12, seed=4))
    done = subprocess.run(
        [sys.executable, "-m", "scorer", "stream", "--rate", "20000", *flags],
        env=env_for(settings, tiny_model), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    sent = consume(settings, settings.input_topic, len(data.transaction_id))
    assert sorted(orjson.loads(r["value"])["transaction_id"] for r in sent) == sorted(data.transaction_id)  # type: ignore[arg-type]
    assert all(r["key"] == orjson.loads(r["value"])["customer_id"].encode() for r in sent)  # type: ignore[arg-type]
    labels = consume(settings, settings.labels_topic, len(data.label_index))
    assert len(labels) == len(data.label_index)
    assert '"event": "stream_finished"' in done.stderr or '"event":"stream_finished"' in done.stderr


def test_stream_refuses_a_bad_rate(settings: Settings, tiny_model: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "scorer", "stream", "--rate", "0"],
        env=env_for(settings, tiny_model), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == "scorer: error: --rate must be positive, got 0.0"


def test_a_stream_whose_records_the_broker_stops_acknowledging_fails_in_one_line(
    tiny_model: Path, tmp_path: Path
) -> None:
    proxy_port = free_port()
    with EmbeddedBroker(log_path=tmp_path / "tansu.log", advertised=f"127.0.0.1:{proxy_port}") as broker:
        proxy = KafkaProxy(proxy_port, broker.port).start()
        try:
            settings = Settings(brokers=f"127.0.0.1:{proxy_port}")
            create_topics(settings, 2)
            proxy.hold_produce = True  # every write waits forever: message.timeout.ms passes
            done = subprocess.run(
                [sys.executable, "-m", "scorer", "stream", "--rate", "500", "--customers", "50", "--terminals", "100", "--days", "3"],
                env=env_for(settings, tiny_model, SCORER_KAFKA_MESSAGE_TIMEOUT_MS="1500"),
                capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
        finally:
            proxy.stop()
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("scorer: error: stream stopped: delivery to") and "timed out" in last, last
    assert "Traceback" not in done.stderr and "%3|" not in done.stderr
