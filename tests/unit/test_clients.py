"""librdkafka's own log lines go to our logs: at DEBUG unless critical, each distinct line once per window."""

from __future__ import annotations

import logging

import pytest

from scorer.kafka.clients import LibrdkafkaLog


def test_repeats_are_counted_not_logged_and_only_critical_lines_reach_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = LibrdkafkaLog(repeat_s=60.0)
    with caplog.at_level(logging.DEBUG, logger="scorer.kafka.librdkafka"):
        for ms in range(50):  # the same failure, retried: only the numbers differ
            log.log(
                logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", f"Connect failed (after {ms}ms)"
            )
        log.log(logging.CRITICAL, "%s [%s] %s", "FATAL", "rdkafka#producer-2", "fenced")
    records = [r for r in caplog.records if r.name == "scorer.kafka.librdkafka"]
    assert [(r.levelno, r.line) for r in records] == [  # type: ignore[attr-defined]
        (logging.DEBUG, "FAIL [rdkafka#consumer-1] Connect failed (after 0ms)"),
        (logging.WARNING, "FATAL [rdkafka#producer-2] fenced"),
    ]


def test_after_the_window_a_line_comes_again_with_its_repeat_count(caplog: pytest.LogCaptureFixture) -> None:
    log = LibrdkafkaLog(repeat_s=0.0)
    with caplog.at_level(logging.DEBUG, logger="scorer.kafka.librdkafka"):
        log.log(logging.WARNING, "%s", "a")
        log.log(logging.WARNING, "%s", "a")
    assert [r.repeats for r in caplog.records] == [0, 0]  # type: ignore[attr-defined]
