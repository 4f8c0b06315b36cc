"""The audit trail on a real PostgreSQL: append-only enforcement, tamper detection, shared appenders.

The twin of the SQLite trail tests in test_audit.py, through the PostgreSQL storage.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import asyncpg
import pytest

from coldwatch.audit import GENESIS_HASH, AuditEntry, seal, verify
from coldwatch.catalogue import Kind
from coldwatch.config import DeviceConfig
from coldwatch.errors import StorageError
from coldwatch.payload import Telemetry
from coldwatch.pgserver import RunningPostgres
from coldwatch.storage import Batch, DeviceState, audit_pg
from coldwatch.storage.postgres import PostgresStorage
from tests.conftest import new_pg_database
from tests.test_audit import N, chain, draft

US = 1_000_000
T0 = 1_714_564_800 * US
INC = DeviceConfig(id="inc-01", kind=Kind.INCUBATOR, site="plant-1", area="culture-lab")


@pytest.fixture
async def store(pg_server: RunningPostgres) -> AsyncIterator[PostgresStorage]:
    """An open PostgreSQL storage on a fresh database, holding N entries appended in two transactions."""
    storage = PostgresStorage(new_pg_database(pg_server))
    await storage.open()
    await storage.record_audit([draft(i) for i in range(1, 4)])
    await storage.record_audit([draft(i) for i in range(4, N + 1)])
    yield storage
    await storage.close()


async def stored(storage: PostgresStorage) -> list[AuditEntry]:
    """Every stored entry, in seq order."""
    return [e async for e in storage.audit_entries()]


async def tamper(storage: PostgresStorage, *statements: str, disable_triggers: bool = False) -> None:
    """Run ``statements`` as the database owner would, optionally with the table's triggers off."""
    async with storage.pool.acquire() as conn, conn.transaction():
        if disable_triggers:
            await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
        for sql in statements:
            await conn.execute(sql)
        if disable_triggers:
            await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")


async def test_entries_read_back_exactly_as_sealed(store: PostgresStorage) -> None:
    """Entries appended in two transactions read back identical to one chain sealed from genesis."""
    assert await stored(store) == chain()
    result = await store.verify_audit()
    assert (result.ok, result.checked, result.last_seq) == (True, N, N)


async def test_an_empty_trail_verifies_from_genesis(pg_server: RunningPostgres) -> None:
    """A new database has an empty, intact trail that continues from seq 1 and the genesis hash."""
    storage = PostgresStorage(new_pg_database(pg_server))
    await storage.open()
    try:
        async with storage.pool.acquire() as conn:
            assert await audit_pg.last_link(conn) == (1, GENESIS_HASH)
        assert (await storage.verify_audit()).ok
    finally:
        await storage.close()


async def test_append_outside_a_transaction_is_refused(store: PostgresStorage) -> None:
    """Appending without a transaction would commit row by row: refused."""
    async with store.pool.acquire() as conn:
        with pytest.raises(StorageError, match="inside the batch's transaction"):
            await audit_pg.append(conn, [draft(7)])
    assert len(await stored(store)) == N


async def test_a_failed_batch_leaves_no_audit_entry(store: PostgresStorage) -> None:
    """An audit entry written with a batch that fails is rolled back with it; the chain goes on intact."""
    await store.register_devices([INC])
    bad = Telemetry("inc-01", 1, T0, False, (("temp_c", 37.0),))
    # The device state of an unregistered device fails after the audit rows went in: all rolls back.
    with pytest.raises(KeyError):
        await store.write_batch(
            Batch(readings=[(bad, T0)], audit=[draft(7)], devices={"not-registered": DeviceState()})
        )
    assert (await store.counts())["readings"] == 0
    good = Telemetry("inc-01", 1, T0, False, (("temp_c", 37.0),))
    await store.write_batch(Batch(readings=[(good, T0)], audit=[draft(8)]))

    entries = await stored(store)
    assert [e.object_id for e in entries[N:]] == ["inc-01/temp_c/high-8"]
    assert entries[N].seq == N + 1
    assert (await store.verify_audit()).ok


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE audit_log SET reason = 'routine' WHERE seq = 3",
        "DELETE FROM audit_log WHERE seq = 3",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
        (
            "INSERT INTO audit_log SELECT * FROM audit_log WHERE seq = 3 "
            "ON CONFLICT (seq) DO UPDATE SET reason = 'x'"
        ),
        (
            "INSERT INTO audit_log SELECT seq + 10, at_us, actor, action, object_type, object_id, old_value,"
            " new_value, reason, prev_hash, hash FROM audit_log WHERE seq = 3"
        ),
    ],
)
async def test_triggers_refuse_changes_while_present(store: PostgresStorage, sql: str) -> None:
    """UPDATE, DELETE, TRUNCATE, upsert and an INSERT that does not chain on are refused by the triggers."""
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await tamper(store, sql)
    assert await stored(store) == chain()
    assert (await store.verify_audit()).ok


async def test_verify_names_an_entry_updated_with_the_triggers_disabled(store: PostgresStorage) -> None:
    """A reason rewritten by the owner with the triggers disabled is reported as changed at its seq."""
    await tamper(store, "UPDATE audit_log SET reason = 'routine' WHERE seq = 3", disable_triggers=True)
    result = await store.verify_audit()
    assert (result.ok, result.first_bad_seq, result.kind, result.checked) == (False, 3, "changed", 2)


async def test_verify_names_an_entry_deleted_from_the_middle(store: PostgresStorage) -> None:
    """A row deleted from the middle is reported as deleted at its seq."""
    await tamper(store, "DELETE FROM audit_log WHERE seq = 3", disable_triggers=True)
    result = await store.verify_audit()
    assert (result.ok, result.first_bad_seq, result.kind) == (False, 3, "deleted")


async def test_verify_names_the_last_entry_deleted_by_the_high_water(store: PostgresStorage) -> None:
    """The newest row deleted is caught by the high-water seq, and stays caught after new appends."""
    await tamper(store, f"DELETE FROM audit_log WHERE seq = {N}", disable_triggers=True)
    assert verify(await stored(store)).ok  # the chain alone cannot tell
    result = await store.verify_audit()
    assert (result.ok, result.first_bad_seq, result.kind, result.checked) == (False, N, "deleted", N - 1)
    await store.record_audit([draft(7)])
    result = await store.verify_audit()
    assert (result.ok, result.first_bad_seq, result.kind) == (False, N, "deleted")


async def test_verify_names_a_forged_row_inserted_in_the_middle(store: PostgresStorage) -> None:
    """A correctly hashed forged row slipped in at seq 3, later rows renumbered, is named as inserted."""
    original = await stored(store)
    forged = seal([draft(99, reason="backdated approval")], 3, original[1].hash)[0]
    values = ", ".join(
        "NULL" if v is None else (str(v) if isinstance(v, int) else "'" + str(v).replace("'", "''") + "'")
        for v in dataclasses.astuple(forged)
    )
    await tamper(
        store,
        "UPDATE audit_log SET seq = seq + 1000 WHERE seq >= 3",
        "UPDATE audit_log SET seq = seq - 999 WHERE seq >= 1000",
        f"INSERT INTO audit_log VALUES ({values})",
        disable_triggers=True,
    )
    result = await store.verify_audit()
    assert (result.ok, result.first_bad_seq, result.kind, result.checked) == (False, 3, "inserted", 2)


async def test_collectors_appending_at_once_keep_one_chain(store: PostgresStorage) -> None:
    """Four storages (four collectors) appending concurrently: every entry lands once, in one valid chain."""
    others = [PostgresStorage(store.url) for _ in range(3)]
    await asyncio.gather(*(o.open() for o in others))
    try:
        writers = [store, *others]
        await asyncio.gather(
            *(
                w.record_audit([draft(1000 + 10 * k + j, actor=f"collector-{k}")])
                for j in range(10)
                for k, w in enumerate(writers)
            )
        )
    finally:
        await asyncio.gather(*(o.close() for o in others))

    entries = await stored(store)
    assert len(entries) == N + 40
    assert [e.seq for e in entries] == list(range(1, N + 41))
    assert sorted(e.object_id for e in entries[N:]) == sorted(
        f"inc-01/temp_c/high-{1000 + 10 * k + j}" for k in range(4) for j in range(10)
    )
    result = await store.verify_audit()
    assert (result.ok, result.checked) == (True, N + 40)


async def test_guards_disabled_or_altered_are_reported_and_restored(store: PostgresStorage) -> None:
    """A disabled guard or a do-nothing guard function is reported, and restoring makes them refuse again."""
    await tamper(
        store,
        "ALTER TABLE audit_seals DISABLE TRIGGER audit_seals_no_truncate",
        "CREATE OR REPLACE FUNCTION audit_log_refuse() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RETURN OLD; END $$",
    )
    found = (await store.audit_evidence()).guard_problems
    assert found == [
        "audit_log_no_update altered",
        "audit_log_no_truncate altered",
        "audit_seals_no_truncate disabled",
    ]
    restored = await store.restore_audit_guards()
    assert restored == ["audit_log_no_update", "audit_log_no_truncate", "audit_seals_no_truncate"]
    assert (await store.audit_evidence()).guard_problems == []
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await tamper(store, "DELETE FROM audit_log WHERE seq = 1")
