"""Plots of a replayed scenario for the evidence report: each signal against its limits, as SVG.

Every plot shows one metric of one device over the scenario, the limits on it as labelled
horizontal lines, and each alarm on it as a shaded interval (from raised, or from when it
reached a severity, to cleared or the scenario end). Long series are reduced to the
minimum and maximum of each of about 2,000 buckets: the file stays small and no excursion
disappears. The matplotlib object API is used (no pyplot): no global figure state, no GUI.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import matplotlib as mpl
import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.transforms import blended_transform_factory

from coldwatch.replay.runner import AlarmRecord, ScenarioResult
from coldwatch.replay.timeline import DeviceStream
from coldwatch.rules.model import US

__all__ = ["BUCKETS", "Plot", "decimate", "scenario_plots"]

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

BUCKETS = 2000  # min and max of each: at most 4,000 points per line, about the width of a print
SEVERITY_COLOURS = {"alert": "#e69f00", "action": "#c62828"}  # amber and red, also as dashed/solid lines
SIGNAL_COLOUR, BUFFERED_COLOUR, REVOKED_COLOUR = "#0072b2", "#cc79a7", "#999999"
BOOLEAN_METRICS = frozenset({"door_open", "lid_open"})
MINUTES_UP_TO_S = 3 * 3600.0  # scenarios up to 3 h are plotted in minutes, longer ones in hours
GAP_FACTOR = 2.5  # a reading further than this many usual intervals from the last breaks the line

# No <metadata>: it would carry the rendering date and links to matplotlib.org.
_NO_METADATA: dict[str, str | None] = {"Creator": None, "Date": None, "Format": None, "Type": None}
_TAG_RE = re.compile(r"<[^<>]+>")  # text content has < and > escaped: this finds tags only
_ID_RE = re.compile(r'(\bid="|href="#|url\(#)')


@dataclass(frozen=True, slots=True)
class Plot:
    """One rendered plot: an ``<svg>`` element and a caption."""

    device: str
    metric: str
    svg: str
    caption: str


def decimate(values: Floats, buckets: int = BUCKETS) -> Ints:
    """Indices of the minimum and maximum of each of ``buckets`` equal runs, in order.

    A series no longer than two points per bucket is kept whole. ``values`` has no NaN.
    """
    n = len(values)
    if n <= 2 * buckets:
        return np.arange(n, dtype=np.int64)
    size = -(-n // buckets)
    rows = -(-n // size)
    padded = np.full(rows * size, np.nan)
    padded[:n] = values
    grid = padded.reshape(rows, size)
    base = np.arange(rows, dtype=np.int64) * size
    picks = np.concatenate([base + np.nanargmin(grid, axis=1), base + np.nanargmax(grid, axis=1)])
    return np.unique(picks)


def _broken(t_s: Floats, values: Floats, picks: Ints, gap_after: Bools) -> tuple[Floats, Floats]:
    """The picked points, with a NaN (a break in the line) wherever readings are missing between two."""
    gaps_before = np.concatenate([[0], np.cumsum(gap_after)])
    jump = gaps_before[picks[1:]] != gaps_before[picks[:-1]]
    at = np.flatnonzero(jump) + 1
    return np.insert(t_s[picks], at, np.nan), np.insert(values[picks], at, np.nan)


def _line(t_s: Floats, values: Floats, index: Ints) -> tuple[Floats, Floats]:
    """Decimated (x, y) of the readings at ``index``, broken where readings are missing."""
    t, v = t_s[index], values[index]
    steps = np.diff(t)
    usual = float(np.median(steps)) if len(steps) else 0.0
    gap_after = (steps > GAP_FACTOR * usual) | (np.diff(index) != 1)
    return _broken(t, v, decimate(v), np.append(gap_after, False))


def _unit(duration_s: float) -> tuple[str, float]:
    return ("min", 60.0) if duration_s <= MINUTES_UP_TO_S else ("h", 3600.0)


def _shade(ax: Axes, alarm: AlarmRecord, end_s: float, scale_s: float) -> None:
    """Shade an alarm's interval, by severity from when it reached it; revoked ones hatched."""
    until = (alarm.cleared_s if alarm.cleared_s is not None else end_s) / scale_s
    for severity, since_s in sorted(alarm.reached_s.items(), key=lambda item: item[1]):
        colour = SEVERITY_COLOURS.get(severity, REVOKED_COLOUR)
        if alarm.revoked:
            ax.axvspan(
                since_s / scale_s,
                until,
                facecolor="none",
                edgecolor=REVOKED_COLOUR,
                hatch="///",
                linewidth=0,
                zorder=0,
            )
        else:
            ax.axvspan(since_s / scale_s, until, color=colour, alpha=0.25, linewidth=0, zorder=0)
    note = f"#{alarm.id}" + (" revoked" if alarm.revoked else "")
    top = blended_transform_factory(ax.transData, ax.transAxes)
    ax.text(alarm.raised_s / scale_s, 0.98, note, transform=top, ha="left", va="top", fontsize=7)


def _alarm_keys(alarms: list[AlarmRecord]) -> list[Patch]:
    """Legend entries for the kinds of shading on a plot."""
    live = {s for a in alarms if not a.revoked for s in a.reached_s}
    keys = [
        Patch(color=colour, alpha=0.25, label=f"{severity} alarm")
        for severity, colour in SEVERITY_COLOURS.items()
        if severity in live
    ]
    if any(a.revoked for a in alarms):
        keys.append(Patch(facecolor="none", edgecolor=REVOKED_COLOUR, hatch="///", label="revoked alarm"))
    return keys


def _limits(ax: Axes, rows: list[tuple[str, str, str, str, str, float]]) -> None:
    right = blended_transform_factory(ax.transAxes, ax.transData)
    for _, _, rule, severity, direction, value in rows:
        colour = SEVERITY_COLOURS.get(severity, REVOKED_COLOUR)
        style = "--" if severity == "alert" else "-"
        ax.axhline(value, color=colour, linestyle=style, linewidth=1.0, zorder=2)
        ax.text(
            0.995,
            value,
            f"{severity} {direction} {value:g} ({rule})",
            transform=right,
            ha="right",
            va="bottom",
            fontsize=6.5,
            color=colour,
        )


def _render(fig: Figure, prefix: str) -> str:
    """The figure as an ``<svg>`` element whose ids are unique within the report."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata=_NO_METADATA)
    text = buffer.getvalue()
    svg = text[text.index("<svg") :]
    return _TAG_RE.sub(lambda tag: _ID_RE.sub(lambda m: f"{m.group(1)}{prefix}", tag.group(0)), svg)


def _plot_metric(result: ScenarioResult, stream: DeviceStream, metric: str, prefix: str) -> Plot:
    duration_s = result.loaded.scenario.duration
    unit, scale_s = _unit(duration_s)
    values = stream.values[metric]
    present = np.flatnonzero(~np.isnan(values))
    t_s = (stream.ts_us - result.loaded.scenario.start_us) / US / scale_s
    fig = Figure(figsize=(9.0, 2.6), layout="constrained")
    ax = fig.subplots()
    x, y = _line(t_s, values, present)
    boolean = metric in BOOLEAN_METRICS
    if boolean:
        ax.step(x, y, where="post", color=SIGNAL_COLOUR, linewidth=1.0, label=metric)
        ax.set_yticks([0.0, 1.0], ["closed", "open"])
        ax.set_ylim(-0.15, 1.3)
    else:
        ax.plot(x, y, color=SIGNAL_COLOUR, linewidth=0.8, label=metric)
    late = present[stream.buffered[present]]
    if len(late):
        bx, by = _line(t_s, values, late)
        ax.plot(
            bx,
            by,
            color=BUFFERED_COLOUR,
            linewidth=1.6,
            marker="." if len(late) <= 200 else "",
            markersize=3,
            label="backfilled (buffered)",
        )
    limits = [row for row in result.limits if row[0] == stream.device_id and row[1] == metric]
    _limits(ax, limits)
    plotted = {m for m, a in stream.values.items() if not np.all(np.isnan(a))}
    alarms = [
        a
        for a in result.alarms
        if a.device == stream.device_id and (a.metric == metric or a.metric not in plotted)
    ]
    for alarm in alarms:
        _shade(ax, alarm, duration_s, scale_s)
    ax.legend(
        handles=[*ax.get_legend_handles_labels()[0], *_alarm_keys(alarms)],
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        fontsize=7,
        frameon=False,
    )
    ax.set_xlim(0.0, duration_s / scale_s)
    ax.set_xlabel(f"scenario time ({unit})")
    ax.set_ylabel(metric)
    ax.set_title(f"{stream.device_id}: {metric}", loc="left", fontsize=9)
    ax.grid(visible=True, linewidth=0.3, alpha=0.5)
    svg = _render(fig, prefix)
    shown = len(x) - int(np.isnan(x).sum())
    caption = (
        f"{stream.device_id} {metric}: {len(present):,} readings"
        + (f" ({len(late):,} backfilled)" if len(late) else "")
        + (
            f", drawn as the minimum and maximum of {BUCKETS:,} buckets ({shown:,} points)"
            if shown < len(present)
            else ""
        )
        + f"; {len(limits)} limit line(s); {len(alarms)} alarm(s) shaded."
    )
    return Plot(stream.device_id, metric, svg, caption)


def scenario_plots(result: ScenarioResult, number: int) -> list[Plot]:
    """A plot per device and metric of one scenario (``number`` keeps SVG ids apart in one page)."""
    plots: list[Plot] = []
    # Deterministic, self-contained SVG: text stays text (selectable, no glyph definitions),
    # ids do not change from run to run, no mathtext surprises from user-given names.
    with mpl.rc_context(
        {"svg.fonttype": "none", "svg.hashsalt": "coldwatch", "text.parse_math": False, "font.size": 8.0}
    ):
        for stream in result.streams.values():
            for metric in sorted(stream.values):
                if np.all(np.isnan(stream.values[metric])):
                    continue
                prefix = f"s{number}-{len(plots) + 1}-"
                plots.append(_plot_metric(result, stream, metric, prefix))
    return plots
