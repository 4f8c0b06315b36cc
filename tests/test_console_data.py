"""The console's page data on both backends: real databases, data written through the storage API."""

from __future__ import annotations

import random
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from coldwatch.catalogue import Kind
from coldwatch.config import Config, DeviceConfig
from coldwatch.console.model import (
    ALARM_STATE_FILTERS,
    AlarmCursor,
    AlarmFilter,
    DeviceStatus,
    FilterError,
    register_alarm_state_filter,
)
from coldwatch.console.pages import ConsoleData, open_console_queries
from coldwatch.console.sql import alarm_page_sql
from coldwatch.notify.model import Channel, OutboxItem
from coldwatch.notify.outbox import SqliteOutbox, connect
from coldwatch.payload import Telemetry
from coldwatch.rules.config import RulesConfig, ThresholdLevel, ThresholdRule
from coldwatch.rules.lifecycle import Alarm, AlarmState, Transition
from coldwatch.rules.model import AlarmKey, Severity
from coldwatch.storage import Batch, DeviceState, SeqGap, Storage, open_storage
from coldwatch.storage.postgres import PostgresStorage
from coldwatch.storage.sqlite import MIGRATIONS, SqliteStorage
from tests.conftest import Backend

US = 1_000_000
T0 = 1_764_547_200 * US  # 2025-12-01 00:00 UTC
NOW = T0 + 7 * 86_400 * US

INC = [DeviceConfig(id=f"inc-{i}", kind=Kind.INCUBATOR, site="plant-1", area="culture") for i in range(6)]
LN2 = DeviceConfig(id="ln2-1", kind=Kind.CRYOSHIPPER, site="plant-2", area="store")
PC = DeviceConfig(id="pc-1", kind=Kind.PARTICLE_COUNTER, site="plant-2", area="fill", grade="A")
DEVICES = [*INC, LN2, PC]


@pytest.fixture
async def storage(backend: Backend) -> AsyncIterator[Storage]:
    """An open storage with the test devices registered."""
    store = open_storage(backend.location)
    await store.open()
    await store.register_devices(DEVICES)
    yield store
    await store.close()


def config(rules: RulesConfig | None = None) -> Config:
    """A configuration holding the test devices."""
    return Config(devices=DEVICES, rules=rules or RulesConfig())


def alarm(
    alarm_id: int,
    device: str,
    *,
    metric: str = "temp_c",
    rule: str = "high",
    severity: Severity = Severity.ACTION,
    state: AlarmState = AlarmState.ACTIVE_UNACK,
    raised_us: int = T0,
    cleared_us: int | None = None,
) -> Alarm:
    """An alarm record."""
    return Alarm(
        alarm_id,
        AlarmKey(device, metric, rule),
        severity,
        state,
        raised_us,
        raised_us + US,
        38.2,
        38.0,
        cleared_ts_us=cleared_us,
    )


def raised(a: Alarm) -> Transition:
    """The transition that stores ``a`` as it is."""
    return Transition(a, "raised", a.raised_ts_us, a.raised_received_us, None)


def telemetry(
    device: str, seq: int, ts_us: int, *, buffered: bool = False, **values: float
) -> tuple[Telemetry, int]:
    """A reading and the time it was received."""
    return Telemetry(device, seq, ts_us, buffered, tuple(values.items())), ts_us + US


async def test_overview_states_last_values_and_time(storage: Storage) -> None:
    """The overview gives each device its state (action ... calibration due, normal) and newest values."""
    recent = NOW - 30 * US
    batch = Batch()
    newest: dict[str, dict[str, float]] = {}
    for i, device in enumerate(DEVICES):
        if device.kind is not Kind.INCUBATOR:
            continue
        for seq in range(1, 4):
            ts = recent - (3 - seq) * 10 * US if device.id != "inc-3" else T0 + seq * US
            values = {"temp_c": 37.0 + i / 10 + seq / 100, "co2_pct": 5.0 + seq / 10}
            batch.readings.append((Telemetry(device.id, seq, ts, False, tuple(values.items())), ts + US))
            newest[device.id] = values
        last_ts = batch.readings[-1][0].ts_us
        online = device.id != "inc-2"
        batch.devices[device.id] = DeviceState(3, last_ts, last_ts + US, online)
    batch.transitions = [
        raised(alarm(1, "inc-0", severity=Severity.ACTION)),
        raised(alarm(2, "inc-1", severity=Severity.ALERT, metric="co2_pct")),
        raised(
            alarm(3, "inc-4", state=AlarmState.CLEARED_UNACK, cleared_us=T0 + 60 * US)
        ),  # no longer active
        raised(alarm(4, "inc-3", metric="device", rule="comm_loss")),  # shows as stale, not action
    ]
    await storage.write_batch(batch)
    queries = await open_console_queries(storage)
    try:
        data = ConsoleData(queries, config(), calibration_due=lambda device_id, _now: device_id == "inc-5")
        rows = {o.row.device_id: o for o in await data.overview(NOW)}
        plant1 = await data.overview(NOW, site="plant-1")
        areas = await data.areas(NOW)
    finally:
        await queries.close()
    expected = {
        "inc-0": DeviceStatus.ACTION,
        "inc-1": DeviceStatus.ALERT,
        "inc-2": DeviceStatus.OFFLINE,
        "inc-3": DeviceStatus.STALE,
        "inc-4": DeviceStatus.NORMAL,
        "inc-5": DeviceStatus.CALIBRATION_DUE,
        "ln2-1": DeviceStatus.STALE,
        "pc-1": DeviceStatus.STALE,
    }
    assert {d: o.status for d, o in rows.items()} == expected
    for device_id, values in newest.items():
        assert rows[device_id].row.last_values == pytest.approx(values)
        written = [r.ts_us for r, _ in batch.readings if r.device_id == device_id]
        assert rows[device_id].row.last_ts_us == max(written)
    assert rows["inc-4"].row.open_alarms == 1
    assert rows["inc-4"].row.unacknowledged == 1
    assert rows["inc-3"].stale_after_s == 300  # the incubator profile's comm-loss timeout
    assert rows["ln2-1"].stale_after_s == 600
    assert {o.row.device_id for o in plant1} == {d.id for d in INC}
    where = {d.id: (d.site, d.area) for d in DEVICES}
    counted = Counter((*where[device_id], status) for device_id, status in expected.items())
    assert {(a.site, a.area, s): n for a in areas for s, n in a.counts.items() if n} == dict(counted)
    assert {(a.site, a.area): a.worst for a in areas}[("plant-1", "culture")] is DeviceStatus.ACTION


def random_alarms(seed: int, count: int) -> list[Alarm]:
    """Alarms of every state and severity on every device, some raised at the same time."""
    rng = random.Random(seed)
    states = list(AlarmState)
    out = []
    open_keys: set[AlarmKey] = set()
    for i in range(1, count + 1):
        device = rng.choice(DEVICES).id
        state = rng.choice(states)
        key = AlarmKey(device, rng.choice(["temp_c", "co2_pct"]), f"r{i}")
        if state is not AlarmState.CLOSED:
            open_keys.add(key)
        raised_us = T0 + rng.randrange(50) * 60 * US  # collisions on purpose: ties break by id
        out.append(
            Alarm(
                i,
                key,
                rng.choice(list(Severity)),
                state,
                raised_us,
                raised_us,
                1.0,
                0.5,
                shelved_by="ann" if i % 7 == 0 else None,
            )
        )
    return out


def expected_list(alarms: list[Alarm], where: AlarmFilter) -> list[int]:
    """The alarm list computed independently: filter, then open first, newest first, id descending."""
    site = {d.id: (d.site, d.area) for d in DEVICES}
    matching = {
        "open": lambda a: a.state is not AlarmState.CLOSED,
        "awaiting_acknowledgement": lambda a: a.state in {AlarmState.ACTIVE_UNACK, AlarmState.CLEARED_UNACK},
        "closed": lambda a: a.state is AlarmState.CLOSED,
        "shelved_by_someone": lambda a: a.shelved_by is not None,
    }

    def keep(a: Alarm) -> bool:
        return (
            (not where.states or any(matching[s](a) for s in where.states))
            and (where.severity is None or a.severity.label == where.severity)
            and (where.site is None or site[a.key.device_id][0] == where.site)
            and (where.area is None or site[a.key.device_id][1] == where.area)
            and (where.device_id is None or a.key.device_id == where.device_id)
            and (where.since_us is None or a.raised_ts_us >= where.since_us)
            and (where.until_us is None or a.raised_ts_us < where.until_us)
        )

    chosen = [a for a in alarms if keep(a)]
    chosen.sort(key=lambda a: (a.state is AlarmState.CLOSED, -a.raised_ts_us, -a.id))
    return [a.id for a in chosen]


async def test_alarm_list_filters_open_first_and_keyset_pages(storage: Storage) -> None:
    """Each filter's pages, walked by cursor, give the matching alarms, open first then newest first."""
    alarms = random_alarms(7, 150)
    await storage.write_batch(Batch(transitions=[raised(a) for a in alarms]))
    register_alarm_state_filter("shelved_by_someone", "a.shelved_by IS NOT NULL")
    filters = [
        AlarmFilter(),
        AlarmFilter(states=["open"]),
        AlarmFilter(states=["awaiting_acknowledgement"]),
        AlarmFilter(states=["closed"], severity="alert"),
        AlarmFilter(site="plant-2"),
        AlarmFilter(area="culture", severity="action"),
        AlarmFilter(device_id="inc-3"),
        AlarmFilter(since_us=T0 + 10 * 60 * US, until_us=T0 + 30 * 60 * US),
        AlarmFilter(states=["shelved_by_someone", "awaiting_acknowledgement"]),
    ]
    queries = await open_console_queries(storage)
    try:
        data = ConsoleData(queries, config())
        for where in filters:
            got: list[int] = []
            cursor: AlarmCursor | None = None
            while True:
                page = await data.alarm_list(where, after=cursor, limit=7)
                assert len(page.rows) <= 7
                got += [r.id for r in page.rows]
                if page.next is None:
                    break
                cursor = AlarmCursor.parse(page.next.token())  # through its URL form
            assert got == expected_list(alarms, where), where
        with pytest.raises(FilterError):
            await data.alarm_list(AlarmFilter(states=["awaiting_review_typo"]))
        with pytest.raises(FilterError):
            AlarmCursor.parse("1.2.x")
    finally:
        del ALARM_STATE_FILTERS["shelved_by_someone"]
        await queries.close()


async def outbox_attempts(
    backend: Backend, storage: Storage, outbox_id: int, attempts: list[tuple[int, bool]]
) -> None:
    """Record delivery attempts through the deliverer's outbox API."""
    if isinstance(storage, PostgresStorage):
        outbox = storage.outbox()
        for at_us, ok in attempts:
            await outbox.record_attempt(
                outbox_id,
                at_us=at_us,
                ok=ok,
                status=200 if ok else 503,
                error=None if ok else "unavailable",
                next_attempt_us=None if ok else at_us + US,
            )
        return
    sqlite_outbox = SqliteOutbox(await connect(Path(backend.location)), owned=True)
    try:
        for at_us, ok in attempts:
            await sqlite_outbox.record_attempt(
                outbox_id,
                at_us=at_us,
                ok=ok,
                status=200 if ok else 503,
                error=None if ok else "unavailable",
                next_attempt_us=None if ok else at_us + US,
            )
    finally:
        await sqlite_outbox.close()


async def test_alarm_detail_chart_limits_history_and_notifications(
    backend: Backend, storage: Storage
) -> None:
    """Alarm detail: a bounded chart keeping the peak, the limits, transitions, notification attempts."""
    rng = np.random.default_rng(3)
    n = 6000
    ts = T0 + np.arange(n, dtype=np.int64) * US
    values = 37.0 + rng.normal(0, 0.05, n)
    values[3000:3300] += np.linspace(0, 1.5, 300)
    values[3150] = 39.91  # one sample's spike: must survive downsampling
    batch = Batch()
    batch.readings = [
        telemetry("inc-0", i + 1, int(ts[i]), buffered=4000 <= i < 4100, temp_c=float(values[i]))
        for i in range(n)
    ]
    batch.devices["inc-0"] = DeviceState(n, int(ts[-1]), int(ts[-1]) + US, True)
    first = alarm(1, "inc-0", raised_us=int(ts[3100]))
    acked = replace(first, state=AlarmState.ACTIVE_ACK, acknowledged_by="ann")
    cleared = replace(acked, state=AlarmState.CLOSED, cleared_ts_us=int(ts[3290]))
    history = [
        raised(first),
        Transition(
            acked, "acknowledged", int(ts[3120]), int(ts[3120]), AlarmState.ACTIVE_UNACK, "ann", "on my way"
        ),
        Transition(cleared, "cleared", int(ts[3290]), int(ts[3290]), AlarmState.ACTIVE_ACK),
    ]
    batch.transitions = history
    batch.notifications = [
        OutboxItem("n-1", Channel.WEBHOOK, "oncall", b"{}", 1, int(ts[3100])),
        OutboxItem("n-2", Channel.ALERTMANAGER, "alertmanager", b"{}", 1, int(ts[3100])),
    ]
    await storage.write_batch(batch)
    outbox_ids = {
        nid: oid for oid, nid in backend.query("SELECT id, notification_id FROM notification_outbox")
    }
    attempts = [(int(ts[3101]), False), (int(ts[3105]), True)]
    await outbox_attempts(backend, storage, outbox_ids["n-1"], attempts)

    custom = RulesConfig(
        devices={
            "inc-0": [
                ThresholdRule(
                    metric="temp_c",
                    direction="high",
                    levels={"alert": ThresholdLevel(limit=37.6), "action": ThresholdLevel(limit=38.3)},
                )
            ]
        }
    )
    queries = await open_console_queries(storage)
    try:
        data = ConsoleData(queries, config(custom), max_points=300, margin_s=1200)
        detail = await data.alarm_detail(1, NOW)
        assert cleared.cleared_ts_us is not None
        just_after = cleared.cleared_ts_us + 60 * US  # looked at a minute after the alarm cleared
        recent = await data.alarm_detail(1, just_after)
    finally:
        await queries.close()
    assert recent is not None
    assert (recent.chart.start_us, recent.chart.end_us) == (first.raised_ts_us - 1200 * US, just_after)
    assert detail is not None
    chart = detail.chart
    assert chart.start_us == first.raised_ts_us - 1200 * US
    assert cleared.cleared_ts_us is not None
    assert chart.end_us == cleared.cleared_ts_us + 1200 * US
    window = (ts >= chart.start_us) & (ts < chart.end_us)
    assert chart.readings == int(window.sum())
    assert len(chart.series) <= 300
    assert np.nanmax(chart.series.values) == pytest.approx(values[window].max())
    assert np.nanmin(chart.series.values) == pytest.approx(values[window].min())
    assert bool(np.all(np.diff(chart.series.ts_us) >= 0))
    assert chart.series.buffered.any()
    limits = {(lim.severity, lim.direction, lim.value) for lim in chart.limits}
    assert {("alert", "high", 37.6), ("action", "high", 38.3)} <= limits
    assert ("action", "low", 36.0) in limits  # the built-in low band stays in force
    assert [t.event for t in detail.transitions] == [t.event for t in history]
    assert [t.to_state for t in detail.transitions] == [t.alarm.state.value for t in history]
    assert detail.transitions[1].actor == "ann"
    notes = {n.notification_id: n for n in detail.notifications}
    assert notes["n-1"].state == "delivered"
    assert [(a[0], a[1]) for a in notes["n-1"].attempts] == attempts
    assert notes["n-2"].state == "pending"
    assert notes["n-2"].attempts == []
    assert detail.alarm.acknowledged_by == "ann"


async def test_device_detail_range_gaps_comm_losses_and_rules(storage: Storage) -> None:
    """Device detail: a chart broken at a comm loss, rules in force, recent alarms, seq gaps, their state."""
    batch = Batch()
    seqs = [s for s in range(1, 601) if not 200 < s <= 320]  # 120 readings lost: a 20-minute silence
    batch.readings = [
        telemetry("ln2-1", s, T0 + s * 10 * US, temp_c=-190.0 + s / 100, ln2_level_pct=80.0) for s in seqs
    ]
    batch.devices["ln2-1"] = DeviceState(600, T0 + 6000 * US, T0 + 6001 * US, True)
    gaps = [
        SeqGap("ln2-1", 201, 320, T0 + 3210 * US),
        SeqGap("ln2-1", 700, 700, T0 + 7000 * US),
        SeqGap("ln2-1", 800, 801, T0 + 8000 * US),
    ]
    batch.gaps = gaps
    loss = alarm(
        9,
        "ln2-1",
        metric="device",
        rule="comm_loss",
        raised_us=T0 + 2610 * US,
        state=AlarmState.CLOSED,
        cleared_us=T0 + 3210 * US,
    )
    batch.transitions = [raised(loss), raised(alarm(10, "ln2-1", raised_us=T0 + 100 * US))]
    await storage.write_batch(batch)
    await storage.write_batch(
        Batch(gap_updates=[(gaps[0], "lost", T0 + 9000 * US), (gaps[1], "recovered", T0 + 7100 * US)])
    )
    queries = await open_console_queries(storage)
    try:
        data = ConsoleData(queries, config())
        detail = await data.device_detail("ln2-1", T0, T0 + 3 * 3600 * US, now_us=NOW)
        missing = await data.device_detail("nobody", T0, T0 + US, now_us=NOW)
        loss_detail = await data.alarm_detail(9, NOW, margin_s=600)
    finally:
        await queries.close()
    assert missing is None
    # A comm-loss alarm (metric "device") charts the device's first metric, showing the silence.
    assert loss_detail is not None
    assert loss_detail.chart.metric == "temp_c"
    # Its window starts inside the silence: shaded from the window's start to the first reading.
    assert list(loss_detail.chart.gaps) == [(loss_detail.chart.start_us, T0 + 321 * 10 * US)]
    # The device's range: the silence, and the time after its last reading up to the range's end.
    assert detail is not None
    assert list(detail.chart.gaps) == [(T0 + 2000 * US, T0 + 3210 * US), (T0 + 6000 * US, T0 + 3 * 3600 * US)]
    assert detail is not None
    chart = detail.chart
    assert chart.metric == "temp_c"
    assert chart.readings == len(seqs)
    # One break, from the last reading before the silence to the first after it.
    assert chart.series.gaps() == [(T0 + 200 * 10 * US, T0 + 321 * 10 * US)]
    assert {(g.first_missing, g.state) for g in detail.gaps} == {
        (201, "lost"),
        (700, "recovered"),
        (800, "open"),
    }
    assert [a.id for a in detail.comm_losses] == [9]
    assert [a.id for a in detail.recent_alarms] == [10, 9]  # open first
    rule_ids = {r.spec.rule_id() for r in detail.rules}
    assert {"high", "low", "comm_loss", "hold_time_forecast"} <= rule_ids
    limits = {(lim.severity, lim.value) for lim in chart.limits}
    assert {("alert", -150.0), ("action", -135.0)} <= limits
    assert [s.start_us for s in chart.alarms] == [T0 + 100 * US]  # the temp_c alarm is shaded


async def test_thirty_days_of_one_hertz_are_bucketed_by_the_database(storage: Storage) -> None:
    """A long range is aggregated in SQL: at most max_points points, with every bucket's extremes."""
    n = 20_000
    rng = np.random.default_rng(5)
    values = rng.normal(-190, 1.0, n)
    values[12_345] = -120.0
    ts = T0 + np.arange(n, dtype=np.int64) * US
    for start in range(0, n, 5000):
        await storage.write_batch(
            Batch(
                readings=[
                    telemetry("ln2-1", i + 1, int(ts[i]), temp_c=float(values[i]))
                    for i in range(start, start + 5000)
                ]
            )
        )
    queries = await open_console_queries(storage)
    try:
        data = ConsoleData(queries, config(), max_points=600)
        series, count = await data.chart_series("ln2-1", "temp_c", T0, T0 + n * US, 600 * US)
    finally:
        await queries.close()
    assert count == n
    assert len(series) <= 600
    buckets = 600 // 3
    bucket = (ts - T0) * buckets // (n * US)
    for b in np.unique(bucket):
        inside = (series.ts_us >= ts[bucket == b][0]) & (series.ts_us <= ts[bucket == b][-1])
        assert values[bucket == b].max() in series.values[inside]
        assert values[bucket == b].min() in series.values[inside]
    assert np.nanmax(series.values) == -120.0


async def test_alarm_list_uses_the_open_first_index(backend: Backend, storage: Storage) -> None:
    """The alarm list's first page reads the open-first index, not a scan and sort of every alarm."""
    await storage.write_batch(Batch(transitions=[raised(a) for a in random_alarms(1, 50)]))
    if backend.postgres:  # a planner on a small table prefers a scan: check the indexes exist
        names = backend.query("SELECT indexname FROM pg_indexes WHERE tablename = 'alarms'")
        assert {"alarms_open_first", "alarms_device_open_first"} <= {r[0] for r in names}
        return
    sql, params = alarm_page_sql(AlarmFilter(), False, None, 51, lambda _: "?")
    plan = " ".join(str(r[-1]) for r in backend.query("EXPLAIN QUERY PLAN " + sql, *params))
    assert "alarms_open_first" in plan
    assert "TEMP B-TREE" not in plan
    sql, params = alarm_page_sql(
        AlarmFilter(device_id="inc-1"), True, AlarmCursor(True, 2**62, 2**62), 51, lambda _: "?"
    )
    plan = " ".join(str(r[-1]) for r in backend.query("EXPLAIN QUERY PLAN " + sql, *params))
    assert "alarms_device_open_first" in plan


async def test_long_charts_read_the_minute_rollup_and_late_readings_rebuild_it(
    backend: Backend, storage: Storage
) -> None:
    """A multi-day chart reads minute rollups matching the readings; a later backfill into them shows."""
    n = 3 * 1440 * 4  # three days, a reading every 15 s
    rng = np.random.default_rng(11)
    ts = T0 + np.arange(n, dtype=np.int64) * 15 * US
    values = rng.normal(-190, 1.0, n)
    await storage.write_batch(
        Batch(readings=[telemetry("ln2-1", i + 1, int(ts[i]), temp_c=float(values[i])) for i in range(n)])
    )
    since, until = T0 + 30 * US, int(ts[-1]) + US  # not minute-aligned: partial minutes from the readings
    now = until + 86_400 * US
    queries = await open_console_queries(storage)
    try:
        data = ConsoleData(queries, config(), max_points=300)
        series, count = await data.chart_series("ln2-1", "temp_c", since, until, 600 * US, now_us=now)
        assert count == int(((ts >= since) & (ts < until)).sum())
        assert len(series) <= 300
        inside = values[(ts >= since) & (ts < until)]
        assert np.nanmax(series.values) == inside.max()
        assert np.nanmin(series.values) == inside.min()
        assert series.gaps() == []  # buckets wider than the gap time: no break without a silence
        built = backend.query("SELECT count(*) FROM chart_rollup")[0][0]
        assert built >= 3 * 1440 - 2  # every whole minute of the range
        # A reading backfilled a day later into a minute the rollup already holds.
        late_ts = int(ts[n // 2]) + 7 * US
        late = Telemetry("ln2-1", n + 1, late_ts, True, (("temp_c", -100.0),))
        await storage.write_batch(Batch(readings=[(late, now)]))
        series, count = await data.chart_series("ln2-1", "temp_c", since, until, 600 * US, now_us=now)
        assert count == int(((ts >= since) & (ts < until)).sum()) + 1
        assert np.nanmax(series.values) == -100.0
        assert bool(series.buffered[np.nanargmax(series.values)])
        assert backend.query("SELECT count(*) FROM chart_rollup_dirty")[0][0] == 0
    finally:
        await queries.close()


async def test_an_existing_sqlite_database_upgrades_to_the_console_schema(tmp_path: Path) -> None:
    """A database made before the console's migration upgrades in place and its alarms list open-first."""
    mine = next(i for i, script in enumerate(MIGRATIONS) if "chart_rollup" in script)
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        for version, script in enumerate(MIGRATIONS[:mine], start=1):
            db.executescript(f"BEGIN;\n{script}\nPRAGMA user_version={version};\nCOMMIT;")
        db.execute(
            "INSERT INTO alarms(id, device_id, metric, rule, severity, state, raised_ts_us, "
            "raised_received_us, late, detail) VALUES "
            "(1, 'inc-0', 'temp_c', 'high', 'action', 'closed', 10, 10, 0, ''), "
            "(2, 'inc-0', 'temp_c', 'low', 'alert', 'active_unacknowledged', 5, 5, 0, '')"
        )
    store = SqliteStorage(path)
    await store.open()
    try:
        await store.register_devices(DEVICES)
        queries = await open_console_queries(store)
        try:
            page = await ConsoleData(queries, config()).alarm_list(AlarmFilter())
        finally:
            await queries.close()
    finally:
        await store.close()
    assert [r.id for r in page.rows] == [2, 1]  # open first, though raised earlier
    with sqlite3.connect(path) as db:
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert {"alarms_open_first", "alarms_device_open_first", "chart_rollup", "chart_rollup_dirty"} <= names


async def test_a_record_s_excursions_leave_out_calibration_reminders(storage: Storage) -> None:
    """Batch and shipment records gather excursions: a calibration reminder of the same point is not one."""
    from coldwatch.records.conditions import overlapping_alarms  # noqa: PLC0415
    from coldwatch.storage.identity_store import identity_store  # noqa: PLC0415

    hot = alarm(1, "inc-0", raised_us=T0 + 60 * US)
    due = alarm(
        2, "inc-0", metric="calibration", rule="calibration_due", severity=Severity.ALERT, raised_us=T0
    )
    loss = alarm(3, "inc-0", metric="seq", rule="comm_loss", raised_us=T0 + 120 * US)
    batch = Batch()
    batch.transitions = [raised(hot), raised(due), raised(loss)]
    await storage.write_batch(batch)
    found = await overlapping_alarms(identity_store(storage), "UTC", ["inc-0"], T0, T0 + 3600 * US)
    assert [r.alarm.id for r in found] == [1, 3]  # the excursion and the communication loss
