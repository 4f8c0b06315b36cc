"""What is sent about an alarm: Alertmanager v2 alerts and webhook bodies. Pure.

Alertmanager (``POST {url}/api/v2/alerts``, a JSON list of alerts)
    labels: ``alertname="ColdwatchExcursion"``, ``device``, ``kind``, ``site``, ``area``,
    ``metric``, ``rule``, ``severity`` (``alert`` or ``action``). The labels are the
    alert's identity in Alertmanager, so a severity change resolves the alert of the old
    severity and fires one of the new. annotations: ``summary``, ``value``, ``limit``,
    ``runbook`` (what to check, by rule), ``runbook_url`` (with ``runbook_base_url``),
    ``alarm_id``, ``console_url`` (the alarm's console page, with ``console.base_url``),
    ``state``, ``late`` ("true" for excursions found in backfilled data),
    ``shelved_until`` (while shelved). ``startsAt``: when the excursion was raised (device
    time, never later than when the collector processed it). ``endsAt``: when it cleared
    (resolved); absent while firing for queued alerts (Alertmanager then applies its
    resolve_timeout, so a delivery delayed by an outage never arrives already expired),
    and ``now + 4 x resend_s`` in the periodic re-send.

Webhook (``POST`` to the configured URL, header ``Idempotency-Key: <notification_id>``)
    A JSON object:

    - ``event``: ``raised`` (the first notification of an alarm), ``severity_changed``
      (the first notification after a severity increase made it unacknowledged again, or
      news of a decrease), ``cleared``, ``escalated`` (a later tier, not acknowledged in
      time), ``repeat`` (the highest tier reached, again, still not acknowledged),
      ``revoked`` (late readings showed an earlier event did not happen as reported).
    - ``alarm``: ``id``, ``device``, ``kind``, ``site``, ``area``, ``metric``, ``rule``,
      ``severity`` (``alert``/``action``), ``state`` (``active_unacknowledged``,
      ``active_acknowledged``, ``cleared_unacknowledged``, ``closed``), ``raised_at`` and
      ``cleared_at`` (RFC 3339 UTC, device time; ``cleared_at`` null while active),
      ``value`` and ``limit`` (numbers or null), ``late`` (found in backfilled or late
      data), ``detail``, and ``console_url`` (``<console.base_url>/console/alarms/<id>``,
      where the engineer signs; only when ``console.base_url`` is configured).
    - ``tier``: the escalation tier (0 = first) for ``raised``/``escalated``/``repeat``
      sent by a chain; null for news of a change sent to everyone already notified.
    - ``repeat``: 0 for the first notification of a tier, n for its n-th repeat; null
      when ``tier`` is null.
    - ``notification_id``: stable idempotency key, also sent as ``Idempotency-Key``: a
      retried delivery carries the same one, so a receiver can drop duplicates.
    - ``sent_at``: RFC 3339 UTC time of this delivery attempt.

    A notification that was dead-lettered is reported to the other webhooks with
    ``event: "undeliverable"`` and a body of its own (see :mod:`coldwatch.notify.failures`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from coldwatch.config import DeviceConfig
from coldwatch.notify.config import AlertmanagerConfig
from coldwatch.rules.lifecycle import Alarm
from coldwatch.rules.model import Severity

__all__ = [
    "ALERTNAME",
    "WEBHOOK_EVENTS",
    "alertmanager_alert",
    "alertmanager_alerts",
    "alertmanager_resend",
    "rfc3339",
    "runbook_text",
    "webhook_body",
]

ALERTNAME = "ColdwatchExcursion"
WEBHOOK_EVENTS = frozenset({"raised", "severity_changed", "cleared", "escalated", "repeat", "revoked"})
# How long a re-sent firing alert stays firing in Alertmanager without a further re-send.
RESEND_VALIDITY = 4
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_GENERIC_RUNBOOK = (
    "Check the device and its surroundings, confirm the reading with an independent "
    "instrument, protect the product, acknowledge with a reason and open a deviation if "
    "product was exposed."
)
# By the built-in rule ids; a rule with a custom id gets the generic text.
_RUNBOOKS: dict[str, str] = {
    "high": "Value above its limit. Check the setpoint, door or lid, compressor/heater or LN2 supply; "
    "confirm with an independent probe; move product if the limit is an action limit.",
    "low": "Value below its limit. Check the setpoint, supply (CO2 bottle, LN2 fill), heater and "
    "sensor; confirm with an independent probe; move product if the limit is an action limit.",
    "rate": "Fast change. Look for an open door or lid, a supply failure or a failing controller "
    "before the value reaches its limit.",
    "comm_loss": "No data from the device. Check its power, network and the broker; the excursion "
    "record is incomplete until it reconnects and backfills.",
    "consecutive": "Particle counts above the limit on consecutive samples: possible contamination "
    "event. Check interventions and airflow, inform QA, consider the batch at risk.",
    "events_in_window": "Repeated 5.0 um particle events: possible contamination. Check interventions "
    "and airflow, inform QA.",
    "time_out_of_range": "Cumulative time out of range reached its budget: the product's stability "
    "budget is spent. Quarantine affected product and inform QA.",
    "mkt": "Mean kinetic temperature above its limit: assess product stability with QA.",
    "held_open": "Door or lid held open. Close it and check for people or product left inside.",
    "probe_disagreement": "Probes A and B disagree: one probe may have failed. Check both and verify "
    "with a calibrated reference.",
    "hold_time_forecast": "Predicted hold time is short: refill or transfer the shipper before it "
    "runs dry or warms past its limit; check its tilt.",
    "calibration_due": "The instrument measuring this point is due for calibration (alert) or out of "
    "calibration (action: overdue, failed or never calibrated): its readings are flagged as taken out of "
    "calibration. Calibrate or swap the instrument and record the calibration (Instruments page).",
    "data_integrity": "Readings of this device are missing from the record (a broker that lost its "
    "state, or a seq gap). Alert: re-sending was requested, it clears when they arrive. Action: the "
    "device no longer holds them; the record has a hole: inform QA and check the device's own log.",
}


def rfc3339(ts_us: int) -> str:
    """An epoch-microsecond time as RFC 3339 UTC with milliseconds (``...T06:00:00.250Z``)."""
    try:
        moment = _EPOCH + timedelta(microseconds=ts_us)
    except OverflowError:  # a damaged stored time: say so rather than fail the message
        return f"out of range: {ts_us} us since 1970-01-01T00:00:00Z"
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def runbook_text(rule: str) -> str:
    """What to check for an alarm of ``rule`` (built-in rule ids; generic otherwise)."""
    return _RUNBOOKS.get(rule, _GENERIC_RUNBOOK)


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def _summary(alarm: Alarm, device: DeviceConfig, severity: Severity) -> str:
    key = alarm.key
    text = (
        f"{key.device_id} {key.metric} {key.rule}: {severity.label} excursion at {device.site}/{device.area}"
    )
    if alarm.value is not None:
        text += f" (value {_number(alarm.value)}"
        text += f", limit {_number(alarm.limit)})" if alarm.limit is not None else ")"
    return text


def console_url(base_url: str, alarm_id: int) -> str:
    """The console page of an alarm, where the engineer signs (``console.base_url``)."""
    return f"{base_url.rstrip('/')}/console/alarms/{alarm_id}"


def alertmanager_alert(
    alarm: Alarm,
    device: DeviceConfig,
    *,
    severity: Severity | None = None,
    ends_at_us: int | None = None,
    runbook_base_url: str | None = None,
    console_base_url: str | None = None,
) -> dict[str, Any]:
    """The Alertmanager v2 alert of ``alarm`` (under ``severity``, by default the alarm's own).

    ``ends_at_us`` None: firing with no end (Alertmanager applies its resolve_timeout).
    """
    sev = alarm.severity if severity is None else severity
    key = alarm.key
    annotations = {
        "summary": _summary(alarm, device, sev),
        "value": _number(alarm.value),
        "limit": _number(alarm.limit),
        "runbook": runbook_text(key.rule),
        "alarm_id": str(alarm.id),
        "state": alarm.state.value,
        "late": "true" if alarm.late else "false",
    }
    if runbook_base_url:
        annotations["runbook_url"] = f"{runbook_base_url.rstrip('/')}/{key.rule}"
    if console_base_url:
        annotations["console_url"] = console_url(console_base_url, alarm.id)
    if alarm.shelved_until_us is not None:
        annotations["shelved_until"] = rfc3339(alarm.shelved_until_us)
    # A device clock may run ahead of ours (up to ingest.max_future_skew_s): never start in
    # the future, or Alertmanager would treat the alert as not yet begun.
    starts_us = min(alarm.raised_ts_us, alarm.raised_received_us)
    alert: dict[str, Any] = {
        "labels": {
            "alertname": ALERTNAME,
            "device": key.device_id,
            "kind": device.kind.value,
            "site": device.site,
            "area": device.area,
            "metric": key.metric,
            "rule": key.rule,
            "severity": sev.label,
        },
        "annotations": {k: v for k, v in annotations.items() if v != ""},
        "startsAt": rfc3339(starts_us),
    }
    if ends_at_us is not None:
        alert["endsAt"] = rfc3339(max(ends_at_us, starts_us))
    return alert


def alertmanager_alerts(
    alarm: Alarm,
    device: DeviceConfig,
    *,
    now_us: int,
    previous_severity: Severity | None = None,
    runbook_base_url: str | None = None,
    console_base_url: str | None = None,
) -> list[dict[str, Any]]:
    """The alerts that bring Alertmanager up to date with ``alarm`` after a transition.

    An active alarm fires; one that cleared or closed resolves (at its clearing time, or
    ``now_us`` when it closed without clearing, e.g. revoked). If the severity differs from
    ``previous_severity``, the alert of the old severity (another label set) resolves too.
    """
    out: list[dict[str, Any]] = []
    if previous_severity is not None and previous_severity != alarm.severity:
        out.append(
            alertmanager_alert(
                alarm,
                device,
                severity=previous_severity,
                ends_at_us=now_us,
                runbook_base_url=runbook_base_url,
                console_base_url=console_base_url,
            )
        )
    ends = None
    if not alarm.active:
        cleared = alarm.cleared_ts_us if alarm.cleared_ts_us is not None else now_us
        ends = min(cleared, now_us)  # a device clock ahead of ours must not delay the resolve
    out.append(
        alertmanager_alert(
            alarm,
            device,
            ends_at_us=ends,
            runbook_base_url=runbook_base_url,
            console_base_url=console_base_url,
        )
    )
    return out


def alertmanager_resend(
    open_alarms: Iterable[Alarm],
    devices: Mapping[str, DeviceConfig],
    now_us: int,
    config: AlertmanagerConfig,
    console_base_url: str | None = None,
) -> list[dict[str, Any]]:
    """The periodic re-send of every firing alarm, valid for ``4 x resend_s``.

    Alertmanager resolves an alert that is not re-sent before its end time, so firing
    alarms are re-sent every ``resend_s``; if coldwatch stops, they resolve on their own
    within minutes rather than staying firing forever (watch coldwatch itself too).
    """
    ends = now_us + round(RESEND_VALIDITY * config.resend_s * 1_000_000)
    return [
        alertmanager_alert(
            alarm,
            devices[alarm.key.device_id],
            ends_at_us=ends,
            runbook_base_url=config.runbook_base_url,
            console_base_url=console_base_url,
        )
        for alarm in sorted(open_alarms, key=lambda a: a.id)
        if alarm.active and alarm.key.device_id in devices
    ]


def webhook_body(
    event: str,
    alarm: Alarm,
    device: DeviceConfig,
    *,
    notification_id: str,
    tier: int | None = None,
    repeat: int | None = None,
    console_base_url: str | None = None,
) -> dict[str, Any]:
    """The JSON body of a webhook notification (``sent_at`` is added when it is sent)."""
    if event not in WEBHOOK_EVENTS:
        raise ValueError(f"not a webhook event: {event!r}")
    key = alarm.key
    body: dict[str, Any] = {
        "event": event,
        "alarm": {
            "id": alarm.id,
            "device": key.device_id,
            "kind": device.kind.value,
            "site": device.site,
            "area": device.area,
            "metric": key.metric,
            "rule": key.rule,
            "severity": alarm.severity.label,
            "state": alarm.state.value,
            "raised_at": rfc3339(alarm.raised_ts_us),
            "cleared_at": None if alarm.cleared_ts_us is None else rfc3339(alarm.cleared_ts_us),
            "value": alarm.value,
            "limit": alarm.limit,
            "late": alarm.late,
            "detail": alarm.detail,
        },
        "tier": tier,
        "repeat": repeat if tier is not None else None,
        "notification_id": notification_id,
    }
    if console_base_url:
        body["alarm"]["console_url"] = console_url(console_base_url, alarm.id)
    return body
