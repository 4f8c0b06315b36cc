"""Failed deliveries: outage or permanent rejection, Retry-After, and dead-letter notices. Pure.

A receiver's answer decides what happens to a notification:

- 2xx: delivered.
- 408, 429, 5xx, any other non-4xx answer, and no answer at all (refused connection,
  timeout, TLS or protocol error): an *outage*. Retried with jittered backoff for as long
  as it lasts; a ``Retry-After`` (seconds or an HTTP date) sets the earliest retry, cut to
  ``retry_after_max_s``.
- any other 4xx: a *permanent rejection* of this payload (bad request, unauthorised,
  not found, too large, unprocessable...). Retried with backoff in case it was a passing
  misconfiguration, and dead-lettered at the ``dead_letter_after_rejections``-th rejection.

A dead-lettered notification is reported through the *other* channels: every webhook of
the alarm's escalation policy (all tiers) except the one that rejected it, or every other
configured webhook when the policy names no other; and Alertmanager (if configured and not
the rejecting receiver) as an alert ``ColdwatchNotificationUndeliverable``. Notices have
ids ``dl/<receiver>/<failed notification id>``; a notice that is itself dead-lettered
causes no further notice.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import orjson

from coldwatch.notify.config import NotifyConfig
from coldwatch.notify.messages import rfc3339
from coldwatch.notify.model import ALERTMANAGER_TARGET, Channel, OutboxItem

__all__ = [
    "DEAD_LETTER_PREFIX",
    "UNDELIVERABLE_ALERTNAME",
    "DeadLetter",
    "Verdict",
    "classify",
    "dead_letter_notices",
    "notice_webhooks",
    "retry_after_s",
]

DEAD_LETTER_PREFIX = "dl/"
UNDELIVERABLE_ALERTNAME = "ColdwatchNotificationUndeliverable"
_ALARM_FIELDS = ("id", "device", "kind", "site", "area", "metric", "rule", "severity", "state")
_ALERT_LABELS = ("device", "kind", "site", "area", "metric", "rule", "severity")


class Verdict(enum.StrEnum):
    """What a receiver's answer means for the notification."""

    DELIVERED = "delivered"
    OUTAGE = "outage"  # retried for as long as it lasts
    REJECTED = "rejected"  # permanent: retried a bounded number of times, then dead-lettered


def classify(status: int | None) -> Verdict:
    """The verdict on an HTTP status; None (no answer: refused, timed out, broken) is an outage."""
    if status is None:
        return Verdict.OUTAGE
    if 200 <= status < 300:
        return Verdict.DELIVERED
    if 400 <= status < 500 and status not in {408, 429}:
        return Verdict.REJECTED
    return Verdict.OUTAGE


def retry_after_s(value: str | None, now_us: int) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay seconds or an HTTP date), if valid."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(int(text))
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    now = datetime.fromtimestamp(now_us / 1_000_000, tz=UTC)
    return max(0.0, (moment - now).total_seconds())


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A notification given up on: what was to be sent, to whom, and why it failed."""

    notification_id: str
    channel: Channel
    target: str
    body: bytes
    alarm_id: int | None
    attempts: int  # including the last one
    status: int | None
    error: str
    at_us: int


def _alarm_of(dead: DeadLetter) -> tuple[dict[str, Any], str | None]:
    """The alarm a failed notification was about (as far as its body tells), and its event."""
    alarm: dict[str, Any] = dict.fromkeys(_ALARM_FIELDS)
    alarm["id"] = dead.alarm_id
    event: str | None = None
    try:
        data = orjson.loads(dead.body)
    except orjson.JSONDecodeError:
        return alarm, event
    if isinstance(data, dict) and isinstance(data.get("alarm"), dict):
        alarm.update({k: data["alarm"].get(k) for k in _ALARM_FIELDS if k in data["alarm"]})
        event = data.get("event") if isinstance(data.get("event"), str) else None
    elif isinstance(data, list) and data and isinstance(data[-1], dict):
        last = data[-1]
        labels: dict[str, Any] = last["labels"] if isinstance(last.get("labels"), dict) else {}
        annotations: dict[str, Any] = last["annotations"] if isinstance(last.get("annotations"), dict) else {}
        alarm.update({k: labels.get(k) for k in _ALERT_LABELS})
        alarm["state"] = annotations.get("state")
        event = "resolved" if "endsAt" in last else "firing"
    return alarm, event


def notice_webhooks(
    config: NotifyConfig, failed_webhook: str | None, severity: str | None, site: str | None
) -> list[str]:
    """The webhooks told of a dead letter: the alarm policy's others, else every other one."""
    policy = config.policy_for(severity, site) if severity and site else None
    names = {name for tier in policy.tiers for name in tier.notify} if policy else set()
    names.discard(failed_webhook or "")
    if not names:
        names = set(config.webhooks) - {failed_webhook or ""}
    return sorted(names)


def dead_letter_notices(config: NotifyConfig, dead: DeadLetter) -> list[OutboxItem]:
    """The notices of ``dead`` to the other channels (none for a notice that died itself)."""
    if dead.notification_id.startswith(DEAD_LETTER_PREFIX):
        return []
    alarm, event = _alarm_of(dead)
    receiver = "Alertmanager" if dead.channel is Channel.ALERTMANAGER else f"webhook {dead.target}"
    summary = (
        f"notification {dead.notification_id} could not be delivered to {receiver}: "
        f"rejected {dead.attempts} time(s), last: {dead.error}; it is no longer retried"
    )
    undelivered = {
        "notification_id": dead.notification_id,
        "channel": dead.channel.value,
        "receiver": dead.target,
        "event": event,
        "attempts": dead.attempts,
        "status": dead.status,
        "error": dead.error,
        "dead_lettered_at": rfc3339(dead.at_us),
    }
    failed_webhook = dead.target if dead.channel is Channel.WEBHOOK else None
    items: list[OutboxItem] = []
    for name in notice_webhooks(config, failed_webhook, alarm["severity"], alarm["site"]):
        nid = f"{DEAD_LETTER_PREFIX}{name}/{dead.notification_id}"
        body = {
            "event": "undeliverable",
            "alarm": alarm,
            "tier": None,
            "repeat": None,
            "notification_id": nid,
            "summary": summary,
            "undelivered": undelivered,
        }
        items.append(OutboxItem(nid, Channel.WEBHOOK, name, orjson.dumps(body), dead.alarm_id, dead.at_us))
    if config.alertmanager is not None and dead.channel is not Channel.ALERTMANAGER:
        nid = f"{DEAD_LETTER_PREFIX}{ALERTMANAGER_TARGET}/{dead.notification_id}"
        labels = {"alertname": UNDELIVERABLE_ALERTNAME, "receiver": dead.target}
        labels.update({k: str(alarm[k]) for k in _ALERT_LABELS if alarm.get(k) is not None})
        annotations = {
            "summary": summary,
            "notification_id": dead.notification_id,
            "error": dead.error,
        }
        if dead.alarm_id is not None:
            annotations["alarm_id"] = str(dead.alarm_id)
        # No end: Alertmanager routes it once and resolves it after its resolve_timeout; the
        # lasting signal is the dead-letter metric.
        alert = {"labels": labels, "annotations": annotations, "startsAt": rfc3339(dead.at_us)}
        items.append(
            OutboxItem(
                nid,
                Channel.ALERTMANAGER,
                ALERTMANAGER_TARGET,
                orjson.dumps([alert]),
                dead.alarm_id,
                dead.at_us,
                order_key=f"notice/{dead.notification_id}",
            )
        )
    return items
