"""The periodic report's figures as data (JSON, CSV rows, template context). Pure.

The same dict is the JSON twin, the CSV twin (its ``rows``: one line per point and metric,
in the order of its ``columns``) and what the PDF template shows, so the three can never
disagree. Completeness is a fraction (0 to 1) in the JSON and a percentage in the CSV
(columns ``completeness_pct``, ``point_completeness_pct``), as the PDF shows it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from coldwatch.records.aggregates import MetricFigures, PointFigures
from coldwatch.records.calibration import PointCalibration
from coldwatch.records.pdf import utc
from coldwatch.records.periods import Period
from coldwatch.records.twins import columns_in_order

__all__ = ["HEAD_COLUMNS", "TAIL_COLUMNS", "CalibrationView", "columns_of", "periodic_data"]

US = 1_000_000
# The CSV's column order (README): these, then one beyond_<level>_s column per level, then the tail.
HEAD_COLUMNS: tuple[str, ...] = ("device_id", "kind", "area", "metric", "unit", "n", "min", "max", "mean_tw",
                                 "mkt_c", "covered_s", "completeness_pct")  # fmt: skip
TAIL_COLUMNS: tuple[str, ...] = (
    "point_expected", "point_received", "point_completeness_pct", "gaps_recovered", "gaps_lost", "gaps_open",
    "comm_losses", "alarms", "alarm_duration_s", "calibration_state", "calibration_alarms",
    "out_of_calibration",
)  # fmt: skip


def _pct(fraction: float | None) -> float | None:
    return None if fraction is None else round(fraction * 100, 3)


def columns_of(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The CSV's columns in their documented order (level columns as first met)."""
    return columns_in_order(rows, HEAD_COLUMNS, TAIL_COLUMNS)


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


class CalibrationView:
    """A point's calibration as the report shows it (the lead's column when calibration is absent)."""

    def __init__(self, state: PointCalibration | None, out_of_calibration: Mapping[str, int]) -> None:
        self.state = state
        self.out_of_calibration = out_of_calibration

    def as_dict(self) -> dict[str, Any]:
        """State, instrument, due date and uncalibrated spans."""
        s = self.state
        if s is None:
            return {"state": None, "instrument": None, "due_utc": None, "uncalibrated": []}
        return {
            "state": s.state,
            "instrument": s.instrument_serial,
            "due_utc": utc(s.due_us) or None,
            "uncalibrated": [[utc(a), utc(b)] for a, b in s.uncalibrated],
        }


def _metric(m: MetricFigures, out_of_calibration: int) -> dict[str, Any]:
    return {
        "metric": m.metric,
        "unit": m.unit,
        "n": m.n,
        "min": m.min,
        "max": m.max,
        "mean_tw": _r(m.mean_tw, 4),
        "mkt_c": _r(m.mkt_c, 3),
        "covered_s": _r(m.covered_s, 3),
        "completeness": _r(m.completeness, 5),
        "first_utc": utc(m.first_us) or None,
        "last_utc": utc(m.last_us) or None,
        "beyond": [
            {"name": b.name, "level": b.level, "above": b.above, "seconds": _r(b.seconds, 3)}
            for b in m.beyond
        ],
        "out_of_calibration": out_of_calibration,
    }


def _point(p: PointFigures, cal: CalibrationView) -> dict[str, Any]:
    return {
        "device_id": p.device_id,
        "kind": p.spec.kind,
        "site": p.spec.site,
        "area": p.spec.area,
        "interval_s": p.spec.interval_s,
        "expected": p.expected,
        "received": p.received,
        "completeness": _r(p.completeness, 5),
        "seq_gaps": {
            "gaps": p.gaps.gaps,
            "recovered": p.gaps.recovered,
            "lost": p.gaps.lost,
            "open": p.gaps.open,
        },
        "alarms": {
            "count": p.alarms.count,
            "duration_s": _r(p.alarms.duration_s, 3),
            "by_severity": dict(p.alarms.by_severity),
            "comm_losses": p.alarms.comm_losses,
            "calibration": p.alarms.calibration,
        },
        "calibration": cal.as_dict(),
        "metrics": [_metric(m, cal.out_of_calibration.get(m.metric, 0)) for m in p.metrics],
    }


def _row(point: Mapping[str, Any], metric: Mapping[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "device_id": point["device_id"],
        "kind": point["kind"],
        "area": point["area"],
        "metric": metric["metric"],
        "unit": metric["unit"],
        "n": metric["n"],
        "min": metric["min"],
        "max": metric["max"],
        "mean_tw": metric["mean_tw"],
        "mkt_c": metric["mkt_c"],
        "covered_s": metric["covered_s"],
        "completeness_pct": _pct(metric["completeness"]),
    }
    for b in metric["beyond"]:
        row[f"beyond_{b['name'].replace(' ', '_')}_s"] = b["seconds"]
    row |= {
        "point_expected": point["expected"],
        "point_received": point["received"],
        "point_completeness_pct": _pct(point["completeness"]),
        "gaps_recovered": point["seq_gaps"]["recovered"],
        "gaps_lost": point["seq_gaps"]["lost"],
        "gaps_open": point["seq_gaps"]["open"],
        "comm_losses": point["alarms"]["comm_losses"],
        "alarms": point["alarms"]["count"],
        "alarm_duration_s": point["alarms"]["duration_s"],
        "calibration_state": point["calibration"]["state"],
        "calibration_alarms": point["alarms"]["calibration"],
        "out_of_calibration": metric["out_of_calibration"],
    }
    return row


def periodic_data(  # noqa: PLR0917 - what the report is about and what it found
    title: str,
    scope: Mapping[str, Any],
    period: Period,
    zone: str,
    points: Sequence[PointFigures],
    calibration: Mapping[str, CalibrationView],
) -> dict[str, Any]:
    """The report's figures: points, alarms and the flat CSV rows."""
    shown = [_point(p, calibration[p.device_id]) for p in points]
    rows = [_row(p, m) for p in shown for m in p["metrics"]]
    alarms = [
        {
            "id": a.id,
            "device_id": a.device_id,
            "metric": a.metric,
            "rule": a.rule,
            "severity": a.severity,
            "state": a.state,
            "raised_utc": utc(a.raised_ts_us),
            "cleared_utc": utc(a.cleared_ts_us) or None,
            "value": a.value,
            "limit": a.limit_value,
        }
        for p in points
        for a in p.alarm_rows
    ]
    return {
        "kind": "periodic",
        "title": title,
        "scope": dict(scope),
        "period": {
            "label": period.label,
            "every": period.every,
            "start_us": period.start_us,
            "end_us": period.end_us,
            "start_utc": utc(period.start_us),
            "end_utc": utc(period.end_us),
        },
        "timezone": zone,
        "points": shown,
        "alarms": sorted(alarms, key=lambda a: (a["raised_utc"], a["id"])),
        "columns": columns_of(rows),
        "rows": rows,
    }
