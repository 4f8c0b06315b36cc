"""The console's queries on SQLite, on a read-only connection of their own (WAL: never blocks a writer)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import aiosqlite

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
from coldwatch.errors import StorageError
from coldwatch.storage.sqlite_thread import on_thread

__all__ = ["SqliteConsoleQueries"]

# The newest values: one primary-key lookup per device and metric of its kind (CROSS JOIN
# keeps that order: without statistics the planner would rather scan every reading).
_LAST_VALUES = f"""
    WITH km(kind, name) AS ({KIND_METRICS})
    SELECT d.device_id, m.name, r.value
    FROM devices AS d CROSS JOIN km CROSS JOIN metrics AS m CROSS JOIN reading_rows AS r
    WHERE km.kind = d.kind AND m.name = km.name
        AND r.device = d.id AND r.metric = m.id AND r.ts_us = d.last_ts_us
        AND d.last_ts_us IS NOT NULL{{where}}
"""  # noqa: S608 - constant text
_SERIES_IDS = (
    "(SELECT id FROM devices WHERE device_id = ?1) AND r.metric = (SELECT id FROM metrics WHERE name = ?2)"
)
_POINTS = (
    f"SELECT r.ts_us, r.value, r.buffered FROM reading_rows AS r WHERE r.device = {_SERIES_IDS} "  # noqa: S608
    "AND r.ts_us >= ?3 AND r.ts_us < ?4 ORDER BY r.ts_us, r.seq LIMIT ?5"
)
_BUCKETS = (
    "SELECT min(r.ts_us), max(r.ts_us), min(r.value), max(r.value), count(*), sum(r.buffered) "  # noqa: S608
    f"FROM reading_rows AS r WHERE r.device = {_SERIES_IDS} AND r.ts_us >= ?3 AND r.ts_us < ?4 "
    "GROUP BY (r.ts_us - ?3) * ?5 / (?4 - ?3) ORDER BY 1"
)
_IDS = "SELECT (SELECT id FROM devices WHERE device_id = ?), (SELECT id FROM metrics WHERE name = ?)"
_ROLLUP_BUILD = (
    "INSERT OR REPLACE INTO chart_rollup SELECT device, metric, ts_us / ?3 * ?3, min(ts_us), max(ts_us), "
    "min(value), max(value), count(*), sum(buffered) FROM reading_rows "
    "WHERE device = ?1 AND metric = ?2 AND ts_us >= ?4 AND ts_us < ?5 GROUP BY ts_us / ?3"
)
_RAW_PART = (
    "SELECT ts_us AS b, ts_us AS f, ts_us AS l, value AS lo, value AS hi, 1 AS n, buffered AS bn "
    "FROM reading_rows "
    "WHERE device = :d AND metric = :m AND ts_us >= {} AND ts_us < {}"
)
# Settled minutes from the rollup, the partial minutes at either end from the readings.
_ROLLUP_BUCKETS = (
    "SELECT min(f), max(l), min(lo), max(hi), sum(n), sum(bn) FROM ("  # noqa: S608 - constant text
    "SELECT minute_us AS b, first_us AS f, last_us AS l, low AS lo, high AS hi, n, buffered_n AS bn "
    "FROM chart_rollup WHERE device = :d AND metric = :m AND minute_us >= :a AND minute_us < :c "
    f"UNION ALL {_RAW_PART.format(':since', ':a')} UNION ALL {_RAW_PART.format(':c', ':until')}"
    ") GROUP BY (b - :since) * :nb / (:until - :since) ORDER BY 1"
)
_GAPS = (
    "SELECT g.first_missing, g.last_missing, g.detected_us, g.state, g.resolved_us FROM seq_gaps AS g "
    "WHERE g.device = (SELECT id FROM devices WHERE device_id = ?1) "
    "AND ((g.detected_us >= ?2 AND g.detected_us < ?3) OR g.state = 'open') ORDER BY g.detected_us, g.id"
)
_TRANSITIONS = (
    "SELECT event, ts_us, received_us, from_state, to_state, severity, value, limit_value, late, actor, "
    "reason "
    "FROM alarm_transitions WHERE alarm_id = ? ORDER BY id"
)
_NOTIFICATIONS = (
    "SELECT id, notification_id, channel, target, created_us, delivered_us, dead_lettered_us, last_error "
    "FROM notification_outbox WHERE alarm_id = ? ORDER BY id"
)
_ATTEMPTS = (
    "SELECT t.outbox_id, t.at_us, t.ok, t.status, t.error FROM notification_attempts AS t "
    "JOIN notification_outbox AS o ON o.id = t.outbox_id WHERE o.alarm_id = ? ORDER BY t.id"
)


def alarm_row(r: Any) -> AlarmRow:
    """An :class:`AlarmRow` from the columns of ``ALARM_COLUMNS``."""
    return AlarmRow(
        int(r[0]), r[1], r[2], r[3], r[4], r[5], int(r[6]), int(r[7]), r[8], r[9], r[10], bool(r[11]),
        r[12], r[13], r[14], r[15], r[16], r[17], r[18],
    )  # fmt: skip


def _devices(
    conn: sqlite3.Connection, site: str | None, area: str | None, device_id: str | None, *, with_values: bool
) -> list[DeviceRow]:
    values: dict[str, dict[str, float]] = {}
    where, params = device_where(site, area, device_id, lambda _: "?")
    for owner, name, value in conn.execute(_LAST_VALUES.format(where=where), params) if with_values else ():
        values.setdefault(owner, {})[name] = float(value)
    rows = conn.execute(DEVICES.format(where=where), params).fetchall()
    return [
        DeviceRow(
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            r[5],
            r[6],
            None if r[7] is None else bool(r[7]),
            int(r[8]),
            int(r[9]),
            int(r[10]),
            values.get(r[0], {}),
        )
        for r in rows
    ]


def _build_rollup(
    conn: sqlite3.Connection, device: int, metric: int, want_from: int, want_until: int
) -> None:
    """Build (or rebuild) minutes of one device metric's rollup, in a write transaction of its own."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        key = (device, metric)
        built = conn.execute(
            "SELECT from_us, until_us FROM chart_rollup_built WHERE device = ? AND metric = ?", key
        ).fetchone()
        # Dirty marks are taken before the readings are read: a late reading committed
        # after this is marked again and rebuilt next time.
        dirty = [r[0] for r in conn.execute(
            "SELECT minute_us FROM chart_rollup_dirty WHERE device = ? AND metric = ?", key)]  # fmt: skip
        conn.execute("DELETE FROM chart_rollup_dirty WHERE device = ? AND metric = ?", key)
        todo, (lo, hi) = build_ranges(None if built is None else (built[0], built[1]), want_from, want_until)
        todo += [(m, m + MINUTE_US) for m in dirty if built is not None and built[0] <= m < built[1]]
        for start, end in todo:
            conn.execute(
                "DELETE FROM chart_rollup WHERE device = ? AND metric = ? "
                "AND minute_us >= ? AND minute_us < ?",
                (device, metric, start, end),
            )
            conn.execute(_ROLLUP_BUILD, (device, metric, MINUTE_US, start, end))
        conn.execute(
            "INSERT INTO chart_rollup_built VALUES (?, ?, ?, ?) ON CONFLICT(device, metric) "
            "DO UPDATE SET from_us = excluded.from_us, until_us = excluded.until_us",
            (device, metric, lo, hi),
        )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _notifications(conn: sqlite3.Connection, alarm_id: int) -> list[NotificationRow]:
    rows = [NotificationRow(*r) for r in conn.execute(_NOTIFICATIONS, (alarm_id,))]
    by_id = {n.id: n for n in rows}
    for outbox_id, at_us, ok, status, error in conn.execute(_ATTEMPTS, (alarm_id,)):
        by_id[outbox_id].attempts.append((int(at_us), bool(ok), status, error))
    return rows


class SqliteConsoleQueries:
    """:class:`coldwatch.console.model.ConsoleQueries` on a SQLite database file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        self._builder: aiosqlite.Connection | None = None  # writes rollups, opened when first needed

    async def open(self) -> None:
        """Open a read-only connection (the database must exist)."""
        try:
            self._db = await aiosqlite.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
            await self._db.execute("PRAGMA busy_timeout=5000")
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: cannot open for reading: {exc}") from exc

    @property
    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StorageError(f"{self.path}: console queries are not open")
        return self._db

    async def close(self) -> None:
        """Close the connection."""
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()
        if self._builder is not None:
            builder, self._builder = self._builder, None
            await builder.close()

    async def devices(
        self,
        site: str | None = None,
        area: str | None = None,
        device_id: str | None = None,
        *,
        with_values: bool = True,
    ) -> list[DeviceRow]:
        """Every device (of a site / area, or one device), with open-alarm aggregates and newest values."""
        return await on_thread(self._conn, _devices, site, area, device_id, with_values=with_values)

    async def alarm_page(self, where: AlarmFilter, after: AlarmCursor | None, limit: int) -> list[AlarmRow]:
        """Alarms of one phase (``after.closed``; open when no cursor), newest first, after ``after``."""
        closed = after.closed if after is not None else False
        sql, params = alarm_page_sql(where, closed, after, limit, lambda _: "?")
        return await on_thread(self._conn, lambda c: [alarm_row(r) for r in c.execute(sql, params)])

    async def alarm(self, alarm_id: int) -> AlarmRow | None:
        """One alarm."""
        sql = ALARM_BY_ID.format("?")
        rows = await on_thread(self._conn, lambda c: [alarm_row(r) for r in c.execute(sql, (alarm_id,))])
        return rows[0] if rows else None

    async def transitions(self, alarm_id: int) -> list[TransitionRow]:
        """An alarm's history, oldest first."""
        return await on_thread(
            self._conn,
            lambda c: [
                TransitionRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], bool(r[8]), r[9], r[10])
                for r in c.execute(_TRANSITIONS, (alarm_id,))
            ],
        )

    async def notifications(self, alarm_id: int) -> list[NotificationRow]:
        """An alarm's notifications with their delivery attempts, oldest first."""
        return await on_thread(self._conn, _notifications, alarm_id)

    async def points(
        self, device_id: str, metric: str, since_us: int, until_us: int, limit: int
    ) -> tuple[list[int], list[float], list[bool]]:
        """At most ``limit`` raw readings (ts_us, value, buffered) in [since, until), oldest first."""

        def fetch(c: sqlite3.Connection) -> tuple[list[int], list[float], list[bool]]:
            rows = c.execute(_POINTS, (device_id, metric, since_us, until_us, limit)).fetchall()
            return [r[0] for r in rows], [r[1] for r in rows], [bool(r[2]) for r in rows]

        return await on_thread(self._conn, fetch)

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
            args = (device_id, metric, since_us, until_us, buckets)
            return await on_thread(self._conn, lambda c: [BucketRow(*r) for r in c.execute(_BUCKETS, args)])
        ids = await on_thread(self._conn, lambda conn: conn.execute(_IDS, (device_id, metric)).fetchone())
        if ids is None or ids[0] is None or ids[1] is None:
            return []
        a = -(-since_us // MINUTE_US) * MINUTE_US
        c = max(a, min(until_us // MINUTE_US * MINUTE_US, settled_us))
        await self._build(int(ids[0]), int(ids[1]), a, c)
        params = {
            "d": ids[0],
            "m": ids[1],
            "a": a,
            "c": c,
            "since": since_us,
            "until": until_us,
            "nb": buckets,
        }
        return await on_thread(
            self._conn, lambda conn: [BucketRow(*r) for r in conn.execute(_ROLLUP_BUCKETS, params)]
        )

    async def _build(self, device: int, metric: int, a: int, c: int) -> None:
        """Build the rollup over [a, c), a day per transaction (the collector writes in between)."""
        if self._builder is None:
            self._builder = await aiosqlite.connect(self.path, isolation_level=None)
            await self._builder.execute("PRAGMA busy_timeout=5000")
        day = 86_400 * 1_000_000
        start = a
        while True:
            end = min(c, start + day)
            await on_thread(self._builder, _build_rollup, device, metric, start, end)
            if end >= c:
                return
            start = end

    async def gaps(self, device_id: str, since_us: int, until_us: int) -> list[GapRow]:
        """Seq gaps detected in [since, until), and every gap still open."""
        args = (device_id, since_us, until_us)
        return await on_thread(self._conn, lambda c: [GapRow(*r) for r in c.execute(_GAPS, args)])
