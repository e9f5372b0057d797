"""scorer/db/binary.py: the binary forms `scorer store` copies in equal what PostgreSQL's text input makes of the
text the upsert statement sends, or the batch is left to that statement."""

from __future__ import annotations

import struct
from fractions import Fraction

import numpy as np
import orjson
from hypothesis import given
from hypothesis import strategies as st

from scorer.db import binary

FLOAT4_MAX = Fraction(float(np.finfo(np.float32).max))
OVERFLOW = FLOAT4_MAX + Fraction(2) ** 103  # half an ulp above the largest float4: rounds to infinity


def strtof(text: str) -> np.float32 | None:
    """real's text input, exactly: the float4 nearest the decimal (ties to even); None where it refuses
    (overflow, or a non-zero value that rounds to zero)."""
    q = Fraction(text)
    if q == 0:
        return np.float32(-0.0 if text.startswith("-") else 0.0)
    if abs(q) >= OVERFLOW:
        return None
    with np.errstate(over="ignore"):  # within an ulp of the answer (double rounding); the neighbours decide
        guess = np.float32(float(q))
        around = [np.nextafter(guess, np.float32(-np.inf)), guess, np.nextafter(guess, np.float32(np.inf))]
    candidates = [c for c in around if np.isfinite(c)]
    best = min(
        candidates,
        key=lambda c: (abs(Fraction(float(c)) - q), int(np.array(c).view(np.uint32)) & 1),
    )
    return None if best == 0 else best


def decode(array: bytes) -> list[np.float32]:
    ndim, flags, oid = struct.unpack(">iii", array[:12])
    assert flags == 0 and oid == binary.FLOAT4_OID
    if ndim == 0:
        return []
    width, lower = struct.unpack(">ii", array[12:20])
    assert ndim == 1 and lower == 1 and len(array) == 20 + 8 * width
    cells = np.frombuffer(array[20:], dtype=[("length", ">i4"), ("value", ">f4")])
    assert (cells["length"] == 4).all()
    return [np.float32(v) for v in cells["value"]]


def same_bits(a: np.float32, b: np.float32) -> bool:
    return bool(
        np.array(a, dtype=np.float32).view(np.uint32) == np.array(b, dtype=np.float32).view(np.uint32)
    )


numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(min_value=-1e-38, max_value=1e-38),  # around float4's subnormals and its underflow
    st.floats(min_value=3.3e38, max_value=3.5e38),  # around its overflow
    st.integers(min_value=-(2**63), max_value=2**64 - 1),  # orjson parses larger numbers as floats
)


@given(st.lists(numbers, min_size=1, max_size=8))
def test_a_vector_is_copied_as_the_text_input_would_store_it_or_not_at_all(values: list[float]) -> None:
    texts = (
        orjson.dumps(values).decode()[1:-1].split(",")
    )  # what the upsert statement sends, element by element
    expected = [strtof(t) for t in texts]
    arrays = binary.real_arrays([values])
    if any(e is None for e in expected):  # the text input refuses the batch: so must the binary route
        assert arrays is None
    if arrays is not None:
        (array,) = arrays
        assert array is not None
        got = decode(array)
        assert all(same_bits(g, e) for g, e in zip(got, expected, strict=True) if e is not None), (
            got,
            expected,
        )


@given(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=1, max_size=26))
def test_the_scorers_own_features_always_take_the_binary_route(singles: list[float]) -> None:
    """The scorer writes float4 features in their shortest form: parsed back, they are never ambiguous."""
    written = orjson.dumps(np.array(singles, dtype=np.float32), option=orjson.OPT_SERIALIZE_NUMPY)
    values = orjson.loads(written)
    arrays = binary.real_arrays([values, None, values])
    if any(abs(v) == float(np.finfo(np.float32).max) for v in singles):
        return  # the largest float4 goes the text way, as documented
    assert arrays is not None and arrays[1] is None and arrays[0] == arrays[2]
    assert arrays[0] is not None
    assert all(same_bits(g, np.float32(s)) for g, s in zip(decode(arrays[0]), singles, strict=True))


def test_vectors_of_different_lengths_go_the_text_way_and_empty_ones_have_no_dimension() -> None:
    assert binary.real_arrays([[1.0], [1.0, 2.0]]) is None
    assert binary.real_arrays([None, None]) == [None, None]
    (empty,) = binary.real_arrays([[]]) or [None]
    assert empty is not None and decode(empty) == []


def test_dates_times_and_jsonb_in_their_binary_forms() -> None:
    assert binary.dates([10_957, 0, 20_000]) == [0, -10_957, 9_043]  # days since 2000-01-01
    assert binary.times([946_684_800_000, 0, None]) == [0, -946_684_800_000_000, None]  # us since then
    assert binary.jsonb(['[{"a":1}]', None]) == [b'\x01[{"a":1}]', None]


def test_a_value_on_a_halfway_point_between_two_float4s_goes_the_text_way() -> None:
    halfway = 1 + 2**-24  # between 1 and the next float4: numpy rounds it down to even, ...
    text = orjson.dumps(halfway).decode()  # ... its shortest decimal lies just above it: strtof rounds up
    assert np.float32(halfway) == 1 and strtof(text) == np.nextafter(np.float32(1), np.float32(2))
    assert binary.real_arrays([[halfway]]) is None
    assert binary.real_arrays([[0.5, 2.0]]) is not None
