"""The console's queries on PostgreSQL, through the storage's connection pool."""

from __future__ import annotations

from typing import Any

import asyncpg

from coldwatch.console.model import (
    AlarmCursor,
    AlarmFilter,
    AlarmRow,
    BucketRow,
    DeviceRow,
    GapRow,
    NotificationRow,
    TransitionRow,
)
from coldwatch.console.rollup import MINUTE_US, ROLLUP_FROM_SPAN_US, build_ranges
from coldwatch.console.sql import ALARM_BY_ID, DEVICES, KIND_METRICS, alarm_page_sql, device_where

__all__ = ["PgConsoleQueries"]

# The newest values: one index lookup per device and metric of its kind (LATERAL: a hash
# join would read every stored reading).
_LAST_VALUES = f"""
    WITH km(kind, name) AS ({KIND_METRICS})
    SELECT d.device_id, m.name, r.value
    FROM devices AS d JOIN km ON km.kind = d.kind JOIN metrics AS m ON m.name = km.name
    CROSS JOIN LATERAL (
        SELECT x.value FROM readings AS x
        WHERE x.device = d.id AND x.metric = m.id AND x.ts_us = d.last_ts_us ORDER BY x.seq DESC LIMIT 1
    ) AS r
    WHERE d.last_ts_us IS NOT NULL{{where}}
"""  # noqa: S608 - constant text
_SERIES_IDS = (
    "(SELECT id FROM devices WHERE device_id = $1) AND r.metric = (SELECT id FROM metrics WHERE name = $2)"
)
_POINTS = (
    f"SELECT r.ts_us, r.value, r.buffered FROM readings AS r WHERE r.device = {_SERIES_IDS} "  # noqa: S608
    "AND r.ts_us >= $3 AND r.ts_us < $4 ORDER BY r.ts_us, r.seq LIMIT $5"
)
_BUCKETS = (
    "SELECT min(r.ts_us), max(r.ts_us), min(r.value), max(r.value), count(*), "  # noqa: S608
    f"count(*) FILTER (WHERE r.buffered) FROM readings AS r WHERE r.device = {_SERIES_IDS} "
    "AND r.ts_us >= $3 AND r.ts_us < $4 GROUP BY (r.ts_us - $3) * $5::bigint / ($4 - $3) ORDER BY 1"
)
_IDS = "SELECT (SELECT id FROM devices WHERE device_id = $1), (SELECT id FROM metrics WHERE name = $2)"
ROLLUP_LOCK = 0x63777275  # "cwru": one builder per device and metric at a time
_ROLLUP_BUILD = (
    "INSERT INTO chart_rollup SELECT $1, $2, ts_us / $3 * $3, min(ts_us), max(ts_us), "
    "min(value), max(value), count(*), count(*) FILTER (WHERE buffered) FROM readings "
    "WHERE device = $1 AND metric = $2 AND ts_us >= $4 AND ts_us < $5 GROUP BY ts_us / $3"
)
_RAW_PART = (
    "SELECT ts_us AS b, ts_us AS f, ts_us AS l, value AS lo, value AS hi, 1 AS n, buffered::int AS bn "
    "FROM readings WHERE device = $1 AND metric = $2 AND ts_us >= {} AND ts_us < {}"
)
# Settled minutes from the rollup, the partial minutes at either end from the readings.
# $1 device, $2 metric, $3 a, $4 c, $5 since, $6 until, $7 buckets.
_ROLLUP_BUCKETS = (
    "SELECT min(f), max(l), min(lo), max(hi), sum(n)::bigint, sum(bn)::bigint FROM ("  # noqa: S608
    "SELECT minute_us AS b, first_us AS f, last_us AS l, low AS lo, high AS hi, n, buffered_n AS bn "
    "FROM chart_rollup WHERE device = $1 AND metric = $2 AND minute_us >= $3 AND minute_us < $4 "
    f"UNION ALL {_RAW_PART.format('$5', '$3')} UNION ALL {_RAW_PART.format('$4', '$6')}"
    ") AS parts GROUP BY (b - $5) * $7::bigint / ($6 - $5) ORDER BY 1"
)
_GAPS = (
    "SELECT g.first_missing, g.last_missing, g.detected_us, g.state, g.resolved_us FROM seq_gaps AS g "
    "WHERE g.device = (SELECT id FROM devices WHERE device_id = $1) "
    "AND ((g.detected_us >= $2 AND g.detected_us < $3) OR g.state = 'open') ORDER BY g.detected_us, g.id"
)
_TRANSITIONS = (
    "SELECT event, ts_us, received_us, from_state, to_state, severity, value, limit_value, late, actor, "
    "reason "
    "FROM alarm_transitions WHERE alarm_id = $1 ORDER BY id"
)
_NOTIFICATIONS = (
    "SELECT id, notification_id, channel, target, created_us, delivered_us, dead_lettered_us, last_error "
    "FROM notification_outbox WHERE alarm_id = $1 ORDER BY id"
)
_ATTEMPTS = (
    "SELECT t.outbox_id, t.at_us, t.ok, t.status, t.error FROM notification_attempts AS t "
    "JOIN notification_outbox AS o ON o.id = t.outbox_id WHERE o.alarm_id = $1 ORDER BY t.id"
)


def _alarm_row(r: Any) -> AlarmRow:
    return AlarmRow(*r)


class PgConsoleQueries:
    """:class:`coldwatch.console.model.ConsoleQueries` on a PostgreSQL pool (the storage's own)."""

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self.pool = pool

    async def close(self) -> None:
        """Nothing of its own to release: the pool belongs to the storage."""

    async def devices(
        self,
        site: str | None = None,
        area: str | None = None,
        device_id: str | None = None,
        *,
        with_values: bool = True,
    ) -> list[DeviceRow]:
        """Every device (of a site / area, or one device), with open-alarm aggregates and newest values."""
        async with self.pool.acquire() as conn:
            values: dict[str, dict[str, float]] = {}
            where, params = device_where(site, area, device_id, lambda n: f"${n}")
            newest = await conn.fetch(_LAST_VALUES.format(where=where), *params) if with_values else []
            for owner, name, value in newest:
                values.setdefault(owner, {})[name] = float(value)
            rows = await conn.fetch(DEVICES.format(where=where), *params)
        return [
            DeviceRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], values.get(r[0], {}))
            for r in rows
        ]

    async def alarm_page(self, where: AlarmFilter, after: AlarmCursor | None, limit: int) -> list[AlarmRow]:
        """Alarms of one phase (``after.closed``; open when no cursor), newest first, after ``after``."""
        closed = after.closed if after is not None else False
        sql, params = alarm_page_sql(where, closed, after, limit, lambda n: f"${n}")
        return [_alarm_row(r) for r in await self.pool.fetch(sql, *params)]

    async def alarm(self, alarm_id: int) -> AlarmRow | None:
        """One alarm."""
        row = await self.pool.fetchrow(ALARM_BY_ID.format("$1"), alarm_id)
        return None if row is None else _alarm_row(row)

    async def transitions(self, alarm_id: int) -> list[TransitionRow]:
        """An alarm's history, oldest first."""
        return [TransitionRow(*r) for r in await self.pool.fetch(_TRANSITIONS, alarm_id)]

    async def notifications(self, alarm_id: int) -> list[NotificationRow]:
        """An alarm's notifications with their delivery attempts, oldest first."""
        async with self.pool.acquire() as conn:
            rows = [NotificationRow(*r) for r in await conn.fetch(_NOTIFICATIONS, alarm_id)]
            by_id = {n.id: n for n in rows}
            for outbox_id, at_us, ok, status, error in await conn.fetch(_ATTEMPTS, alarm_id):
                by_id[outbox_id].attempts.append((int(at_us), bool(ok), status, error))
        return rows

    async def points(
        self, device_id: str, metric: str, since_us: int, until_us: int, limit: int
    ) -> tuple[list[int], list[float], list[bool]]:
        """At most ``limit`` raw readings (ts_us, value, buffered) in [since, until), oldest first."""
        rows = await self.pool.fetch(_POINTS, device_id, metric, since_us, until_us, limit)
        return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]

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

        With ``settled_us`` and a long range, minutes before it come from the rollup
        (:mod:`coldwatch.console.rollup`), built first where missing or dirty.
        """
        if settled_us is None or until_us - since_us < ROLLUP_FROM_SPAN_US:
            rows = await self.pool.fetch(_BUCKETS, device_id, metric, since_us, until_us, buckets)
            return [BucketRow(*r) for r in rows]
        ids = await self.pool.fetchrow(_IDS, device_id, metric)
        if ids is None or ids[0] is None or ids[1] is None:
            return []
        device, metric_id = int(ids[0]), int(ids[1])
        a = -(-since_us // MINUTE_US) * MINUTE_US
        c = max(a, min(until_us // MINUTE_US * MINUTE_US, settled_us))
        day = 86_400 * 1_000_000
        start = a
        while True:  # a day per transaction
            end = min(c, start + day)
            await self._build(device, metric_id, start, end)
            if end >= c:
                break
            start = end
        rows = await self.pool.fetch(_ROLLUP_BUCKETS, device, metric_id, a, c, since_us, until_us, buckets)
        return [BucketRow(*r) for r in rows]

    async def _build(self, device: int, metric: int, want_from: int, want_until: int) -> None:
        """Build (or rebuild) minutes of one device metric's rollup, in a transaction of its own."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", ROLLUP_LOCK, device)
            built = await conn.fetchrow(
                "SELECT from_us, until_us FROM chart_rollup_built WHERE device = $1 AND metric = $2",
                device,
                metric,
            )
            # Dirty marks are taken before the readings are read (a later statement sees
            # more): a late reading committed after this is marked again, rebuilt next time.
            dirty = await conn.fetch(
                "DELETE FROM chart_rollup_dirty WHERE device = $1 AND metric = $2 RETURNING minute_us",
                device,
                metric,
            )
            span = None if built is None else (int(built[0]), int(built[1]))
            todo, (lo, hi) = build_ranges(span, want_from, want_until)
            todo += [(m, m + MINUTE_US) for (m,) in dirty if span is not None and span[0] <= m < span[1]]
            for start, end in todo:
                await conn.execute(
                    "DELETE FROM chart_rollup WHERE device = $1 AND metric = $2 "
                    "AND minute_us >= $3 AND minute_us < $4",
                    device, metric, start, end,
                )  # fmt: skip
                await conn.execute(_ROLLUP_BUILD, device, metric, MINUTE_US, start, end)
            await conn.execute(
                "INSERT INTO chart_rollup_built VALUES ($1, $2, $3, $4) ON CONFLICT (device, metric) "
                "DO UPDATE SET from_us = excluded.from_us, until_us = excluded.until_us",
                device, metric, lo, hi,
            )  # fmt: skip

    async def gaps(self, device_id: str, since_us: int, until_us: int) -> list[GapRow]:
        """Seq gaps detected in [since, until), and every gap still open."""
        return [GapRow(*r) for r in await self.pool.fetch(_GAPS, device_id, since_us, until_us)]
