"""`scorer score`: a file of transactions (JSON lines or CSV) scored in chunks by the embedded Scorer.

Backfills, nightly batches and what-ifs on last month with a new model use the scoring core, so a
file's scores equal the stream's for the same history and order. A line that breaks the event contract
gets the reason the dead-letter topic would carry, with its line number; it is skipped (and optionally
written to a rejects file) or, with `--bad-lines fail`, stops the run before any output is kept.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import orjson

from scorer.errors import ConfigError, DataError, Rejected
from scorer.events.files import FileLine, check_transactions_file, transaction_lines
from scorer.scoring.embedded import Scorer

CHUNK_LINES = 10_000
SHOWN_BAD_LINES = 20  # bad lines printed one by one; the rest are counted (and in --rejects)
Progress = Callable[[int, int], None]


@dataclass(slots=True)
class FileResult:
    """What a run did, for the closing line."""

    scored: int = 0
    flagged: int = 0
    bad: int = 0
    seconds: float = 0.0
    bad_lines: list[str] = field(default_factory=list)  # "FILE:LINE: reason: detail", the first few


def check_paths(source: Path, output: Path, rejects: Path | None = None) -> None:
    """Refuse, before any work (warming on a history takes seconds), what would fail at the end.

    The input must be readable and a CSV header usable (check_transactions_file: DataError, or
    ConfigError for the header), the output and the rejects file writable in an existing directory and
    none of the three the same file (DataError, one line naming the flag and the path).
    """
    check_transactions_file(source)
    named = [("--output", output)] + ([("--rejects", rejects)] if rejects is not None else [])
    for flag, path in named:
        if path.resolve() == source.resolve():
            raise ConfigError(f"{flag} must not be the --input file")
        _check_writable(flag, path)
    if rejects is not None and rejects.resolve() == output.resolve():
        raise ConfigError("--rejects must not be the --output file")


def _check_writable(flag: str, path: Path) -> None:
    """A file can be created beside `path` (the temporary file) and `path` is no directory."""
    if path.is_dir():
        raise DataError(f"{flag} {path}: is a directory (name a file in it)")
    if not path.parent.is_dir():
        raise DataError(f"{flag} {path}: cannot write there (no directory {path.parent})")
    try:
        tempfile.TemporaryFile(dir=path.parent).close()  # what writing the output there needs
    except OSError as exc:
        raise DataError(f"{flag} {path}: cannot write there ({exc.strerror})") from exc


def score_file(
    scorer: Scorer,
    source: Path,
    output: Path,
    *,
    fail_on_bad: bool = False,
    rejects: Path | None = None,
    progress: Progress | None = None,
) -> FileResult:
    """Score every record of `source` into `output` (decision JSON lines, input order).

    The output is written to a temporary file renamed into place at the end, so a run stopped by a bad
    line (`fail_on_bad`: DataError naming it) or an error leaves no partial output behind. Call
    check_paths first: a path that cannot be written fails here only after the work.
    """
    check_transactions_file(source)
    result, started = FileResult(), time.monotonic()
    total = _count_lines(source)
    partial = output.with_name(f".{output.name}.partial")
    try:
        with partial.open("wb") as out, _optional(rejects) as bad_out:
            for chunk in _chunks(source):
                for line, reason, detail, value in _score_chunk(scorer, chunk, out, result):
                    _bad(result, source, line, reason, detail, fail_on_bad)
                    if bad_out is not None:
                        bad_out.write(_reject(line, reason, detail, value))
                if progress is not None:
                    progress(min(total, chunk[-1][0]), total)
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    result.seconds = time.monotonic() - started
    return result


BadLine = tuple[int, str, str, bytes | None]  # line, reason, detail, the record's value (if it has one)


def _score_chunk(scorer: Scorer, chunk: list[FileLine], out: IO[bytes], result: FileResult) -> list[BadLine]:
    """Score the chunk's records into `out`; its bad lines (the decoder's and the file's), in file order."""
    good = [(line, value) for line, value in chunk if not isinstance(value, Rejected)]
    values = [value for _, value in good]
    scored = scorer.score_values(values)
    out.writelines(d["value"] + b"\n" for d in scored.decisions)
    result.scored += len(scored.decisions)
    result.flagged += len(scored.flags)
    bad: list[BadLine] = [
        (good[d.index][0], d.reason, d.detail, values[d.index]) for d in scored.dead_letters
    ]
    bad += [(line, v.reason, v.detail, None) for line, v in chunk if isinstance(v, Rejected)]
    return sorted(bad, key=lambda b: b[0])


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
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


def _chunks(path: Path) -> Iterator[list[FileLine]]:
    """The file's records (transaction_lines), CHUNK_LINES at a time."""
    chunk: list[FileLine] = []
    for line in transaction_lines(path):
        chunk.append(line)
        if len(chunk) == CHUNK_LINES:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
