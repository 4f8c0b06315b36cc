"""The batch environmental record: every condition and excursion that touched a batch, for disposition.

For every stay of the batch's current version: the figures of each device in that place
for that time (the device itself, or the area's particle counters), per metric, under the
hold convention of :mod:`coldwatch.records.stats`; every alarm of those devices whose
interval meets the stay, with its review and signatures; a chart per device; each
device's calibration and its readings taken out of calibration (:mod:`coldwatch.records.calflag`). Then the
QA verdict line (:func:`coldwatch.records.batch_model.verdict`) and the registration and
amendment history with their signatures. Stored as a ``batch`` report (PDF and figures).
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from coldwatch.catalogue import Kind
from coldwatch.config import Config, DeviceConfig
from coldwatch.records.batch_model import Stay, devices_of_stay, verdict
from coldwatch.records.batches import Batches, BatchRecord, NoSuchBatchError
from coldwatch.records.calflag import calibration_facts, count_in_spans
from coldwatch.records.calibration import PointCalibration
from coldwatch.records.conditions import (
    AlarmRecord,
    alarm_rows,
    calibration_of_points,
    chart,
    figures,
    levels_of,
    overlapping_alarms,
    read_series,
)
from coldwatch.records.pdf import render_pdf
from coldwatch.records.provenance import provenance
from coldwatch.records.store import ReportStore
from coldwatch.records.twins import columns_in_order
from coldwatch.signatures import manifestation
from coldwatch.storage.base import Storage
from coldwatch.storage.identity_store import IdentityStore, identity_store

__all__ = ["REPORTED_METRICS", "batch_context", "generate_batch_report"]

# The CSV's and the console's column order: where and what, the figures, the time beyond each
# level (between them, as first met), then coverage and calibration.
_HEAD_COLUMNS: Final = ("place", "device", "metric", "stay_from_us", "stay_until_us", "figures_until_us", "n",
                        "backfilled", "min", "max", "mean_tw", "mkt_c")  # fmt: skip
_TAIL_COLUMNS: Final = ("covered_s", "completeness", "calibration_state", "out_of_calibration")

# The metrics a batch record shows per kind of place, the first one charted.
REPORTED_METRICS: Final[dict[Kind, tuple[str, ...]]] = {
    Kind.PARTICLE_COUNTER: ("particles_0_5um_m3", "particles_5_0um_m3"),
    Kind.INCUBATOR: ("temp_c", "co2_pct", "rh_pct"),
    Kind.CRYOSHIPPER: ("temp_c", "temp_b_c", "ln2_level_pct"),
}


async def _device_block(  # noqa: PLR0917 - one device in one place and time
    storage: Storage,
    config: Config,
    device: DeviceConfig,
    stay: Stay,
    alarms: list[AlarmRecord],
    calibration: PointCalibration | None,
    end_us: int,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One device during one stay, up to ``end_us``: figures per metric (CSV rows), calibration, chart."""
    zone = config.site.timezone
    spans = [] if calibration is None else calibration.uncalibrated
    rows: list[dict[str, Any]] = []
    chart_svg = None
    for index, metric in enumerate(REPORTED_METRICS[device.kind]):
        readings = await read_series(storage, device.id, metric, stay.from_us, end_us)
        levels = levels_of(config, device, metric)
        stats, share = figures(device, metric, readings, (stay.from_us, end_us), levels)
        if stats.n == 0 and index > 0:
            continue  # an optional metric the device does not report (e.g. no second probe)
        row: dict[str, Any] = {
            "place": stay.place, "stay_from_us": stay.from_us, "stay_until_us": stay.until_us,
            "device": device.id, "metric": metric, "n": stats.n, "backfilled": readings.backfilled,
            "min": stats.min, "max": stats.max, "mean_tw": stats.mean_tw, "mkt_c": stats.mkt_c,
            "covered_s": stats.covered_s, "completeness": share, "figures_until_us": end_us,
            "calibration_state": None if calibration is None else calibration.state,
            "out_of_calibration": count_in_spans(readings.ts_us, spans),
        }  # fmt: skip
        for level in stats.beyond:
            row[f"beyond {level.name} {level.level:.10g} s"] = level.seconds
        row["beyond"] = [(lv.name, lv.level, lv.seconds) for lv in stats.beyond]
        rows.append(row)
        if index == 0 and stats.n:
            own = [a for a in alarms if a.alarm.key.device_id == device.id]
            chart_svg = chart(f"{device.id} {metric} · {stay.place}", metric, readings, stay.from_us,
                              end_us, levels, own, zone)  # fmt: skip
    cal = calibration_facts(
        calibration, sum(r["out_of_calibration"] for r in rows), sum(r["n"] for r in rows)
    )
    return {"device": device.id, "kind": device.kind.value, "rows": rows, "chart": chart_svg,
            "calibration": cal}, rows  # fmt: skip


async def _stay_block(
    storage: Storage, store: IdentityStore, config: Config, stay: Stay, now_us: int
) -> dict[str, Any]:
    # A stay not over when the record is generated is reported to date; one not begun has no
    # figures at all (no rows, no charts: nothing has happened there yet).
    not_begun = stay.from_us >= now_us
    devices = [] if not_begun else devices_of_stay(stay, config.devices)
    ids = [d.id for d in devices]
    end_us = max(stay.from_us + 1, min(stay.until_us, now_us))
    alarms = await overlapping_alarms(store, config.site.timezone, ids, stay.from_us, end_us)
    states = await calibration_of_points(store, config, ids, (stay.from_us, end_us), now_us)
    blocks = [
        await _device_block(storage, config, d, stay, alarms, states.get(d.id), end_us) for d in devices
    ]
    return {
        "to_date": stay.until_us > now_us,
        "not_begun": not_begun,
        "end_us": end_us,
        "stay": stay,
        "devices": [b for b, _ in blocks],
        "rows": [r for _, rows in blocks for r in rows],
        "alarms": alarms,
    }


def _history(record: BatchRecord, zone: str) -> list[dict[str, Any]]:
    out = []
    for version, stays in sorted(record.versions.items()):
        sig = record.signature_of(version)
        out.append({
            "version": version,
            "stays": stays,
            "current": version == record.version,
            "action": None if sig is None else sig.action,
            "reason": None if sig is None else sig.reason,
            "signature": None if sig is None
            else manifestation(sig.full_name, sig.signer, sig.signed_us, zone, sig.meaning),
        })  # fmt: skip
    return out


async def batch_context(
    storage: Storage, config: Config, lot: str, now_us: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The template context and the figures (``data``, with flat ``rows``) of a batch's record.

    ``now_us`` dates the calibration states (due soon, overdue) the record shows.
    """
    store = identity_store(storage)
    zone = config.site.timezone
    record = await Batches(store, config.devices, zone).get(lot)
    if record is None:
        raise NoSuchBatchError(f"no batch {lot}")
    stays = [await _stay_block(storage, store, config, s, now_us) for s in record.stays]
    touching: dict[int, AlarmRecord] = {a.alarm.id: a for block in stays for a in block["alarms"]}
    line = verdict(touching, [i for i, a in touching.items() if a.review is not None])
    history = _history(record, zone)
    alarms = alarm_rows(sorted(touching.values(), key=lambda a: (a.alarm.raised_ts_us, a.alarm.id)), zone)
    rows = [{k: v for k, v in r.items() if k != "beyond"} for block in stays for r in block["rows"]]
    data: dict[str, Any] = {
        "kind": "batch",
        "lot": record.lot,
        "product": record.product,
        "coi": record.coi,
        "version": record.version,
        "verdict": line,
        "stays_not_over": sum(1 for b in stays if b["to_date"]),
        "rows": rows,
        "columns": columns_in_order(rows, _HEAD_COLUMNS, _TAIL_COLUMNS),
        "calibration": [
            {"place": b["stay"].place, "stay_from_us": b["stay"].from_us, "device": d["device"],
             **d["calibration"]}
            for b in stays for d in b["devices"]
        ],
        "alarms": alarms,
        "history": [
            {"version": h["version"], "action": h["action"], "reason": h["reason"],
             "signature": h["signature"], "stays": [s.facts() for s in h["stays"]]}
            for h in history
        ],
    }  # fmt: skip
    context = {
        "title": f"Batch environmental record {record.lot}",
        "site": ", ".join(sorted({s.site for s in record.stays})),
        "zone": zone,
        "record": record,
        "verdict": line,
        "stays_not_over": sum(1 for b in stays if b["to_date"]),
        "generated_us": now_us,
        "stays": stays,
        "alarms": alarms,
        "history": history,
    }
    return context, data


async def generate_batch_report(
    storage: Storage, config: Config, lot: str, who: str, now_us: int
) -> tuple[int, dict[str, Any]]:
    """Build, print and store the batch's record; its report id and figures."""
    context, data = await batch_context(storage, config, lot, now_us)
    query = f"batch lot={lot} version={data['version']}"
    prov = await provenance(storage, query, now_us, config.site.notice)
    pdf = await asyncio.to_thread(render_pdf, "batch.html", context, prov)
    store = ReportStore(identity_store(storage), config.site.timezone)
    report_id = await store.save("batch", lot, query, data, pdf, who, now_us, prov)
    return report_id, data
