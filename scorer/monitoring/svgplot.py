"""Small inline-SVG charts for `scorer report`: a report is one HTML file with no script and no download.

Only what the report draws: lines over days (with optional dashed reference levels) and bars over days.
Values may be None (no data that day): the line breaks there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

WIDTH, HEIGHT = 700, 220
LEFT, RIGHT, TOP, BOTTOM = 56, 200, 28, 34
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
Series = Mapping[str, Sequence[float | None]]


def _frame(title: str, days: Sequence[str], low: float, high: float) -> list[str]:
    """Axes, grid, y ticks and the first/middle/last day label."""
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">',
        f'<text x="{LEFT}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>',
    ]
    for i in range(5):
        value = low + (high - low) * i / 4
        y = _y(value, low, high)
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">{_fmt(value)}</text>')
    for i in sorted({0, len(days) // 2, len(days) - 1}):
        if 0 <= i < len(days):
            x = _x(i, len(days))
            parts.append(f'<text x="{x:.1f}" y="{HEIGHT - 12}" text-anchor="middle">{escape(days[i])}</text>')
    return parts


def _x(i: int, n: int) -> float:
    return LEFT + (WIDTH - LEFT - RIGHT) * (i + 0.5) / max(1, n)


def _y(value: float, low: float, high: float) -> float:
    span = (high - low) or 1.0
    return TOP + (HEIGHT - TOP - BOTTOM) * (1 - (value - low) / span)


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _range(values: Sequence[float], floor: float | None) -> tuple[float, float]:
    low = min([*values, floor if floor is not None else min(values, default=0.0)], default=0.0)
    high = max(values, default=1.0)
    if high <= low:
        high = low + 1.0
    return low, high + (high - low) * 0.05


def line_chart(
    title: str,
    days: Sequence[str],
    series: Series,
    refs: Mapping[str, float] | None = None,
    floor: float = 0.0,
) -> str:
    """One line per series over the days; `refs` are dashed horizontal levels (e.g. the model card)."""
    refs = refs or {}
    values = [v for s in series.values() for v in s if v is not None] + list(refs.values())
    low, high = _range(values, floor)
    parts = _frame(title, days, low, high)
    for k, (name, points) in enumerate(series.items()):
        colour = COLOURS[k % len(COLOURS)]
        for run in _runs(points):
            coords = " ".join(f"{_x(i, len(days)):.1f},{_y(v, low, high):.1f}" for i, v in run)
            parts.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="1.8"/>')
            if len(run) == 1:
                i, v = run[0]
                parts.append(
                    f'<circle cx="{_x(i, len(days)):.1f}" cy="{_y(v, low, high):.1f}" r="2.5" fill="{colour}"/>'
                )
        parts.append(_legend(k, name, colour))
    for k, (name, level) in enumerate(refs.items(), start=len(series)):
        colour = COLOURS[k % len(COLOURS)]
        y = _y(level, low, high)
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="{colour}" stroke-dasharray="5,4"/>'
        )
        parts.append(_legend(k, name, colour, dashed=True))
    return "\n".join([*parts, "</svg>"])


def bar_chart(title: str, days: Sequence[str], values: Sequence[float], colour: str = COLOURS[0]) -> str:
    """One bar per day."""
    low, high = _range(list(values), 0.0)
    parts = _frame(title, days, low, high)
    width = (WIDTH - LEFT - RIGHT) / max(1, len(days)) * 0.8
    for i, v in enumerate(values):
        top = _y(v, low, high)
        parts.append(
            f'<rect x="{_x(i, len(days)) - width / 2:.1f}" y="{top:.1f}" width="{width:.1f}" '
            f'height="{_y(low, low, high) - top:.1f}" fill="{colour}"><title>{escape(days[i])}: {v:,.0f}</title></rect>'
        )
    return "\n".join([*parts, "</svg>"])


def _runs(points: Sequence[float | None]) -> list[list[tuple[int, float]]]:
    """Consecutive non-missing points: a day without data breaks the line."""
    runs: list[list[tuple[int, float]]] = [[]]
    for i, v in enumerate(points):
        if v is None:
            runs.append([])
        else:
            runs[-1].append((i, v))
    return [r for r in runs if r]


def _legend(k: int, name: str, colour: str, dashed: bool = False) -> str:
    x, y = WIDTH - RIGHT + 10, TOP + 14 * k + 6
    dash = ' stroke-dasharray="4,3"' if dashed else ""
    return (
        f'<line x1="{x}" x2="{x + 18}" y1="{y}" y2="{y}" stroke="{colour}" stroke-width="2"{dash}/>'
        f'<text x="{x + 22}" y="{y + 4}">{escape(name[:30])}</text>'
    )
