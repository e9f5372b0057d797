"""PostgreSQL's binary forms of the values `scorer store` copies in (COPY ... FORMAT BINARY), built a column
at a time, so that the server parses no text: no date, time, number or array input function runs per row.

A binary COPY carries no type per field: the server reads each field with the receive function of the
column it lands in. So a date travels as the int4 it is on the wire (days since 2000-01-01), a timestamptz as
an int8 (microseconds since 2000-01-01 UTC), jsonb as its version byte and the JSON text, and real[] as the
array's header and its float4 elements; psycopg sends these as int4, int8 and bytea, unchanged.

Every converter returns None when a value would not be stored exactly as the text path stores it (writes.py
then writes the batch that way): the text path is the reference, and the binary one only a faster route to
the same rows.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

PG_EPOCH_DAY = 10_957  # 2000-01-01, the epoch of PostgreSQL's binary dates and times, in days since 1970
PG_EPOCH_US = PG_EPOCH_DAY * 86_400_000_000
FLOAT4_OID = 700
JSONB_VERSION = b"\x01"
FLOAT4_MAX = float(np.finfo(np.float32).max)


def dates(days: Sequence[int]) -> list[int]:
    """Days since 1970-01-01 -> a date's binary form (int4 days since 2000-01-01)."""
    return [day - PG_EPOCH_DAY for day in days]


def times(ms: Sequence[int | None]) -> list[int | None]:
    """ms since the epoch -> a timestamptz's binary form (int8 microseconds since 2000-01-01 UTC)."""
    return [None if t is None else t * 1000 - PG_EPOCH_US for t in ms]


def jsonb(texts: Sequence[str | None]) -> list[bytes | None]:
    """JSON text -> jsonb's binary form (version 1, then the text: the server parses it as jsonb_in does)."""
    return [None if t is None else JSONB_VERSION + t.encode() for t in texts]


def real_arrays(vectors: Sequence[list[int | float] | None]) -> list[bytes | None] | None:
    """Numeric vectors (None: SQL null) -> real[]'s binary form; None when the batch's vectors differ in
    length or a value would not become the float4 that real[]'s text input makes of its shortest text.

    The text path writes each number as its shortest decimal and the server rounds that decimal to float4
    (strtof). Here the number, a double, is rounded to float4 directly. Both agree unless the double lies
    within one double-ulp of a halfway point between two float4s (the decimal may then fall on the other
    side), or the result overflows or underflows to zero (the text input refuses those): such a batch goes
    the text way. The scorer's own features are float4s written in their shortest form and never are.
    """
    present = [v for v in vectors if v is not None]
    if not present:
        return list(vectors)  # type: ignore[arg-type]  # every value None
    width = len(present[0])
    if any(len(v) != width for v in present):
        return None
    if width == 0:
        empty = struct.pack(">iii", 0, 0, FLOAT4_OID)  # no dimensions
        return [None if v is None else empty for v in vectors]
    doubles = np.array(present, dtype=np.float64)
    singles = _exact_singles(doubles)
    if singles is None:
        return None
    cells = np.empty(doubles.shape, dtype=[("length", ">i4"), ("value", ">f4")])
    cells["length"] = 4
    cells["value"] = singles
    head = struct.pack(">iiiii", 1, 0, FLOAT4_OID, width, 1)  # 1 dimension, no nulls, float4, width, from 1
    body, step = cells.tobytes(), 8 * width
    arrays = [head + body[i : i + step] for i in range(0, len(body), step)]
    if len(present) == len(vectors):
        return arrays  # type: ignore[return-value]  # list[bytes] is a list[bytes | None]
    filled = iter(arrays)
    return [None if v is None else next(filled) for v in vectors]


def _exact_singles(doubles: npt.NDArray[np.float64]) -> npt.NDArray[np.float32] | None:
    """The float4s of `doubles`, or None when one could differ from strtof of the double's decimal text."""
    with np.errstate(over="ignore"):
        singles = doubles.astype(np.float32)
    if not np.isfinite(singles).all() or (np.abs(singles) == FLOAT4_MAX).any():
        return None  # overflow, or next to it: the text input's range error is the reference
    if ((singles == 0) & (doubles != 0)).any():
        return None  # underflow to zero: refused by the text input
    wide = singles.astype(np.float64)
    up = np.nextafter(singles, np.float32(np.inf)).astype(np.float64)
    down = np.nextafter(singles, np.float32(-np.inf)).astype(np.float64)
    ulp = np.spacing(np.abs(doubles))
    near = (np.abs(doubles - (wide + up) / 2) <= ulp) | (np.abs(doubles - (wide + down) / 2) <= ulp)
    return None if near.any() else singles
