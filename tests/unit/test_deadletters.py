"""One dead-letter format for every writer, and the reasons metrics pre-create follow the decoder's."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from scorer.config import DEAD_LETTER_HEADROOM_BYTES, Settings, load_settings
from scorer.errors import ConfigError
from scorer.events.decode import REASONS
from scorer.events.files import FILE_REASONS
from scorer.kafka.deadletters import (
    DETAIL_CHARS,
    MAX_KEY_BYTES,
    Limits,
    dead_letter,
    dead_letter_headers,
    send_dead_letter,
)
from scorer.kafka.sink import Sink
from scorer.runtime.metrics import Metrics
from scorer.scoring.core import DEAD_LETTER_REASONS, PROCESSING_ERROR
from tests.unit.fakes import FakeBroker, FakeProducer, FakeRecord

EVENTS = Path(__file__).resolve().parents[2] / "scorer" / "events"


class WithHeaders(FakeRecord):
    def headers(self) -> list[tuple[str, bytes]]:  # type: ignore[override]
        return [("traceparent", b"00-abc"), ("source", b"pos-7")]

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_767_225_600_123)


def test_every_reason_the_decoder_can_give_is_listed_once_in_check_order() -> None:
    raised = re.findall(
        r'Rejected\(\s*"([a-z0-9_]+)"', "".join(p.read_text() for p in sorted(EVENTS.glob("*.py")))
    )
    assert set(raised) == set(REASONS) | set(FILE_REASONS)  # a file's own reasons never reach a topic
    assert not set(REASONS) & set(FILE_REASONS)
    assert len(REASONS) == len(set(REASONS))
    assert (*REASONS, PROCESSING_ERROR) == DEAD_LETTER_REASONS
    assert all(re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", r) for r in DEAD_LETTER_REASONS)


def test_headers_say_why_where_from_when_and_keep_the_originals() -> None:
    msg = WithHeaders("transactions", 3, b"C1", b"{bad", 41)
    headers = dead_letter_headers(msg, "invalid_json", "x" * 2000, now_ms=1_767_225_601_000)  # type: ignore[arg-type]
    assert [name for name, _ in headers] == [
        "reason", "detail", "source.topic", "source.partition", "source.offset", "source.timestamp",
        "dead_lettered_at", "original.traceparent", "original.source",
    ]  # fmt: skip
    values = dict(headers)
    assert values["reason"] == b"invalid_json" and len(values["detail"]) == DETAIL_CHARS
    assert (values["source.topic"], values["source.partition"], values["source.offset"]) == (
        b"transactions",
        b"3",
        b"41",
    )
    assert values["source.timestamp"] == b"1767225600123" and values["dead_lettered_at"] == b"1767225601000"
    assert values["original.traceparent"] == b"00-abc"


def test_a_dead_letter_carries_the_original_key_and_value() -> None:
    broker = FakeBroker()
    sink = Sink({}, producer=FakeProducer(broker))
    msg = FakeRecord("fraud-labels", 0, b"K", b"\xff\xfe", 9)
    assert send_dead_letter(sink, "dlq", msg, "invalid_utf8", "bad byte", 5, Limits())  # type: ignore[arg-type]
    assert sink.wait(sink.seal(), 1.0)
    assert broker.records("dlq") == [(b"K", b"\xff\xfe")]


class Big(FakeRecord):
    """A record with many large headers."""

    def headers(self) -> list[tuple[str, bytes]]:  # type: ignore[override]
        return [(f"h{i}", b"v" * 1000) for i in range(100)]


def sizes(record: Any) -> int:
    return len(record.key or b"") + len(record.value or b"") + sum(len(k) + len(v) for k, v in record.headers)


def test_an_oversized_record_keeps_a_prefix_its_size_and_hash() -> None:
    value = b'{"transaction_id": "' + b"x" * 1_500_000 + b'"}'
    record = dead_letter(
        FakeRecord("tx", 0, b"C", value, 7), "oversized_value", "too big", 1, Limits(65_536, 4096)
    )  # type: ignore[arg-type]
    headers = dict(record.headers)
    assert record.value == value[:4096] and record.fallback is None
    assert headers["value.size"] == str(len(value)).encode()
    assert headers["value.sha256"] == hashlib.sha256(value).hexdigest().encode()


def test_a_record_within_the_limit_goes_whole_with_a_cut_fallback() -> None:
    value = b"y" * 10_000
    record = dead_letter(
        FakeRecord("tx", 0, b"C", value, 7), "processing_error", "boom", 1, Limits(65_536, 4096)
    )  # type: ignore[arg-type]
    assert record.value == value and "value.size" not in dict(record.headers)
    assert record.fallback is not None and record.fallback[0] == value[:4096]
    assert dict(record.fallback[1])["value.size"] == b"10000"


def test_huge_keys_and_headers_are_cut_and_every_dead_letter_fits_the_producer() -> None:
    settings = Settings(max_value_bytes=2_000_000)  # where the headroom, not the 1 MB default, is the limit
    limits = Limits(settings.max_value_bytes, settings.dead_letter_prefix_bytes)
    msg = Big("tx", 0, b"k" * 50_000, b"z" * settings.max_value_bytes, 3)
    record = dead_letter(msg, "wrong_type", "d" * 10_000, 1, limits)  # type: ignore[arg-type]
    headers = dict(record.headers)
    assert record.key == b"k" * MAX_KEY_BYTES and headers["key.size"] == b"50000"
    assert int(headers["original.dropped"]) > 0
    assert sizes(record) + 1024 < settings.producer_max_bytes  # + the record's own overhead
    assert (
        Settings(max_value_bytes=5_000_000).producer_config()["message.max.bytes"]
        >= 5_000_000 + 32_768 + 2048
    )


class Producing:
    """A Sink over a fake producer with a policy, and its metrics."""

    def __init__(self, policy: Any) -> None:
        self.broker = FakeBroker()
        self.registry = CollectorRegistry()
        self.sink = Sink({}, Metrics(self.registry), producer=FakeProducer(self.broker, policy))

    def count(self, name: str) -> float | None:
        return self.registry.get_sample_value(name)


def test_a_dead_letter_the_producer_refuses_for_its_size_goes_cut() -> None:
    p = Producing(lambda topic, value: "too_large_here" if len(value or b"") > 100 else "ok")
    msg = FakeRecord("tx", 0, b"C", b"w" * 5000, 1)
    assert send_dead_letter(p.sink, "dlq", msg, "processing_error", "x", 1, Limits(65_536, 50))  # type: ignore[arg-type]
    assert p.sink.wait(p.sink.seal(), 1.0)
    assert p.broker.records("dlq") == [(b"C", b"w" * 50)]


def test_a_dead_letter_the_broker_refuses_for_its_size_goes_again_cut_in_the_same_epoch() -> None:
    p = Producing(lambda topic, value: "too_large" if len(value or b"") > 100 else "ok")
    msg = FakeRecord("tx", 0, b"C", b"w" * 5000, 1)
    assert send_dead_letter(p.sink, "dlq", msg, "processing_error", "x", 1, Limits(65_536, 50))  # type: ignore[arg-type]
    assert p.sink.wait(p.sink.seal(), 1.0) and p.sink.failure is None
    assert p.broker.records("dlq") == [(b"C", b"w" * 50)]
    assert p.count("scorer_dead_letters_truncated_total") == 1


def test_a_dead_letter_that_cannot_be_produced_is_a_refused_delivery_never_raised(caplog: Any) -> None:
    p = Producing(lambda topic, value: "invalid_here")
    msg = FakeRecord("tx", 0, b"C", b"v", 1)
    assert not send_dead_letter(p.sink, "dlq", msg, "processing_error", "x", 1, Limits())  # type: ignore[arg-type]
    assert p.count("scorer_dead_letter_errors_total") == 1
    assert "dead_letter_not_written" in caplog.text
    assert p.sink.failure is not None and "dlq" in p.sink.failure
    assert not p.sink.wait(p.sink.seal(), 1.0)  # its epoch is never acknowledged: nothing commits past it


def test_a_cut_dead_letter_the_producer_refuses_again_is_a_refused_delivery() -> None:
    p = Producing(lambda topic, value: "too_large" if len(value or b"") > 100 else "invalid_here")
    msg = FakeRecord("tx", 0, b"C", b"w" * 5000, 1)
    assert send_dead_letter(p.sink, "dlq", msg, "processing_error", "x", 1, Limits(65_536, 50))  # type: ignore[arg-type]
    assert not p.sink.wait(p.sink.seal(), 1.0)
    assert p.sink.failure is not None and p.count("scorer_dead_letter_errors_total") == 1


def test_the_producer_limit_comes_from_max_value_bytes_and_a_lower_one_is_refused() -> None:
    assert Settings(max_value_bytes=2_000_000).producer_max_bytes == 2_000_000 + DEAD_LETTER_HEADROOM_BYTES
    with pytest.raises(ConfigError, match="message.max.bytes"):
        load_settings(environ={"SCORER_KAFKA_MESSAGE_MAX_BYTES": "100000"})
    with pytest.raises(ConfigError, match="dead_letter_prefix_bytes"):
        load_settings(environ={"SCORER_DEAD_LETTER_PREFIX_BYTES": "100000"})
