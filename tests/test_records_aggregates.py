"""Periodic figures computed in the database agree with a plain-Python recomputation from the export."""

from __future__ import annotations

import math
import random
import sqlite3
from pathlib import Path

import pytest

from coldwatch.catalogue import Kind
from coldwatch.config import Config, DeviceConfig
from coldwatch.payload import Telemetry
from coldwatch.records import aggregates_sql, stats
from coldwatch.records.aggregates import alarm_figures, figures_with, point_figures
from coldwatch.records.aggregates_sql import AlarmRow, SqliteFigureReader
from coldwatch.records.conditions import levels_of
from coldwatch.records.levels import Level, PointSpec, point_spec
from coldwatch.rules.config import RulesConfig
from coldwatch.rules.lifecycle import Alarm, AlarmState, Transition
from coldwatch.rules.model import AlarmKey, Severity
from coldwatch.storage import Batch, SeqGap, Storage, open_storage
from tests.conftest import Backend
from tests.records_reference import reference

US = 1_000_000
T0 = 1_790_000_000 * US  # a Monday, 2026-09-21 UTC
HOUR = 3600 * US


def shipper(device_id: str = "ln2-1", interval_s: float = 10.0) -> DeviceConfig:
    """A cryoshipper at site s1, area a1."""
    return DeviceConfig(id=device_id, kind=Kind.CRYOSHIPPER, site="s1", area="a1", interval_s=interval_s)


def spec_of(device: DeviceConfig, levels: dict[str, tuple[Level, ...]] | None = None) -> PointSpec:
    """The point's spec with the built-in levels, or those given."""
    spec = point_spec(device, RulesConfig())
    if levels is None:
        return spec
    return PointSpec(spec.device_id, spec.kind, spec.site, spec.area, spec.interval_s, spec.metrics, levels)


async def write(store: Storage, device_id: str, rows: list[tuple[int, dict[str, float]]]) -> None:
    """Store readings (ts_us, values) with consecutive seq numbers."""
    batch = Batch()
    for seq, (ts, values) in enumerate(rows, start=1):
        batch.readings.append((Telemetry(device_id, seq, ts, False, tuple(values.items())), ts + US))
    await store.write_batch(batch)


async def exported(
    store: Storage, device_id: str, metric: str, start: int, end: int
) -> list[tuple[int, float]]:
    """The series as the export gives it."""
    return [(r.ts_us, r.value) async for r in store.export(device_id, start, end) if r.metric == metric]


async def opened(backend: Backend, *devices: DeviceConfig) -> Storage:
    """A migrated store with ``devices`` registered."""
    store = open_storage(backend.location)
    await store.open()
    await store.register_devices(list(devices))
    return store


async def test_usp_check_values(backend: Backend) -> None:
    """MKT of readings that reproduce USP <1079>'s check values: 25.86 C and 26.37 C."""
    equal, day = shipper("eq"), shipper("day")
    store = await opened(backend, equal, day)
    try:
        await write(
            store, "eq", [(T0 + i * 10 * US, {"temp_c": v}) for i, v in enumerate((20.0, 25.0, 30.0))]
        )
        hot = [(T0 + i * 10 * US, {"temp_c": 25.0 if i < 23 * 360 else 40.0}) for i in range(24 * 360)]
        await write(store, "day", hot)
        eq = await point_figures(store, ["eq"], T0, T0 + 30 * US, lambda d: spec_of(equal, {}))
        dd = await point_figures(store, ["day"], T0, T0 + 24 * HOUR, lambda d: spec_of(day, {}))
    finally:
        await store.close()
    mkt_eq = next(m for m in eq[0].metrics if m.metric == "temp_c").mkt_c
    mkt_day = next(m for m in dd[0].metrics if m.metric == "temp_c").mkt_c
    assert mkt_eq is not None
    assert round(mkt_eq, 2) == 25.86
    assert mkt_day is not None
    assert round(mkt_day, 2) == 26.37


def random_series(rng: random.Random, start: int, end: int) -> list[tuple[int, dict[str, float]]]:
    """An irregular series with short and long silences, around the shipper's limits."""
    rows, t = [], start + rng.randrange(0, 20 * US)
    while t < end:
        rows.append((t, {"temp_c": rng.uniform(-190.0, -120.0), "ln2_level_pct": rng.uniform(5.0, 60.0)}))
        t += rng.choice((10 * US, 10 * US, 7 * US, 25 * US, 31 * US, 400 * US))
    return rows


async def test_random_series_match_reference(backend: Backend) -> None:
    """Every figure of random series (gaps, irregular times) matches the reference from the export."""
    device = shipper()
    store = await opened(backend, device)
    rng = random.Random(7)
    start, end = T0, T0 + 6 * HOUR
    spec = spec_of(device)
    try:
        await write(store, "ln2-1", random_series(rng, start - HOUR, end + HOUR))
        [fig] = await point_figures(store, ["ln2-1"], start, end, lambda d: spec)
        for m in fig.metrics:
            rows = await exported(store, "ln2-1", m.metric, start, end)
            levels = [(lv.level, lv.above) for lv in spec.levels.get(m.metric, ())]
            ref = reference(rows, end, 30.0, levels, temperature=m.metric == "temp_c")
            assert m.n == ref.n
            assert m.min == ref.min
            assert m.max == ref.max
            assert m.covered_s == pytest.approx(ref.covered_s)
            assert (m.mean_tw is None) == (ref.mean is None)
            if ref.mean is not None:
                assert m.mean_tw == pytest.approx(ref.mean, rel=1e-9)
            if ref.mkt_c is not None:
                assert m.mkt_c == pytest.approx(ref.mkt_c, abs=1e-6)
            assert [b.seconds for b in m.beyond] == pytest.approx(ref.beyond_s)
            assert m.completeness == pytest.approx(min(1.0, ref.n / (6 * 360)))
        assert any(b.seconds > 0 for m in fig.metrics for b in m.beyond)
    finally:
        await store.close()


async def test_time_beyond_and_completeness_with_a_gap(backend: Backend) -> None:
    """An hour at -140 C beyond -150 C, then an hour of silence: beyond 1 h, 3 of 4 hours received."""
    device = shipper()
    store = await opened(backend, device)
    start, end = T0, T0 + 4 * HOUR
    rows = [(start + i * 10 * US, {"temp_c": -140.0 if i < 360 else -190.0}) for i in range(720)]
    rows += [(start + 3 * HOUR + i * 10 * US, {"temp_c": -190.0}) for i in range(360)]
    try:
        await write(store, "ln2-1", rows)
        [fig] = await point_figures(store, ["ln2-1"], start, end, lambda d: spec_of(device))
        exp = await exported(store, "ln2-1", "temp_c", start, end)
    finally:
        await store.close()
    temp = next(m for m in fig.metrics if m.metric == "temp_c")
    beyond = {b.name: b.seconds for b in temp.beyond}
    ref = reference(exp, end, 30.0, [(-150.0, True), (-135.0, True)], temperature=True)
    assert beyond == {"alert high": ref.beyond_s[0], "action high": ref.beyond_s[1]}
    assert beyond["alert high"] == 3600.0
    assert beyond["action high"] == 0.0
    # The last reading before the silence holds 30 s (3 intervals, 20 s more than the others).
    assert temp.covered_s == ref.covered_s == 3 * 3600 + 20
    assert fig.expected == 4 * 360
    assert fig.received == len(exp) == 1080
    assert fig.completeness == pytest.approx(1080 / 1440)


async def test_alarms_and_gaps_of_the_period(backend: Backend) -> None:
    """Alarms overlapping the period count with their time inside it; gaps by what became of them."""
    device = shipper()
    store = await opened(backend, device)
    start, end = T0, T0 + 4 * HOUR
    alarms = [
        Alarm(1, AlarmKey("ln2-1", "temp_c", "high"), Severity.ACTION, AlarmState.CLOSED, start - HOUR,
              start - HOUR, cleared_ts_us=start + HOUR),
        Alarm(2, AlarmKey("ln2-1", "device", "comm_loss"), Severity.ACTION, AlarmState.CLOSED,
              start + 2 * HOUR, start + 2 * HOUR, cleared_ts_us=start + 2 * HOUR + 600 * US),
        Alarm(3, AlarmKey("ln2-1", "temp_c", "high"), Severity.ALERT, AlarmState.ACTIVE_UNACK, end - HOUR,
              end - HOUR),
        Alarm(4, AlarmKey("ln2-1", "tilt_deg", "high"), Severity.ALERT, AlarmState.CLOSED, end + HOUR,
              end + HOUR, cleared_ts_us=end + 2 * HOUR),
    ]  # fmt: skip
    gaps = [SeqGap("ln2-1", 10, 14, start + 60 * US), SeqGap("ln2-1", 30, 30, start + 120 * US),
            SeqGap("ln2-1", 50, 59, start - HOUR)]  # fmt: skip
    try:
        await store.write_batch(
            Batch(
                transitions=[Transition(a, "raised", a.raised_ts_us, a.raised_ts_us, None) for a in alarms],
                gaps=gaps,
                gap_updates=[(gaps[0], "recovered", start + 90 * US)],
            )
        )
        [fig] = await point_figures(
            store, ["ln2-1"], start, end, lambda d: spec_of(device), now_us=end + HOUR
        )
    finally:
        await store.close()
    assert fig.alarms.count == 3
    assert fig.alarms.duration_s == 3600 + 600 + 3600
    assert dict(fig.alarms.by_severity) == {"action": 2, "alert": 1}
    assert fig.alarms.comm_losses == 1
    assert (fig.gaps.gaps, fig.gaps.recovered, fig.gaps.open, fig.gaps.lost) == (2, 5, 1, 0)


async def test_python_exp_when_sqlite_lacks_math(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without SQLite's math functions, exp is registered from Python and MKT is the same."""
    device = shipper()
    store = await opened(Backend("sqlite", str(tmp_path / "c.db")), device)
    rows = [(T0 + i * 10 * US, {"temp_c": 2.0 + (i % 7)}) for i in range(2000)]
    await write(store, "ln2-1", rows)
    await store.close()
    calls: list[float] = []
    real_exp = math.exp

    def counted(x: float) -> float:
        calls.append(x)
        return real_exp(x)

    spec = spec_of(device, {})
    native = SqliteFigureReader(tmp_path / "c.db")
    try:
        [a] = await figures_with(native, [spec], T0, T0 + 20_000 * US, T0)
    finally:
        await native.close()
    monkeypatch.setattr(aggregates_sql, "sqlite_has_exp", lambda conn: False)
    monkeypatch.setattr(math, "exp", counted)
    fallback = SqliteFigureReader(tmp_path / "c.db")
    try:
        [b] = await figures_with(fallback, [spec], T0, T0 + 20_000 * US, T0)
    finally:
        await fallback.close()
    monkeypatch.undo()
    assert len(calls) == 2000  # the Python exp ran once per reading
    mkt_a = next(m for m in a.metrics if m.metric == "temp_c").mkt_c
    mkt_b = next(m for m in b.metrics if m.metric == "temp_c").mkt_c
    assert mkt_a is not None
    assert mkt_a == pytest.approx(mkt_b, abs=1e-9)


def test_sqlite_here_has_math() -> None:
    """This SQLite has exp(), so the fallback above is the only path that registers one."""
    with sqlite3.connect(":memory:") as conn:
        assert aggregates_sql.sqlite_has_exp(conn)


async def test_sql_figures_agree_with_records_stats(backend: Backend) -> None:
    """The database's sums and the NumPy statistics of records.stats agree on random series."""
    device = shipper()
    store = await opened(backend, device)
    rng = random.Random(11)
    start, end = T0, T0 + 3 * HOUR
    spec = spec_of(device)
    try:
        await write(store, "ln2-1", random_series(rng, start - HOUR, end))
        [fig] = await point_figures(store, ["ln2-1"], start, end, lambda d: spec)
        for m in fig.metrics:
            rows = await exported(store, "ln2-1", m.metric, start, end)
            levels = [Level(lv.name, lv.level, lv.above) for lv in spec.levels.get(m.metric, ())]
            ref = stats.series_stats(
                [t for t, _ in rows], [v for _, v in rows], start, end, 30.0,
                [(lv.name, lv.level, lv.above) for lv in levels], m.metric == "temp_c",
            )  # fmt: skip
            ours = (m.n, m.min, m.max, m.first_us, m.last_us)
            assert ours == (ref.n, ref.min, ref.max, ref.first_us, ref.last_us)
            assert m.covered_s == pytest.approx(ref.covered_s)
            if ref.mean_tw is not None:
                assert m.mean_tw == pytest.approx(ref.mean_tw, rel=1e-9)
            if ref.mkt_c is not None:
                assert m.mkt_c == pytest.approx(ref.mkt_c, abs=1e-6)
            assert [b.seconds for b in m.beyond] == pytest.approx([b.seconds for b in ref.beyond])
    finally:
        await store.close()


async def test_particle_counter_levels_and_time_beyond(backend: Backend) -> None:
    """A grade A counter gets its Annex 1 levels (the batch record's) and time beyond each of them."""
    device = DeviceConfig(
        id="pc-1", kind=Kind.PARTICLE_COUNTER, site="s1", area="a1", grade="A", interval_s=60
    )
    spec = point_spec(device, RulesConfig())
    # Annex 1 grade A: 3,520 /m3 at 0.5 um, 29 /m3 at 5.0 um; alert at half of each by default.
    fine = {(lv.name, lv.level, lv.above) for lv in spec.levels["particles_0_5um_m3"]}
    coarse = {(lv.name, lv.level, lv.above) for lv in spec.levels["particles_5_0um_m3"]}
    assert fine == {("alert high", 1760.0, True), ("action high", 3520.0, True)}
    assert coarse == {("alert high", 14.5, True), ("action high", 29.0, True)}
    # One derivation for every record: the batch record's levels are the same.
    for metric in ("particles_0_5um_m3", "particles_5_0um_m3"):
        assert list(spec.levels[metric]) == levels_of(Config(devices=[device]), device, metric)
    store = await opened(backend, device)
    start, end = T0, T0 + HOUR
    counts = [100.0] * 20 + [2000.0] * 10 + [4000.0] * 5 + [100.0] * 25
    rows = [(start + i * 60 * US, {"particles_0_5um_m3": c, "particles_5_0um_m3": c / 100}) for i, c in
            enumerate(counts)]  # fmt: skip
    try:
        await write(store, "pc-1", rows)
        [fig] = await point_figures(store, ["pc-1"], start, end, lambda d: spec)
        exp = await exported(store, "pc-1", "particles_0_5um_m3", start, end)
    finally:
        await store.close()
    m = next(m for m in fig.metrics if m.metric == "particles_0_5um_m3")
    ref = reference(exp, end, 180.0, [(1760.0, True), (3520.0, True)], temperature=False)
    assert {b.name: b.seconds for b in m.beyond} == {
        "alert high": ref.beyond_s[0],
        "action high": ref.beyond_s[1],
    }
    assert ref.beyond_s == [15 * 60.0, 5 * 60.0]


def _alarm(alarm_id: int, rule: str, raised: int, cleared: int | None) -> AlarmRow:
    return AlarmRow(alarm_id, "ln2-1", "temp_c", rule, "alert", "closed", raised, cleared, None, None)


def test_alarm_time_is_the_union_and_leaves_calibration_out() -> None:
    """Overlapping alarms count their common time once; a calibration reminder is counted apart."""
    start, end = T0, T0 + 4 * HOUR
    rows = [
        _alarm(1, "high", start - HOUR, start + 2 * HOUR),  # inside: [start, start + 2 h)
        _alarm(2, "consecutive", start + HOUR, start + 3 * HOUR),  # overlaps the first by 1 h
        _alarm(3, "high", start + HOUR + 10 * 60 * US, start + HOUR + 20 * 60 * US),  # inside both
        _alarm(4, "calibration_due", start - 10 * HOUR, None),  # open through the whole period
    ]
    fig = alarm_figures(rows, start, end, end + HOUR)
    # The union by plain counting, minute by minute over the period, of the environmental alarms.
    minutes = sum(
        1
        for k in range(4 * 60)
        if any(a.raised_ts_us <= start + k * 60 * US < (a.cleared_ts_us or end) for a in rows[:3])
    )
    assert fig.duration_s == minutes * 60 == 3 * 3600
    assert fig.count == 3
    assert dict(fig.by_severity) == {"alert": 3}
    assert fig.calibration == 1
