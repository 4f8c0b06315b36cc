"""A metric's chart as plain SVG markup, rendered on the server. Pure: no I/O, no clock.

The same markup serves the console (inline in a page) and printed reports: no script,
no external font or image, no CSS classes (presentation attributes only), every text
escaped. The drawing scales with its ``viewBox``; render a narrower ``width`` for phones
(fewer ticks, the same font size) rather than shrinking a wide one.

What a chart shows: the series (a break where data is missing, the gap shaded), the
alert and action limits of both directions as labelled lines, the alarm interval(s)
shaded, backfilled (buffered, late) readings marked, a time axis in UTC and in the
site's time zone, the unit, and a text alternative (``<title>`` and a ``<desc>`` data
summary for screen readers).

Why hand-written and not matplotlib (already a dependency): a 2,000-point chart renders
here in about a millisecond; matplotlib's SVG backend took about 60 ms for the same chart,
embeds its own styling, and names its elements by counters rather than meaning
(measured by benchmarks/console_pages.py and tests/test_console_chart.py).
"""

from __future__ import annotations

import hashlib
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from html import escape
from typing import Final
from zoneinfo import ZoneInfo

import numpy as np

from coldwatch.catalogue import KINDS
from coldwatch.console.downsample import Series
from coldwatch.identity_config import UTC_ZONES

__all__ = ["GAP_FILL", "SPAN_FILL", "AlarmSpan", "Chart", "LimitLine", "render_svg", "unit_of"]

US: Final = 1_000_000
FONT: Final = "system-ui, -apple-system, 'Segoe UI', Roboto, Arial, sans-serif"  # local fonts only
SERIES_COLOUR: Final = "#1f4e79"
BACKFILL_COLOUR: Final = "#7b3fa0"
COLOURS: Final = {"action": "#b03a2e", "alert": "#b9770e", "range": "#566573"}
SPAN_FILL: Final = {"action": "#f5b7b1", "alert": "#fad7a0"}
GAP_FILL: Final = "#d5d8dc"
_GRID: Final = "#e5e7e9"
_DISPLAY_UNITS: Final = {"degC": "°C", "count/m3": "/m³", "bool": "", "deg": "°"}
# Candidate time-tick steps, seconds.
_MOST_MARKS: Final = 60  # more backfilled points than this: coloured line only
_STEPS_S: Final = (
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200,
    86400, 2 * 86400, 7 * 86400,
)  # fmt: skip


def unit_of(metric: str) -> str:
    """The display unit of ``metric`` (from the device catalogue; "" when unitless or unknown)."""
    for specs in KINDS.values():
        spec = specs.get(metric)
        if spec is not None:
            return _DISPLAY_UNITS.get(spec.unit, spec.unit)
    return ""


@dataclass(frozen=True, slots=True)
class LimitLine:
    """A limit on the metric's value: ``severity`` alert, action (or range), ``direction`` high or low."""

    value: float
    severity: str
    direction: str
    rule: str = ""


@dataclass(frozen=True, slots=True)
class AlarmSpan:
    """An alarm's interval, from raised to cleared (``end_us`` None: still active)."""

    start_us: int
    end_us: int | None
    severity: str
    label: str = ""


@dataclass(frozen=True, slots=True)
class Chart:
    """What to draw: one metric's (downsampled) series over [start_us, end_us)."""

    title: str
    metric: str
    series: Series
    start_us: int
    end_us: int
    limits: Sequence[LimitLine] = ()
    alarms: Sequence[AlarmSpan] = ()
    zone: ZoneInfo | None = None  # the site's time zone (a second row of time labels)
    unit: str | None = None  # default: from the metric name
    readings: int | None = None  # how many readings the series stands for (before downsampling)
    gaps: Sequence[tuple[int, int]] = field(default=())  # the gaps to shade (default: the series' breaks)


@dataclass(frozen=True, slots=True)
class _Frame:
    """Plot area and scales."""

    left: float
    top: float
    width: float
    height: float
    t0: int
    t1: int
    y0: float
    y1: float

    def x(self, ts_us: float) -> float:
        return self.left + (ts_us - self.t0) * self.width / max(self.t1 - self.t0, 1)

    def y(self, value: float) -> float:
        return self.top + (self.y1 - value) * self.height / (self.y1 - self.y0)

    def clamp_x(self, x: float) -> float:
        return min(max(x, self.left), self.left + self.width)


def _nice_step(span: float, ticks: int) -> float:
    raw = span / max(ticks, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    return next(f * power for f in (1.0, 2.0, 2.5, 5.0, 10.0) if f * power >= raw)


def _fmt(value: float) -> str:
    """A value for a label: few digits, no float noise."""
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 10_000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 1:
        return f"{value:.1f}".rstrip("0").rstrip(".") if magnitude < 10 else f"{value:.1f}"
    return f"{value:.3g}"


def _axis_label(value: float, room: float) -> str:
    """A value-axis label that fits left of the plot: 3,000,000 becomes 3M, 350,000 stays."""
    text = _fmt(value)
    if len(text) * 6.2 <= room:  # about 6.2 units a character at 11 px
        return text
    for divisor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= divisor:
            return f"{value / divisor:.3g}{suffix}"
    return text


def _with_unit(value: float, unit: str) -> str:
    if not unit:
        return _fmt(value)
    return f"{_fmt(value)}{unit}" if unit in {"°C", "%", "°", "/m³"} else f"{_fmt(value)} {unit}"


def _when(ts_us: int, zone: ZoneInfo | None = None) -> str:
    moment = datetime.fromtimestamp(ts_us / US, UTC)
    if zone is None:
        return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
    local = moment.astimezone(zone)
    return local.strftime("%Y-%m-%d %H:%M:%S ") + (local.tzname() or zone.key)


def _value_range(chart: Chart, values: np.ndarray) -> tuple[float, float]:
    real = values[~np.isnan(values)]
    candidates = [float(real.min()), float(real.max())] if real.size else []
    candidates += [lim.value for lim in chart.limits]
    if not candidates:
        return 0.0, 1.0
    lo, hi = min(candidates), max(candidates)
    pad = (hi - lo) * 0.08 if hi > lo else max(abs(hi) * 0.05, 1.0)
    return lo - pad, hi + pad


def _time_ticks(t0: int, t1: int, most: int) -> tuple[list[int], int]:
    span_s = max((t1 - t0) / US, 1)
    step = next((s for s in _STEPS_S if span_s / s <= most), _STEPS_S[-1])
    while span_s / step > most:
        step *= 2
    first = -(-t0 // (step * US)) * step * US
    return list(range(first, t1 + 1, step * US)), step


def _tick_label(ts_us: int, step_s: int, zone: ZoneInfo | None) -> str:
    moment = datetime.fromtimestamp(ts_us / US, UTC)
    if zone is not None:
        moment = moment.astimezone(zone)
    if step_s >= 86400:
        return moment.strftime("%d %b")
    return moment.strftime("%H:%M" if step_s >= 60 else "%H:%M:%S")


def _text(x: float, y: float, text: str, *, size: int = 12, anchor: str = "start", fill: str = "#222") -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="{fill}">'
        f"{escape(text)}</text>"
    )


def _path(frame: _Frame, series: Series) -> str:
    """A path through the series' points: a new subpath after every break."""
    if not len(series):
        return ""
    xs = frame.left + (series.ts_us - frame.t0).astype(np.float64) * (
        frame.width / max(frame.t1 - frame.t0, 1)
    )
    ys = frame.top + (frame.y1 - series.values) * (frame.height / (frame.y1 - frame.y0))
    parts: list[str] = []
    move = True
    for x, y in zip(xs.tolist(), ys.tolist(), strict=True):
        if y != y:  # NaN: a break  # noqa: PLR0124
            move = True
            continue
        parts.append(f"{'M' if move else 'L'}{x:.1f} {y:.1f}")
        move = False
    return "".join(parts)


def _summary(chart: Chart, unit: str, gaps: Sequence[tuple[int, int]]) -> str:
    """The text alternative: the data a sighted reader takes from the chart."""
    s = chart.series
    real = ~np.isnan(s.values)
    count = chart.readings if chart.readings is not None else int(real.sum())
    lines = [
        f"{chart.metric} from {_when(chart.start_us)} to {_when(chart.end_us)}: {count:,} readings"
        + (f" (drawn from {int(real.sum()):,} points)" if count != int(real.sum()) else "")
        + "."
    ]
    if real.any():
        vals, ts = s.values[real], s.ts_us[real]
        lo, hi = int(np.argmin(vals)), int(np.argmax(vals))
        lines.append(
            f"Minimum {_with_unit(float(vals[lo]), unit)} at {_when(int(ts[lo]))}; "
            f"maximum {_with_unit(float(vals[hi]), unit)} at {_when(int(ts[hi]))}; "
            f"last {_with_unit(float(vals[-1]), unit)} at {_when(int(ts[-1]))}."
        )
    lines += [
        f"{lim.severity.capitalize()} limit ({lim.direction}): {_with_unit(lim.value, unit)}."
        for lim in chart.limits
    ]
    for span in chart.alarms:
        end = _when(span.end_us) if span.end_us is not None else "still active"
        lines.append(f"{span.severity.capitalize()} alarm from {_when(span.start_us)} to {end}.")
    for a, b in gaps:
        lines.append(f"No data from {_when(a)} to {_when(b)}.")
    backfilled = int(s.buffered[real].sum()) if real.any() else 0
    if backfilled:
        lines.append(f"{backfilled} points backfilled by the device (sent late from its buffer).")
    return " ".join(lines)


def _distinct(limits: Sequence[LimitLine]) -> list[LimitLine]:
    """Limits highest first, one line per value and direction (the most severe one's)."""
    rank = {"action": 0, "alert": 1}
    best: dict[tuple[float, str], LimitLine] = {}
    for lim in limits:
        key = (lim.value, lim.direction)
        if key not in best or rank.get(lim.severity, 2) < rank.get(best[key].severity, 2):
            best[key] = lim
    return sorted(best.values(), key=lambda lim: -lim.value)


# A label's box: (left, top, right, bottom).
_Box = tuple[float, float, float, float]


def _overlaps(box: _Box, others: Sequence[_Box]) -> bool:
    return any(box[0] < o[2] and o[0] < box[2] and box[1] < o[3] and o[1] < box[3] for o in others)


def _limit_labels(
    frame: _Frame, limits: Sequence[LimitLine], unit: str
) -> tuple[list[str], list[str], list[_Box]]:
    """Limit lines; apart, to be drawn over the data, a label at each one's right end, pushed apart.

    Also the labels' boxes, which the alarm labels keep clear of.
    """
    lines: list[str] = []
    labels: list[str] = []
    boxes: list[_Box] = []
    placed: list[float] = []
    right = frame.left + frame.width
    for lim in _distinct(limits):
        colour = COLOURS.get(lim.severity, COLOURS["range"])
        y = frame.y(lim.value)
        dash = {"alert": ' stroke-dasharray="6 4"', "range": ' stroke-dasharray="2 3"'}.get(lim.severity, "")
        lines.append(
            f'<line x1="{frame.left:.1f}" y1="{y:.1f}" x2="{right:.1f}" y2="{y:.1f}" stroke="{colour}" '
            f'stroke-width="1.5"{dash}/>'
        )
        label_y = y - 4
        if placed and label_y < placed[-1] + 14:
            label_y = placed[-1] + 14
        placed.append(label_y)
        text = f"{lim.severity} {lim.direction} {_with_unit(lim.value, unit)}"
        width = 6.6 * len(text) + 6
        labels.append(
            f'<rect x="{right - width:.1f}" y="{label_y - 11:.1f}" width="{width:.1f}" height="14" '
            f'fill="#ffffff" fill-opacity="0.85"/>'
        )
        labels.append(_text(right - 3, label_y, text, size=11, anchor="end", fill=colour))
        boxes.append((right - width, label_y - 11, right, label_y + 3))
    return lines, labels, boxes


def _band(frame: _Frame, a: float, b: float, *, fill: str, opacity: str, least: float) -> str:
    """A full-height shaded band of the plot between x positions ``a`` and ``b``."""
    return (
        f'<rect x="{a:.1f}" y="{frame.top:.1f}" width="{max(b - a, least):.1f}" '
        f'height="{frame.height:.1f}" fill="{fill}" fill-opacity="{opacity}"/>'
    )


def _value_axis(frame: _Frame, unit: str) -> list[str]:
    """Horizontal grid lines with their values, and the unit above the axis."""
    out = []
    step = _nice_step(frame.y1 - frame.y0, max(3, int(frame.height // 45)))
    tick = math.ceil(frame.y0 / step) * step
    right = frame.left + frame.width
    while tick <= frame.y1:
        y = frame.y(tick)
        out.append(
            f'<line x1="{frame.left:.1f}" y1="{y:.1f}" x2="{right:.1f}" y2="{y:.1f}" stroke="{_GRID}" '
            'stroke-width="1"/>'
        )
        out.append(
            _text(frame.left - 6, y + 4, _axis_label(round(tick, 10), frame.left - 8), size=11, anchor="end",
                  fill="#444")
        )  # fmt: skip
        tick += step
    if unit:
        out.append(_text(8, frame.top - 6, unit, size=11, fill="#444"))
    return out


def _time_axis(frame: _Frame, chart: Chart) -> list[str]:
    """Vertical grid lines at round times, labelled in UTC and, beneath, in the site's zone."""
    out = []
    bottom = frame.top + frame.height
    ticks, step_s = _time_ticks(chart.start_us, chart.end_us, max(2, int(frame.width // 90)))
    for ts in ticks:
        x = frame.x(ts)
        if x < frame.left + 28 or x > frame.left + frame.width - 16:
            continue  # its label would run into the zone names or off the drawing
        out.append(
            f'<line x1="{x:.1f}" y1="{frame.top:.1f}" x2="{x:.1f}" y2="{bottom + 4:.1f}" stroke="{_GRID}"/>'
        )
        out.append(
            _text(x, bottom + 17, _tick_label(ts, step_s, None), size=11, anchor="middle", fill="#333")
        )
        if chart.zone is not None:
            local = _tick_label(ts, step_s, chart.zone)
            out.append(_text(x, bottom + 31, local, size=11, anchor="middle", fill="#666"))
    out.append(_text(frame.left - 6, bottom + 17, "UTC", size=10, anchor="end", fill="#333"))
    if chart.zone is not None:
        abbrev = datetime.fromtimestamp(chart.start_us / US, UTC).astimezone(chart.zone).tzname() or ""
        out.append(_text(frame.left - 6, bottom + 31, abbrev, size=10, anchor="end", fill="#666"))
    return out


def _shading(
    frame: _Frame, chart: Chart, gaps: Sequence[tuple[int, int]], taken: Sequence[_Box] = ()
) -> tuple[list[str], list[str]]:
    """Alarm intervals and gaps as bands; their labels apart (drawn last, over the data).

    An alarm's label goes at the foot of its band unless a label already there (``taken``:
    the limits', or an earlier alarm's) would cover it or be covered; then the first place
    clear of them, up the band.
    """
    bands, labels = [], []
    boxes = list(taken)
    for span in chart.alarms:
        a = frame.clamp_x(frame.x(span.start_us))
        b = frame.clamp_x(frame.x(span.end_us if span.end_us is not None else chart.end_us))
        bands.append(
            _band(
                frame, a, b, fill=SPAN_FILL.get(span.severity, SPAN_FILL["alert"]), opacity="0.55", least=1.5
            )
        )
        label = span.label or f"{span.severity} alarm"
        # At the foot of the band (the limit labels hold the top right), kept inside the plot.
        width = 6.6 * len(label) + 4
        x = min(a + 3, frame.left + frame.width - width + 1)
        foot = frame.top + frame.height - 6
        y = next(
            (
                at
                for at in (foot - 16 * step for step in range(int((frame.height - 14) // 16) + 1))
                if not _overlaps((x - 2, at - 11, x - 2 + width, at + 3), boxes)
            ),
            foot,
        )
        boxes.append((x - 2, y - 11, x - 2 + width, y + 3))
        labels.append(
            f'<rect x="{x - 2:.1f}" y="{y - 11:.1f}" width="{width:.1f}" height="14" '
            'fill="#ffffff" fill-opacity="0.85"/>'
        )
        labels.append(_text(x, y, label, size=11, fill=COLOURS.get(span.severity, "#222")))
    for a_us, b_us in gaps:
        a, b = frame.clamp_x(frame.x(a_us)), frame.clamp_x(frame.x(b_us))
        bands.append(_band(frame, a, b, fill=GAP_FILL, opacity="0.6", least=1.0))
        if b - a > 44:
            bottom = frame.top + frame.height
            labels.append(_text((a + b) / 2, bottom - 6, "no data", size=11, anchor="middle", fill="#4d5656"))
    return bands, labels


def _data(frame: _Frame, series: Series) -> list[str]:
    """The series' line (or a note when there is nothing), backfilled readings and their legend."""
    path = _path(frame, series)
    if not path:
        middle = (frame.left + frame.width / 2, frame.top + frame.height / 2)
        return [_text(*middle, "No readings in this range", size=13, anchor="middle", fill="#555")]
    out = [
        (
            f'<path d="{path}" fill="none" stroke="{SERIES_COLOUR}" stroke-width="1.6" '
            'stroke-linejoin="round" stroke-linecap="round"/>'
        )
    ]
    marks = _backfill_marks(frame, series)
    if marks:
        legend_x = frame.left + frame.width - 118  # top right, beside the title
        out += [
            marks,
            (
                f'<path d="M{legend_x:.1f} {frame.top - 18:.1f}l4 4l-4 4l-4 -4z" fill="#ffffff" '
                f'stroke="{BACKFILL_COLOUR}" stroke-width="1.2"/>'
            ),
            _text(legend_x + 8, frame.top - 10, "backfilled", size=11, fill=BACKFILL_COLOUR),
        ]
    return out


_TITLE_SIZE: Final = 14
_TITLE_CHAR: Final = 0.6 * _TITLE_SIZE  # DejaVu Sans averages about 0.6 em a character
_TITLE_DROP: Final = 30.0  # how far the plot moves down for a title of two lines


def _title_lines(title: str, room: float, *, legend: bool) -> tuple[list[str], float]:
    """The title's lines (one, or two on a narrow chart) and how far the plot moves down for them.

    A title that does not fit on one line, or not beside the "backfilled" legend, is broken
    at spaces onto two lines and the plot (with its legend) moves down beneath them; what
    still does not fit is cut with an ellipsis (the whole title stays in the ``<title>``
    element and on the page around the chart).
    """
    chars = max(int(room / _TITLE_CHAR), 8)
    if len(title) <= chars and not (legend and len(title) * _TITLE_CHAR > room - 122):
        return [title], 0.0
    lines = textwrap.wrap(title, chars, break_long_words=True, break_on_hyphens=False) or [title]
    if len(lines) > 2:
        rest = " ".join(lines[1:])
        lines = [lines[0], rest[: chars - 1].rstrip() + "…"]
    return lines, _TITLE_DROP


def render_svg(chart: Chart, *, width: int = 720, height: int = 360, element_id: str | None = None) -> str:
    """The chart as a standalone ``<svg>`` element (scales to its container through its viewBox).

    ``element_id`` prefixes the ids of the title and description (unique per page; default
    derived from the title).
    """
    if chart.zone is not None and chart.zone.key in UTC_ZONES:
        chart = replace(chart, zone=None)  # a UTC site: one row of time labels, not the same twice
    unit = unit_of(chart.metric) if chart.unit is None else chart.unit
    ident = element_id or "chart-" + hashlib.sha256(chart.title.encode()).hexdigest()[:10]
    y0, y1 = _value_range(chart, chart.series.values)
    legend = bool((chart.series.buffered & ~np.isnan(chart.series.values)).any())
    titles, drop = _title_lines(chart.title, width - 72.0, legend=legend)
    frame = _Frame(
        56.0, 34.0 + drop, width - 68.0, height - 96.0 - drop, chart.start_us, chart.end_us, y0, y1
    )
    gaps = list(chart.gaps) or chart.series.gaps()
    limit_lines, limit_labels, limit_boxes = _limit_labels(frame, chart.limits, unit)
    bands, labels = _shading(frame, chart, gaps, limit_boxes)
    zone_note = "time: UTC" + (f" / {chart.zone.key} (grey)" if chart.zone is not None else "")
    day = datetime.fromtimestamp(chart.start_us / US, UTC).strftime("%Y-%m-%d")
    return "\n".join([
        (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" role="img" '
        f'aria-labelledby="{ident}-t {ident}-d" font-family="{escape(FONT)}" '
        'preserveAspectRatio="xMidYMid meet">'),
        f'<title id="{ident}-t">{escape(chart.title)}</title>',
        f'<desc id="{ident}-d">{escape(_summary(chart, unit, gaps))}</desc>',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
        *(_text(frame.left, 20 + 18 * i, t, size=_TITLE_SIZE, fill="#111") for i, t in enumerate(titles)),
        *_value_axis(frame, unit),
        *_time_axis(frame, chart),
        *bands,
        _text(frame.left, height - 10, f"{zone_note}, from {day}", size=11, fill="#555"),
        (f'<rect x="{frame.left:.1f}" y="{frame.top:.1f}" width="{frame.width:.1f}" '
        f'height="{frame.height:.1f}" fill="none" stroke="#aab7b8"/>'),
        *limit_lines,
        *_data(frame, chart.series),
        *limit_labels,
        *labels,
        "</svg>",
    ])  # fmt: skip


def _backfill_marks(frame: _Frame, series: Series) -> str:
    """Backfilled points: their stretch of line redrawn in another colour, diamonds when sparse."""
    mask = series.buffered & ~np.isnan(series.values)
    if not mask.any():
        return ""
    overlay = Series(series.ts_us, np.where(mask, series.values, np.nan), np.zeros_like(series.buffered))
    out = [
        (
            f'<path d="{_path(frame, overlay)}" fill="none" stroke="{BACKFILL_COLOUR}" '
            'stroke-width="2.2" stroke-linejoin="round"/>'
        )
    ]
    if int(mask.sum()) <= min(_MOST_MARKS, frame.width / 12):
        ts, vals = series.ts_us[mask], series.values[mask]
        xs = frame.left + (ts - frame.t0).astype(np.float64) * (frame.width / max(frame.t1 - frame.t0, 1))
        ys = frame.top + (frame.y1 - vals) * (frame.height / (frame.y1 - frame.y0))
        d = "".join(
            f"M{x:.1f} {y - 3.5:.1f}l3.5 3.5l-3.5 3.5l-3.5 -3.5z"
            for x, y in zip(xs.tolist(), ys.tolist(), strict=True)
        )
        out.append(f'<path d="{d}" fill="#ffffff" stroke="{BACKFILL_COLOUR}" stroke-width="1.2"/>')
    return "\n".join(out)
