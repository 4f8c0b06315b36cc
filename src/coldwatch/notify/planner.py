"""The notification planner: alarm transitions and open alarms in, outbox items out.

No I/O and no clock: the pipeline calls :meth:`Notifier.plan` while it builds a batch and
stores the items in the batch's transaction, so a notification is enqueued if and only if
the transition that caused it is committed. Between transitions, the pipeline's timer
ticks let escalations and repeats fall due.

Per open alarm the planner remembers the current escalation episode (see
:mod:`coldwatch.notify.escalation`), the (tier, repeat) pairs already enqueued in it and the
webhooks told anything about the alarm. All of it is derived from stored facts, so
:meth:`Notifier.restore` rebuilds it after a restart and nothing is sent twice.

Notification ids (unique per receiver):

- ``am/<alarm>/<event>/<ts_us>/<received_us>/<severity>/<state>``: Alertmanager update;
- ``esc/<alarm>/<since_us>/<tier>/<repeat>/<webhook>``: an escalation-chain notification;
- ``evt/<alarm>/<event>/<ts_us>/<received_us>/<webhook>``: news of a change (severity,
  clear, revoke) for a webhook already notified about the alarm;
- ``dl/<receiver>/<failed id>``: not planned here: the deliverer's notice that a
  notification was dead-lettered (:mod:`coldwatch.notify.failures`).

Webhook items are delivered in order per alarm, Alertmanager items per alert identity
(their ``order_key``): one alarm's failing notification never holds back another's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import orjson

from coldwatch.config import DeviceConfig
from coldwatch.notify.config import NotifyConfig
from coldwatch.notify.escalation import EscalationAlarm, due
from coldwatch.notify.messages import alertmanager_alerts, webhook_body
from coldwatch.notify.model import ALERTMANAGER_TARGET, AlarmFacts, Channel, HistoryEntry, OutboxItem
from coldwatch.rules.lifecycle import Alarm, AlarmState, Transition
from coldwatch.rules.model import Severity

__all__ = ["Episode", "Notifier", "episode_from_history", "escalation_id"]

# Transitions Alertmanager hears about (its view of the alarm: firing, resolved, annotations).
_ALERTMANAGER_EVENTS = frozenset(
    {"raised", "severity_changed", "cleared", "revoked", "acknowledged", "shelved", "unshelved"}
)
# Changes that everyone already notified about an alarm hears about.
_NEWS_EVENTS = frozenset({"severity_changed", "cleared", "revoked"})


@dataclass(frozen=True, slots=True)
class Episode:
    """An escalation episode: from when an alarm became unacknowledged, at which severity."""

    since_us: int
    severity: Severity
    opened_by: str  # "raised" or "severity_changed": the event of its first notification


@dataclass(slots=True)
class _Notes:
    episode: Episode
    severity: Severity  # the alarm's severity when last seen (for Alertmanager's old label set)
    sent: set[tuple[int, int]] = field(default_factory=set)  # in the current episode
    notified: set[str] = field(default_factory=set)  # webhooks, over all episodes


def escalation_id(alarm_id: int, since_us: int, tier: int, repeat: int, webhook: str) -> str:
    """The notification id of an escalation-chain notification."""
    return f"esc/{alarm_id}/{since_us}/{tier}/{repeat}/{webhook}"


def _next_episode(
    current: Episode | None, event: str, received_us: int, severity: Severity, previous: Severity | None
) -> Episode | None:
    """The episode after one transition (one rule, live and on restore)."""
    if event == "raised":
        return Episode(received_us, severity, "raised")
    if event == "severity_changed" and current is not None and previous is not None and severity > previous:
        # A higher severity makes the alarm unacknowledged again (lifecycle): a new chain starts.
        return Episode(received_us, severity, "severity_changed")
    return current


def episode_from_history(history: Sequence[HistoryEntry]) -> Episode | None:
    """The current episode of an alarm from its stored transitions, oldest first."""
    episode: Episode | None = None
    previous: Severity | None = None
    for entry in history:
        episode = _next_episode(episode, entry.event, entry.received_us, entry.severity, previous)
        previous = entry.severity
    return episode


class Notifier:
    """Plans notifications; holds only what :meth:`restore` can rebuild from storage."""

    def __init__(
        self,
        config: NotifyConfig,
        devices: Mapping[str, DeviceConfig],
        *,
        console_base_url: str | None = None,
    ) -> None:
        self.config = config
        self.console_base_url = console_base_url
        self._devices = dict(devices)
        self._notes: dict[int, _Notes] = {}

    @property
    def enabled(self) -> bool:
        """Whether anything is configured to be notified."""
        return self.config.alertmanager is not None or bool(self.config.escalation)

    def restore(self, facts: Iterable[AlarmFacts], open_alarms: Iterable[Alarm]) -> None:
        """Rebuild the per-alarm state of the open alarms from stored facts."""
        by_id = {f.alarm_id: f for f in facts}
        self._notes = {}
        for alarm in open_alarms:
            fact = by_id.get(alarm.id)
            episode = episode_from_history(fact.history) if fact else None
            if episode is None:
                episode = Episode(alarm.raised_received_us, alarm.severity, "raised")
            notes = _Notes(episode, alarm.severity)
            if fact is not None:
                notes.sent = {(t, r) for since, t, r in fact.sent if since == episode.since_us}
                notes.notified = set(fact.notified)
            self._notes[alarm.id] = notes

    def plan(
        self, transitions: Sequence[Transition], open_alarms: Iterable[Alarm], now_us: int
    ) -> list[OutboxItem]:
        """The notifications caused by ``transitions`` and due at ``now_us``.

        ``open_alarms`` must be every open alarm after the transitions (``book.open``):
        alarms missing from it are forgotten.
        """
        items: list[OutboxItem] = []
        for transition in transitions:
            items += self._on_transition(transition, now_us)
        open_list = list(open_alarms)
        for alarm in open_list:
            items += self._escalate(alarm, now_us)[0]
        open_ids = {a.id for a in open_list}
        self._notes = {k: v for k, v in self._notes.items() if k in open_ids}
        return items

    def _on_transition(self, transition: Transition, now_us: int) -> list[OutboxItem]:
        alarm = transition.alarm
        notes = self._notes.get(alarm.id)
        previous = notes.severity if notes is not None else alarm.severity
        episode = _next_episode(
            notes.episode if notes is not None else None,
            transition.event,
            transition.received_us,
            alarm.severity,
            previous,
        )
        if episode is None:  # a change to an alarm we never saw raised (restored late): start now
            episode = Episode(alarm.raised_received_us, alarm.severity, "raised")
        new_episode = notes is None or episode != notes.episode
        if notes is None:
            notes = self._notes[alarm.id] = _Notes(episode, alarm.severity)
        elif new_episode:
            notes.episode, notes.sent = episode, set()
        notes.severity = alarm.severity
        told = frozenset(notes.notified)
        device = self._devices.get(alarm.key.device_id)
        items = self._alertmanager(transition, previous, now_us)
        opened: set[str] = set()
        if new_episode:
            # Judged on the alarm as this transition left it: an alarm raised and cleared
            # within one batch (a backfill) still reaches the first tier.
            escalated, opened = self._escalate(alarm, now_us)
            items += escalated
        if transition.event in _NEWS_EVENTS and device is not None and not alarm.shelved(now_us):
            for name in sorted(told - opened):
                nid = f"evt/{alarm.id}/{transition.event}/{transition.ts_us}/{transition.received_us}/{name}"
                body = webhook_body(
                    transition.event,
                    alarm,
                    device,
                    notification_id=nid,
                    console_base_url=self.console_base_url,
                )
                items.append(OutboxItem(nid, Channel.WEBHOOK, name, orjson.dumps(body), alarm.id, now_us))
        return items

    def _alertmanager(self, transition: Transition, previous: Severity, now_us: int) -> list[OutboxItem]:
        alarm = transition.alarm
        am = self.config.alertmanager
        device = self._devices.get(alarm.key.device_id)
        if am is None or device is None or transition.event not in _ALERTMANAGER_EVENTS:
            return []
        alerts = alertmanager_alerts(
            alarm,
            device,
            now_us=transition.received_us,
            previous_severity=previous,
            runbook_base_url=am.runbook_base_url,
            console_base_url=self.console_base_url,
        )
        nid = (
            f"am/{alarm.id}/{transition.event}/{transition.ts_us}/{transition.received_us}/"
            f"{alarm.severity.label}/{alarm.state.value}"
        )
        body = orjson.dumps(alerts)
        # Alertmanager knows an alert by its labels: a later alarm on the same device, metric
        # and rule is the same alert there, so its updates keep one order.
        key = f"alert/{alarm.key.device_id}/{alarm.key.metric}/{alarm.key.rule}"
        return [
            OutboxItem(nid, Channel.ALERTMANAGER, ALERTMANAGER_TARGET, body, alarm.id, now_us, order_key=key)
        ]

    def _escalate(self, alarm: Alarm, now_us: int) -> tuple[list[OutboxItem], set[str]]:
        """Escalation items due for ``alarm``, and the webhooks paged by a first tier."""
        device = self._devices.get(alarm.key.device_id)
        opened: set[str] = set()
        if device is None or not self.config.escalation:
            return [], opened
        notes = self._notes.get(alarm.id)
        if notes is None:
            notes = self._notes[alarm.id] = _Notes(
                Episode(alarm.raised_received_us, alarm.severity, "raised"), alarm.severity
            )
        episode = notes.episode
        view = EscalationAlarm(
            alarm.id,
            episode.severity,
            device.site,
            episode.since_us,
            acknowledged=alarm.state is AlarmState.ACTIVE_ACK,
            active=alarm.active,
            shelved=alarm.shelved(now_us),
        )
        items: list[OutboxItem] = []
        for step in due(self.config.escalation, view, notes.sent, now_us):
            if step.repeat > 0:
                event = "repeat"
            elif step.tier == 0:
                event = episode.opened_by
            else:
                event = "escalated"
            for name in step.webhooks:
                nid = escalation_id(alarm.id, episode.since_us, step.tier, step.repeat, name)
                body = webhook_body(
                    event,
                    alarm,
                    device,
                    notification_id=nid,
                    tier=step.tier,
                    repeat=step.repeat,
                    console_base_url=self.console_base_url,
                )
                items.append(OutboxItem(nid, Channel.WEBHOOK, name, orjson.dumps(body), alarm.id, now_us))
                notes.notified.add(name)
                if step.tier == 0 and step.repeat == 0:
                    opened.add(name)
            notes.sent.add((step.tier, step.repeat))
        return items, opened
