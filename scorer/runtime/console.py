"""Terminal output for people: progress bars and aligned tables (stderr for progress, stdout for results)."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TextIO


class ProgressBar:
    """A one-line progress bar; redrawn in place on a terminal, a few plain lines otherwise (logs, CI)."""

    def __init__(self, label: str, stream: TextIO | None = None, width: int = 30) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = self.stream.isatty()
        self.started = time.monotonic()
        self._last_draw = 0.0
        self._last_pct = -1

    def __call__(self, done: int, total: int) -> None:
        pct = 100 if total <= 0 else min(100, done * 100 // total)
        now = time.monotonic()
        if self.tty and (now - self._last_draw > 0.1 or pct == 100):
            filled = self.width * pct // 100
            bar = "#" * filled + "-" * (self.width - filled)
            self.stream.write(f"\r{self.label:<24} [{bar}] {pct:3d}% {done:>10,}/{total:,}")
            self._last_draw = now
        elif not self.tty and pct // 25 > self._last_pct // 25:
            self.stream.write(f"{self.label}: {pct}% ({done:,}/{total:,})\n")
        self._last_pct = pct
        if pct == 100 and done >= total:
            self.finish()

    def finish(self) -> None:
        if self._last_pct == 101:
            return
        elapsed = time.monotonic() - self.started
        if self.tty:
            self.stream.write(f"  {elapsed:.1f}s\n")
        else:
            self.stream.write(f"{self.label}: done in {elapsed:.1f}s\n")
        self.stream.flush()
        self._last_pct = 101


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain aligned text table (numbers right-aligned), also valid Markdown."""
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    numeric = [all(_is_number(row[i]) for row in rows) if rows else False for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "| " + " | ".join(parts) + " |"

    sep = "|" + "|".join(
        ("-" * (w + 1) + ":") if n else ("-" * (w + 2)) for w, n in zip(widths, numeric, strict=True)
    )
    return "\n".join([line(headers), sep + "|", *(line(r) for r in cells)])


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)
