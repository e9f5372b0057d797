"""Type checks over a whole column of decoded JSON values, with no bytecode per value when all agree."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

NUMBER: set[type] = {int, float}  # exact types: bool is an int to Python but not a number to JSON
STR: set[type] = {str}
DICT: set[type] = {dict}


def of_types(col: list[Any], types: set[type]) -> npt.NDArray[np.bool_]:
    """Per value: is its type one of `types` (exactly: a bool is no int here)? No bytecode per value."""
    return np.fromiter(map(types.__contains__, map(type, col)), dtype=bool, count=len(col))


def typed(col: list[Any], types: set[type], stand_in: Any) -> tuple[list[Any], list[int]]:
    """`col` with `stand_in` for each value of another type, and where those were; cheap when none are."""
    if set(map(type, col)) <= types:
        return col, []
    odd = np.flatnonzero(~of_types(col, types)).tolist()
    col = col.copy()
    for i in odd:
        col[i] = stand_in
    return col, odd
