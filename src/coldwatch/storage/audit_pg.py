"""The audit trail in PostgreSQL: an append-only, hash-chained ``audit_log`` table.

The same chain as the SQLite trail (:mod:`coldwatch.storage.audit_sqlite`): entries are
sealed by :func:`coldwatch.audit.seal` and checked by :func:`coldwatch.audit.verify`.
Triggers refuse UPDATE, DELETE, TRUNCATE and out-of-chain INSERTs (defence in depth: a
superuser can drop them, so the chain itself is what proves integrity). The highest seq
ever issued is kept in ``audit_high_water``, written by the insert trigger in the same
transaction, so entries cut off the end of the trail are reported as deleted.

Several collectors (and their notification deliverers) append to one chain: every
append takes a transaction-scoped advisory lock first, so links are read and extended
by one writer at a time.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable
from typing import Any, Final, TypeAlias

import asyncpg

from coldwatch.audit import (
    FIRST_SEQ,
    GENESIS_HASH,
    Anchor,
    AuditDraft,
    AuditEntry,
    VerifyResult,
    check_end,
    seal,
    verify,
)
from coldwatch.audit_keys import current_signer
from coldwatch.audit_seal import KEY_ROTATED, AuditEvidence, AuditHead, Seal
from coldwatch.errors import StorageError
from coldwatch.storage.rows import audit_rows

__all__ = [
    "AUDIT_LOCK",
    "AUDIT_SCHEMA_PG",
    "SEALS_SCHEMA_PG",
    "PgConnection",
    "append",
    "evidence",
    "guard_problems",
    "head",
    "read_all",
    "restore_guards",
    "verify_stored",
]

# A connection of its own or one lent by a pool.
PgConnection: TypeAlias = "asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any]"

AUDIT_LOCK: Final = 0x636F6C64_61756474  # "coldaudt": serialises appends to the chain

AUDIT_SCHEMA_PG: Final = """
    CREATE TABLE audit_log (
        seq BIGINT PRIMARY KEY CHECK (seq >= 1),
        at_us BIGINT NOT NULL,
        actor TEXT NOT NULL CHECK (length(btrim(actor)) > 0),
        action TEXT NOT NULL,
        object_type TEXT NOT NULL,
        object_id TEXT NOT NULL,
        old_value TEXT,
        new_value TEXT,
        reason TEXT NOT NULL CHECK (length(btrim(reason)) > 0),
        prev_hash TEXT NOT NULL CHECK (length(prev_hash) = 64),
        hash TEXT NOT NULL CHECK (length(hash) = 64)
    );
    CREATE TABLE audit_high_water (
        one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
        seq BIGINT NOT NULL
    );
    INSERT INTO audit_high_water(seq) VALUES (0);
    CREATE FUNCTION audit_log_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP;
    END $$;
    CREATE FUNCTION audit_log_chain() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        last_seq BIGINT;
        last_hash TEXT;
    BEGIN
        SELECT seq, hash INTO last_seq, last_hash FROM audit_log ORDER BY seq DESC LIMIT 1;
        IF NEW.seq <= coalesce(last_seq, 0)
           OR NEW.prev_hash IS DISTINCT FROM coalesce(last_hash, repeat('0', 64)) THEN
            RAISE EXCEPTION 'audit_log is append-only: INSERT out of chain refused';
        END IF;
        UPDATE audit_high_water SET seq = greatest(seq, NEW.seq);
        RETURN NEW;
    END $$;
    CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
        FOR EACH ROW EXECUTE FUNCTION audit_log_refuse();
    CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
        FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse();
    CREATE TRIGGER audit_log_append_only BEFORE INSERT ON audit_log
        FOR EACH ROW EXECUTE FUNCTION audit_log_chain();
"""

# The signatures over the chain (coldwatch.audit_seal): one row per append, on its last seq.
SEALS_SCHEMA_PG: Final = """
    CREATE TABLE audit_seals (
        seq BIGINT PRIMARY KEY,
        from_seq BIGINT NOT NULL CHECK (from_seq <= seq),
        key_id TEXT NOT NULL,
        signature TEXT NOT NULL
    );
    CREATE FUNCTION audit_seals_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'audit_seals is append-only: % refused', TG_OP;
    END $$;
    CREATE TRIGGER audit_seals_no_update BEFORE UPDATE OR DELETE ON audit_seals
        FOR EACH ROW EXECUTE FUNCTION audit_seals_refuse();
    CREATE TRIGGER audit_seals_no_truncate BEFORE TRUNCATE ON audit_seals
        FOR EACH STATEMENT EXECUTE FUNCTION audit_seals_refuse();
"""

# The append-only guards as the migrations created them: checked and restored at start-up,
# reported by verify. A trigger's events are its pg_trigger.tgtype bits (row 1, before 2,
# insert 4, delete 8, update 16, truncate 32).
_FUNCTIONS: Final = {
    m.group(1): m.group(2)
    for m in re.finditer(
        r"CREATE FUNCTION (\w+)\(\) RETURNS trigger LANGUAGE plpgsql AS \$\$(.*?)\$\$;",
        AUDIT_SCHEMA_PG + SEALS_SCHEMA_PG,
        re.DOTALL,
    )
}
_TRIGGERS: Final = {
    m.group(1): (m.group(0), m.group(2), m.group(3))
    for m in re.finditer(
        r"CREATE TRIGGER (\w+) .*? ON (\w+)\s+FOR EACH \w+ EXECUTE FUNCTION (\w+)\(\);",
        AUDIT_SCHEMA_PG + SEALS_SCHEMA_PG,
        re.DOTALL,
    )
}
_TGTYPE: Final = {
    "audit_log_no_update": 27,
    "audit_log_no_truncate": 34,
    "audit_log_append_only": 7,
    "audit_seals_no_update": 27,
    "audit_seals_no_truncate": 34,
}
_GUARDS_NOW: Final = (
    "SELECT t.tgname, c.relname, t.tgtype, t.tgenabled, p.proname, p.prosrc "
    "FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_proc p ON p.oid = t.tgfoid "
    "WHERE NOT t.tgisinternal AND t.tgrelid IN ('audit_log'::regclass, 'audit_seals'::regclass)"
)
_RULES_NOW: Final = (
    "SELECT r.rulename, c.relname FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class "
    "WHERE r.ev_class IN ('audit_log'::regclass, 'audit_seals'::regclass)"
)
_INSERT_SEAL: Final = "INSERT INTO audit_seals(seq, from_seq, key_id, signature) VALUES ($1, $2, $3, $4)"
_ORIGIN: Final = "SELECT from_seq FROM audit_seals ORDER BY seq LIMIT 1"
_HEAD: Final = (
    "SELECT s.seq, l.hash, s.key_id, (SELECT from_seq FROM audit_seals ORDER BY seq LIMIT 1) "
    "FROM audit_seals s JOIN audit_log l ON l.seq = s.seq ORDER BY s.seq DESC LIMIT 1"
)

_INSERT: Final = (
    "INSERT INTO audit_log(seq, at_us, actor, action, object_type, object_id, old_value, new_value, "
    "reason, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
)
_SELECT_ALL: Final = (
    "SELECT seq, at_us, actor, action, object_type, object_id, old_value, new_value, reason, prev_hash, hash "
    "FROM audit_log ORDER BY seq"
)


async def _high_water(conn: PgConnection) -> int:
    value = await conn.fetchval("SELECT seq FROM audit_high_water")
    return int(value or 0)


async def last_link(conn: PgConnection) -> tuple[int, str]:
    """The seq the next entry gets and the hash it chains to (genesis when empty)."""
    row = await conn.fetchrow("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
    last_seq, last_hash = (int(row[0]), str(row[1])) if row else (FIRST_SEQ - 1, GENESIS_HASH)
    # A signature left behind by entries deleted from the end holds its seq: never issued
    # again (every later append would fail, stopping the monitoring); verify reports the gap.
    sealed_seq = 0
    if await conn.fetchval("SELECT to_regclass('audit_seals') IS NOT NULL"):  # absent before signatures
        sealed_seq = int(await conn.fetchval("SELECT coalesce(max(seq), 0) FROM audit_seals"))
    return max(last_seq, await _high_water(conn), sealed_seq) + 1, last_hash


async def append(conn: PgConnection, drafts: Iterable[AuditDraft]) -> None:
    """Seal ``drafts`` onto the chain inside the caller's open transaction."""
    drafts = list(drafts)
    if not drafts:
        return
    if not conn.is_in_transaction():
        raise StorageError("audit entries must be appended inside the batch's transaction")
    # One appender at a time across every collector; released at COMMIT or ROLLBACK.
    await conn.execute("SELECT pg_advisory_xact_lock($1)", AUDIT_LOCK)
    entries = seal(drafts, *await last_link(conn))
    await conn.executemany(
        _INSERT,
        audit_rows(entries),
    )
    signer = current_signer.get()
    if signer is not None:
        first = await conn.fetchval(_ORIGIN)
        origin = entries[0].seq if first is None else int(first)
        sealed = signer.seal(origin, entries[0].seq, entries[-1].seq, entries[-1].hash)
        await conn.execute(_INSERT_SEAL, sealed.seq, sealed.from_seq, sealed.key_id, sealed.signature)


async def read_all(conn: PgConnection) -> AsyncIterator[AuditEntry]:
    """Every stored entry, in seq order, exactly as stored."""
    async with conn.transaction(readonly=True, isolation="repeatable_read"):
        async for r in conn.cursor(_SELECT_ALL, prefetch=2000):
            yield _entry(r)


def _entry(r: Any) -> AuditEntry:
    return AuditEntry(int(r[0]), int(r[1]), r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10])


async def verify_stored(conn: PgConnection, *, anchor: Anchor | None = None) -> VerifyResult:
    """Verify the stored chain, and that no entry was cut off its end (see the SQLite twin)."""
    # One snapshot for the entries and the high-water mark: members append meanwhile.
    async with conn.transaction(readonly=True, isolation="repeatable_read"):
        rows = await conn.fetch(_SELECT_ALL)
        high_water = await _high_water(conn)
    result = verify([_entry(r) for r in rows], anchor=anchor)
    return check_end(result, high_water)


def _normal(text: str) -> str:
    return " ".join(text.split())


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def guard_problems(conn: PgConnection) -> list[str]:
    """The append-only guards that are missing, disabled or differ from their definition."""
    found = {r[0]: r for r in await conn.fetch(_GUARDS_NOW)}
    problems = []
    for name, (_, table, function) in _TRIGGERS.items():
        row = found.get(name)
        if row is None:
            problems.append(f"{name} missing")
        elif row[3] not in {b"O", b"A"}:  # "char": fires (O)rigin/local or (A)lways; not D or R
            problems.append(f"{name} disabled")
        elif (
            row[1] != table
            or row[2] != _TGTYPE[name]
            or row[4] != function
            or _normal(row[5]) != _normal(_FUNCTIONS[function])
        ):
            problems.append(f"{name} altered")
    problems.extend(f"{name} foreign (a {what} on {table})" for what, name, table in await _foreign(conn))
    return problems


async def _foreign(conn: PgConnection) -> list[tuple[str, str, str]]:
    """Triggers and rules on the trail's tables that are not guards, as (kind, name, table).

    One of them can make the trail's inserts vanish (a trigger returning NULL, a rule
    ``DO INSTEAD NOTHING``) while every guard is in place: each is a problem, and removed
    at start-up.
    """
    found = [
        ("trigger", str(r[0]), str(r[1])) for r in await conn.fetch(_GUARDS_NOW) if r[0] not in _TRIGGERS
    ]
    rules = await conn.fetch(_RULES_NOW)
    return sorted([*found, *(("rule", str(r[0]), str(r[1])) for r in rules)])


async def restore_guards(conn: PgConnection) -> list[str]:
    """Recreate the guards that are missing, disabled or altered (in the caller's transaction)."""
    restored = []
    for what, name, table in await _foreign(conn):
        await conn.execute(f"DROP {what.upper()} {_quoted(name)} ON {_quoted(table)}")
        restored.append(f"{name} (foreign {what}, removed)")
    for problem in await guard_problems(conn):
        name = problem.split()[0]
        statement, table, function = _TRIGGERS[name]
        body = _FUNCTIONS[function]
        await conn.execute(
            f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $${body}$$"
        )
        await conn.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
        await conn.execute(statement)
        restored.append(name)
    return restored


async def evidence(conn: PgConnection) -> AuditEvidence:
    """Entries, seals, high-water mark and guard problems, in one snapshot."""
    async with conn.transaction(readonly=True, isolation="repeatable_read"):
        rows = await conn.fetch(_SELECT_ALL)
        seals = await conn.fetch("SELECT seq, from_seq, key_id, signature FROM audit_seals ORDER BY seq")
        high_water = await _high_water(conn)
        problems = await guard_problems(conn)
    return AuditEvidence(
        [_entry(r) for r in rows],
        [Seal(int(r[0]), int(r[1]), r[2], r[3]) for r in seals],
        high_water,
        problems,
    )


async def head(conn: PgConnection, *, with_rotation: bool = False) -> AuditHead | None:
    """The last signed entry, the seq signing began at, and (if asked: a scan) the last rotation's key."""
    row = await conn.fetchrow(_HEAD)
    if row is None:
        return None
    rotated = None
    if with_rotation:
        rotated = await conn.fetchval(
            "SELECT new_value FROM audit_log WHERE action = $1 ORDER BY seq DESC LIMIT 1", KEY_ROTATED
        )
    return AuditHead(int(row[0]), row[1], int(row[3]), row[2], rotated)
