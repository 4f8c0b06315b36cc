"""Generating an excursion report: read the alarm's inputs, build, print and store it.

The thin shell around :mod:`coldwatch.records.excursion`: the alarm and its history and
readings from the storage backend, its limits from the configuration (the same rules the
engine judges with), its notifications and signatures from the identity store; then the
PDF (:func:`coldwatch.records.pdf.render_pdf`) and the stored report with its audit entry
(:class:`coldwatch.records.store.ReportStore`).
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from coldwatch.catalogue import KINDS
from coldwatch.config import Config
from coldwatch.console.chart import LimitLine, unit_of
from coldwatch.console.downsample import Series, minmax
from coldwatch.identity_model import IdentityError
from coldwatch.records.conditions import calibration_of_points
from coldwatch.records.excursion import (
    ExcursionInputs,
    Notification,
    alarm_span,
    excursion_data,
    window,
    worst_severity,
)
from coldwatch.records.pdf import render_pdf, svg_chart, utc
from coldwatch.records.provenance import provenance
from coldwatch.records.store import ReportStore
from coldwatch.review import Reviews
from coldwatch.rules.engine import _limits_of  # the engine's own reading of a rule's limits
from coldwatch.rules.lifecycle import Alarm
from coldwatch.rules.profiles import rules_for
from coldwatch.signatures import manifestation_json
from coldwatch.storage.base import Storage
from coldwatch.storage.identity_store import IdentityStore, identity_store

__all__ = ["NoSuchAlarmError", "changed_since_report", "excursion_inputs", "generate_excursion_report"]

MAX_READINGS: Final = 1_000_000
CHART_POINTS: Final = 1500


class NoSuchAlarmError(IdentityError):
    """No alarm with that id."""

    status = 404


def _alarm_dict(alarm: Alarm) -> dict[str, Any]:
    return {
        "id": alarm.id,
        "device": alarm.key.device_id,
        "metric": alarm.key.metric,
        "rule": alarm.key.rule,
        "severity": alarm.severity.label,
        "state": alarm.state.value,
        "raised_ts_us": alarm.raised_ts_us,
        "raised_received_us": alarm.raised_received_us,
        "cleared_ts_us": alarm.cleared_ts_us,
        "value": alarm.value,
        "limit": alarm.limit,
        "late": alarm.late,
        "detail": alarm.detail,
        "acknowledged_by": alarm.acknowledged_by,
        "shelved_by": alarm.shelved_by,
    }


def _limits(config: Config, device_id: str, metric: str) -> list[LimitLine]:
    device = config.device_map().get(device_id)
    if device is None:
        return []
    return [
        LimitLine(value, severity, direction, rule)
        for spec in rules_for(device, config.rules)
        for m, rule, severity, direction, value in _limits_of(spec)
        if m == metric and direction in {"high", "low"}
    ]


def _is_temperature(metric: str) -> bool:
    return any(specs[metric].unit == "degC" for specs in KINDS.values() if metric in specs)


async def _notifications(store: IdentityStore, alarm_id: int) -> list[Notification]:
    rows = await store.fetch(
        "SELECT id, channel, target, created_us, delivered_us, attempts, last_error "
        "FROM notification_outbox WHERE alarm_id = ? ORDER BY id",
        alarm_id,
    )
    tries: dict[int, list[tuple[int, bool, int | None, str | None]]] = {}
    for outbox, at, ok, code, err in await store.fetch(
        "SELECT outbox_id, at_us, ok, status, error FROM notification_attempts WHERE outbox_id IN "
        "(SELECT id FROM notification_outbox WHERE alarm_id = ?) ORDER BY id",
        alarm_id,
    ):
        tries.setdefault(int(outbox), []).append(
            (int(at), bool(ok), None if code is None else int(code), None if err is None else str(err))
        )
    return [
        Notification(
            str(channel),
            str(target),
            int(created),
            None if done is None else int(done),
            int(attempts),
            None if err is None else str(err),
            tries.get(int(i), []),
        )
        for i, channel, target, created, done, attempts, err in rows
    ]


async def excursion_inputs(storage: Storage, config: Config, alarm_id: int, now_us: int) -> ExcursionInputs:
    """Everything the excursion report of ``alarm_id`` shows (NoSuchAlarmError when there is none)."""
    found = await storage.alarms(alarm_id=alarm_id, limit=1)
    if not found:
        raise NoSuchAlarmError(f"no alarm {alarm_id}")
    alarm = found[0]
    store = identity_store(storage)
    zone = config.site.timezone
    reviews = Reviews(store, zone)
    start, end, alarm_end = window(alarm.raised_ts_us, alarm.cleared_ts_us, now_us)
    device = config.device_map().get(alarm.key.device_id)
    metric = alarm.key.metric
    readings = await storage.metric_readings(alarm.key.device_id, metric, start, end, MAX_READINGS)
    signatures = (await reviews.signatures_of([alarm_id])).get(alarm_id, [])
    review = await reviews.review_of(alarm_id)
    states = await calibration_of_points(store, config, [alarm.key.device_id], (start, end), now_us)
    return ExcursionInputs(
        alarm=_alarm_dict(alarm),
        device={
            "id": alarm.key.device_id,
            "kind": None if device is None else device.kind.value,
            "site": None if device is None else device.site,
            "area": None if device is None else device.area,
            "interval_s": 10.0 if device is None else device.interval_s,
        },
        unit=unit_of(metric),
        temperature=_is_temperature(metric),
        limits=_limits(config, alarm.key.device_id, metric),
        readings=readings,
        history=await storage.alarm_history(alarm_id),
        notifications=await _notifications(store, alarm_id),
        signatures=[{**manifestation_json(s, zone), "object_type": s.object_type} for s in signatures],
        review=None
        if review is None
        else {
            "impact": review.impact,
            "deviation_ref": review.deviation_ref,
            "root_cause": review.root_cause,
            "comment": review.comment,
            "reviewer": review.reviewer,
            "reviewed_us": review.reviewed_us,
        },
        zone=zone,
        window=(start, end),
        alarm_end_us=alarm_end,
        calibration=states.get(alarm.key.device_id),
    )


def _chart(inputs: ExcursionInputs, data: dict[str, Any]) -> str:
    start, end = inputs.window
    series = Series.of(
        [r[0] for r in inputs.readings], [r[1] for r in inputs.readings], [r[3] for r in inputs.readings]
    )
    small = minmax(series, CHART_POINTS, start_us=start, end_us=end)
    points = list(zip(small.ts_us.tolist(), small.values.tolist(), small.buffered.tolist(), strict=True))
    alarm = inputs.alarm
    worst = worst_severity(data)
    title = f"{alarm['device']} {alarm['metric']}: alarm {alarm['id']} (rule {alarm['rule']}, worst {worst})"
    return svg_chart(
        title, alarm["metric"], points, start, end, inputs.limits, [alarm_span(data)], inputs.zone,
        gaps=[tuple(g) for g in data["no_data"]],
        element_id="excursion",
    )  # fmt: skip


async def changed_since_report(storage: Storage, config: Config, data: dict[str, Any]) -> list[str]:
    """What the alarm's record gained after its excursion report was generated (empty: nothing).

    ``data``: the stored report's figures. A report generated before the alarm cleared,
    was acknowledged or was reviewed does not show those: whoever signs it as reviewed
    is told what it leaves out (a new report shows it).
    """
    alarm = data.get("alarm")
    if data.get("kind") != "excursion" or not isinstance(alarm, dict) or not isinstance(alarm.get("id"), int):
        return []
    alarm_id = int(alarm["id"])
    changes: list[str] = []
    shown = data.get("transitions")
    history = await storage.alarm_history(alarm_id)
    if isinstance(shown, list) and len(history) > len(shown):
        later = [str(t["event"]) for t in history[len(shown) :]]
        changes.append(f"the alarm's history after it: {', '.join(e.replace('_', ' ') for e in later)}")
    reviews = Reviews(identity_store(storage), config.site.timezone)
    signatures = (await reviews.signatures_of([alarm_id])).get(alarm_id, [])
    signed = data.get("signatures")
    if isinstance(signed, list) and len(signatures) > len(signed):
        later = [s.action for s in signatures[len(signed) :]]
        changes.append(f"signatures on the alarm after it: {', '.join(later)}")
    if data.get("review") is None and await reviews.review_of(alarm_id) is not None:
        changes.append("the QA review of the excursion (impact, deviation, root cause)")
    return changes


async def generate_excursion_report(
    storage: Storage, config: Config, alarm_id: int, who: str, now_us: int
) -> int:
    """Build, print and store the excursion report of one alarm (audited); the report's id."""
    inputs = await excursion_inputs(storage, config, alarm_id, now_us)
    data = excursion_data(inputs)
    start, end = inputs.window
    alarm = inputs.alarm
    query = (
        f"excursion alarm={alarm_id} device={alarm['device']} metric={alarm['metric']} "
        f"{utc(start)}..{utc(end)}"
    )
    prov = await provenance(storage, query, now_us, config.site.notice)
    context = {
        "title": f"Excursion report: alarm {alarm_id}",
        "site": inputs.device["site"] or "?",
        "zone": inputs.zone,
        "data": data,
        "chart": _chart(inputs, data),
        "generated_by": who,
        "worst": worst_severity(data),
    }
    # Laying out a PDF takes CPU for most of a second: off the daemon's event loop.
    pdf = await asyncio.to_thread(render_pdf, "excursion.html", context, prov)
    store = ReportStore(identity_store(storage), inputs.zone)
    return await store.save("excursion", f"alarm {alarm_id}", query, data, pdf, who, now_us, prov)
