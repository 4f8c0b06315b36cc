"""The excursion report of one alarm: what it shows, built from its inputs. Pure: no I/O, no clock.

The report a QA person attaches to a deviation: the alarm's facts; a chart from before to
after the excursion (``max(1 h, alarm duration)`` on each side, never past generation)
with the metric's configured limits as lines, the alarm interval shaded and backfilled
readings marked; the statistics of the readings during the alarm and over the whole
chart window (peak, time-weighted mean, MKT for temperatures, time strictly beyond each
configured level), under the hold convention of :mod:`coldwatch.records.stats`; every
transition; the notifications sent and their delivery attempts; the signatures
(acknowledgement, shelving, QA review) with their manifestations; which readings
arrived late or were backfilled from a device's buffer; and the point's calibration, with
the readings taken out of calibration (:mod:`coldwatch.records.calflag`).

The shell (:mod:`coldwatch.records.excursion_source`) reads the inputs and stores the
generated report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from coldwatch.alarm_values import value_unit
from coldwatch.console.chart import AlarmSpan, LimitLine
from coldwatch.records.calflag import calibration_facts, count_in_spans
from coldwatch.records.calibration import PointCalibration
from coldwatch.records.stats import Level, SeriesStats, series_stats, uncovered

__all__ = [
    "MARGIN_MIN_S",
    "ExcursionInputs",
    "Notification",
    "alarm_span",
    "excursion_data",
    "window",
    "worst_severity",
]

US: Final = 1_000_000
MARGIN_MIN_S: Final = 3600.0  # at least an hour of context before and after
_BACKFILL_LISTED: Final = 50  # backfilled readings listed one by one (beyond: counted only)


@dataclass(frozen=True, slots=True)
class Notification:
    """One notification of the alarm and its delivery attempts (at_us, ok, status, error)."""

    channel: str
    target: str
    created_us: int
    delivered_us: int | None
    attempts: int
    last_error: str | None
    tries: list[tuple[int, bool, int | None, str | None]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ExcursionInputs:
    """Everything the excursion report of one alarm shows, as read from the database and configuration."""

    alarm: dict[str, Any]  # id, device, metric, rule, severity, state, raised/cleared times, value, limit...
    device: dict[str, Any]  # id, kind, site, area, interval_s
    unit: str
    temperature: bool
    limits: Sequence[LimitLine]
    readings: Sequence[tuple[int, float, int, bool]]  # (ts_us, value, received_us, buffered) in the window
    history: Sequence[dict[str, Any]]
    notifications: Sequence[Notification]
    signatures: Sequence[dict[str, Any]]  # manifestation_json of each, plus object_type
    review: dict[str, Any] | None
    zone: str
    window: tuple[int, int]
    alarm_end_us: int  # cleared, or generation time while still active
    calibration: PointCalibration | None = None  # the point's, over the window (None: not looked up)


def window(raised_us: int, cleared_us: int | None, now_us: int) -> tuple[int, int, int]:
    """(chart start, chart end, end of the alarm interval) for an alarm raised and cleared (or not) by now."""
    alarm_end = min(cleared_us if cleared_us is not None else now_us, now_us)
    alarm_end = max(alarm_end, raised_us)
    margin = int(max(MARGIN_MIN_S * US, alarm_end - raised_us))
    return raised_us - margin, min(alarm_end + margin, max(now_us, raised_us + 1)), alarm_end


def _levels(limits: Sequence[LimitLine]) -> list[Level]:
    seen: dict[tuple[float, bool], Level] = {}
    for lim in limits:
        above = lim.direction == "high"
        name = f"{lim.severity} {lim.direction} {lim.value:.10g}"
        seen.setdefault((lim.value, above), Level(name, lim.value, above))
    return sorted(seen.values(), key=lambda lv: (not lv.above, -lv.level if lv.above else lv.level))


def _direction(inputs: ExcursionInputs) -> bool:
    """True when the alarm is about high values (a low limit of its rule: False)."""
    rule = inputs.alarm["rule"]
    for lim in inputs.limits:
        if lim.rule == rule and inputs.alarm.get("limit") is not None and lim.value == inputs.alarm["limit"]:
            return lim.direction != "low"
    value, limit = inputs.alarm.get("value"), inputs.alarm.get("limit")
    return not (value is not None and limit is not None and value < limit)


def _stats_row(  # noqa: PLR0917 - one row of figures
    name: str, unit: str, start: int, end: int, stats: SeriesStats, peak: tuple[float, int] | None
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "window": name,
        "unit": unit,
        "start_us": start,
        "end_us": end,
        "readings": stats.n,
        "covered_s": round(stats.covered_s, 3),
        "no_data_s": round(max(0.0, (end - start) / US - stats.covered_s), 3),
        "min": stats.min,
        "max": stats.max,
        "peak": None if peak is None else peak[0],
        "peak_ts_us": None if peak is None else peak[1],
        "mean_tw": stats.mean_tw,
        "mkt_c": stats.mkt_c,
    }
    for lt in stats.beyond:
        row[f"beyond {lt.name} s"] = round(lt.seconds, 3)
    return row


def _flagged(ts: np.ndarray, inputs: ExcursionInputs, start: int, end: int) -> int:
    """Readings in [start, end) taken while the point was out of calibration."""
    spans = [] if inputs.calibration is None else inputs.calibration.uncalibrated
    return count_in_spans(ts[(ts >= start) & (ts < end)], spans)


def _peak(ts: np.ndarray, vals: np.ndarray, start: int, end: int, high: bool) -> tuple[float, int] | None:
    inside = (ts >= start) & (ts < end)
    if not inside.any():
        return None
    ts_in, vals_in = ts[inside], vals[inside]
    at = int(np.argmax(vals_in) if high else np.argmin(vals_in))
    return float(vals_in[at]), int(ts_in[at])


def _backfill(inputs: ExcursionInputs, late_after_us: int) -> dict[str, Any]:
    buffered = [r for r in inputs.readings if r[3]]
    late = [r for r in inputs.readings if not r[3] and r[2] - r[0] > late_after_us]
    return {
        "buffered": len(buffered),
        "late": len(late),
        "late_after_s": late_after_us / US,
        "listed": [
            {"ts_us": ts, "value": v, "received_us": rec, "buffered": buf}
            for ts, v, rec, buf in sorted([*buffered, *late])[:_BACKFILL_LISTED]
        ],
        "alarm_late": bool(inputs.alarm.get("late")),
    }


def excursion_data(inputs: ExcursionInputs) -> dict[str, Any]:
    """The report's figures (stored as JSON, shown in the PDF; ``rows`` is the CSV twin)."""
    start, end = inputs.window
    raised, alarm_end = int(inputs.alarm["raised_ts_us"]), inputs.alarm_end_us
    cap = 3.0 * float(inputs.device["interval_s"])
    ts = np.array([r[0] for r in inputs.readings], dtype=np.int64)
    vals = np.array([r[1] for r in inputs.readings], dtype=np.float64)
    levels = _levels(inputs.limits)
    high = _direction(inputs)
    during = series_stats(ts, vals, raised, alarm_end, cap, levels, inputs.temperature)
    whole = series_stats(ts, vals, start, end, cap, levels, inputs.temperature)
    rows = [
        _stats_row(
            "alarm interval", inputs.unit, raised, alarm_end, during, _peak(ts, vals, raised, alarm_end, high)
        ),
        _stats_row("chart window", inputs.unit, start, end, whole, _peak(ts, vals, start, end, high)),
    ]
    rows[0]["out_of_calibration"] = _flagged(ts, inputs, raised, alarm_end)
    rows[1]["out_of_calibration"] = flagged = _flagged(ts, inputs, start, end)
    ident = {"alarm": inputs.alarm["id"], "device": inputs.alarm["device"], "metric": inputs.alarm["metric"]}
    rows = [{**ident, **row} for row in rows]
    return {
        "kind": "excursion",
        "alarm": inputs.alarm,
        "device": inputs.device,
        "unit": inputs.unit,
        "value_unit": value_unit(str(inputs.alarm["rule"]), inputs.unit),
        "temperature": inputs.temperature,
        "high": high,
        "window": {"start_us": start, "end_us": end, "alarm_end_us": alarm_end, "hold_cap_s": cap},
        "levels": [lv._asdict() for lv in levels],
        "limits": [
            {"value": x.value, "severity": x.severity, "direction": x.direction, "rule": x.rule}
            for x in inputs.limits
        ],
        "rows": rows,
        "columns": list(rows[0]),
        "transitions": list(inputs.history),
        "notifications": [
            {
                "channel": n.channel,
                "target": n.target,
                "created_us": n.created_us,
                "delivered_us": n.delivered_us,
                "attempts": n.attempts,
                "last_error": n.last_error,
                "tries": [{"at_us": a, "ok": ok, "status": st, "error": err} for a, ok, st, err in n.tries],
            }
            for n in inputs.notifications
        ],
        "signatures": list(inputs.signatures),
        "review": inputs.review,
        "backfill": _backfill(inputs, int(cap * US)),
        "no_data": uncovered(ts, start, end, cap),
        "zone": inputs.zone,
        "calibration": calibration_facts(inputs.calibration, flagged, whole.n),
    }


def worst_severity(data: dict[str, Any]) -> str:
    """The alarm's worst severity over its history (an alarm may step down before it clears)."""
    seen = {str(t.get("severity")) for t in data["transitions"]} | {str(data["alarm"]["severity"])}
    return "action" if "action" in seen else str(data["alarm"]["severity"])


def alarm_span(data: dict[str, Any]) -> AlarmSpan:
    """The shaded alarm interval of the report's chart (in its worst severity's colour)."""
    alarm = data["alarm"]
    cleared = alarm.get("cleared_ts_us")
    return AlarmSpan(int(alarm["raised_ts_us"]), cleared, worst_severity(data), f"alarm {alarm['id']}")
