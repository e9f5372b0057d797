"""Event time: RFC 3339 UTC strings <-> milliseconds since the Unix epoch, one batch at a time.

Also the one sentinel for "no time yet" (NEVER), used for days and milliseconds alike.
"""

from __future__ import annotations

import datetime
import re
from contextlib import suppress
from typing import Any

import numpy as np
import numpy.typing as npt

from scorer.errors import Rejected
from scorer.events.columns import STR, typed

MS_PER_DAY = 86_400_000
HOUR_MS = 3_600_000
# "Nothing seen yet / never happened", as a time in ms or a day number: far below any real value, yet far
# enough from int64's minimum that subtracting days or windows from it in numpy cannot wrap around.
NEVER = -(2**62)
# ASCII digits only, as the schema's [0-9] (\d and int() would also take any Unicode digit)
TIMESTAMP_RE = re.compile(
    r"(19[7-9][0-9]|[2-9][0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]([01][0-9]|2[0-3]):([0-5][0-9]):"
    r"([0-5][0-9])(?:\.([0-9]{1,9}))?(?:[Zz]|[+-]00:00)"
)
_EPOCH = datetime.date(1970, 1, 1)
_EPOCH_DAY: dict[str, int] = {}  # "YYYY-MM-DD" -> days since 1970-01-01; dates repeat within a stream


def rfc3339_ms(ts_ms: npt.NDArray[np.int64]) -> list[str]:
    """Millisecond UTC timestamps as the contract's RFC 3339 strings ("...T12:03:04.123Z"), vectorised."""
    text = np.datetime_as_string(ts_ms.astype("datetime64[ms]"), unit="ms")
    return [t + "Z" for t in text.tolist()]


def parse_rfc3339_ms(text: str) -> int:
    """RFC 3339 UTC timestamp -> ms since the epoch; Rejected('invalid_timestamp') otherwise."""
    m = TIMESTAMP_RE.fullmatch(text)
    if m is None:
        raise Rejected("invalid_timestamp", f"not an RFC 3339 UTC timestamp: {text[:40]!r}")
    date = text[:10]
    day = _EPOCH_DAY.get(date)
    if day is None:
        try:
            day = (datetime.date(int(m[1]), int(m[2]), int(m[3])) - _EPOCH).days
        except ValueError as exc:
            raise Rejected("invalid_timestamp", f"impossible date {date}") from exc
        if len(_EPOCH_DAY) < 100_000:
            _EPOCH_DAY[date] = day
    frac = m[7]
    ms = int((frac + "00")[:3]) if frac else 0
    return ((day * 24 + int(m[4])) * 60 + int(m[5])) * 60_000 + int(m[6]) * 1000 + ms


# The usual stamp, as rfc3339_ms writes it, checked and converted for a whole batch at once as bytes.
_USUAL_STAMP = "0000-00-00T00:00:00.000Z"  # "0": an ASCII digit; anything else: itself
_DIGITS_AT = [i for i, c in enumerate(_USUAL_STAMP) if c == "0"]
_FIXED_AT = [i for i, c in enumerate(_USUAL_STAMP) if c != "0"]
_FIXED = np.frombuffer(_USUAL_STAMP.encode(), dtype=np.uint8)[_FIXED_AT]
_PART_WEIGHTS = np.zeros((len(_DIGITS_AT), 7))  # digits @ weights -> year, month, day, h, min, s, ms
for _part, (_start, _stop) in enumerate([(0, 4), (4, 6), (6, 8), (8, 10), (10, 12), (12, 14), (14, 17)]):
    _PART_WEIGHTS[_start:_stop, _part] = 10.0 ** np.arange(_stop - _start - 1, -1, -1)
_DAYS_IN_MONTH = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])


def usual_stamps_ms(stamps: list[str]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """ms of stamps of exactly len(_USUAL_STAMP) characters, and which are valid "....T...Z" stamps.

    Accepts only a subset of what parse_rfc3339_ms accepts (ASCII digits, "T", "Z", 3 fraction digits),
    with the same ms; the caller sends the rest through parse_rfc3339_ms.
    """
    raw = "".join(stamps).encode("latin-1", "replace")  # one byte per character keeps the rows aligned
    chars = np.frombuffer(raw, dtype=np.uint8).reshape(len(stamps), len(_USUAL_STAMP))
    digits = chars[:, _DIGITS_AT] - np.uint8(ord("0"))  # wraps: a non-digit is > 9
    parts = (digits @ _PART_WEIGHTS).astype(np.int64)  # float matmul is exact this small, int is slow
    year, month, day, hour, minute, second, milli = parts.T
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    month_days = _DAYS_IN_MONTH[np.clip(month, 0, 12)] + (leap & (month == 2))
    ok = (
        (chars[:, _FIXED_AT] == _FIXED).all(axis=1)
        & (digits <= 9).all(axis=1)
        & (year >= 1970)
        & (month >= 1)
        & (month <= 12)
        & (day >= 1)
        & (day <= month_days)
        & (hour <= 23)
        & (minute <= 59)
        & (second <= 59)
    )
    months = np.where(ok, (year - 1970) * 12 + month - 1, 0)
    days = months.astype("datetime64[M]").astype("datetime64[D]").astype(np.int64) + day - 1
    return days * MS_PER_DAY + ((hour * 60 + minute) * 60 + second) * 1000 + milli, ok


def stamps_ms(col: list[Any]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """ms since the epoch per timestamp, and where it is not a valid one; the usual form all at once.

    Shared by the transaction decoder and `scorer monitor` (decision timestamps)."""
    stamps, _ = typed(col, STR, "")  # "" is no timestamp
    ms = np.zeros(len(stamps), dtype=np.int64)
    ok = np.fromiter(map(len, stamps), dtype=np.int64, count=len(stamps)) == len(_USUAL_STAMP)
    usual = np.flatnonzero(ok)
    if usual.size:
        picked = stamps if usual.size == len(stamps) else [stamps[i] for i in usual.tolist()]
        ms[usual], ok[usual] = usual_stamps_ms(picked)
    for i in np.flatnonzero(~ok).tolist():  # any other form: the regex, one by one
        with suppress(Rejected):
            ms[i] = parse_rfc3339_ms(stamps[i])
            ok[i] = True
    return ms, ~ok
