"""The data of each console page: overview, alarm list, alarm detail, device detail.

:class:`ConsoleData` combines the backend's queries (:class:`ConsoleQueries`) with the
configuration, the single source of truth for rules and limits (the same rules the engine
judges with, :func:`coldwatch.rules.profiles.rules_for`; the ``coldwatch_rule_limit``
series publishes the same numbers). Charts are downsampled on the server: a series is
fetched raw when it has at most ``max_points`` readings, and otherwise aggregated by the
database into min/max buckets, so a page never carries more than ``max_points`` points.

The HTML pages call these methods and render the records; nothing here formats HTML.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final
from zoneinfo import ZoneInfo

import numpy as np

from coldwatch.catalogue import KINDS, Kind
from coldwatch.config import Config
from coldwatch.console.chart import AlarmSpan, Chart, LimitLine
from coldwatch.console.downsample import DEFAULT_MAX_POINTS, Series, mark_gaps, minmax
from coldwatch.console.model import (
    AlarmCursor,
    AlarmFilter,
    AlarmPage,
    AlarmRow,
    BucketRow,
    CalibrationDue,
    ConsoleQueries,
    DeviceRow,
    DeviceStatus,
    GapRow,
    NotificationRow,
    TransitionRow,
    device_status,
)
from coldwatch.console.rollup import settled_until
from coldwatch.rules.config import CommLossRule, RuleSpec
from coldwatch.rules.engine import _limits_of  # the engine's own reading of a rule's limits
from coldwatch.rules.profiles import rules_for
from coldwatch.storage.base import Storage

__all__ = [
    "AlarmDetail",
    "AreaSummary",
    "ConsoleData",
    "DeviceDetail",
    "DeviceOverview",
    "RuleInForce",
    "edge_gaps",
    "open_console_queries",
]

US: Final = 1_000_000
DEFAULT_MARGIN_S: Final = 3600.0  # shown before an excursion and after it
DEFAULT_STALE_S: Final = 300.0  # when a device has no comm-loss rule
# States that only open alarms can be in: the closed phase of the list is skipped for them.
_OPEN_ONLY: Final = frozenset(
    {"open", "active", "awaiting_acknowledgement", "active_unacknowledged", "active_acknowledged",
     "cleared_unacknowledged"}
)  # fmt: skip

_CLOSED_ONLY: Final = frozenset({"closed"})


@dataclass(frozen=True, slots=True)
class DeviceOverview:
    """A device as the overview shows it."""

    row: DeviceRow
    status: DeviceStatus
    stale_after_s: float


@dataclass(frozen=True, slots=True)
class AreaSummary:
    """A site's area and how many of its devices are in each state."""

    site: str
    area: str
    counts: dict[DeviceStatus, int]

    @property
    def worst(self) -> DeviceStatus:
        """The most urgent state of any of its devices."""
        return (
            next(s for s in DeviceStatus if self.counts[s])
            if any(self.counts.values())
            else DeviceStatus.NORMAL
        )


@dataclass(frozen=True, slots=True)
class RuleInForce:
    """A rule applied to a device, with its limits (metric, rule, severity, direction, value)."""

    spec: RuleSpec
    limits: list[tuple[str, str, str, str, float]]


@dataclass(frozen=True, slots=True)
class AlarmDetail:
    """Everything the alarm page shows (signatures and review come from the identity tables)."""

    alarm: AlarmRow
    transitions: list[TransitionRow]
    notifications: list[NotificationRow]
    chart: Chart


@dataclass(frozen=True, slots=True)
class DeviceDetail:
    """Everything the device page shows for a chosen range and metric."""

    device: DeviceRow
    chart: Chart
    rules: list[RuleInForce]
    recent_alarms: list[AlarmRow]
    gaps: list[GapRow]
    comm_losses: list[AlarmRow]


async def open_console_queries(storage: Storage) -> ConsoleQueries:
    """The console's queries on ``storage``'s database (SQLite: a read-only connection of their own)."""
    from coldwatch.storage.sqlite import SqliteStorage  # noqa: PLC0415 - each backend only when used

    if isinstance(storage, SqliteStorage):
        from coldwatch.console.queries_sqlite import SqliteConsoleQueries  # noqa: PLC0415

        queries = SqliteConsoleQueries(storage.path)
        await queries.open()
        return queries
    from coldwatch.console.queries_pg import PgConsoleQueries  # noqa: PLC0415
    from coldwatch.storage.postgres import PostgresStorage  # noqa: PLC0415

    if not isinstance(storage, PostgresStorage):
        raise TypeError(f"no console queries for {type(storage).__name__}")
    return PgConsoleQueries(storage.pool)


def bucket_series(rows: Sequence[BucketRow], max_gap_us: int) -> Series:
    """Two points per bucket (its lowest and highest value) at the bucket's first and last reading.

    Which of the two comes first is chosen for the line's continuity (nearest to the
    previous bucket's last value); both values are always kept. A break goes between two
    buckets whose readings are more than ``max_gap_us`` apart (within a bucket, a silence
    is narrower than the chart can show).
    """
    ts: list[int] = []
    values: list[float] = []
    buffered: list[bool] = []
    previous: float | None = None
    last_us: int | None = None
    for b in rows:
        if last_us is not None and b.first_us - last_us > max_gap_us:
            ts.append(last_us)
            values.append(float("nan"))
            buffered.append(False)
        last_us = b.last_us
        if b.count == 1 or b.first_us == b.last_us:
            pairs = [(b.first_us, b.low)] if b.low == b.high else [(b.first_us, b.low), (b.first_us, b.high)]
        else:
            first, second = (b.low, b.high)
            if previous is not None and abs(previous - b.high) < abs(previous - b.low):
                first, second = second, first
            pairs = [(b.first_us, first), (b.last_us, second)]
        for t, v in pairs:
            ts.append(t)
            values.append(v)
            buffered.append(b.buffered > 0)
        previous = pairs[-1][1]
    return Series.of(ts, values, buffered)


def edge_gaps(series: Series, since_us: int, until_us: int, max_gap_us: int) -> list[tuple[int, int]]:
    """The series' gaps, with silences at the start and end of [since, until) (until: at most now).

    A comm loss that began before the chart's range shows as a gap from the range's start.
    """
    real = series.ts_us[~np.isnan(series.values)]
    if real.size == 0:
        return [(since_us, until_us)] if until_us > since_us else []
    gaps = series.gaps()
    first, last = int(real[0]), int(real[-1])
    if first - since_us > max_gap_us:
        gaps.insert(0, (since_us, first))
    if until_us - last > max_gap_us:
        gaps.append((last, until_us))
    return gaps


class ConsoleData:
    """The console pages' data, from one backend's queries and the configuration."""

    def __init__(
        self,
        queries: ConsoleQueries,
        config: Config,
        *,
        site_zones: Mapping[str, ZoneInfo] | None = None,
        calibration_due: CalibrationDue | None = None,
        max_points: int = DEFAULT_MAX_POINTS,
        margin_s: float = DEFAULT_MARGIN_S,
    ) -> None:
        self.queries = queries
        self.config = config
        self.devices = config.device_map()
        self.site_zones = dict(site_zones or {})
        self.calibration_due = calibration_due
        self.max_points = max_points
        self.margin_s = margin_s
        self._rules: dict[object, list[RuleSpec]] = {}
        self._stale_s: dict[str, float] = {}

    # --- rules and limits (from the configuration) --------------------------------

    def rules(self, device_id: str) -> list[RuleSpec]:
        """The rules in force for a registered device (none for an unregistered one)."""
        device = self.devices.get(device_id)
        if device is None:
            return []
        # Devices without rules of their own share their profile's rules: 10,000 devices,
        # a handful of profiles.
        key: object = device.id if device.id in self.config.rules.devices else (
            device.kind, device.grade, device.room_state
        )  # fmt: skip
        rules = self._rules.get(key)
        if rules is None:
            rules = self._rules[key] = rules_for(device, self.config.rules)
        return rules

    def limits(self, device_id: str, metric: str) -> list[LimitLine]:
        """The value limits on ``metric`` of a device (alert and action, high and low, ranges)."""
        return [
            LimitLine(value, severity, direction, rule)
            for spec in self.rules(device_id)
            for m, rule, severity, direction, value in _limits_of(spec)
            if m == metric and direction in {"high", "low"}
        ]

    def stale_after_s(self, device_id: str) -> float:
        """How long a device may stay silent before it is stale: its device-wide comm-loss timeout."""
        found = self._stale_s.get(device_id)
        if found is None:
            timeouts = [
                s.timeout_s for s in self.rules(device_id) if isinstance(s, CommLossRule) and s.metric is None
            ]
            found = self._stale_s[device_id] = min(timeouts) if timeouts else DEFAULT_STALE_S
        return found

    def zone(self, site: str | None) -> ZoneInfo | None:
        """The site's time zone, when configured."""
        return self.site_zones.get(site) if site is not None else None

    # --- pages ----------------------------------------------------------------------

    async def overview(
        self, now_us: int, *, site: str | None = None, area: str | None = None, with_values: bool = True
    ) -> list[DeviceOverview]:
        """Every device (of a site / area) with its state, newest values and time of last reading."""
        out = []
        for row in await self.queries.devices(site, area, with_values=with_values):
            stale = self.stale_after_s(row.device_id)
            status = device_status(row, now_us, int(stale * US), self.calibration_due)
            out.append(DeviceOverview(row, status, stale))
        return out

    async def areas(self, now_us: int) -> list[AreaSummary]:
        """Every site and area with how many of its devices are in each state (no values: fast)."""
        summary: dict[tuple[str, str], dict[DeviceStatus, int]] = {}
        for device in await self.overview(now_us, with_values=False):
            key = (device.row.site, device.row.area)
            counts = summary.get(key)
            if counts is None:
                counts = summary[key] = dict.fromkeys(DeviceStatus, 0)
            counts[device.status] += 1
        return [AreaSummary(site, area, counts) for (site, area), counts in summary.items()]

    async def alarm_list(
        self, where: AlarmFilter, *, after: AlarmCursor | None = None, limit: int = 50
    ) -> AlarmPage:
        """One page of alarms: open ones first, then closed, each newest first (keyset pagination)."""
        if limit < 1:
            raise ValueError("limit must be positive")
        where.state_predicate()  # unknown state names fail before any query
        if after is None and where.states and set(where.states) <= _CLOSED_ONLY:
            after = AlarmCursor(closed=True, raised_ts_us=2**62, id=2**62)  # no open alarm can match
        rows = await self.queries.alarm_page(where, after, limit + 1)
        if len(rows) <= limit and (after is None or not after.closed) and not self._open_only(where):
            # The open alarms are exhausted: continue with the closed ones from the newest.
            top = AlarmCursor(closed=True, raised_ts_us=2**62, id=2**62)
            rows += await self.queries.alarm_page(where, top, limit + 1 - len(rows))
        more = len(rows) > limit
        rows = rows[:limit]
        return AlarmPage(rows, rows[-1].cursor() if more and rows else None)

    @staticmethod
    def _open_only(where: AlarmFilter) -> bool:
        return bool(where.states) and all(s in _OPEN_ONLY for s in where.states)

    async def chart_series(
        self,
        device_id: str,
        metric: str,
        since_us: int,
        until_us: int,
        max_gap_us: int,
        *,
        now_us: int | None = None,
    ) -> tuple[Series, int]:
        """A metric's readings in [since, until), at most ``max_points`` points, gaps broken.

        Returns the series and how many readings it stands for. With ``now_us`` (the wall
        clock), a long range reads settled minutes from the per-minute rollup.
        """
        limit = self.max_points
        ts, values, buffered = await self.queries.points(device_id, metric, since_us, until_us, limit + 1)
        if len(ts) <= limit:
            series = mark_gaps(Series.of(ts, values, buffered), max_gap_us)
            return minmax(series, limit, start_us=since_us, end_us=until_us), len(ts)
        # Too many: the database aggregates. Two points per bucket, a third of the budget
        # left for breaks (minmax below bounds the rest if there are more).
        settled = None if now_us is None else settled_until(now_us)
        rows = await self.queries.buckets(
            device_id, metric, since_us, until_us, limit // 3, settled_us=settled
        )
        count = sum(b.count for b in rows)
        series = bucket_series(rows, max_gap_us)
        return minmax(series, limit, start_us=since_us, end_us=until_us), count

    def _chart_metric(self, device: DeviceRow | AlarmRow, metric: str | None) -> str:
        kind = Kind(device.kind) if device.kind in {k.value for k in Kind} else None
        names = [n for n, s in KINDS[kind].items() if not s.boolean] if kind is not None else []
        if metric is not None and (metric in names or not names):
            return metric
        return names[0] if names else (metric or "")

    async def alarm_detail(
        self, alarm_id: int, now_us: int, *, margin_s: float | None = None
    ) -> AlarmDetail | None:
        """The alarm, its history, its notifications and a chart from before it to after it."""
        alarm = await self.queries.alarm(alarm_id)
        if alarm is None:
            return None
        margin = int((self.margin_s if margin_s is None else margin_s) * US)
        end = alarm.cleared_ts_us if alarm.cleared_ts_us is not None else now_us
        since = alarm.raised_ts_us - margin
        # After the alarm by the margin, but never past now: the future has no readings to show.
        until = min(max(end, alarm.raised_ts_us) + margin, max(now_us, end, alarm.raised_ts_us + 1))
        metric = self._chart_metric(alarm, alarm.metric)
        max_gap = int(self.stale_after_s(alarm.device_id) * US)
        series, count = await self.chart_series(alarm.device_id, metric, since, until, max_gap, now_us=now_us)
        label = f"{alarm.severity} alarm #{alarm.id}"
        chart = Chart(
            title=f"{alarm.device_id} {metric}: alarm #{alarm.id} ({alarm.rule})",
            metric=metric,
            series=series,
            start_us=since,
            end_us=until,
            limits=self.limits(alarm.device_id, metric),
            alarms=[AlarmSpan(alarm.raised_ts_us, alarm.cleared_ts_us, alarm.severity, label)],
            zone=self.zone(alarm.site),
            readings=count,
            gaps=edge_gaps(series, since, min(until, now_us), max_gap),
        )
        transitions = await self.queries.transitions(alarm_id)
        notifications = await self.queries.notifications(alarm_id)
        return AlarmDetail(alarm, transitions, notifications, chart)

    async def device_detail(
        self,
        device_id: str,
        since_us: int,
        until_us: int,
        *,
        now_us: int,
        metric: str | None = None,
        recent: int = 20,
    ) -> DeviceDetail | None:
        """A device's chart over [since, until), its rules and limits, recent alarms, gaps and comm losses.

        ``now_us`` is the wall clock (what is settled enough for the chart rollup).
        """
        rows = await self.queries.devices(device_id=device_id)
        if not rows:
            return None
        device = rows[0]
        chosen = self._chart_metric(device, metric)
        max_gap = int(self.stale_after_s(device_id) * US)
        series, count = await self.chart_series(device_id, chosen, since_us, until_us, max_gap, now_us=now_us)
        in_range = AlarmFilter(device_id=device_id, until_us=until_us)
        alarms = (await self.alarm_list(in_range, limit=recent)).rows
        losses = (await self.alarm_list(AlarmFilter(device_id=device_id, rule="comm_loss", until_us=until_us),
                                        limit=recent)).rows  # fmt: skip
        spans = [
            AlarmSpan(a.raised_ts_us, a.cleared_ts_us, a.severity, f"{a.severity} #{a.id}")
            for a in alarms
            if a.metric == chosen and (a.cleared_ts_us is None or a.cleared_ts_us >= since_us)
        ]
        chart = Chart(
            title=f"{device_id} {chosen}",
            metric=chosen,
            series=series,
            start_us=since_us,
            end_us=until_us,
            limits=self.limits(device_id, chosen),
            alarms=spans,
            zone=self.zone(device.site),
            readings=count,
            gaps=edge_gaps(series, since_us, min(until_us, now_us), max_gap),
        )
        rules = [RuleInForce(spec, _limits_of(spec)) for spec in self.rules(device_id)]
        gaps = await self.queries.gaps(device_id, since_us, until_us)
        return DeviceDetail(device, chart, rules, alarms, gaps, losses)
