"""One dead-letter format for every writer, and the reasons metrics pre-create follow the decoder's."""

from __future__ import annotations

import re
from pathlib import Path

from scorer.events.decode import REASONS
from scorer.kafka.deadletters import DETAIL_CHARS, dead_letter_headers, send_dead_letter
from scorer.kafka.sink import Sink
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
    assert set(raised) == set(REASONS)
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
    send_dead_letter(sink, "dlq", msg, "invalid_utf8", "bad byte", 5)  # type: ignore[arg-type]
    assert sink.wait(sink.seal(), 1.0)
    assert broker.records("dlq") == [(b"K", b"\xff\xfe")]
