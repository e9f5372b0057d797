"""The simulator's and training's data files (JSON lines), read with the streaming decoder's rules."""

from __future__ import annotations

from pathlib import Path

from scorer.errors import DataError, Rejected
from scorer.events.batches import LabelBatch, TransactionBatch
from scorer.events.decode import decode_labels, decode_transactions


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
