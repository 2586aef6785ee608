"""Levey-Jennings charts drawn on the server as SVG: no script, readable on any browser
of a lab PC, printable, and the same picture a QC officer draws by hand.

A control lot's results are placed by their z-score against the limits they were judged
with (so a chart stays right across a change from the manufacturer's limits to the lab's
own); the axis is labelled in the test's units at the current limits. Rejected results
are red, warnings amber; each point's tooltip (the SVG ``title``) names the rules it broke.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from xml.sax.saxutils import escape, quoteattr

WIDTH, HEIGHT = 760, 300
_LEFT, _RIGHT, _TOP, _BOTTOM = 70, 20, 20, 40
_SPAN = 4.0
"""SD shown either side of the mean; a point beyond sits on the edge, drawn as a triangle."""

_LINES = ((3, "#c62828", "6 3"), (2, "#ef6c00", "4 3"), (1, "#9e9e9e", "2 3"))
COLOURS = {"reject": "#c62828", "warning": "#ef6c00", "accept": "#1b5e20"}


@dataclass(frozen=True, slots=True)
class ChartPoint:
    at: datetime
    value: str
    """As the analyser sent it (shown in the tooltip)."""
    z: float | None
    status: str
    violations: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    run: str = ""


def _y(z: float) -> float:
    inner = HEIGHT - _TOP - _BOTTOM
    clamped = max(-_SPAN, min(_SPAN, z))
    return _TOP + inner * (_SPAN - clamped) / (2 * _SPAN)


def _x(index: int, count: int) -> float:
    inner = WIDTH - _LEFT - _RIGHT
    if count <= 1:
        return _LEFT + inner / 2
    return _LEFT + inner * index / (count - 1)


def _number(value: Decimal) -> str:
    """As written on a chart's axis: 4.7, not 4.70 or 4.7E+0."""
    return f"{value.normalize():f}"


def levey_jennings(
    points: Sequence[ChartPoint],
    mean: Decimal | None,
    sd: Decimal | None,
    title: str,
    units: str = "",
) -> str:
    """The chart of ``points`` (oldest first) around ``mean`` and ``sd``, as an SVG
    element to put in a page; ``title`` names it for screen readers."""
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label={quoteattr(title)} '
        'class="lj-chart">',
        f"<title>{escape(title)}</title>",
        f'<rect x="{_LEFT}" y="{_TOP}" width="{WIDTH - _LEFT - _RIGHT}" '
        f'height="{HEIGHT - _TOP - _BOTTOM}" fill="#fff" stroke="#ccc"/>',
    ]
    for k, colour, dash in _LINES:
        for sign in (1, -1):
            y = _y(sign * k)
            label = f"{'+' if sign > 0 else '-'}{k} SD"
            if mean is not None and sd is not None:
                label += f" ({_number(mean + sign * k * sd)})"
            out.append(
                f'<line x1="{_LEFT}" x2="{WIDTH - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
                f'stroke="{colour}" stroke-dasharray="{dash}" class="sd-line sd-{k}"/>'
            )
            out.append(
                f'<text x="{_LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="10">'
                f"{escape(label)}</text>"
            )
    mean_label = "mean" if mean is None else f"mean {_number(mean)} {units}".rstrip()
    out.append(
        f'<line x1="{_LEFT}" x2="{WIDTH - _RIGHT}" y1="{_y(0):.1f}" y2="{_y(0):.1f}" '
        'stroke="#1565c0" class="mean-line"/>'
    )
    out.append(
        f'<text x="{_LEFT - 4}" y="{_y(0) + 4:.1f}" text-anchor="end" font-size="10">'
        f"{escape(mean_label)}</text>"
    )
    placed = [(i, p) for i, p in enumerate(points) if p.z is not None]
    if len(placed) > 1:
        path = " ".join(
            f"{_x(i, len(points)):.1f},{_y(p.z):.1f}" for i, p in placed if p.z is not None
        )
        out.append(f'<polyline points="{path}" fill="none" stroke="#90a4ae"/>')
    for i, p in placed:
        assert p.z is not None
        x, y = _x(i, len(points)), _y(p.z)
        colour = COLOURS.get(p.status, "#455a64")
        broken = ", ".join(p.violations) or ", ".join(p.warnings)
        tip = f"{p.at:%Y-%m-%d %H:%M} {p.value} {units} (z {p.z:+.2f})".replace("  ", " ")
        if broken:
            tip += f": {broken}"
        classes = f"point {p.status}"
        if abs(p.z) > _SPAN:
            up = p.z > 0
            tip_y = y + (6 if up else -6)
            shape = (
                f'<polygon points="{x - 5:.1f},{tip_y:.1f} {x + 5:.1f},{tip_y:.1f} '
                f'{x:.1f},{y:.1f}" fill="{colour}" class="{classes} off-scale">'
            )
            out.append(f"{shape}<title>{escape(tip)}</title></polygon>")
        else:
            radius = 5 if p.status == "reject" else 3.5
            out.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{radius}" fill="{colour}" '
                f'class="{classes}" data-rules={quoteattr(broken)}>'
                f"<title>{escape(tip)}</title></circle>"
            )
            if p.violations:
                out.append(
                    f'<text x="{x:.1f}" y="{y - 8:.1f}" text-anchor="middle" font-size="10" '
                    f'fill="{colour}" class="violation-label">{escape(p.violations[0])}</text>'
                )
    if points:
        first, last = points[0].at, points[-1].at
        out.append(
            f'<text x="{_LEFT}" y="{HEIGHT - 12}" font-size="10">{first:%Y-%m-%d %H:%M}</text>'
        )
        out.append(
            f'<text x="{WIDTH - _RIGHT}" y="{HEIGHT - 12}" font-size="10" text-anchor="end">'
            f"{last:%Y-%m-%d %H:%M}</text>"
        )
    else:
        out.append(
            f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">no result yet</text>'
        )
    out.append("</svg>")
    return "\n".join(out)
