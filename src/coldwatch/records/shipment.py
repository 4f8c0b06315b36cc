"""The shipment record: a cryoshipper's trace from dispatch to receipt, with both ends signed.

Both probes (``temp_c``: probe A, ``temp_b_c``: probe B) from dispatch to receipt (or to
the generation time while in transit): min, max, MKT, time above each level of
``records.shipment_levels_c`` (default -150 C and -135 C) under the hold convention of
:mod:`coldwatch.records.stats`; backfilled readings (sent late from the logger's buffer,
e.g. after a flight) are included, counted and marked on the charts. Lid and tilt events
from the readings; every alarm of the shipper during the transit with its review; the
hold-time forecast stored at dispatch and the smallest margin during transit
(:mod:`coldwatch.records.shipment_model`); the shipper's calibration and the readings taken out
of calibration (:mod:`coldwatch.records.calflag`). Stored as a ``shipment`` report.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import numpy as np

from coldwatch.config import Config, DeviceConfig
from coldwatch.records.calflag import calibration_facts, count_in_spans
from coldwatch.records.conditions import (
    Readings,
    alarm_rows,
    calibration_of_points,
    chart,
    figures,
    overlapping_alarms,
    read_series,
)
from coldwatch.records.pdf import render_pdf
from coldwatch.records.provenance import provenance
from coldwatch.records.shipment_model import Event, bool_events, forecast_series, over_events, smallest_margin
from coldwatch.records.shipments import NoSuchShipmentError, ShipmentRecord, Shipments, forecast_rule
from coldwatch.records.stats import Level
from coldwatch.records.store import ReportStore
from coldwatch.records.twins import columns_in_order
from coldwatch.rules.config import ThresholdRule
from coldwatch.rules.profiles import rules_for
from coldwatch.signatures import manifestation
from coldwatch.storage.base import Storage
from coldwatch.storage.identity_store import identity_store

__all__ = ["PROBES", "generate_shipment_report", "shipment_context"]

PROBES = (("temp_c", "probe A"), ("temp_b_c", "probe B"))
_DEFAULT_TILT_DEG = 45.0
# The CSV's and the console's column order (the time above each level between the two).
_HEAD_COLUMNS: Final = ("probe", "label", "n", "backfilled", "min", "max", "mean_tw", "mkt_c")
_TAIL_COLUMNS: Final = ("covered_s", "completeness", "out_of_calibration")


def _tilt_limit(config: Config, device: DeviceConfig) -> float:
    """The shipper's tilt alarm level (its ``tilt_deg`` high threshold, default 45 degrees)."""
    for rule in rules_for(device, config.rules):
        if isinstance(rule, ThresholdRule) and rule.metric == "tilt_deg" and rule.direction == "high":
            return min(level.limit for level in rule.levels.values())
    return _DEFAULT_TILT_DEG


async def _events(
    storage: Storage, config: Config, device: DeviceConfig, start: int, end: int
) -> list[Event]:
    lid = await read_series(storage, device.id, "lid_open", start, end)
    tilt = await read_series(storage, device.id, "tilt_deg", start, end)
    limit = _tilt_limit(config, device)
    found = [
        *bool_events("lid open", lid.ts_us, lid.values, end),
        *over_events(f"tilt over {limit:.10g} deg", tilt.ts_us, tilt.values, limit, end),
    ]
    return sorted(found, key=lambda e: (e.start_us, e.what))


async def _margin(
    storage: Storage, config: Config, record: ShipmentRecord, end: int
) -> dict[str, Any] | None:
    spec = forecast_rule(config, record.device_id)
    if spec is None:
        return None
    start = record.dispatched_us - round(spec.window_s * 1e6)
    level = await read_series(storage, record.device_id, spec.metric, start, end)
    temp = await read_series(storage, record.device_id, spec.temp_metric, start, end)
    times = np.union1d(level.ts_us, temp.ts_us).astype(np.int64)
    values = {}
    for metric, series in ((spec.metric, level), (spec.temp_metric, temp)):
        column = np.full(len(times), np.nan)
        column[np.searchsorted(times, series.ts_us)] = series.values
        values[metric] = column
    at, hours = forecast_series(spec, times, values)
    during = at >= record.dispatched_us
    smallest = smallest_margin(at[during], hours[during], record.dispatched_us, record.required_hold_s)
    if smallest is None:
        return None
    return {"seconds": smallest.seconds, "at_us": smallest.at_us, "forecasts": int(during.sum())}


def _probe_row(  # noqa: PLR0917 - one probe's figures
    probe: str, label: str, readings: Readings, stats: Any, share: float, uncalibrated: list[tuple[int, int]]
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "probe": probe, "label": label, "n": stats.n, "backfilled": readings.backfilled,
        "min": stats.min, "max": stats.max, "mean_tw": stats.mean_tw, "mkt_c": stats.mkt_c,
        "covered_s": stats.covered_s, "completeness": share,
    }  # fmt: skip
    for level in stats.beyond:
        row[f"above {level.level:.10g} C s"] = level.seconds
    row["out_of_calibration"] = count_in_spans(readings.ts_us, uncalibrated)
    return row


async def shipment_context(
    storage: Storage, config: Config, shipment_id: int, now_us: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The template context and the figures (``data``, with flat ``rows``) of a shipment's record."""
    store = identity_store(storage)
    zone = config.site.timezone
    record = await Shipments(store, config).get(shipment_id)
    if record is None:
        raise NoSuchShipmentError(f"no shipment {shipment_id}")
    device = config.device_map()[record.device_id]
    start, end = record.dispatched_us, record.received_us or max(now_us, record.dispatched_us + 1)
    levels = [Level(f"above {c:.10g} C", c, True) for c in config.records.shipment_levels_c]
    alarms = await overlapping_alarms(store, zone, [device.id], start, end)
    state = (await calibration_of_points(store, config, [device.id], (start, end), now_us)).get(device.id)
    uncalibrated = [] if state is None else state.uncalibrated
    probes, charts, silent = [], [], []
    for probe, label in PROBES:
        readings = await read_series(storage, device.id, probe, start, end)
        stats, share = figures(device, probe, readings, (start, end), levels)
        if stats.n == 0 and probe != "temp_c":
            silent.append(f"{label} ({probe})")  # a single-probe shipper, or a probe that fell silent
            continue
        probes.append(_probe_row(probe, label, readings, stats, share, uncalibrated))
        charts.append(
            chart(f"{device.id} {label} ({probe})", probe, readings, start, end, levels, alarms, zone)
        )
    calibration = calibration_facts(
        state, sum(p["out_of_calibration"] for p in probes), sum(p["n"] for p in probes)
    )
    events = await _events(storage, config, device, start, end)
    margin = await _margin(storage, config, record, end)
    signatures = [
        {"action": s.action, "reason": s.reason,
         "manifestation": manifestation(s.full_name, s.signer, s.signed_us, zone, s.meaning)}
        for s in record.signatures
    ]  # fmt: skip
    summary = {
        "shipment": record.id, "device": device.id, "coi": record.coi, "state": record.state,
        "dispatched_us": start, "received_us": record.received_us, "required_hold_s": record.required_hold_s,
        "dispatch_forecast_s": record.dispatch_forecast_s,
        "smallest_margin_s": None if margin is None else margin["seconds"],
        "smallest_margin_at_us": None if margin is None else margin["at_us"],
        "lid_events": sum(e.what == "lid open" for e in events),
        "tilt_events": sum(e.what != "lid open" for e in events),
        "backfilled": sum(p["backfilled"] for p in probes),
        "excursions": len(alarms),
        "awaiting_review": sum(a.review is None for a in alarms),
    }  # fmt: skip
    data: dict[str, Any] = {
        "kind": "shipment",
        "summary": summary,
        "rows": probes,
        "columns": columns_in_order(probes, _HEAD_COLUMNS, _TAIL_COLUMNS),
        "probes_without_readings": silent,
        "calibration": calibration,
        "events": [{"what": e.what, "start_us": e.start_us, "end_us": e.end_us} for e in events],
        "alarms": alarm_rows(alarms, zone),
        "signatures": signatures,
    }
    context = {
        "title": f"Shipment record {record.id} ({device.id})",
        "site": device.site,
        "zone": zone,
        "record": record,
        "end_us": end,
        "summary": summary,
        "probes": probes,
        "silent": silent,
        "levels": config.records.shipment_levels_c,
        "charts": charts,
        "calibration": calibration,
        "events": events,
        "alarms": data["alarms"],
        "signatures": signatures,
    }
    return context, data


async def generate_shipment_report(
    storage: Storage, config: Config, shipment_id: int, who: str, now_us: int
) -> tuple[int, dict[str, Any]]:
    """Build, print and store the shipment's record; its report id and figures."""
    context, data = await shipment_context(storage, config, shipment_id, now_us)
    query = f"shipment id={shipment_id} device={data['summary']['device']}"
    prov = await provenance(storage, query, now_us, config.site.notice)
    pdf = await asyncio.to_thread(render_pdf, "shipment.html", context, prov)
    store = ReportStore(identity_store(storage), config.site.timezone)
    report_id = await store.save("shipment", str(shipment_id), query, data, pdf, who, now_us, prov)
    return report_id, data
