"""Storage on both backends (a real SQLite file, a real PostgreSQL): migrations, batches, dedupe,
quarantine, state, export."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest

from coldwatch.broker import free_port
from coldwatch.catalogue import KINDS, Kind
from coldwatch.config import DeviceConfig
from coldwatch.errors import StorageError
from coldwatch.payload import Telemetry
from coldwatch.pgserver import RunningPostgres
from coldwatch.storage import (
    Batch,
    DeviceState,
    ExportRow,
    QuarantineEntry,
    SeqGap,
    SqliteStorage,
    Storage,
    open_existing,
    open_storage,
)
from coldwatch.storage.postgres import MIGRATIONS_PG, WEEK_US, PostgresStorage
from coldwatch.storage.sqlite import MIGRATIONS
from tests.conftest import Backend, new_pg_database

US = 1_000_000
T0 = 1_714_564_800 * US
INC = DeviceConfig(id="inc-01", kind=Kind.INCUBATOR, site="plant-1", area="culture-lab")
PC = DeviceConfig(id="pc-fill-a1", kind=Kind.PARTICLE_COUNTER, site="plant-1", area="fill-suite", grade="A")
TABLES = {"devices", "metrics", "readings", "quarantine", "rejection_totals", "seq_gaps"}
# SQLite's ``readings`` is a view over ``reading_rows`` (which keeps the arrival as a delay).
SQLITE_TABLES = TABLES | {"reading_rows"}


def reading(
    device_id: str, seq: int, ts_us: int, *values: tuple[str, float], buffered: bool = False
) -> Telemetry:
    """A decoded reading of ``device_id``."""
    return Telemetry(device_id, seq, ts_us, buffered, values)


def rejection(received_us: int, reason: str, device_id: str | None = None) -> QuarantineEntry:
    """A quarantined message received at ``received_us``."""
    return QuarantineEntry(
        received_us, reason, f"detail {received_us}", "coldwatch/x", device_id, f"raw {received_us}".encode()
    )


async def exported(
    storage: Storage,
    device_id: str | None = None,
    since_us: int | None = None,
    until_us: int | None = None,
) -> list[ExportRow]:
    """Every exported row, in export order."""
    return [row async for row in storage.export(device_id, since_us, until_us)]


def query(path: Path, sql: str) -> list[tuple[object, ...]]:
    """Rows of ``sql`` read through a separate, plain sqlite3 connection."""
    with closing(sqlite3.connect(path)) as db:
        return list(db.execute(sql).fetchall())


@pytest.fixture
async def storage(backend: Backend) -> AsyncIterator[Storage]:
    """An open storage in a fresh database with the incubator and the particle counter registered."""
    store = open_storage(backend.location, quarantine_max_rows=10)
    await store.open()
    await store.register_devices([INC, PC])
    yield store
    await store.close()


# --- migrations (SQLite) ---------------------------------------------------------------


async def test_open_creates_every_table_and_sets_user_version(tmp_path: Path) -> None:
    """Opening a new file creates every table of the schema and records its version."""
    path = tmp_path / "new" / "coldwatch.db"
    store = SqliteStorage(path)
    await store.open()
    await store.close()

    tables = {
        str(name) for (name,) in query(path, "SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")
    }
    assert query(path, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    assert tables >= SQLITE_TABLES


def previous_version_database(path: Path) -> list[tuple[int, int, int, int, float, int, int]]:
    """A database of schema version 4 (arrival times stored whole) holding a few readings; its rows."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for version, script in enumerate(MIGRATIONS[:4], start=1):
            conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version={version};\nCOMMIT;")
        conn.execute("INSERT INTO devices(device_id, kind, site, area) VALUES ('d1', 'incubator', 's', 'a')")
        conn.execute("INSERT INTO metrics(name) VALUES ('temp_c')")
        rows = [(1, 1, T0 + i * US, i, 37.0 + i / 100, T0 + i * US + 2_345, i % 2) for i in range(5)]
        # Arrived a week "before" its time: a device clock far ahead.
        rows.append((1, 1, T0 + 9 * US, 9, 36.5, T0 - 7 * 24 * 3600 * US, 1))
        conn.executemany("INSERT INTO readings VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    return rows


async def test_a_failed_migration_is_rolled_back_and_releases_the_database(tmp_path: Path) -> None:
    """A migration that fails leaves the previous schema and data, and no lock held by the collector."""
    path = tmp_path / "old.db"
    rows = previous_version_database(path)
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE reading_rows (x)")  # in the way of migration 5, as a full disk would be
    store = SqliteStorage(path)
    with pytest.raises(StorageError, match="already exists"):
        await store.open()
    with closing(sqlite3.connect(path, timeout=0.5, isolation_level=None)) as conn:
        conn.execute("BEGIN IMMEDIATE")  # the write lock is free
        conn.execute("ROLLBACK")
    assert query(path, "PRAGMA user_version") == [(4,)]
    assert query(path, "SELECT * FROM readings ORDER BY ts_us") == rows


async def test_reading_commands_refuse_an_older_schema_instead_of_upgrading_it(tmp_path: Path) -> None:
    """A reading command never changes the tables under a running collector of the previous version."""
    path = tmp_path / "old.db"
    rows = previous_version_database(path)
    with pytest.raises(StorageError, match="older than this coldwatch"):
        await open_existing(path).open()
    assert query(path, "PRAGMA user_version") == [(4,)]
    assert query(path, "SELECT * FROM readings ORDER BY ts_us") == rows


async def test_readings_stored_before_the_arrival_delay_layout_keep_every_field(tmp_path: Path) -> None:
    """A database of the previous version keeps its readings, arrival times included, once migrated."""
    path = tmp_path / "old.db"
    rows = previous_version_database(path)
    store = SqliteStorage(path)
    await store.open()
    await store.close()
    assert query(path, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    assert query(path, "SELECT * FROM readings ORDER BY ts_us") == rows


async def test_migrations_are_applied_once(tmp_path: Path) -> None:
    """Reopening a migrated file applies nothing again and keeps the version and metric ids."""
    path = tmp_path / "coldwatch.db"
    for _ in range(3):
        store = SqliteStorage(path)
        await store.open()
        await store.close()

    metric_names = {name for specs in KINDS.values() for name in specs}
    assert query(path, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    assert sorted(str(name) for (name,) in query(path, "SELECT name FROM metrics")) == sorted(metric_names)


async def test_schema_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    """A database migrated by a newer coldwatch is not opened (and not downgraded)."""
    path = tmp_path / "coldwatch.db"
    with closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    store = SqliteStorage(path)

    try:
        with pytest.raises(StorageError, match="newer than this coldwatch"):
            await store.open()
    finally:
        await store.close()
    assert query(path, "PRAGMA user_version") == [(len(MIGRATIONS) + 1,)]


async def test_open_fails_with_storage_error_when_the_folder_cannot_exist(tmp_path: Path) -> None:
    """A database path under a regular file raises StorageError naming the path."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x", encoding="utf-8")

    with pytest.raises(StorageError, match="cannot open database"):
        await SqliteStorage(blocker / "coldwatch.db").open()


# --- migrations and layout (PostgreSQL) -------------------------------------------------


@pytest.fixture
def pg_backend(pg_server: RunningPostgres) -> Backend:
    """A fresh database on the private PostgreSQL."""
    return Backend("postgresql", new_pg_database(pg_server))


async def test_pg_open_creates_every_table_and_records_each_migration(pg_backend: Backend) -> None:
    """Opening an empty database applies every migration once, in order, and partitions readings."""
    for _ in range(3):
        store = PostgresStorage(pg_backend.location)
        await store.open()
        await store.close()

    tables = {
        str(r[0]) for r in pg_backend.query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    }
    versions = pg_backend.query("SELECT version FROM schema_migrations ORDER BY version")
    partitioned = pg_backend.query(
        "SELECT partstrat::text FROM pg_partitioned_table WHERE partrelid = 'readings'::regclass"
    )
    metric_names = {name for specs in KINDS.values() for name in specs}

    assert tables >= TABLES | {"readings", "alarms", "alarm_transitions", "audit_log", "notification_outbox"}
    assert versions == [(v,) for v in range(1, len(MIGRATIONS_PG) + 1)]
    assert partitioned == [("r",)]  # range partitions (no TimescaleDB on this server)
    assert pg_backend.query("SELECT value FROM storage_info WHERE key = 'layout'") == [("partitioned",)]
    assert sorted(str(r[0]) for r in pg_backend.query("SELECT name FROM metrics")) == sorted(metric_names)


async def test_pg_collectors_opening_together_migrate_once(pg_backend: Backend) -> None:
    """Several collectors opening one new database at once: one migrates, none fails."""
    stores = [PostgresStorage(pg_backend.location) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    await asyncio.gather(*(s.close() for s in stores))

    assert pg_backend.query("SELECT count(*) FROM schema_migrations") == [(len(MIGRATIONS_PG),)]


async def test_pg_schema_newer_than_the_code_is_refused(pg_backend: Backend) -> None:
    """A database migrated by a newer coldwatch is not opened (and not downgraded)."""
    store = PostgresStorage(pg_backend.location)
    await store.open()
    await store.pool.execute("INSERT INTO schema_migrations(version) VALUES ($1)", len(MIGRATIONS_PG) + 1)
    await store.close()

    with pytest.raises(StorageError, match="newer than this coldwatch"):
        await PostgresStorage(pg_backend.location).open()


async def test_pg_readings_land_in_weekly_partitions_made_on_demand(pg_backend: Backend) -> None:
    """Readings of three weeks create three partitions, each holding only its own week."""
    store = PostgresStorage(pg_backend.location)
    await store.open()
    try:
        await store.register_devices([INC])
        times = [T0, T0 + WEEK_US, T0 + 2 * WEEK_US + 5 * US]
        batch = Batch(readings=[(reading("inc-01", i, t, ("temp_c", 37.0)), t) for i, t in enumerate(times)])
        assert (await store.write_batch(batch)).stored == 3
        # A second collector's storage sees the partitions made by the first.
        other = PostgresStorage(pg_backend.location)
        await other.open()
        await other.register_devices([INC])
        again = await other.write_batch(batch)
        await other.close()
    finally:
        await store.close()

    assert again.stored == 0
    assert len(again.duplicates) == 3
    placed = pg_backend.query("SELECT tableoid::regclass::text, ts_us FROM readings ORDER BY ts_us")
    assert [name for name, _ in placed] == [f"readings_w{t // WEEK_US}" for t in times]
    assert len({name for name, _ in placed}) == 3


async def test_pg_timescaledb_asked_for_where_it_is_not_installed_is_refused(pg_backend: Backend) -> None:
    """Detection: this server has no TimescaleDB; asking for it fails and leaves no half schema."""
    assert pg_backend.query("SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'") == [
        (0,)
    ]
    with pytest.raises(StorageError, match="TimescaleDB was asked for but is not installed"):
        await PostgresStorage(pg_backend.location, timescale=True).open()
    assert pg_backend.query("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]


async def test_pg_reading_commands_never_migrate(pg_backend: Backend) -> None:
    """A reading command (export, audit) on a database no collector has migrated says so, and
    creates nothing: an auditor's read-only role must be enough."""
    reader = open_existing(pg_backend.location)
    with pytest.raises(StorageError, match="start the collector once to migrate"):
        await reader.open()
    assert pg_backend.query("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
    writer = PostgresStorage(pg_backend.location)
    await writer.open()
    await writer.close()
    reader = open_existing(pg_backend.location)
    await reader.open()
    try:
        assert await reader.counts() == dict.fromkeys(
            ("devices", "readings", "quarantine", "seq_gaps", "alarms", "alarm_transitions"), 0
        )
    finally:
        await reader.close()


async def test_pg_unreachable_server_is_a_storage_error_without_the_password(
    pg_server: RunningPostgres,
) -> None:
    """A server that does not answer gives StorageError naming where, never the password."""
    url = f"postgresql://postgres:s3cret@127.0.0.1:{free_port()}/nowhere"

    with pytest.raises(StorageError, match="cannot open database") as caught:
        await PostgresStorage(url).open()

    assert "s3cret" not in str(caught.value)
    assert "postgres:***@127.0.0.1" in str(caught.value)


async def test_unopened_storage_raises_storage_error(tmp_path: Path) -> None:
    """Using a storage before open() raises StorageError, not AttributeError."""
    with pytest.raises(StorageError, match="not open"):
        await SqliteStorage(tmp_path / "coldwatch.db").write_batch(Batch())


async def test_reopen_keeps_data(storage: Storage, backend: Backend) -> None:
    """Committed readings are still there after the storage is closed and reopened."""
    await storage.write_batch(Batch(readings=[(reading("inc-01", 1, T0, ("temp_c", 37.0)), T0 + US)]))
    await storage.close()

    reopened = open_storage(backend.location)
    await reopened.open()
    try:
        await reopened.register_devices([INC, PC])
        rows = await exported(reopened)
    finally:
        await reopened.close()

    assert rows == [ExportRow("inc-01", "incubator", "temp_c", T0, 37.0, T0 + US, False, 1)]


# --- batches and dedupe ----------------------------------------------------------------


async def test_write_batch_stores_one_row_per_metric_value(storage: Storage, backend: Backend) -> None:
    """A reading with three values stores three rows; the result counts them."""
    telemetry = reading("inc-01", 7, T0, ("temp_c", 37.1), ("co2_pct", 5.0), ("door_open", 0.0))

    result = await storage.write_batch(Batch(readings=[(telemetry, T0 + US)]))

    assert result.stored == 3
    assert result.duplicates == frozenset()
    assert (await storage.counts())["readings"] == 3
    device_rows = backend.query(
        "SELECT d.device_id, m.name, r.ts_us, r.seq, r.value, r.received_us, r.buffered FROM readings r "
        "JOIN devices d ON d.id = r.device JOIN metrics m ON m.id = r.metric ORDER BY m.name",
    )
    assert device_rows == [
        ("inc-01", "co2_pct", T0, 7, 5.0, T0 + US, 0),
        ("inc-01", "door_open", T0, 7, 0.0, T0 + US, 0),
        ("inc-01", "temp_c", T0, 7, 37.1, T0 + US, 0),
    ]


async def test_same_batch_twice_stores_nothing_and_reports_every_reading_duplicate(
    storage: Storage,
) -> None:
    """A redelivered batch stores no row and reports each of its readings as a duplicate."""
    readings = [
        (reading("inc-01", 1, T0, ("temp_c", 37.0), ("rh_pct", 95.0)), T0 + US),
        (reading("inc-01", 2, T0 + 10 * US, ("temp_c", 37.1)), T0 + 11 * US),
        (reading("pc-fill-a1", 9, T0, ("flow_lpm", 28.3)), T0 + US),
    ]

    first = await storage.write_batch(Batch(readings=list(readings)))
    second = await storage.write_batch(Batch(readings=list(readings)))

    assert first.stored == 4
    assert first.duplicates == frozenset()
    assert second.stored == 0
    assert second.duplicates == {("inc-01", 1, T0), ("inc-01", 2, T0 + 10 * US), ("pc-fill-a1", 9, T0)}
    assert (await storage.counts())["readings"] == 4


async def test_partly_redelivered_batch_stores_only_the_new_readings(storage: Storage) -> None:
    """In a batch mixing old and new readings, only the new ones are stored and reported stored."""
    old = reading("inc-01", 1, T0, ("temp_c", 37.0))
    new = reading("inc-01", 2, T0 + 10 * US, ("temp_c", 37.2), ("co2_pct", 5.1))
    await storage.write_batch(Batch(readings=[(old, T0)]))

    result = await storage.write_batch(Batch(readings=[(old, T0 + 50 * US), (new, T0 + 50 * US)]))

    assert result.stored == 2
    assert result.duplicates == {("inc-01", 1, T0)}
    # The first copy wins: a redelivery does not rewrite received_us.
    rows = await exported(storage)
    assert [(r.metric, r.ts_us, r.received_us) for r in rows] == [
        ("temp_c", T0, T0),
        ("co2_pct", T0 + 10 * US, T0 + 50 * US),
        ("temp_c", T0 + 10 * US, T0 + 50 * US),
    ]


async def test_a_reading_twice_in_one_batch_is_stored_once_and_not_called_stored_before(
    storage: Storage,
) -> None:
    """Two copies in one batch (redelivered before the first was committed): one stored, and the
    reading is not reported as stored before, so it is still judged once."""
    twice = reading("inc-01", 5, T0, ("temp_c", 37.0), ("co2_pct", 5.0))

    result = await storage.write_batch(Batch(readings=[(twice, T0), (twice, T0 + US)]))

    assert result.stored == 2
    assert result.duplicates == frozenset()
    assert (await storage.counts())["readings"] == 2


async def test_restarted_counter_is_not_a_duplicate(storage: Storage) -> None:
    """The same seq at a different time (a device that restarted its counter) is stored again."""
    await storage.write_batch(Batch(readings=[(reading("inc-01", 0, T0, ("temp_c", 37.0)), T0)]))

    result = await storage.write_batch(
        Batch(readings=[(reading("inc-01", 0, T0 + 3600 * US, ("temp_c", 36.9)), T0 + 3600 * US)])
    )

    assert result.stored == 1
    assert result.duplicates == frozenset()


# --- quarantine ------------------------------------------------------------------------


async def test_quarantine_is_bounded_while_totals_keep_counting(storage: Storage) -> None:
    """The quarantine keeps only the newest quarantine_max_rows entries; totals count all of them."""
    entries = [rejection(T0 + i, "invalid_json" if i % 2 else "bad_topic") for i in range(25)]
    entries[24] = rejection(T0 + 24, "kind_mismatch", device_id="inc-01")
    for start, end in ((0, 12), (12, 20), (20, 25)):  # the first batch alone exceeds the bound
        await storage.write_batch(Batch(rejections=entries[start:end]))

    kept = await storage.quarantine(limit=100)

    assert (await storage.counts())["quarantine"] == 10
    assert kept == list(reversed(entries[15:]))
    assert kept[0].device_id == "inc-01"
    assert kept[0].payload == b"raw " + str(T0 + 24).encode()
    assert await storage.rejection_totals() == {"bad_topic": 12, "invalid_json": 12, "kind_mismatch": 1}
    assert await storage.quarantine(limit=3) == list(reversed(entries[22:]))


async def test_rejection_totals_survive_reopen(storage: Storage, backend: Backend) -> None:
    """Rejection totals are stored, not computed in memory: they survive a restart."""
    await storage.write_batch(Batch(rejections=[rejection(T0 + i, "too_large") for i in range(12)]))
    await storage.close()

    reopened = open_storage(backend.location, quarantine_max_rows=10)
    await reopened.open()
    try:
        await reopened.write_batch(Batch(rejections=[rejection(T0 + 100, "too_large")]))
        totals = await reopened.rejection_totals()
        counts = await reopened.counts()
    finally:
        await reopened.close()

    assert totals == {"too_large": 13}
    assert counts["quarantine"] == 10


# --- gaps and device state -------------------------------------------------------------


async def test_gaps_and_device_state_persist_across_reopen(storage: Storage, backend: Backend) -> None:
    """Sequence gaps and per-device state are committed and returned by register_devices on restart."""
    inc_state = DeviceState(
        last_seq=12, last_ts_us=T0 + 120 * US, last_received_us=T0 + 121 * US, online=True
    )
    pc_state = DeviceState(last_seq=None, last_ts_us=None, last_received_us=None, online=False)
    batch = Batch(
        readings=[(reading("inc-01", 12, T0 + 120 * US, ("temp_c", 37.0)), T0 + 121 * US)],
        gaps=[SeqGap("inc-01", 3, 11, T0 + 121 * US)],
        devices={"inc-01": inc_state, "pc-fill-a1": pc_state},
    )
    await storage.write_batch(batch)
    await storage.close()

    reopened = open_storage(backend.location)
    await reopened.open()
    try:
        states = await reopened.register_devices([INC, PC])
        counts = await reopened.counts()
    finally:
        await reopened.close()

    assert states == {"inc-01": inc_state, "pc-fill-a1": pc_state}
    assert counts == {
        "devices": 2,
        "readings": 1,
        "quarantine": 0,
        "seq_gaps": 1,
        "alarms": 0,
        "alarm_transitions": 0,
    }
    gaps = backend.query(
        "SELECT d.device_id, g.first_missing, g.last_missing, g.detected_us "
        "FROM seq_gaps g JOIN devices d ON d.id = g.device",
    )
    assert gaps == [("inc-01", 3, 11, T0 + 121 * US)]


async def test_register_devices_returns_empty_state_for_new_devices(
    storage: Storage, backend: Backend
) -> None:
    """A device never heard from has an empty state, and registering updates its site and area."""
    moved = DeviceConfig(id="inc-01", kind=Kind.INCUBATOR, site="plant-2", area="qc-lab")
    cryo = DeviceConfig(id="shipper-07", kind=Kind.CRYOSHIPPER, site="plant-1", area="dispatch")

    states = await storage.register_devices([moved, cryo])

    assert states == {"inc-01": DeviceState(), "shipper-07": DeviceState()}
    assert backend.query("SELECT device_id, site, area FROM devices ORDER BY device_id") == [
        ("inc-01", "plant-2", "qc-lab"),
        ("pc-fill-a1", "plant-1", "fill-suite"),
        ("shipper-07", "plant-1", "dispatch"),
    ]


# --- writability -----------------------------------------------------------------------


async def test_check_writable_fails_while_another_connection_holds_the_lock(tmp_path: Path) -> None:
    """SQLite: check_writable raises StorageError after its busy timeout while another holds the lock."""
    storage = SqliteStorage(tmp_path / "coldwatch.db")
    await storage.open()
    await storage.register_devices([INC, PC])
    await storage.check_writable()
    other = sqlite3.connect(storage.path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        with pytest.raises(StorageError, match="not writable"):
            await asyncio.wait_for(storage.check_writable(), timeout=10)
        waited = time.monotonic() - started
    finally:
        other.execute("ROLLBACK")
        other.close()

    # It waited out the 5 s busy timeout rather than failing on the first attempt.
    assert 4.0 <= waited < 8.0
    # Once the lock is released the same connection writes again.
    await storage.check_writable()
    result = await storage.write_batch(Batch(readings=[(reading("inc-01", 1, T0, ("temp_c", 37.0)), T0)]))
    await storage.close()
    assert result.stored == 1


# --- export ----------------------------------------------------------------------------


@pytest.fixture
async def filled(storage: Storage) -> Storage:
    """The storage with readings of two devices at three times, written out of order."""
    await storage.write_batch(
        Batch(
            readings=[
                (
                    reading("pc-fill-a1", 3, T0 + 20 * US, ("particles_0_5um_m3", 120.0), ("flow_lpm", 28.3)),
                    T0,
                ),
                (
                    reading(
                        "inc-01", 2, T0 + 10 * US, ("temp_c", 37.1), ("door_open", 1.0), ("co2_pct", 5.0)
                    ),
                    T0 + 11 * US,
                ),
            ]
        )
    )
    await storage.write_batch(
        Batch(
            readings=[
                (reading("inc-01", 1, T0, ("temp_c", 37.0)), T0 + US),
                (reading("pc-fill-a1", 2, T0 + 10 * US, ("flow_lpm", 28.1), buffered=True), T0 + 30 * US),
            ]
        )
    )
    return storage


async def test_export_orders_by_device_time_and_metric(filled: Storage) -> None:
    """Export is ordered by device id, then reading time, then metric name, whatever the write order."""
    rows = await exported(filled)

    assert [(r.device_id, (r.ts_us - T0) // US, r.metric) for r in rows] == [
        ("inc-01", 0, "temp_c"),
        ("inc-01", 10, "co2_pct"),
        ("inc-01", 10, "door_open"),
        ("inc-01", 10, "temp_c"),
        ("pc-fill-a1", 10, "flow_lpm"),
        ("pc-fill-a1", 20, "flow_lpm"),
        ("pc-fill-a1", 20, "particles_0_5um_m3"),
    ]
    assert rows[2] == ExportRow("inc-01", "incubator", "door_open", T0 + 10 * US, 1.0, T0 + 11 * US, False, 2)
    assert rows[4] == ExportRow(
        "pc-fill-a1", "particle_counter", "flow_lpm", T0 + 10 * US, 28.1, T0 + 30 * US, True, 2
    )


@pytest.mark.parametrize(
    ("device_id", "since_s", "until_s", "expected"),
    [
        pytest.param(
            "pc-fill-a1",
            None,
            None,
            [("pc-fill-a1", 10), ("pc-fill-a1", 20), ("pc-fill-a1", 20)],
            id="device",
        ),
        pytest.param(
            None,
            10,
            None,
            [("inc-01", 10)] * 3 + [("pc-fill-a1", 10)] + [("pc-fill-a1", 20)] * 2,
            id="since-inclusive",
        ),
        pytest.param(None, None, 10, [("inc-01", 0)], id="until-exclusive"),
        pytest.param("inc-01", 5, 20, [("inc-01", 10)] * 3, id="device-and-window"),
        pytest.param(None, 10, 11, [("inc-01", 10)] * 3 + [("pc-fill-a1", 10)], id="one-instant"),
        pytest.param("inc-99", None, None, [], id="unknown-device"),
        pytest.param(None, 20, 10, [], id="empty-window"),
    ],
)
async def test_export_filters(
    filled: Storage,
    device_id: str | None,
    since_s: int | None,
    until_s: int | None,
    expected: list[tuple[str, int]],
) -> None:
    """Export filters by device, by since (inclusive) and by until (exclusive), alone or combined."""
    since_us = None if since_s is None else T0 + since_s * US
    until_us = None if until_s is None else T0 + until_s * US

    rows = await exported(filled, device_id, since_us, until_us)

    assert [(r.device_id, (r.ts_us - T0) // US) for r in rows] == expected
