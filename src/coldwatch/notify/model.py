"""Values shared by the notification planner, the outbox and the deliverer. Pure data."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from coldwatch.rules.model import Severity

__all__ = ["ALERTMANAGER_TARGET", "AlarmFacts", "Channel", "HistoryEntry", "OutboxItem", "order_key_of"]

# The target of every Alertmanager row: there is one Alertmanager (cluster) per collector.
ALERTMANAGER_TARGET = "alertmanager"


class Channel(enum.StrEnum):
    """How a notification travels."""

    ALERTMANAGER = "alertmanager"
    WEBHOOK = "webhook"


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One notification to one receiver, to be stored in the outbox and delivered.

    ``notification_id`` is stable (derived from stored facts only), so planning the same
    notification twice, for example after a restart, stores it once.

    ``order_key`` names the sequence the item must be delivered in, per receiver: rows of one
    receiver with the same key go out in order, one at a time, and a row waiting for a retry
    holds back only the later rows of its key. Webhooks order by alarm (``alarm/<id>``);
    Alertmanager by the alert's identity (``alert/<device>/<metric>/<rule>``), because a
    later alarm on the same device, metric and rule has the same labels there. Empty: by
    alarm, or alone when there is no alarm.
    """

    notification_id: str
    channel: Channel
    target: str  # a webhook name, or ALERTMANAGER_TARGET
    body: bytes  # JSON; webhook bodies get ``sent_at`` added when sent
    alarm_id: int | None
    created_us: int
    order_key: str = ""


def order_key_of(item: OutboxItem) -> str:
    """The order key an item is stored with (see :class:`OutboxItem`)."""
    if item.order_key:
        return item.order_key
    return f"alarm/{item.alarm_id}" if item.alarm_id is not None else f"id/{item.notification_id}"


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One stored alarm transition, as the planner needs it to find escalation episodes."""

    event: str
    received_us: int
    severity: Severity


@dataclass(frozen=True, slots=True)
class AlarmFacts:
    """What is stored about one open alarm's notifications, to restore the planner."""

    alarm_id: int
    history: tuple[HistoryEntry, ...]  # oldest first
    sent: frozenset[tuple[int, int, int]]  # (episode since_us, tier, repeat) enqueued
    notified: frozenset[str]  # webhooks that were sent anything about this alarm
