"""Alarm lifecycle (ISA-18.2 style): engine events and user actions in, state changes out. Pure.

States: active-unacknowledged -> active-acknowledged -> closed (on clearing), or
active-unacknowledged -> cleared-unacknowledged -> closed (on acknowledgement).
Shelving suppresses an alarm's notifications until a time, by a named user, with a reason.
A higher severity makes an acknowledged alarm unacknowledged again; a lower one does not.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from coldwatch.errors import ColdwatchError
from coldwatch.rules.model import AlarmEvent, AlarmKey, EventKind, Severity

__all__ = ["Alarm", "AlarmBook", "AlarmState", "LifecycleError", "Transition", "what_changed"]

# Alarms per key that late data may still correct (a flapping excursion within the
# reorder horizon can produce many).
RECENT_PER_KEY = 64


class AlarmState(enum.StrEnum):
    """Where an alarm is in its lifecycle."""

    ACTIVE_UNACK = "active_unacknowledged"
    ACTIVE_ACK = "active_acknowledged"
    CLEARED_UNACK = "cleared_unacknowledged"
    CLOSED = "closed"


class LifecycleError(ColdwatchError):
    """A user action that the alarm's state does not allow."""


@dataclass(frozen=True, slots=True)
class Alarm:
    """One alarm: an excursion of one device, metric and rule, from raised to closed."""

    id: int
    key: AlarmKey
    severity: Severity
    state: AlarmState
    raised_ts_us: int
    raised_received_us: int
    value: float | None = None
    limit: float | None = None
    late: bool = False
    detail: str = ""
    cleared_ts_us: int | None = None
    shelved_until_us: int | None = None
    shelved_by: str | None = None
    acknowledged_by: str | None = None

    @property
    def open(self) -> bool:
        """Not yet closed."""
        return self.state is not AlarmState.CLOSED

    @property
    def active(self) -> bool:
        """The condition still holds."""
        return self.state in {AlarmState.ACTIVE_UNACK, AlarmState.ACTIVE_ACK}

    def shelved(self, now_us: int) -> bool:
        """Shelved at ``now_us``."""
        return self.shelved_until_us is not None and now_us < self.shelved_until_us


@dataclass(frozen=True, slots=True)
class Transition:
    """One entry of an alarm's history (append-only)."""

    alarm: Alarm  # the alarm after the change
    event: str  # raised, severity_changed, cleared, revoked, acknowledged, shelved, unshelved
    ts_us: int  # device (event) time; for user actions, the time of the action
    received_us: int  # when the collector processed it
    from_state: AlarmState | None
    actor: str = "coldwatch"
    reason: str = ""


@dataclass(slots=True)
class AlarmBook:
    """The open alarms, one per key, and the id of the next alarm."""

    next_id: int = 1
    open: dict[AlarmKey, Alarm] = field(default_factory=dict)
    # Where ids come from when several collectors share the store (else next_id counts up).
    allocate: Callable[[], int] | None = None
    # The newest alarms of each key, closed ones too, so late data can correct them.
    recent: dict[AlarmKey, list[Alarm]] = field(default_factory=dict)

    def load(self, alarms: Iterable[Alarm], next_id: int) -> None:
        """Restore the open alarms from storage."""
        self.open = {a.key: a for a in alarms if a.open}
        self.recent = {key: [alarm] for key, alarm in self.open.items()}
        self.next_id = next_id

    def apply(self, events: Iterable[AlarmEvent], received_us: int) -> list[Transition]:
        """Apply engine events; return the transitions to store."""
        out: list[Transition] = []
        judgement = list(events)
        for event in judgement:
            out += self._apply(event, received_us, judgement)
        return out

    def _apply(
        self, event: AlarmEvent, received_us: int, judgement: Sequence[AlarmEvent]
    ) -> list[Transition]:
        current = self.open.get(event.key)
        kind = event.kind
        if kind is EventKind.REVOKED:
            return self._revoke(event, current, received_us, judgement)
        if kind is EventKind.RAISED:
            if current is not None and current.active:
                return []  # one open alarm per key; the engine never raises twice
            if current is not None:  # cleared but unacknowledged: it closes, a new one opens
                closed = replace(current, state=AlarmState.CLOSED)
                out = [Transition(closed, "superseded", event.ts_us, received_us, current.state)]
            else:
                out = []
            assert event.severity is not None
            alarm_id = self.allocate() if self.allocate is not None else self.next_id
            alarm = Alarm(
                alarm_id,
                event.key,
                event.severity,
                AlarmState.ACTIVE_UNACK,
                event.ts_us,
                received_us,
                event.value,
                event.limit,
                event.late,
                event.detail,
            )
            self.next_id += 1
            self._store(alarm)
            return [*out, Transition(alarm, "raised", event.ts_us, received_us, None)]
        if current is None or not current.active:
            return []
        if kind is EventKind.SEVERITY_CHANGED:
            assert event.severity is not None
            escalated = event.severity > current.severity
            state = AlarmState.ACTIVE_UNACK if escalated else current.state
            alarm = replace(
                current,
                severity=event.severity,
                state=state,
                value=event.value,
                limit=event.limit,
                acknowledged_by=None if escalated else current.acknowledged_by,
            )
            self._store(alarm)
            return [Transition(alarm, "severity_changed", event.ts_us, received_us, current.state)]
        # cleared
        state = AlarmState.CLOSED if current.state is AlarmState.ACTIVE_ACK else AlarmState.CLEARED_UNACK
        alarm = replace(current, state=state, cleared_ts_us=event.ts_us)
        self._store(alarm)
        return [Transition(alarm, "cleared", event.ts_us, received_us, current.state)]

    def _revoke(
        self, event: AlarmEvent, current: Alarm | None, received_us: int, judgement: Sequence[AlarmEvent]
    ) -> list[Transition]:
        """Late readings showed an earlier event did not happen as reported: correct, never delete.

        ``judgement``: every event of the same judgement, among them the event that replaces
        the revoked one (if any), so that the record says what actually changed.
        """
        revoked = event.revokes
        if revoked is None:
            return []
        replacement = _replacement(revoked, judgement)
        withdrawn = (
            revoked.kind is EventKind.CLEARED and replacement is None and _raise_withdrawn(revoked, judgement)
        )
        changed = what_changed(revoked, replacement, excursion_withdrawn=withdrawn)
        why = f"{revoked.kind.value} revoked: {changed}"
        candidates = [a for a in self.recent.get(event.key, []) if not a.detail.startswith("revoked")]
        if revoked.kind is EventKind.RAISED:
            alarm = next((a for a in candidates if a.raised_ts_us == revoked.ts_us), None)
            if alarm is None:
                return []
            new = replace(alarm, state=AlarmState.CLOSED, detail=f"revoked: {changed}")
        elif revoked.kind is EventKind.SEVERITY_CHANGED:
            alarm = current
            if alarm is None or event.severity is None:
                return []
            new = replace(alarm, severity=event.severity)
        else:  # a clear: the alarm is active again, until the corrected clear arrives
            alarm = next((a for a in candidates if a.cleared_ts_us == revoked.ts_us), None)
            if alarm is None or (current is not None and current.id != alarm.id):
                return []
            state = AlarmState.ACTIVE_ACK if alarm.acknowledged_by else AlarmState.ACTIVE_UNACK
            new = replace(alarm, state=state, cleared_ts_us=None, severity=event.severity or alarm.severity)
        self._store(new)
        return [Transition(new, "revoked", event.ts_us, received_us, alarm.state, reason=why)]

    def _store(self, alarm: Alarm) -> None:
        kept = [a for a in self.recent.get(alarm.key, []) if a.id != alarm.id][-(RECENT_PER_KEY - 1) :]
        # A revoked alarm is final: late data never targets it again.
        self.recent[alarm.key] = kept if alarm.detail.startswith("revoked") else [*kept, alarm]
        if alarm.open:
            self.open[alarm.key] = alarm
        else:
            self.open.pop(alarm.key, None)

    def find(self, alarm_id: int) -> Alarm | None:
        """An open alarm by id."""
        return next((a for a in self.open.values() if a.id == alarm_id), None)

    def acknowledge(self, alarm_id: int, actor: str, reason: str, now_us: int) -> Transition:
        """Acknowledge an open alarm (a reason is mandatory)."""
        alarm = self._user_target(alarm_id, actor, reason)
        if alarm.state is AlarmState.ACTIVE_UNACK:
            new = replace(alarm, state=AlarmState.ACTIVE_ACK, acknowledged_by=actor)
        elif alarm.state is AlarmState.CLEARED_UNACK:
            new = replace(alarm, state=AlarmState.CLOSED, acknowledged_by=actor)
        else:
            raise LifecycleError(f"alarm {alarm_id} is already acknowledged")
        self._store(new)
        return Transition(new, "acknowledged", now_us, now_us, alarm.state, actor, reason)

    def shelve(self, alarm_id: int, actor: str, reason: str, until_us: int, now_us: int) -> Transition:
        """Shelve an open alarm until ``until_us`` (bounded, named, with a reason)."""
        alarm = self._user_target(alarm_id, actor, reason)
        if until_us <= now_us:
            raise LifecycleError("a shelve must end in the future")
        new = replace(alarm, shelved_until_us=until_us, shelved_by=actor)
        self._store(new)
        return Transition(new, "shelved", now_us, now_us, alarm.state, actor, reason)

    def unshelve(self, alarm_id: int, actor: str, reason: str, now_us: int) -> Transition:
        """End a shelve early (refused when the alarm is not shelved: nothing to record)."""
        alarm = self._user_target(alarm_id, actor, reason)
        if alarm.shelved_until_us is None:
            raise LifecycleError(f"alarm {alarm_id} is not shelved")
        new = replace(alarm, shelved_until_us=None, shelved_by=None)
        self._store(new)
        return Transition(new, "unshelved", now_us, now_us, alarm.state, actor, reason)

    def _user_target(self, alarm_id: int, actor: str, reason: str) -> Alarm:
        if not actor.strip():
            raise LifecycleError("every action is attributed to a named user")
        if not reason.strip():
            raise LifecycleError("a reason is required")
        alarm = self.find(alarm_id)
        if alarm is None:
            raise LifecycleError(f"no open alarm {alarm_id}")
        return alarm


def _at(ts_us: int) -> str:
    """Device time as RFC 3339 UTC (seconds, or milliseconds when it has them)."""
    try:
        moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ts_us)
    except OverflowError:
        return f"{ts_us} us"
    spec = "seconds" if ts_us % 1_000_000 == 0 else "milliseconds"
    return moment.isoformat(timespec=spec).replace("+00:00", "Z")


def _label(event: AlarmEvent) -> str:
    return event.severity.label if event.severity is not None else "none"


def _replacement(revoked: AlarmEvent, judgement: Sequence[AlarmEvent]) -> AlarmEvent | None:
    """The new event that replaces ``revoked``, if any.

    The first of its key and kind that does not re-issue another event revoked in the same
    judgement (that one stands: it is not where ``revoked`` moved to).
    """
    reissued = {e.revokes.identity() for e in judgement if e.revokes is not None and e.revokes is not revoked}
    return next(
        (
            e
            for e in judgement
            if e.key == revoked.key and e.kind is revoked.kind and e.identity() not in reissued
        ),
        None,
    )


def _raise_withdrawn(cleared: AlarmEvent, judgement: Sequence[AlarmEvent]) -> bool:
    """True if ``cleared`` is a clear whose raise is revoked in the same judgement, with no replacement."""
    if cleared.kind is not EventKind.CLEARED:
        return False
    raises = [
        e.revokes
        for e in judgement
        if e.revokes is not None
        and e.revokes.key == cleared.key
        and e.revokes.kind is EventKind.RAISED
        and e.revokes.ts_us <= cleared.ts_us
    ]
    latest = max(raises, key=lambda e: e.ts_us, default=None)
    return latest is not None and _replacement(latest, judgement) is None


def what_changed(
    revoked: AlarmEvent, replacement: AlarmEvent | None, *, excursion_withdrawn: bool = False
) -> str:
    """What late readings changed about ``revoked``, given the event that replaces it (None: none does).

    ``excursion_withdrawn``: for a clear, the raise it ended is revoked too, with no replacement.
    """
    old_at = _at(revoked.ts_us)
    if replacement is None:
        no_raise = "late readings showed no excursion long enough to raise an alarm"
        return {
            EventKind.RAISED: f"{no_raise} at {old_at}",
            EventKind.CLEARED: f"{no_raise}; its end at {old_at} goes with it"
            if excursion_withdrawn
            else f"late readings showed the excursion had not ended at {old_at}",
        }.get(revoked.kind, f"late readings showed no change to {_label(revoked)} at {old_at}")
    if replacement.identity() == revoked.identity():
        # Revoked only because an earlier event changed (everything after the first
        # difference is judged again): this one stands and is issued again.
        return f"late readings changed an earlier event; this {revoked.kind.value} at {old_at} stands"
    new_at = _at(replacement.ts_us)
    moved = replacement.ts_us != revoked.ts_us
    if revoked.kind is EventKind.RAISED:
        change = (
            f"moved the start of this excursion from {old_at} to {new_at}"
            if moved
            else f"changed its starting severity ({old_at}) from {_label(revoked)} to {_label(replacement)}"
        )
        return f"late readings {change}; a new alarm replaces this one"
    if revoked.kind is EventKind.CLEARED:
        return f"late readings moved the end of the excursion from {old_at} to {new_at}"
    if moved:
        return f"late readings moved the change to {_label(replacement)} from {old_at} to {new_at}"
    return f"late readings changed the severity at {old_at} from {_label(revoked)} to {_label(replacement)}"
