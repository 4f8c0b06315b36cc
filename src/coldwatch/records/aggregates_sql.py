"""The periodic figures' SQL, and readers that run it on connections of their own (both backends).

Each series (one device's metric over [start, end)) is one query: the database pairs every
reading with the next one (``lead`` over the primary key's order, so no sort) and returns
only sums: count, min, max, covered time, value x time, MKT's exponential x time, time
beyond each level. Nothing is read reading by reading in Python. The queries run on a few
connections opened for the report (never the collector's writer, never the console's pool),
several series at a time.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from coldwatch.errors import StorageError

__all__ = [
    "AlarmRow",
    "BucketRow",
    "FigureReader",
    "GapRow",
    "PgFigureReader",
    "SeriesQuery",
    "SeriesSums",
    "SqliteFigureReader",
    "series_sql",
]

ACTIVATION_K: Final = 10_000.0  # dH/R of USP <1079>: 83.144 kJ/mol / 8.3144 J/(mol K)
# exp(-dH/RT) for T below 14.3 K would underflow (PostgreSQL refuses it): no temperature
# metric gets there (liquid nitrogen is 77 K), so T is floored at that.
_T_FLOOR_K: Final = ACTIVATION_K / 700.0


@dataclass(frozen=True, slots=True)
class SeriesQuery:
    """One series to sum: ``levels`` are (limit, above) pairs."""

    device_id: str
    metric: str
    hold_cap_us: int
    temperature: bool
    levels: tuple[tuple[float, bool], ...]


@dataclass(frozen=True, slots=True)
class SeriesSums:
    """What the database returns for one series (times in microseconds)."""

    n: int
    min: float | None
    max: float | None
    covered_us: int
    value_us: float  # sum of value x hold
    boltzmann_us: float | None  # sum of exp(-dH/RT) x hold (temperature metrics)
    first_us: int | None
    last_us: int | None
    beyond_us: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class AlarmRow:
    """An alarm that overlaps the period."""

    id: int
    device_id: str
    metric: str
    rule: str
    severity: str
    state: str
    raised_ts_us: int
    cleared_ts_us: int | None
    value: float | None
    limit_value: float | None


@dataclass(frozen=True, slots=True)
class GapRow:
    """A seq gap detected in the period."""

    device_id: str
    first_missing: int
    last_missing: int
    state: str


# (first ts, last ts, min, max, count) of one chart bucket
BucketRow = tuple[int, int, float, float, int]


def series_sql(query: SeriesQuery, *, postgres: bool) -> str:
    """The sums of one series. Parameters: device id, metric name, start, end, hold cap, levels."""

    def p(n: int, cast: str) -> str:
        return f"${n}::{cast}" if postgres else f"?{n}"

    least, greatest = ("least", "greatest") if postgres else ("min", "max")
    table = "readings" if postgres else "reading_rows"
    total = "::bigint" if postgres else ""
    boltzmann = (
        f"sum(hold * exp(-{ACTIVATION_K} / {greatest}(value + 273.15, {_T_FLOOR_K})))"
        if query.temperature
        else "NULL"
    )
    beyond = "".join(
        f", sum(CASE WHEN value {'>' if above else '<'} {p(6 + i, 'float8')} THEN hold ELSE 0 END){total}"
        for i, (_, above) in enumerate(query.levels)
    )
    return (
        "WITH r AS (SELECT ts_us, value, "  # noqa: S608 - no user text: placeholders only
        f"{least}(coalesce(lead(ts_us) OVER (ORDER BY ts_us, seq), {p(4, 'bigint')}), "
        f"ts_us + {p(5, 'bigint')}) - ts_us AS hold FROM {table} "
        f"WHERE device = (SELECT id FROM devices WHERE device_id = {p(1, 'text')}) "
        f"AND metric = (SELECT id FROM metrics WHERE name = {p(2, 'text')}) "
        f"AND ts_us >= {p(3, 'bigint')} AND ts_us < {p(4, 'bigint')}) "
        f"SELECT count(*), min(value), max(value), coalesce(sum(hold), 0){total}, "
        "coalesce(sum(value * hold), 0), "
        f"{boltzmann}, min(ts_us), max(ts_us){beyond} FROM r"
    )


def _params(query: SeriesQuery, start_us: int, end_us: int) -> list[Any]:
    return [
        query.device_id,
        query.metric,
        start_us,
        end_us,
        query.hold_cap_us,
        *(lv for lv, _ in query.levels),
    ]


def _sums(row: Sequence[Any]) -> SeriesSums:
    return SeriesSums(
        int(row[0]),
        None if row[1] is None else float(row[1]),
        None if row[2] is None else float(row[2]),
        int(row[3]),
        float(row[4]),
        None if row[5] is None else float(row[5]),
        None if row[6] is None else int(row[6]),
        None if row[7] is None else int(row[7]),
        tuple(int(v or 0) for v in row[8:]),
    )


def _alarms_sql(count: int, mark: Callable[[int], str]) -> str:
    ids = ", ".join(mark(3 + i) for i in range(count))
    return (
        "SELECT id, device_id, metric, rule, severity, state, raised_ts_us, cleared_ts_us, "  # noqa: S608
        f"value, limit_value FROM alarms WHERE device_id IN ({ids}) AND raised_ts_us < {mark(2)} "
        f"AND (cleared_ts_us IS NULL OR cleared_ts_us > {mark(1)}) ORDER BY raised_ts_us, id"
    )


def _gaps_sql(count: int, mark: Callable[[int], str]) -> str:
    ids = ", ".join(mark(3 + i) for i in range(count))
    return (
        "SELECT d.device_id, g.first_missing, g.last_missing, g.state FROM seq_gaps AS g "  # noqa: S608
        f"JOIN devices AS d ON d.id = g.device WHERE d.device_id IN ({ids}) "
        f"AND g.detected_us >= {mark(1)} AND g.detected_us < {mark(2)} ORDER BY g.detected_us, g.id"
    )


# PostgreSQL groups by hash (no sort): one pass over the series.
_PG_BUCKETS: Final = (
    "SELECT min(ts_us), max(ts_us), min(value), max(value), count(*) FROM readings "
    "WHERE device = (SELECT id FROM devices WHERE device_id = $1::text) "
    "AND metric = (SELECT id FROM metrics WHERE name = $2::text) "
    "AND ts_us >= $3::bigint AND ts_us < $4::bigint "
    "GROUP BY (ts_us - $3::bigint) * $5::bigint / ($4::bigint - $3::bigint) ORDER BY 1"
)


def _count_sql(*, postgres: bool) -> str:
    def p(n: int, cast: str) -> str:
        return f"${n}::{cast}" if postgres else f"?{n}"

    table = "readings" if postgres else "reading_rows"
    return (
        f"SELECT count(*) FROM {table} "  # noqa: S608 - placeholders only
        f"WHERE device = (SELECT id FROM devices WHERE device_id = {p(1, 'text')}) "
        f"AND metric = (SELECT id FROM metrics WHERE name = {p(2, 'text')}) "
        f"AND ts_us >= {p(3, 'bigint')} AND ts_us < {p(4, 'bigint')}"
    )


class FigureReader(Protocol):
    """Runs the report's queries on connections of its own."""

    async def series(self, queries: Sequence[SeriesQuery], start_us: int, end_us: int) -> list[SeriesSums]:
        """The sums of each series, in order."""
        ...

    async def alarms(self, device_ids: Sequence[str], start_us: int, end_us: int) -> list[AlarmRow]:
        """Alarms of these devices that overlap [start, end)."""
        ...

    async def gaps(self, device_ids: Sequence[str], start_us: int, end_us: int) -> list[GapRow]:
        """Seq gaps of these devices detected in [start, end)."""
        ...

    async def buckets(
        self, device_id: str, metric: str, start_us: int, end_us: int, buckets: int
    ) -> list[BucketRow]:
        """A series in equal time buckets (empty ones left out)."""
        ...

    async def count_between(self, device_id: str, metric: str, spans: Sequence[tuple[int, int]]) -> int:
        """Readings of a series taken in any of ``spans`` ([start, end) each, not overlapping)."""
        ...

    async def close(self) -> None:
        """Close the connections."""
        ...


def _register_exp(conn: sqlite3.Connection) -> None:
    conn.create_function("exp", 1, math.exp, deterministic=True)


def sqlite_has_exp(conn: sqlite3.Connection) -> bool:
    """Whether this SQLite was built with its math functions."""
    try:
        conn.execute("SELECT exp(0)").fetchone()
    except sqlite3.OperationalError:
        return False
    return True


class SqliteFigureReader:
    """Read-only connections to a SQLite file, one per worker thread (WAL: the writer never waits).

    SQLite releases the GIL while it steps a query, so ``workers`` series run at once.
    Without SQLite's math functions, ``exp`` is Python's (``python_exp`` forces that).
    """

    def __init__(self, path: Path, *, workers: int = 2, python_exp: bool = False) -> None:
        self.path = path
        self.python_exp = python_exp
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="coldwatch-report")
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(
                    f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
                )
            except sqlite3.Error as exc:
                raise StorageError(f"{self.path}: cannot open for reading: {exc}") from exc
            conn.execute("PRAGMA busy_timeout=5000")
            if self.python_exp or not sqlite_has_exp(conn):
                _register_exp(conn)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    async def _run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, lambda: fn(self._conn()))
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: report query failed: {exc}") from exc

    async def series(self, queries: Sequence[SeriesQuery], start_us: int, end_us: int) -> list[SeriesSums]:
        """The sums of each series, ``workers`` at a time."""

        def one(query: SeriesQuery) -> Callable[[sqlite3.Connection], SeriesSums]:
            sql, params = series_sql(query, postgres=False), _params(query, start_us, end_us)
            return lambda c: _sums(c.execute(sql, params).fetchone())

        return list(await asyncio.gather(*(self._run(one(q)) for q in queries)))

    async def alarms(self, device_ids: Sequence[str], start_us: int, end_us: int) -> list[AlarmRow]:
        """Alarms of these devices that overlap [start, end)."""
        if not device_ids:
            return []
        sql = _alarms_sql(len(device_ids), lambda n: f"?{n}")
        rows = await self._run(lambda c: c.execute(sql, [start_us, end_us, *device_ids]).fetchall())
        return [AlarmRow(*r) for r in rows]

    async def gaps(self, device_ids: Sequence[str], start_us: int, end_us: int) -> list[GapRow]:
        """Seq gaps of these devices detected in [start, end)."""
        if not device_ids:
            return []
        sql = _gaps_sql(len(device_ids), lambda n: f"?{n}")
        rows = await self._run(lambda c: c.execute(sql, [start_us, end_us, *device_ids]).fetchall())
        return [GapRow(*r) for r in rows]

    async def buckets(
        self, device_id: str, metric: str, start_us: int, end_us: int, buckets: int
    ) -> list[BucketRow]:
        """A series in equal time buckets: one index range a bucket (a GROUP BY would sort every reading)."""
        sql = _count_sql(postgres=False).replace(
            "count(*)", "min(ts_us), max(ts_us), min(value), max(value), count(*)"
        )
        edges = [start_us + (end_us - start_us) * i // buckets for i in range(buckets + 1)]

        def fetch(c: sqlite3.Connection) -> list[BucketRow]:
            rows = (
                c.execute(sql, (device_id, metric, a, b)).fetchone() for a, b in itertools.pairwise(edges)
            )
            return [(int(r[0]), int(r[1]), float(r[2]), float(r[3]), int(r[4])) for r in rows if r[4]]

        return await self._run(fetch)  # type: ignore[no-any-return]

    async def count_between(self, device_id: str, metric: str, spans: Sequence[tuple[int, int]]) -> int:
        """Readings of a series taken in any of ``spans``."""
        sql = _count_sql(postgres=False)

        def count(c: sqlite3.Connection) -> int:
            return sum(int(c.execute(sql, (device_id, metric, a, b)).fetchone()[0]) for a, b in spans)

        return int(await self._run(count))

    async def close(self) -> None:
        """Close every connection and stop the threads."""
        await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown)
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()


class PgFigureReader:
    """A small asyncpg pool of its own on the storage's database (the collector's pool stays free)."""

    def __init__(self, url: str, *, workers: int = 2) -> None:
        self.url = url
        self.workers = workers
        self._pool: Any = None

    async def open(self) -> None:
        """Connect."""
        import asyncpg  # noqa: PLC0415 - only a storage backend imports its driver, and only when used

        try:
            self._pool = await asyncpg.create_pool(
                self.url, min_size=1, max_size=self.workers, command_timeout=600
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise StorageError(f"cannot open the database for reading: {exc}") from exc

    async def series(self, queries: Sequence[SeriesQuery], start_us: int, end_us: int) -> list[SeriesSums]:
        """The sums of each series, ``workers`` at a time."""

        async def one(query: SeriesQuery) -> SeriesSums:
            row = await self._pool.fetchrow(
                series_sql(query, postgres=True), *_params(query, start_us, end_us)
            )
            return _sums(row)

        return list(await asyncio.gather(*(one(q) for q in queries)))

    async def alarms(self, device_ids: Sequence[str], start_us: int, end_us: int) -> list[AlarmRow]:
        """Alarms of these devices that overlap [start, end)."""
        if not device_ids:
            return []
        sql = _alarms_sql(len(device_ids), lambda n: f"${n}")
        return [AlarmRow(*r) for r in await self._pool.fetch(sql, start_us, end_us, *device_ids)]

    async def gaps(self, device_ids: Sequence[str], start_us: int, end_us: int) -> list[GapRow]:
        """Seq gaps of these devices detected in [start, end)."""
        if not device_ids:
            return []
        sql = _gaps_sql(len(device_ids), lambda n: f"${n}")
        return [GapRow(*r) for r in await self._pool.fetch(sql, start_us, end_us, *device_ids)]

    async def buckets(
        self, device_id: str, metric: str, start_us: int, end_us: int, buckets: int
    ) -> list[BucketRow]:
        """A series in equal time buckets."""
        rows = await self._pool.fetch(_PG_BUCKETS, device_id, metric, start_us, end_us, buckets)
        return [(int(r[0]), int(r[1]), float(r[2]), float(r[3]), int(r[4])) for r in rows]

    async def count_between(self, device_id: str, metric: str, spans: Sequence[tuple[int, int]]) -> int:
        """Readings of a series taken in any of ``spans``."""
        sql = _count_sql(postgres=True)
        return sum([int(await self._pool.fetchval(sql, device_id, metric, a, b)) for a, b in spans])

    async def close(self) -> None:
        """Close the pool."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()
