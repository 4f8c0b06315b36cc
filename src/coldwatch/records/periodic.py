"""The periodic environmental report: a site, area or device set over a day, week, month or range.

Per monitoring point: the figures of :mod:`coldwatch.records.aggregates` (computed in the
database on read connections of the report's own), the point's calibration state and the
readings it took out of calibration, a chart of its main metric (downsampled in the
database), and the alarms of the period. Stored with its PDF and CSV/JSON twins through
:class:`coldwatch.records.store.ReportStore` (audited), for QA to sign as reviewed.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Final

from markupsafe import Markup

from coldwatch.config import Config, DeviceConfig
from coldwatch.console.chart import AlarmSpan, LimitLine
from coldwatch.errors import ColdwatchError
from coldwatch.identity_config import UTC_ZONES
from coldwatch.records.aggregates import PointFigures, figures_with, open_reader
from coldwatch.records.aggregates_sql import FigureReader
from coldwatch.records.instruments import calibration_states
from coldwatch.records.levels import PointSpec, point_spec
from coldwatch.records.pdf import render_pdf, svg_chart
from coldwatch.records.periodic_data import CalibrationView, periodic_data
from coldwatch.records.periodic_layout import alarm_block, metrics_block, summary_block
from coldwatch.records.periods import Period
from coldwatch.records.provenance import Provenance, provenance
from coldwatch.records.store import ReportStore
from coldwatch.storage.base import Storage
from coldwatch.storage.identity_store import identity_store

__all__ = ["GeneratedReport", "Scope", "ScopeError", "generate_periodic", "periodic_report", "scope_devices"]

CHART_BUCKETS: Final = 360  # two points a bucket: 720 points per chart, whatever the period


class ScopeError(ColdwatchError):
    """A report asked for devices that are not registered at that site (or none at all)."""


@dataclass(frozen=True, slots=True)
class Scope:
    """Which points: a site, optionally one area, optionally named devices."""

    site: str
    area: str | None = None
    devices: tuple[str, ...] = ()

    def text(self) -> str:
        """The scope in words (the report's subject)."""
        parts = [f"site={self.site}", f"area={self.area or '*'}"]
        if self.devices:
            parts.append("devices=" + ",".join(self.devices))
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class GeneratedReport:
    """A report as generated: its figures, its PDF, and its id once stored."""

    subject: str
    query: str
    data: dict[str, Any]
    pdf: bytes
    provenance: Provenance
    report_id: int | None = None
    timings_s: dict[str, float] = field(default_factory=dict)  # how long each phase took


def scope_devices(devices: Sequence[DeviceConfig], scope: Scope) -> list[DeviceConfig]:
    """The registered devices in ``scope``, in site, area, id order."""
    at_site = [d for d in devices if d.site == scope.site]
    if not at_site:
        raise ScopeError(f"no device is registered at site {scope.site!r}")
    chosen = [d for d in at_site if scope.area is None or d.area == scope.area]
    if scope.area is not None and not chosen:
        raise ScopeError(f"no device is registered in area {scope.area!r} of site {scope.site!r}")
    if scope.devices:
        known = {d.id for d in chosen}
        unknown = [d for d in scope.devices if d not in known]
        if unknown:
            raise ScopeError(f"not registered in this site/area: {', '.join(unknown)}")
        chosen = [d for d in chosen if d.id in set(scope.devices)]
    return sorted(chosen, key=lambda d: (d.area, d.id))


def _points(rows: Sequence[tuple[int, int, float, float, int]], gap_us: int) -> list[tuple[int, float, bool]]:
    """Two points a bucket (its low and high), a break where buckets are further apart than ``gap_us``."""
    out: list[tuple[int, float, bool]] = []
    last: int | None = None
    for first_us, last_us, low, high, _ in rows:
        if last is not None and first_us - last > gap_us:
            out.append(((last + first_us) // 2, math.nan, False))
        out += (
            [(first_us, low, False), (last_us, high, False)]
            if first_us < last_us
            else [(first_us, low, False)]
        )
        last = last_us
    return out


async def _chart(reader: FigureReader, fig: PointFigures, period: Period, zone: str) -> Markup | None:
    metric = next((m for m in fig.metrics if m.n > 0), None)
    if metric is None:
        return None
    span = period.end_us - period.start_us
    rows = await reader.buckets(fig.device_id, metric.metric, period.start_us, period.end_us, CHART_BUCKETS)
    gap_us = round(fig.spec.hold_cap_s * 1_000_000) + span // CHART_BUCKETS
    limits = [
        LimitLine(lv.level, lv.name.split()[0], "high" if lv.above else "low", lv.name)
        for lv in fig.spec.levels.get(metric.metric, ())
    ]
    alarms = [
        AlarmSpan(a.raised_ts_us, a.cleared_ts_us, a.severity, a.rule)
        for a in fig.alarm_rows
        if a.metric in {metric.metric, "device"}
    ]
    points = _points(rows, gap_us)
    return svg_chart(
        f"{fig.device_id} {metric.metric}", metric.metric, points, period.start_us, period.end_us,
        # A second row of time labels only for a zone other than UTC (each SVG text costs the PDF ~4 ms).
        limits, alarms, None if zone in UTC_ZONES else zone, height=250, element_id=f"chart-{fig.device_id}",
    )  # fmt: skip


async def _calibration(  # noqa: PLR0917 - the points, their period and when
    storage: Storage,
    reader: FigureReader,
    figures: Sequence[PointFigures],
    period: Period,
    now_us: int,
    alert_days: float,
) -> dict[str, CalibrationView]:
    ids = [f.device_id for f in figures]
    states = await calibration_states(
        identity_store(storage),
        ids,
        period.start_us,
        period.end_us,
        now_us,
        alert_before_days=alert_days,
    )
    out = {}
    for fig in figures:
        state = states.get(fig.device_id)
        spans = [] if state is None else list(state.uncalibrated)
        whole = spans == [(period.start_us, period.end_us)]  # never calibrated: every reading counts
        counts = {
            m.metric: m.n
            if whole
            else (await reader.count_between(fig.device_id, m.metric, spans) if spans else 0)
            for m in fig.metrics
        }
        out[fig.device_id] = CalibrationView(state, counts)
    return out


async def _render_elsewhere(context: dict[str, Any], prov: Provenance) -> bytes:
    """The PDF, laid out in a process of its own.

    WeasyPrint is pure Python: a site's monthly report takes it tens of seconds of CPU, and
    in a thread it would hold the GIL the collector's event loop needs (ingest would slow
    down). A spawned process costs about a second to start.
    """
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return await loop.run_in_executor(pool, render_pdf, "periodic.html", context, prov)


async def periodic_report(
    storage: Storage, config: Config, scope: Scope, period: Period, now_us: int, *, workers: int = 2
) -> GeneratedReport:
    """Compute the figures and lay out the PDF (nothing stored)."""
    chosen = scope_devices(config.devices, scope)
    specs: dict[str, PointSpec] = {d.id: point_spec(d, config.rules) for d in chosen}
    zone = config.site.timezone
    title = f"Periodic environmental report {period.label}"
    timings: dict[str, float] = {}
    began = time.perf_counter()
    reader = await open_reader(storage, workers=workers)
    try:
        figures = await figures_with(reader, list(specs.values()), period.start_us, period.end_us, now_us)
        timings["figures"] = time.perf_counter() - began
        calibration = await _calibration(
            storage, reader, figures, period, now_us, config.calibration.alert_before_days
        )
        timings["calibration"] = time.perf_counter() - began - sum(timings.values())
        charts = {f.device_id: await _chart(reader, f, period, zone) for f in figures}
        timings["charts"] = time.perf_counter() - began - sum(timings.values())
    finally:
        await reader.close()
    scope_dict = {"site": scope.site, "area": scope.area, "devices": list(scope.devices)}
    data = periodic_data(title, scope_dict, period, zone, figures, calibration)
    query = (
        f"periodic {scope.text()} {period.label} [{data['period']['start_utc']}, {data['period']['end_utc']})"
    )
    prov = await provenance(storage, query, now_us, config.site.notice)
    blocks = {
        "summary": summary_block(data["points"]),
        "metrics": {p["device_id"]: metrics_block(p) for p in data["points"]},
        "alarms": alarm_block(data["alarms"]),
    }
    context = {
        "title": title,
        "site": scope.site,
        "zone": zone,
        "data": data,
        "charts": charts,
        "blocks": blocks,
    }
    pdf = await _render_elsewhere(context, prov)
    timings["pdf"] = time.perf_counter() - began - sum(timings.values())
    return GeneratedReport(f"{scope.text()} {period.label}", query, data, pdf, prov, timings_s=timings)


async def generate_periodic(  # noqa: PLR0917 - what to report on, when, by whom, where it goes
    storage: Storage,
    config: Config,
    scope: Scope,
    period: Period,
    who: str,
    now_us: int,
    path: str | None = None,
    *,
    subject: str | None = None,
) -> GeneratedReport:
    """Generate the report and store it (audited ``report.generated``); the stored report's id set."""
    report = await periodic_report(storage, config, scope, period, now_us)
    if subject is not None:
        report = replace(report, subject=subject)
    store = ReportStore(identity_store(storage), config.site.timezone)
    report_id = await store.save("periodic", report.subject, report.query, report.data, report.pdf, who,
                                 now_us, report.provenance, path)  # fmt: skip
    return replace(report, report_id=report_id)
