"""Per monitoring point figures over [start, end): the numbers of the periodic report.

The database returns sums per series (:mod:`coldwatch.records.aggregates_sql`); the pure
functions here turn them into figures, with the convention every report shares: each
reading holds its value until the next one, but never longer than ``hold_cap_s`` (3 x the
device's interval), and the last one until ``end`` at most (same cap). A longer silence is
no data: it lowers completeness and is never in range nor beyond.

- mean: time-weighted, sum(value x hold) / sum(hold);
- MKT (temperature metrics, USP <1079>): dH/R / -ln(sum(hold x exp(-dH/RT)) / sum(hold)),
  dH/R = 10,000 K;
- time beyond a level: the holds of readings strictly beyond it;
- completeness: readings received / readings expected from the interval (at most 1);
- alarms: the environmental alarms overlapping the period (every rule but the calibration
  reminder ``calibration_due``, which the calibration state covers and which is counted
  apart); alarm time is the union of their intervals inside the period (an open one up to
  now), so overlapping alarms count once and it never exceeds the period.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from coldwatch.console.chart import unit_of
from coldwatch.records.aggregates_sql import (
    ACTIVATION_K,
    AlarmRow,
    FigureReader,
    GapRow,
    SeriesQuery,
    SeriesSums,
)
from coldwatch.records.calibration import CALIBRATION_RULE
from coldwatch.records.levels import PointSpec, is_temperature
from coldwatch.storage.base import Storage

__all__ = [
    "AlarmFigures",
    "GapFigures",
    "LevelTime",
    "MetricFigures",
    "PointFigures",
    "alarm_figures",
    "expected_readings",
    "gap_figures",
    "metric_figures",
    "open_reader",
    "point_figures",
    "union_us",
]

US = 1_000_000
KELVIN = 273.15
COMM_LOSS = "comm_loss"


@dataclass(frozen=True, slots=True)
class LevelTime:
    """Time a series spent strictly beyond one level."""

    name: str
    level: float
    above: bool
    seconds: float


@dataclass(frozen=True, slots=True)
class MetricFigures:
    """One metric of one point over the period."""

    metric: str
    unit: str
    n: int
    min: float | None
    max: float | None
    mean_tw: float | None
    mkt_c: float | None
    covered_s: float
    beyond: tuple[LevelTime, ...]
    first_us: int | None
    last_us: int | None
    completeness: float


@dataclass(frozen=True, slots=True)
class AlarmFigures:
    """The point's environmental alarms that overlap the period (communication losses among them).

    ``duration_s`` is the time inside the period when at least one of them was open;
    ``calibration`` counts the calibration reminders, kept out of the other figures.
    """

    count: int
    duration_s: float
    by_severity: Mapping[str, int]
    comm_losses: int
    calibration: int = 0


@dataclass(frozen=True, slots=True)
class GapFigures:
    """Seq gaps detected in the period, in missing readings."""

    gaps: int
    recovered: int
    lost: int
    open: int


@dataclass(frozen=True, slots=True)
class PointFigures:
    """Everything the periodic report says about one monitoring point."""

    spec: PointSpec
    expected: int
    received: int
    completeness: float
    metrics: tuple[MetricFigures, ...]
    alarms: AlarmFigures
    gaps: GapFigures
    alarm_rows: tuple[AlarmRow, ...] = field(default=())

    @property
    def device_id(self) -> str:
        """The point's device id."""
        return self.spec.device_id


def expected_readings(start_us: int, end_us: int, interval_s: float) -> int:
    """Readings a device reporting every ``interval_s`` sends in [start, end)."""
    return max(0, math.floor((end_us - start_us) / (interval_s * US)))


def _ratio(received: int, expected: int) -> float:
    return 1.0 if expected <= 0 else min(1.0, received / expected)


def mkt_from_sums(boltzmann_us: float, covered_us: float) -> float | None:
    """MKT in degrees C from sum(hold x exp(-dH/RT)) and sum(hold)."""
    if covered_us <= 0 or boltzmann_us <= 0:
        return None
    return ACTIVATION_K / -math.log(boltzmann_us / covered_us) - KELVIN


def metric_figures(spec: PointSpec, metric: str, sums: SeriesSums, expected: int) -> MetricFigures:
    """The figures of one series from its sums."""
    levels = spec.levels.get(metric, ())
    covered = sums.covered_us
    return MetricFigures(
        metric=metric,
        unit=unit_of(metric),
        n=sums.n,
        min=sums.min,
        max=sums.max,
        mean_tw=sums.value_us / covered if covered > 0 else None,
        mkt_c=None if sums.boltzmann_us is None else mkt_from_sums(sums.boltzmann_us, covered),
        covered_s=covered / US,
        beyond=tuple(
            LevelTime(lv.name, lv.level, lv.above, us / US)
            for lv, us in zip(levels, sums.beyond_us, strict=True)
        ),
        first_us=sums.first_us,
        last_us=sums.last_us,
        completeness=_ratio(sums.n, expected),
    )


def union_us(spans: Sequence[tuple[int, int]]) -> int:
    """The length of the union of [start, stop) intervals (empty ones ignored)."""
    total, reach = 0, None
    for begin, stop in sorted(s for s in spans if s[1] > s[0]):
        if reach is None or begin >= reach:
            total += stop - begin
            reach = stop
        elif stop > reach:
            total += stop - reach
            reach = stop
    return total


def alarm_figures(rows: Sequence[AlarmRow], start_us: int, end_us: int, now_us: int) -> AlarmFigures:
    """Count, time inside [start, end) (the union of the alarms' intervals) and severities.

    Calibration reminders (rule ``calibration_due``) are not environmental alarms: counted
    apart, never in the count, the time or the severities.
    """
    env = [a for a in rows if a.rule != CALIBRATION_RULE]
    spans = [
        (max(start_us, a.raised_ts_us), min(end_us, now_us if a.cleared_ts_us is None else a.cleared_ts_us))
        for a in env
    ]
    return AlarmFigures(
        count=len(env),
        duration_s=union_us(spans) / US,
        by_severity=dict(sorted(Counter(a.severity for a in env).items())),
        comm_losses=sum(1 for a in env if a.rule == COMM_LOSS),
        calibration=len(rows) - len(env),
    )


def gap_figures(rows: Sequence[GapRow]) -> GapFigures:
    """Missing readings of the period's seq gaps, by what became of them."""
    size = Counter[str]()
    for g in rows:
        size[g.state] += g.last_missing - g.first_missing + 1
    return GapFigures(len(rows), size["recovered"], size["lost"], size["open"])


def _queries(spec: PointSpec) -> list[SeriesQuery]:
    cap_us = round(spec.hold_cap_s * US)
    return [
        SeriesQuery(
            spec.device_id,
            metric,
            cap_us,
            is_temperature(metric, spec.kind),
            tuple((lv.level, lv.above) for lv in spec.levels.get(metric, ())),
        )
        for metric in spec.metrics
    ]


async def open_reader(storage: Storage, *, workers: int = 2) -> FigureReader:
    """Connections of the report's own on ``storage``'s database."""
    from coldwatch.storage.sqlite import SqliteStorage  # noqa: PLC0415 - each backend only when used

    if isinstance(storage, SqliteStorage):
        from coldwatch.records.aggregates_sql import SqliteFigureReader  # noqa: PLC0415

        return SqliteFigureReader(storage.path, workers=workers)
    from coldwatch.records.aggregates_sql import PgFigureReader  # noqa: PLC0415
    from coldwatch.storage.postgres import PostgresStorage  # noqa: PLC0415

    if not isinstance(storage, PostgresStorage):
        raise TypeError(f"no report queries for {type(storage).__name__}")
    reader = PgFigureReader(storage.url, workers=workers)
    await reader.open()
    return reader


async def figures_with(
    reader: FigureReader, specs: Sequence[PointSpec], start_us: int, end_us: int, now_us: int
) -> list[PointFigures]:
    """Every point's figures, read through ``reader``."""
    queries = [_queries(spec) for spec in specs]
    flat = [q for qs in queries for q in qs]
    sums = iter(await reader.series(flat, start_us, end_us))
    ids = [s.device_id for s in specs]
    alarms = await reader.alarms(ids, start_us, end_us)
    gaps = await reader.gaps(ids, start_us, end_us)
    out = []
    for spec, qs in zip(specs, queries, strict=True):
        expected = expected_readings(start_us, end_us, spec.interval_s)
        metrics = tuple(metric_figures(spec, q.metric, next(sums), expected) for q in qs)
        received = max((m.n for m in metrics), default=0)
        mine = tuple(a for a in alarms if a.device_id == spec.device_id)
        out.append(
            PointFigures(
                spec,
                expected,
                received,
                _ratio(received, expected),
                metrics,
                alarm_figures(mine, start_us, end_us, now_us),
                gap_figures([g for g in gaps if g.device_id == spec.device_id]),
                mine,
            )
        )
    return out


async def point_figures(
    storage: Storage,
    device_ids: Sequence[str],
    start_us: int,
    end_us: int,
    levels_of: Callable[[str], PointSpec],
    *,
    now_us: int | None = None,
) -> list[PointFigures]:
    """Per point figures over [start, end), on read connections of their own.

    ``levels_of(device_id)`` gives the point's interval, metrics and levels
    (:func:`coldwatch.records.levels.point_spec`); ``now_us`` ends open alarms (default: ``end_us``).
    """
    reader = await open_reader(storage)
    try:
        specs = [levels_of(d) for d in device_ids]
        return await figures_with(reader, specs, start_us, end_us, end_us if now_us is None else now_us)
    finally:
        await reader.close()
