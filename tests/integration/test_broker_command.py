"""`scorer broker`: the embedded broker in the foreground, as the README offers it to someone with no Kafka."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from scorer.config import Settings
from tests.integration.conftest import consume, produce, stop_gracefully


def test_scorer_broker_serves_the_commands_until_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "scorer", "broker", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        first, second = proc.stdout.readline(), proc.stdout.readline()  # printed once the broker answers
        found = re.match(r"broker on (127\.0\.0\.1:\d+): point the commands at it with --brokers \1$", first)
        assert found, first + second
        tansu = int(re.findall(r"tansu pid (\d+)", second)[0])
        settings = Settings(brokers=found.group(1))
        topics = subprocess.run(  # as the README: `scorer topics` first
            [sys.executable, "-m", "scorer", "topics", "--brokers", settings.brokers],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert topics.returncode == 0 and f"{settings.input_topic}: 4 partition(s)" in topics.stdout, topics
        produce(settings, settings.input_topic, [(b"C1", b'{"transaction_id": "t1"}')])
        records = consume(settings, settings.input_topic, until=1, timeout_s=30)
        assert [r["value"] for r in records] == [b'{"transaction_id": "t1"}']
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        stop_gracefully(proc, 30)  # the test failed: SIGTERM first, so that the server is stopped too
    assert proc.returncode == 0 and out == "broker stopped\n" and err == "", (out, err)
    with pytest.raises(ProcessLookupError):  # tansu stopped with it, not left behind
        os.kill(tansu, 0)
