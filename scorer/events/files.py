"""Files of events, read with the streaming decoder's rules: the simulator's and training's data files
(JSON lines), and the files `scorer score` scores (JSON lines or CSV), whose records become the JSON
values a producer would have sent, so both formats are refused for the same things with the same reasons.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import orjson

from scorer.errors import ConfigError, DataError, Rejected
from scorer.events.batches import LabelBatch, TransactionBatch
from scorer.events.decode import REQUIRED_FIELDS, decode_labels, decode_transactions


def _read_lines(path: Path) -> list[bytes]:
    """The file's lines; blank lines at its end (an editor's trailing newline) are not records."""
    try:
        lines = path.read_bytes().splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        return lines
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such file") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from exc


def _first_error(path: Path, rejected: list[tuple[int, Rejected]], lines: list[bytes]) -> None:
    if rejected:
        index, exc = rejected[0]
        raise DataError(
            f"{path}:{index + 1}: {exc.reason}: {exc.detail} ({len(rejected)} bad line(s) in all)"
        )


def read_transactions_jsonl(path: Path) -> TransactionBatch:
    """Every line of a transactions.jsonl; DataError naming the first bad line (blank lines count as bad)."""
    lines = _read_lines(path)
    decoded = decode_transactions(lines, max_value_bytes=1 << 30)
    _first_error(path, decoded.rejected, lines)
    return decoded.batch


def read_labels_jsonl(path: Path) -> LabelBatch:
    """Every line of a labels.jsonl; DataError naming the first bad line."""
    lines = _read_lines(path)
    decoded = decode_labels(lines, max_value_bytes=1 << 30)
    _first_error(path, decoded.rejected, lines)
    return decoded.batch


# -- files of transactions to score (`scorer score`): JSON lines or CSV -----------------------------------

# Reasons only a file can give (a CSV row that is no record): never on a topic, so not among REASONS.
FILE_REASONS = ("invalid_csv",)
BOM = b"\xef\xbb\xbf"  # a spreadsheet's UTF-8 export starts with it; it is no part of the first record
CSV_NUMBERS = ("amount",)  # CSV cells are text; the schema wants these as JSON numbers
FileLine = tuple[int, bytes | Rejected]  # (line number, the record as a JSON value, or why it is none)


def check_transactions_file(path: Path) -> None:
    """Refuse, before any work, a file that cannot be read or a CSV header that cannot give records.

    DataError (exit 1) when the file cannot be opened; ConfigError (exit 2, one line naming the columns)
    when a CSV header lacks a required field, names one twice or is not UTF-8: such a file would have
    every row refused.
    """
    if not _is_csv(path):
        _open(path).close()
        return
    with _csv_text(path) as text:
        _csv_header(path, _csv_reader(text))


def transaction_lines(path: Path) -> Iterator[FileLine]:
    """Each record of a transactions file, in file order, with the line it starts on.

    JSON lines: each non-blank line as it is. CSV: a header row names the fields; each row becomes the
    JSON object a producer would have sent (an empty cell is an absent field, a numeric column holding a
    JSON number becomes that number, every other cell stays text), so the decoder gives both formats the
    same reasons; a row that is not CSV or has more cells than the header comes as Rejected("invalid_csv").
    A UTF-8 byte order mark at the start is skipped in both formats.
    """
    return _csv_lines(path) if _is_csv(path) else _jsonl_lines(path)


def _is_csv(path: Path) -> bool:
    return path.suffix.lower() == ".csv"


def _open(path: Path) -> IO[bytes]:
    try:
        if path.is_dir():
            raise DataError(f"{path}: is a directory, not a file of transactions")
        return path.open("rb")
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such file") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from exc


def _jsonl_lines(path: Path) -> Iterator[FileLine]:
    """(line number, line) of each non-blank line: a blank line is no record (JSON lines allow none)."""
    with _open(path) as f:
        for number, line in enumerate(f, start=1):
            if number == 1 and line.startswith(BOM):
                line = line[len(BOM) :]
            if line.strip():
                yield number, line.rstrip(b"\r\n")


def _csv_text(path: Path) -> IO[str]:
    # Bytes that are not UTF-8 stay recognisable (surrogates) so that their row is refused as
    # invalid_utf8, as a JSON line would be, instead of being replaced by U+FFFD and accepted.
    return io.TextIOWrapper(_open(path), encoding="utf-8-sig", errors="surrogateescape", newline="")


def _csv_reader(text: IO[str]) -> Any:
    return csv.reader(text, strict=True)  # strict: a broken quote is an error, not a guess


def _csv_header(path: Path, reader: Any) -> list[str]:
    """The header's column names; ConfigError naming what makes it unusable."""
    try:
        header: list[str] = next(reader)
    except StopIteration:
        raise ConfigError(f"{path}: empty: a CSV file starts with a header row naming its columns") from None
    except csv.Error as exc:
        raise ConfigError(f"{path}:1: the header is not a CSV row ({exc})") from exc
    if any(_not_utf8(name) for name in header):
        raise ConfigError(f"{path}:1: the header is not UTF-8")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise ConfigError(
            f"{path}:1: the header names {_names(repeated)} more than once (one column per field)"
        )
    missing = [name for name in REQUIRED_FIELDS if name not in header]
    if missing:
        raise ConfigError(
            f"{path}:1: the header has no column {_names(missing)} (required: {_names(REQUIRED_FIELDS)})"
        )
    return header


def _names(names: Sequence[str]) -> str:
    return ", ".join(repr(n) if not n.isidentifier() else n for n in names)


def _csv_lines(path: Path) -> Iterator[FileLine]:
    with _csv_text(path) as text:
        reader = _csv_reader(text)
        header = _csv_header(path, reader)
        while True:
            start = reader.line_num + 1  # a quoted cell may span lines: a record is where it starts
            try:
                cells: list[str] = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield start, Rejected("invalid_csv", str(exc))
                continue
            if cells:  # a blank line is no record
                yield start, _csv_value(header, cells)


def _csv_value(header: list[str], cells: list[str]) -> bytes | Rejected:
    if len(cells) > len(header):
        return Rejected("invalid_csv", f"{len(cells)} cells, the header names {len(header)} columns")
    doc = {name: _cell(name, cell) for name, cell in zip(header, cells, strict=False) if cell != ""}
    try:
        return orjson.dumps(doc)
    except orjson.JSONEncodeError:  # a cell held bytes that are not UTF-8
        name, why = next((n, w) for n, c in zip(header, cells, strict=False) if (w := _not_utf8(c)))
        return Rejected("invalid_utf8", f"column {name}: {why}")


def _cell(name: str, cell: str) -> object:
    if name not in CSV_NUMBERS:
        return cell
    try:
        value = orjson.loads(cell)  # the JSON number grammar, as in a JSON line
    except orjson.JSONDecodeError:
        return cell  # text: the decoder says why (wrong_type)
    return value if type(value) in (int, float) else cell


def _not_utf8(text: str) -> str:
    """Why `text` (decoded with surrogateescape) was not UTF-8, or "" when it was."""
    try:
        text.encode("utf-8", "surrogateescape").decode("utf-8")
    except UnicodeDecodeError as exc:
        return str(exc)
    return ""
