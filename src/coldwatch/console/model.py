"""The console's read model: the records its pages show, the alarm filters, and device states.

Pure data and pure functions; the SQL behind them lives in :mod:`coldwatch.console.queries_sqlite`
and :mod:`coldwatch.console.queries_pg`, behind the :class:`ConsoleQueries` protocol.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from coldwatch.errors import ColdwatchError
from coldwatch.rules.lifecycle import AlarmState

__all__ = [
    "ALARM_STATE_FILTERS",
    "AlarmCursor",
    "AlarmFilter",
    "AlarmPage",
    "AlarmRow",
    "BucketRow",
    "CalibrationDue",
    "ConsoleQueries",
    "DeviceRow",
    "DeviceStatus",
    "FilterError",
    "GapRow",
    "NotificationRow",
    "TransitionRow",
    "device_status",
    "register_alarm_state_filter",
]

OPEN_STATES: Final = (
    AlarmState.ACTIVE_UNACK.value,
    AlarmState.ACTIVE_ACK.value,
    AlarmState.CLEARED_UNACK.value,
)


class FilterError(ColdwatchError):
    """A filter the console cannot apply (an unknown state name, a malformed cursor)."""


# Named alarm state filters: SQL predicates on the alarm row (alias ``a``), portable between
# SQLite and PostgreSQL, without parameters. The extension point for filters that other
# tables define: the QA review adds "awaiting_review" with register_alarm_state_filter, e.g.
# "a.state = 'closed' AND NOT EXISTS (SELECT 1 FROM alarm_reviews AS r WHERE r.alarm_id = a.id)".
ALARM_STATE_FILTERS: dict[str, str] = {
    **{s.value: f"a.state = '{s.value}'" for s in AlarmState},
    "open": "a.state <> 'closed'",
    "active": f"a.state IN ('{AlarmState.ACTIVE_UNACK.value}', '{AlarmState.ACTIVE_ACK.value}')",
    # Waiting for a person: raised (or cleared) and nobody has acknowledged it yet.
    "awaiting_acknowledgement": (
        f"a.state IN ('{AlarmState.ACTIVE_UNACK.value}', '{AlarmState.CLEARED_UNACK.value}')"
    ),
}
_NAME = re.compile(r"[a-z][a-z0-9_]{0,40}")


def register_alarm_state_filter(name: str, predicate_sql: str) -> None:
    """Add (or replace) a named state filter: a portable SQL predicate on the alarm alias ``a``.

    The predicate is code, never user input: it is pasted into the query as written.
    """
    if not _NAME.fullmatch(name):
        raise FilterError(f"state filter name {name!r}: lower-case letters, digits and _ only")
    ALARM_STATE_FILTERS[name] = predicate_sql


@dataclass(frozen=True, slots=True)
class AlarmFilter:
    """What the alarm list shows. Every field given narrows it; ``states`` are ORed."""

    states: Sequence[str] = ()  # names in ALARM_STATE_FILTERS
    severity: str | None = None  # alert or action
    site: str | None = None
    area: str | None = None
    device_id: str | None = None
    rule: str | None = None
    since_us: int | None = None  # raised at or after
    until_us: int | None = None  # raised before

    def state_predicate(self) -> str | None:
        """The SQL of the state names, ORed (None: no state filter)."""
        if not self.states:
            return None
        unknown = [s for s in self.states if s not in ALARM_STATE_FILTERS]
        if unknown:
            raise FilterError(f"unknown alarm state filter(s): {', '.join(sorted(unknown))}")
        return "(" + " OR ".join(f"({ALARM_STATE_FILTERS[s]})" for s in self.states) + ")"


@dataclass(frozen=True, slots=True, order=True)
class AlarmCursor:
    """Where a page of the alarm list ends: open alarms come first, then newest first.

    Keyset pagination: the next page starts after (closed, raised_ts_us, id), so a page
    costs the same at the 100,000th alarm as at the first, and new alarms do not shift it.
    """

    closed: bool
    raised_ts_us: int
    id: int

    def token(self) -> str:
        """An opaque text form for a URL."""
        return f"{int(self.closed)}.{self.raised_ts_us}.{self.id}"

    @classmethod
    def parse(cls, token: str) -> AlarmCursor:
        """The cursor of :meth:`token`; FilterError when malformed."""
        match = re.fullmatch(r"([01])\.(-?\d{1,20})\.(\d{1,20})", token)
        if match is None:
            raise FilterError("malformed alarm list cursor")
        return cls(match[1] == "1", int(match[2]), int(match[3]))


@dataclass(frozen=True, slots=True)
class AlarmRow:
    """An alarm as listed, with where its device is."""

    id: int
    device_id: str
    metric: str
    rule: str
    severity: str
    state: str
    raised_ts_us: int
    raised_received_us: int
    cleared_ts_us: int | None
    value: float | None
    limit: float | None
    late: bool
    detail: str
    shelved_until_us: int | None
    shelved_by: str | None
    acknowledged_by: str | None
    site: str | None
    area: str | None
    kind: str | None

    @property
    def closed(self) -> bool:
        """The alarm is over and acknowledged."""
        return self.state == AlarmState.CLOSED.value

    def cursor(self) -> AlarmCursor:
        """The keyset position of this row."""
        return AlarmCursor(self.closed, self.raised_ts_us, self.id)


@dataclass(frozen=True, slots=True)
class AlarmPage:
    """One page of the alarm list, and the cursor of the next page (None: this is the last)."""

    rows: list[AlarmRow]
    next: AlarmCursor | None


@dataclass(frozen=True, slots=True)
class TransitionRow:
    """One entry of an alarm's history."""

    event: str
    ts_us: int
    received_us: int
    from_state: str | None
    to_state: str
    severity: str
    value: float | None
    limit: float | None
    late: bool
    actor: str
    reason: str


@dataclass(frozen=True, slots=True)
class NotificationRow:
    """A notification of an alarm and every attempt to deliver it: (at_us, ok, status, error)."""

    id: int
    notification_id: str
    channel: str
    target: str
    created_us: int
    delivered_us: int | None
    dead_lettered_us: int | None
    last_error: str | None
    attempts: list[tuple[int, bool, int | None, str | None]] = field(default_factory=list)

    @property
    def state(self) -> str:
        """delivered, dead_letter (given up) or pending."""
        if self.delivered_us is not None:
            return "delivered"
        return "dead_letter" if self.dead_lettered_us is not None else "pending"


@dataclass(frozen=True, slots=True)
class GapRow:
    """Readings a device skipped (by seq): open, recovered (re-sent) or lost."""

    first_missing: int
    last_missing: int
    detected_us: int
    state: str
    resolved_us: int | None

    @property
    def count(self) -> int:
        """How many readings are missing."""
        return self.last_missing - self.first_missing + 1


@dataclass(frozen=True, slots=True)
class DeviceRow:
    """A device with its stored state and its open alarms, aggregated by the database."""

    device_id: str
    kind: str
    site: str
    area: str
    grade: str | None
    last_ts_us: int | None
    last_received_us: int | None
    online: bool | None
    worst_active: int  # highest severity of its active alarms (comm loss aside): 0, 1 alert, 2 action
    open_alarms: int
    unacknowledged: int
    last_values: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BucketRow:
    """One time bucket of a metric's readings, aggregated by the database."""

    first_us: int
    last_us: int
    low: float
    high: float
    count: int
    buffered: int  # how many of them were backfilled


class DeviceStatus(enum.StrEnum):
    """What the overview shows for a device, the most urgent first."""

    ACTION = "action"
    ALERT = "alert"
    OFFLINE = "offline"
    STALE = "stale"
    CALIBRATION_DUE = "calibration_due"
    NORMAL = "normal"


# A hook for instrument calibration (added with the instruments): is this device's
# calibration due at ``now_us``?
CalibrationDue = Callable[[str, int], bool]


def device_status(
    row: DeviceRow, now_us: int, stale_after_us: int, calibration_due: CalibrationDue | None = None
) -> DeviceStatus:
    """The overview state of a device at ``now_us``.

    Precedence: an active action alarm, an active alert alarm (comm-loss alarms aside:
    they show as offline or stale), offline (its retained status says so), stale (nothing
    received for longer than ``stale_after_us``, its comm-loss timeout), calibration due,
    normal.
    """
    if row.worst_active >= 2:
        return DeviceStatus.ACTION
    if row.worst_active == 1:
        return DeviceStatus.ALERT
    if row.online is False:
        return DeviceStatus.OFFLINE
    if row.last_received_us is None or now_us - row.last_received_us > stale_after_us:
        return DeviceStatus.STALE
    if calibration_due is not None and calibration_due(row.device_id, now_us):
        return DeviceStatus.CALIBRATION_DUE
    return DeviceStatus.NORMAL


class ConsoleQueries(Protocol):
    """The console's reads on one backend. Aggregation happens in the database."""

    async def devices(
        self,
        site: str | None = None,
        area: str | None = None,
        device_id: str | None = None,
        *,
        with_values: bool = True,
    ) -> list[DeviceRow]:
        """Every device (of a site / area, or one device), with open-alarm aggregates and newest values.

        ``with_values`` False leaves the newest values out (an index lookup per device and
        metric: the bulk of the time for 10,000 devices).
        """
        ...

    async def alarm_page(self, where: AlarmFilter, after: AlarmCursor | None, limit: int) -> list[AlarmRow]:
        """Up to ``limit`` alarms matching ``where``, open first then newest first, after ``after``."""
        ...

    async def alarm(self, alarm_id: int) -> AlarmRow | None:
        """One alarm."""
        ...

    async def transitions(self, alarm_id: int) -> list[TransitionRow]:
        """An alarm's history, oldest first."""
        ...

    async def notifications(self, alarm_id: int) -> list[NotificationRow]:
        """An alarm's notifications with their delivery attempts, oldest first."""
        ...

    async def points(
        self, device_id: str, metric: str, since_us: int, until_us: int, limit: int
    ) -> tuple[list[int], list[float], list[bool]]:
        """At most ``limit`` raw readings (ts_us, value, buffered) in [since, until), oldest first."""
        ...

    async def buckets(
        self,
        device_id: str,
        metric: str,
        since_us: int,
        until_us: int,
        buckets: int,
        *,
        settled_us: int | None = None,
    ) -> list[BucketRow]:
        """The readings in [since, until) in ``buckets`` equal time buckets (empty ones left out).

        ``settled_us``: minutes before it may be read from the per-minute rollup (long ranges).
        """
        ...

    async def gaps(self, device_id: str, since_us: int, until_us: int) -> list[GapRow]:
        """Seq gaps detected in [since, until), and every gap still open."""
        ...

    async def close(self) -> None:
        """Release the connection(s) of these queries."""
        ...
