"""The columnar decode_transactions agrees with the per-record reference decoder on every input."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scorer.errors import Rejected
from scorer.events.decode import decode_transactions, decode_transactions_per_record
from scorer.events.timestamps import parse_rfc3339_ms, rfc3339_ms, usual_stamps_ms
from scorer.training.simulate import SimulationParams, simulate, transaction_values

FIELDS = (
    "transaction_id",
    "customer_id",
    "terminal_id",
    "amount",
    "event_ts_ms",
    "currency",
    "channel",
    "merchant_category",
)
STAMP = "2026-03-04T05:06:07.089Z"


def assert_agrees(values: Sequence[bytes | None], max_value_bytes: int = 65_536) -> None:
    fast = decode_transactions(values, max_value_bytes)
    ref = decode_transactions_per_record(values, max_value_bytes)
    assert fast.kept.dtype == ref.kept.dtype == np.int64
    assert fast.kept.tolist() == ref.kept.tolist()
    assert [(i, r.reason, r.detail) for i, r in fast.rejected] == [
        (i, r.reason, r.detail) for i, r in ref.rejected
    ]
    for name in FIELDS:
        got, want = getattr(fast.batch, name), getattr(ref.batch, name)
        if isinstance(want, np.ndarray):
            assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), name  # bits: -0.0 too
        else:
            assert type(got) is list and got == want, name


def usual(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc)


Mutation = Callable[[dict[str, Any]], dict[str, Any] | bytes | None]


def drop(name: str) -> Mutation:
    return lambda d: {k: v for k, v in d.items() if k != name}


def put(name: str, value: Any) -> Mutation:
    return lambda d: {**d, name: value}


def stamp(text: str) -> Mutation:
    return put("timestamp", text)


MUTATIONS: list[Mutation] = [
    *(drop(n) for n in ("transaction_id", "customer_id", "terminal_id", "amount", "timestamp")),
    *(drop(n) for n in ("currency", "channel", "merchant_category")),  # optional: still valid
    *(
        put(n, None)
        for n in ("transaction_id", "amount", "timestamp", "currency", "channel", "merchant_category")
    ),
    *(put(n, 5) for n in ("customer_id", "timestamp", "currency", "channel", "merchant_category")),
    *(put(n, "") for n in ("terminal_id", "currency", "channel", "merchant_category", "timestamp")),
    put("transaction_id", "x" * 128),
    put("transaction_id", "x" * 129),
    put("customer_id", "é" * 129),
    put("channel", "x" * 64),
    put("channel", "x" * 65),
    put("merchant_category", ["5411"]),
    put("terminal_id", {"id": "T1"}),
    put("amount", True),
    put("amount", False),
    put("amount", "10.5"),
    put("amount", "NaN"),
    put("amount", -0.0),
    put("amount", -0.01),
    put("amount", 0),
    put("amount", 10**9),
    put("amount", 10**9 + 1),
    put("amount", 1e9 + 0.5),
    put("amount", 2**64 - 1),
    put("amount", 1e308),
    put("currency", "eur"),
    put("currency", "EURO"),
    put("currency", "ÉUR"),
    put("currency", "USD"),
    stamp(STAMP.lower()),
    stamp(STAMP.replace("T", "t")),
    stamp(STAMP.replace("Z", "z")),
    stamp(STAMP.replace("Z", "+00:00")),
    stamp(STAMP.replace("Z", "-00:00")),
    stamp(STAMP.replace("Z", "+01:00")),
    stamp(STAMP.replace(".089Z", "Z")),
    stamp(STAMP.replace(".089Z", ".0Z")),
    stamp(STAMP.replace(".089Z", ".123456789Z")),
    stamp(STAMP.replace(".089Z", ".1234567890Z")),
    stamp(STAMP.replace("T", " ")),
    stamp(STAMP[:-1]),
    stamp(STAMP + " "),
    stamp("2024-02-29T23:59:59.999Z"),
    stamp("2000-02-29T00:00:00.000Z"),
    stamp("2100-02-29T00:00:00.000Z"),
    stamp("2026-02-29T00:00:00.000Z"),
    stamp("2026-02-30T00:00:00.000Z"),
    stamp("2026-04-31T00:00:00.000Z"),
    stamp("2026-13-01T00:00:00.000Z"),
    stamp("2026-00-01T00:00:00.000Z"),
    stamp("2026-01-00T00:00:00.000Z"),
    stamp("2026-01-01T24:00:00.000Z"),
    stamp("2026-01-01T23:60:00.000Z"),
    stamp("2026-01-01T23:59:60.000Z"),
    stamp("1969-12-31T23:59:59.999Z"),
    stamp("1970-01-01T00:00:00.000Z"),
    stamp("9999-12-31T23:59:59.999Z"),
    stamp("０２６-01-01T00:00:00.000Z"),
    stamp("２０２６-01-01T00:00:00.000Z"),
    stamp("2０２６-01-01T00:00:00.000Z"),  # \d takes any Unicode digit: the reference accepts this
    stamp("2026-01-01T00:00:00.0８9Z"),
    stamp("2026-01-01T00:00:00.089Ｚ"),
    stamp("2026-01-01T00:00:00.089\U0001f600"),
    stamp("2026/01/01T00:00:00.089Z"),
    put("extra", {"nested": [1, None]}),
    lambda d: orjson.dumps(d).replace(b'"amount":', b'"amount":NaN,"x":'),
    lambda d: orjson.dumps(d)[:-1],
    lambda d: orjson.dumps([d]),
    lambda d: b"\xff" + orjson.dumps(d),
    lambda d: orjson.dumps(d).replace(b"}", b',"pad":"' + b"p" * 600 + b'"}'),  # oversized at 512 bytes
    lambda d: b"",
    lambda d: None,
    lambda d: b"null",
    lambda d: b'"a string"',
    lambda d: b"{}",
]


def mutated(doc: dict[str, Any], mutation: Mutation) -> bytes | None:
    out = mutation(doc)
    return out if out is None or isinstance(out, bytes) else orjson.dumps(out)


BASE = {
    "transaction_id": "tx1",
    "timestamp": STAMP,
    "customer_id": "C1",
    "terminal_id": "T1",
    "amount": 12.5,
    "currency": "EUR",
    "channel": "pos",
    "merchant_category": "5411",
}


@pytest.mark.parametrize("k", range(len(MUTATIONS)))
def test_each_mutation_alone_and_amid_valid_records(k: int) -> None:
    bad = mutated(BASE, MUTATIONS[k])
    assert_agrees([bad], max_value_bytes=512)
    assert_agrees([usual(BASE), bad, usual(BASE), bad], max_value_bytes=512)


def test_the_corpus_covers_both_outcomes_and_many_reasons() -> None:
    values = [mutated(BASE, m) for m in MUTATIONS]
    ref = decode_transactions_per_record(values, max_value_bytes=512)
    reasons = {r.reason for _, r in ref.rejected}
    assert len(ref.kept) >= 20 and len(reasons) >= 10, reasons
    assert_agrees(values, max_value_bytes=512)


def test_simulated_records_with_one_percent_bad() -> None:
    data = simulate(SimulationParams(customers=200, terminals=400, days=5))
    values: list[bytes | None] = list(transaction_values(data, np.arange(1000, dtype=np.int64)))
    rng = np.random.default_rng(7)
    for i, k in zip(rng.choice(1000, 10, replace=False), rng.integers(0, len(MUTATIONS), 10), strict=True):
        values[i] = mutated(orjson.loads(values[i]), MUTATIONS[k])  # type: ignore[arg-type]
    assert_agrees(values)
    assert_agrees(values[:0])


ident = st.text(st.characters(codec="utf-8"), min_size=0, max_size=6) | st.text(
    "abc", min_size=125, max_size=130
)
json_values = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=4)
    | st.lists(st.none(), max_size=1)
)
stamps = st.datetimes(datetime.datetime(1970, 1, 1), datetime.datetime(9999, 12, 31, 23, 59, 59)).map(
    lambda t: t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"
)
records = st.fixed_dictionaries(
    {
        "transaction_id": ident,
        "customer_id": ident,
        "terminal_id": ident,
        "amount": st.floats(-1, 2e9, allow_nan=False) | st.integers(-5, 2 * 10**9),
        "timestamp": stamps,
    },
    optional={
        "currency": st.sampled_from(["EUR", "USD", "eu"]),
        "channel": ident,
        "merchant_category": ident,
    },
)


@st.composite
def raw_values(draw: st.DrawFn) -> bytes | None:
    doc = draw(records)
    choice = draw(st.integers(0, 3))
    if choice == 0:  # a listed mutation
        return mutated(doc, draw(st.sampled_from(MUTATIONS)))
    if choice == 1:  # any field -> any JSON value
        return orjson.dumps({**doc, draw(st.sampled_from(sorted(BASE))): draw(json_values)})
    return orjson.dumps(doc)


@given(st.lists(raw_values(), max_size=30))
@settings(max_examples=400, deadline=None)
def test_random_mixtures_agree(batch: list[bytes | None]) -> None:
    assert_agrees(batch, max_value_bytes=512)


def reference_ms(text: str) -> int | None:
    try:
        return parse_rfc3339_ms(text)
    except Rejected:
        return None


def assert_usual_stamps_agree(texts: list[str]) -> None:
    ms, ok = usual_stamps_ms(texts)
    for text, got, good in zip(texts, ms.tolist(), ok.tolist(), strict=True):
        want = reference_ms(text)
        if good:  # the batch check may refuse what the regex takes (the caller retries), never the reverse
            assert got == want, text
        else:
            assert want is None or not text.isascii() or text[10] == "t" or text[-1] == "z", text


def test_usual_stamps_follow_the_calendar() -> None:
    years = [1969, 1970, 1999, 2000, 2001, 2023, 2024, 2025, 2100, 2400, 9996, 9999]
    texts = [f"{y:04d}-{m:02d}-{d:02d}T23:59:59.999Z" for y in years for m in range(15) for d in range(33)]
    assert_usual_stamps_agree(texts)
    assert sum(usual_stamps_ms(texts)[1]) == sum(
        366 if y % 4 == 0 and y % 100 or y % 400 == 0 else 365 for y in years[1:]
    )


@given(
    st.lists(st.text(st.sampled_from("0123456789-:.TtZz０２９+ é"), min_size=24, max_size=24), max_size=20)
)
@settings(max_examples=300, deadline=None)
def test_any_24_character_stamp_agrees(texts: list[str]) -> None:
    assert_usual_stamps_agree(texts)


@given(st.lists(st.integers(0, 253_402_300_799_999), min_size=1, max_size=20))
def test_what_rfc3339_ms_writes_reads_back(ms: list[int]) -> None:
    texts = rfc3339_ms(np.array(ms, dtype=np.int64))
    got, ok = usual_stamps_ms(texts)
    assert ok.all() and got.tolist() == ms == [parse_rfc3339_ms(t) for t in texts]
