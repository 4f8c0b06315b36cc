"""What the batch and shipment records read: series of a device, its levels, the alarms that touched a window.

The shell around :mod:`coldwatch.records.stats`: reads one metric of one device over a
window from the storage backend (both backends, through ``Storage.metric_readings``),
the configured threshold levels of that metric (the device's rules), and the alarms of
some devices whose interval [raised, cleared) meets the window, with their QA reviews and
signatures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from markupsafe import Markup
from numpy.typing import NDArray

from coldwatch.catalogue import KINDS
from coldwatch.config import Config, DeviceConfig
from coldwatch.console.chart import AlarmSpan, LimitLine
from coldwatch.console.downsample import Series, minmax
from coldwatch.records.calibration import CALIBRATION_RULE, PointCalibration
from coldwatch.records.instrument_model import calibration_states
from coldwatch.records.levels import metric_levels
from coldwatch.records.pdf import svg_chart
from coldwatch.records.stats import Level, SeriesStats, completeness, series_stats
from coldwatch.review import Review, Reviews
from coldwatch.rules.lifecycle import Alarm
from coldwatch.signatures import StoredSignature, manifestation
from coldwatch.storage.base import Storage, alarm_from_row
from coldwatch.storage.identity_store import IdentityStore, identity_store

__all__ = [
    "AlarmRecord",
    "Readings",
    "alarm_rows",
    "calibration_of_points",
    "chart",
    "figures",
    "levels_of",
    "overlapping_alarms",
    "read_series",
]

READ_MAX = 10_000_000
CHART_POINTS = 1200
_READINGS = (
    "SELECT r.ts_us, r.value, r.buffered FROM readings AS r "
    "WHERE r.device = (SELECT id FROM devices WHERE device_id = ?) "
    "AND r.metric = (SELECT id FROM metrics WHERE name = ?) "
    "AND r.ts_us >= CAST(? AS BIGINT) AND r.ts_us < CAST(? AS BIGINT) ORDER BY r.ts_us, r.seq LIMIT ?"
)
_ALARMS = (
    "SELECT a.id, a.device_id, a.metric, a.rule, a.severity, a.state, a.raised_ts_us, a.raised_received_us, "
    "a.value, a.limit_value, a.late, a.detail, a.cleared_ts_us, a.shelved_until_us, a.shelved_by, "
    "a.acknowledged_by FROM alarms AS a"
)


@dataclass(frozen=True, slots=True)
class Readings:
    """One metric of one device over a window: times, values, backfilled flags."""

    ts_us: NDArray[np.int64]
    values: NDArray[np.float64]
    buffered: NDArray[np.bool_]

    @property
    def backfilled(self) -> int:
        """How many readings the device sent late from its own buffer."""
        return int(self.buffered.sum())


@dataclass(frozen=True, slots=True)
class AlarmRecord:
    """An alarm with its review and every signature on it."""

    alarm: Alarm
    review: Review | None
    signatures: list[StoredSignature]


async def read_series(storage: Storage, device_id: str, metric: str, start_us: int, end_us: int) -> Readings:
    """The readings of one metric in [start, end), oldest first (by name: no registered devices needed)."""
    rows = await identity_store(storage).fetch(_READINGS, device_id, metric, start_us, end_us, READ_MAX)
    return Readings(
        np.array([r[0] for r in rows], dtype=np.int64),
        np.array([r[1] for r in rows], dtype=np.float64),
        np.array([bool(r[2]) for r in rows], dtype=np.bool_),
    )


async def calibration_of_points(
    store: IdentityStore, config: Config, device_ids: Sequence[str], window: tuple[int, int], now_us: int
) -> dict[str, PointCalibration]:
    """Each point's calibration state at ``now_us`` and its uncalibrated intervals in the window."""
    if not device_ids:
        return {}
    start_us, end_us = window
    return await calibration_states(
        store, device_ids, start_us, end_us, now_us, alert_before_days=config.calibration.alert_before_days
    )


def levels_of(config: Config, device: DeviceConfig, metric: str) -> list[Level]:
    """The configured levels of a device's metric (:func:`coldwatch.records.levels.metric_levels`)."""
    return metric_levels(device, config.rules, metric)


def figures(
    device: DeviceConfig, metric: str, readings: Readings, window: tuple[int, int], levels: Sequence[Level]
) -> tuple[SeriesStats, float]:
    """Statistics in [start, end) under the hold convention (cap 3 x interval), and completeness."""
    start_us, end_us = window
    spec = KINDS[device.kind].get(metric)
    stats = series_stats(
        readings.ts_us, readings.values, start_us, end_us, 3 * device.interval_s, levels,
        temperature=spec is not None and spec.unit == "degC",
    )  # fmt: skip
    return stats, completeness(stats.n, start_us, end_us, device.interval_s)


async def overlapping_alarms(
    store: IdentityStore, zone: str, device_ids: Sequence[str], start_us: int, end_us: int
) -> list[AlarmRecord]:
    """Excursions of these devices whose interval [raised, cleared or still open) meets [start, end).

    Calibration reminders (rule ``calibration_due``) are not excursions: the records report each
    point's calibration state and its readings taken out of calibration instead.
    """
    if not device_ids:
        return []
    marks = ", ".join("?" * len(device_ids))
    rows = await store.fetch(
        _ALARMS + f" WHERE a.device_id IN ({marks}) AND a.raised_ts_us < ? "
        "AND (a.cleared_ts_us IS NULL OR a.cleared_ts_us > ?) AND a.rule <> ? ORDER BY a.raised_ts_us, a.id",
        *device_ids,
        end_us,
        start_us,
        CALIBRATION_RULE,
    )
    alarms = [alarm_from_row(r) for r in rows]
    reviews = Reviews(store, zone)
    found = await reviews.reviews_of(a.id for a in alarms)
    signed = await reviews.signatures_of(a.id for a in alarms)
    return [AlarmRecord(a, found.get(a.id), signed.get(a.id, [])) for a in alarms]


def alarm_rows(records: Sequence[AlarmRecord], zone: str) -> list[dict[str, object]]:
    """Alarms as the reports show them: interval, value, review and signature manifestations."""
    out: list[dict[str, object]] = []
    for r in records:
        a = r.alarm
        out.append({
            "id": a.id,
            "device": a.key.device_id,
            "metric": a.key.metric,
            "rule": a.key.rule,
            "severity": a.severity.label,
            "state": a.state.value,
            "raised_us": a.raised_ts_us,
            "cleared_us": a.cleared_ts_us,
            "value": a.value,
            "limit": a.limit,
            "late": a.late,
            "acknowledged_by": a.acknowledged_by,
            "review": None if r.review is None else {
                "impact": r.review.impact,
                "deviation_ref": r.review.deviation_ref,
                "root_cause": r.review.root_cause,
                "comment": r.review.comment,
                "reviewer": r.review.reviewer,
                "reviewed_us": r.review.reviewed_us,
            },
            "signatures": [
                manifestation(s.full_name, s.signer, s.signed_us, zone, s.meaning) + f" ({s.action})"
                for s in r.signatures
            ],
        })  # fmt: skip
    return out


def chart(  # noqa: PLR0917 - what one chart shows
    title: str,
    metric: str,
    readings: Readings,
    start_us: int,
    end_us: int,
    levels: Sequence[Level],
    alarms: Sequence[AlarmRecord],
    zone: str,
) -> Markup:
    """A report chart: the series (at most CHART_POINTS, extremes kept), levels as lines, alarms shaded."""
    series = minmax(Series.of(readings.ts_us, readings.values, readings.buffered), CHART_POINTS,
                    start_us=start_us, end_us=end_us)  # fmt: skip
    points = list(zip(series.ts_us.tolist(), series.values.tolist(), series.buffered.tolist(), strict=True))
    lines = [LimitLine(lv.level, lv.name.split()[0], "high" if lv.above else "low") for lv in levels]
    spans = [
        AlarmSpan(r.alarm.raised_ts_us, r.alarm.cleared_ts_us, r.alarm.severity.label, f"#{r.alarm.id}")
        for r in alarms
        if r.alarm.key.metric == metric
    ]
    return svg_chart(title, metric, points, start_us, end_us, lines, spans, zone)
