"""`scorer score`: a file of transactions (JSON lines or CSV) scored in chunks by the embedded Scorer.

Backfills, nightly batches and what-ifs on last month with a new model use the scoring core, so a
file's scores equal the stream's for the same history and order. A line that breaks the event contract
gets the reason the dead-letter topic would carry, with its line number; it is skipped (and optionally
written to a rejects file) or, with `--bad-lines fail`, stops the run before any output is kept.
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import orjson

from scorer.errors import DataError
from scorer.scoring.embedded import Scorer

CHUNK_LINES = 10_000
SHOWN_BAD_LINES = 20  # bad lines printed one by one; the rest are counted (and in --rejects)
CSV_NUMBERS = ("amount",)  # CSV cells are text; the schema wants these as JSON numbers
Progress = Callable[[int, int], None]


@dataclass(slots=True)
class FileResult:
    """What a run did, for the closing line."""

    scored: int = 0
    flagged: int = 0
    bad: int = 0
    seconds: float = 0.0
    bad_lines: list[str] = field(default_factory=list)  # "FILE:LINE: reason: detail", the first few


def score_file(
    scorer: Scorer,
    source: Path,
    output: Path,
    *,
    fail_on_bad: bool = False,
    rejects: Path | None = None,
    progress: Progress | None = None,
) -> FileResult:
    """Score every line of `source` into `output` (decision JSON lines, input order).

    The output is written to a temporary file renamed into place at the end, so a run stopped by a bad
    line (`fail_on_bad`) or an error leaves no partial output behind.
    """
    result, started = FileResult(), time.monotonic()
    total = _count_lines(source)
    partial = output.with_name(f".{output.name}.partial")
    try:
        with partial.open("wb") as out, _optional(rejects) as bad_out:
            for numbers, values in _chunks(source):
                scored = scorer.score_values(values)
                for dead in scored.dead_letters:
                    line = numbers[dead.index]
                    _bad(result, source, line, dead.reason, dead.detail, fail_on_bad)
                    if bad_out is not None:
                        bad_out.write(_reject(line, dead.reason, dead.detail, values[dead.index]))
                out.writelines(d["value"] + b"\n" for d in scored.decisions)
                result.scored += len(scored.decisions)
                result.flagged += len(scored.flags)
                if progress is not None:
                    progress(min(total, numbers[-1]), total)
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    result.seconds = time.monotonic() - started
    return result


def _bad(result: FileResult, source: Path, line: int, reason: str, detail: str, fatal: bool) -> None:
    message = f"{source}:{line}: {reason}: {detail}"
    if fatal:
        raise DataError(f"{message} (--bad-lines fail: stopped, no output written)")
    result.bad += 1
    if len(result.bad_lines) < SHOWN_BAD_LINES:
        result.bad_lines.append(message)


def _reject(line: int, reason: str, detail: str, value: bytes | None) -> bytes:
    text = (value or b"").decode("utf-8", "replace")
    return orjson.dumps({"line": line, "reason": reason, "detail": detail, "value": text}) + b"\n"


class _optional:
    """`open(path, "wb")`, or None when there is no path (a context manager either way)."""

    def __init__(self, path: Path | None) -> None:
        self.file: IO[bytes] | None = path.open("wb") if path is not None else None

    def __enter__(self) -> IO[bytes] | None:
        return self.file

    def __exit__(self, *exc: object) -> None:
        if self.file is not None:
            self.file.close()


def _count_lines(path: Path) -> int:
    """Lines in the file (the progress bar's total; for CSV one more than the records)."""
    count, last = 0, b"\n"
    with _open(path) as f:
        while block := f.read(1 << 20):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


def _open(path: Path) -> IO[bytes]:
    try:
        return path.open("rb")
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such file") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from exc


def _chunks(path: Path) -> Iterator[tuple[list[int], list[bytes]]]:
    """(line number of each record, the records as JSON values), CHUNK_LINES records at a time."""
    rows = _csv_rows(path) if path.suffix.lower() == ".csv" else _jsonl_rows(path)
    numbers: list[int] = []
    chunk: list[bytes] = []
    for line, value in rows:
        numbers.append(line)
        chunk.append(value)
        if len(chunk) == CHUNK_LINES:
            yield numbers, chunk
            numbers, chunk = [], []
    if chunk:
        yield numbers, chunk


def _jsonl_rows(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of each non-blank line: a blank line is no record (JSON lines allow none)."""
    with _open(path) as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                yield number, line.rstrip(b"\r\n")


def _csv_rows(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, the row as a JSON object) of each CSV record; the header names the fields.

    Empty cells are left out (the optional fields), numeric columns become numbers when they parse (when
    not, the text goes on and the decoder gives the reason), every other cell stays text.
    """
    with _open(path) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")
        reader = csv.DictReader(text)
        if reader.fieldnames is None:
            return
        for row in reader:
            yield reader.line_num, orjson.dumps(_csv_object(row))


def _csv_object(row: dict[str | None, str | list[str] | None]) -> dict[str, object]:
    doc: dict[str, object] = {}
    for name, cell in row.items():
        if name is None or not isinstance(cell, str) or cell == "":
            continue  # cells beyond the header, or empty: not fields
        doc[name] = _number(cell) if name in CSV_NUMBERS else cell
    return doc


def _number(cell: str) -> object:
    try:
        return float(cell)
    except ValueError:
        return cell
