"""The audit trail in SQLite: an append-only, hash-chained ``audit_log`` table.

The table refuses UPDATE, DELETE, REPLACE and out-of-chain INSERTs through triggers.
That is defence in depth only: anyone with the file can drop triggers or edit bytes,
so :func:`verify_stored` checks the hash chain itself (:mod:`coldwatch.audit`).

The storage's single writer calls :func:`append` inside the transaction of the batch
the audited change belongs to, so the change and its audit entry commit together or
not at all. The writer keeps the link :func:`append` returns (next seq, last hash) and
only adopts it after COMMIT.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator, Iterable
from typing import Any, Final

import aiosqlite

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
from coldwatch.storage.sqlite_thread import on_thread

__all__ = [
    "AUDIT_SCHEMA",
    "SEALS_SCHEMA",
    "append",
    "append_linked",
    "append_sync",
    "last_link",
    "last_link_sync",
    "read_all",
    "verify_stored",
]

# One migration script (append it to MIGRATIONS; never edit it once released).
# AUTOINCREMENT makes SQLite remember the highest seq ever issued (sqlite_sequence), which
# shows when the newest entries were deleted. The CHECKs hold even with the triggers dropped.
AUDIT_SCHEMA: Final = """
    CREATE TABLE audit_log (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at_us INTEGER NOT NULL CHECK (typeof(at_us) = 'integer'),
        actor TEXT NOT NULL CHECK (typeof(actor) = 'text' AND length(trim(actor)) > 0),
        action TEXT NOT NULL CHECK (typeof(action) = 'text'),
        object_type TEXT NOT NULL CHECK (typeof(object_type) = 'text'),
        object_id TEXT NOT NULL CHECK (typeof(object_id) = 'text'),
        old_value TEXT CHECK (old_value IS NULL OR typeof(old_value) = 'text'),
        new_value TEXT CHECK (new_value IS NULL OR typeof(new_value) = 'text'),
        reason TEXT NOT NULL CHECK (typeof(reason) = 'text' AND length(trim(reason)) > 0),
        prev_hash TEXT NOT NULL CHECK (length(prev_hash) = 64),
        hash TEXT NOT NULL CHECK (length(hash) = 64)
    );
    CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    BEGIN
        SELECT RAISE(ABORT, 'audit_log is append-only: UPDATE refused');
    END;
    CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    BEGIN
        SELECT RAISE(ABORT, 'audit_log is append-only: DELETE refused');
    END;
    -- INSERT OR REPLACE deletes without firing DELETE triggers: refuse any seq not past the
    -- end, and any entry that does not chain to the current last one (or to genesis).
    CREATE TRIGGER audit_log_append_only BEFORE INSERT ON audit_log
    WHEN NEW.seq <= (SELECT coalesce(max(seq), 0) FROM audit_log)
      OR NEW.prev_hash IS NOT coalesce(
          (SELECT hash FROM audit_log ORDER BY seq DESC LIMIT 1),
          '0000000000000000000000000000000000000000000000000000000000000000')
    BEGIN
        SELECT RAISE(ABORT, 'audit_log is append-only: INSERT out of chain refused');
    END;
"""

# The signatures over the chain (coldwatch.audit_seal): one row per append, on its last seq.
SEALS_SCHEMA: Final = """
    CREATE TABLE audit_seals (
        seq INTEGER PRIMARY KEY,
        from_seq INTEGER NOT NULL CHECK (from_seq <= seq),
        key_id TEXT NOT NULL,
        signature TEXT NOT NULL
    );
    CREATE TRIGGER audit_seals_no_update BEFORE UPDATE ON audit_seals
    BEGIN
        SELECT RAISE(ABORT, 'audit_seals is append-only: UPDATE refused');
    END;
    CREATE TRIGGER audit_seals_no_delete BEFORE DELETE ON audit_seals
    BEGIN
        SELECT RAISE(ABORT, 'audit_seals is append-only: DELETE refused');
    END;
"""

# Every append-only guard by name, exactly as the migrations created it: checked and restored
# at start-up, reported by verify.
GUARDS: Final = {
    m.group(1): m.group(0)
    for m in re.finditer(r"CREATE TRIGGER (\w+).*?\bEND;", AUDIT_SCHEMA + SEALS_SCHEMA, re.DOTALL)
}

_INSERT_SEAL: Final = "INSERT INTO audit_seals(seq, from_seq, key_id, signature) VALUES (?, ?, ?, ?)"
_ORIGIN: Final = "SELECT from_seq FROM audit_seals ORDER BY seq LIMIT 1"
_HEAD: Final = (
    "SELECT s.seq, l.hash, s.key_id, (SELECT from_seq FROM audit_seals ORDER BY seq LIMIT 1) "
    "FROM audit_seals s JOIN audit_log l ON l.seq = s.seq ORDER BY s.seq DESC LIMIT 1"
)

_INSERT: Final = (
    "INSERT INTO audit_log(seq, at_us, actor, action, object_type, object_id, old_value, new_value, "
    "reason, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SELECT_ALL: Final = (
    "SELECT seq, at_us, actor, action, object_type, object_id, old_value, new_value, reason, prev_hash, hash "
    "FROM audit_log ORDER BY seq"
)
_HIGH_WATER: Final = "SELECT seq FROM sqlite_sequence WHERE name = 'audit_log'"


async def _high_water(db: aiosqlite.Connection) -> int:
    """The highest seq ever inserted (0 if none), as SQLite remembers it."""
    return await on_thread(db, _high_water_sync)


def _high_water_sync(conn: sqlite3.Connection) -> int:
    row = conn.execute(_HIGH_WATER).fetchone()
    return int(row[0]) if row else 0


async def last_link(db: aiosqlite.Connection) -> tuple[int, str]:
    """The seq the next entry gets and the hash it chains to (genesis when empty)."""
    return await on_thread(db, last_link_sync)


def last_link_sync(conn: sqlite3.Connection) -> tuple[int, str]:
    """:func:`last_link` on the connection's thread.

    The next seq comes after the highest seq ever issued, so entries deleted from the end
    leave a gap that :func:`verify` reports instead of being silently reused.
    """
    row = conn.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
    last_seq, last_hash = (int(row[0]), str(row[1])) if row else (FIRST_SEQ - 1, GENESIS_HASH)
    # A signature left behind by entries deleted from the end (high-water mark wound back)
    # still holds its seq: issuing that seq again would make every later append fail, and
    # a damaged trail must never stop the monitoring. The deletion stays for verify to report.
    try:
        sealed = conn.execute("SELECT max(seq) FROM audit_seals").fetchone()
    except sqlite3.OperationalError:  # a schema from before signatures (upgraded at start-up)
        sealed = None
    sealed_seq = int(sealed[0]) if sealed and sealed[0] is not None else 0
    return max(last_seq, _high_water_sync(conn), sealed_seq) + 1, last_hash


async def append(
    db: aiosqlite.Connection, drafts: Iterable[AuditDraft], next_seq: int, prev_hash: str
) -> tuple[int, str]:
    """Seal ``drafts`` onto the chain inside the caller's open transaction; return the new link."""
    return await on_thread(db, append_sync, list(drafts), next_seq, prev_hash)


def append_linked(conn: sqlite3.Connection, drafts: Iterable[AuditDraft]) -> tuple[int, str]:
    """:func:`append_sync` from the stored link, inside the caller's open transaction."""
    return append_sync(conn, drafts, *last_link_sync(conn))


def append_sync(
    conn: sqlite3.Connection, drafts: Iterable[AuditDraft], next_seq: int, prev_hash: str
) -> tuple[int, str]:
    """:func:`append` on the connection's thread.

    Adopt the returned link only after the transaction commits: after a rollback the
    link passed in is still the right one.
    """
    entries = seal(drafts, next_seq, prev_hash)
    if not entries:
        return next_seq, prev_hash
    if not conn.in_transaction:
        # Outside a transaction each row would commit alone: a crash could keep half a batch.
        raise StorageError("audit entries must be appended inside the batch's transaction")
    conn.executemany(_INSERT, audit_rows(entries))
    signer = current_signer.get()
    if signer is not None:
        row = conn.execute(_ORIGIN).fetchone()
        origin = int(row[0]) if row else entries[0].seq
        sealed = signer.seal(origin, entries[0].seq, entries[-1].seq, entries[-1].hash)
        conn.execute(_INSERT_SEAL, (sealed.seq, sealed.from_seq, sealed.key_id, sealed.signature))
    return entries[-1].seq + 1, entries[-1].hash


async def read_all(db: aiosqlite.Connection) -> AsyncIterator[AuditEntry]:
    """Every stored entry, in seq order, exactly as stored."""
    async with db.execute(_SELECT_ALL) as cur:
        cur.arraysize = 2000
        async for row in cur:
            yield _entry(row)


def _entry(row: Any) -> AuditEntry:
    """An entry from a row, refusing values no entry could hold (only a file edit makes them)."""
    seq, at_us, actor, action, object_type, object_id, old_value, new_value, reason, prev_hash, digest = row
    texts = (actor, action, object_type, object_id, reason, prev_hash, digest)
    if (
        type(at_us) is not int
        or not all(isinstance(t, str) for t in texts)
        or not all(v is None or isinstance(v, str) for v in (old_value, new_value))
    ):
        raise StorageError(f"audit_log seq {seq} holds values of the wrong type: the file was edited")
    return AuditEntry(
        int(seq),
        at_us,
        actor,
        action,
        object_type,
        object_id,
        old_value,
        new_value,
        reason,
        prev_hash,
        digest,
    )


async def verify_stored(db: aiosqlite.Connection, *, anchor: Anchor | None = None) -> VerifyResult:
    """Verify the stored chain, and that no entry was cut off its end.

    The end check compares with SQLite's record of the highest seq ever issued; it catches
    a plain DELETE of the newest entries, not a tamperer who also edits that record. An
    ``anchor`` kept outside the database catches both.
    """
    result = verify([e async for e in read_all(db)], anchor=anchor)
    if not result.ok:
        return result
    return check_end(result, await _high_water(db))


def _normal(sql: str) -> str:
    return " ".join(sql.rstrip().rstrip(";").split())


def _foreign_triggers_sync(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """Triggers on the trail's tables that are not guards, as (name, table).

    One of them can make the trail's inserts vanish (``RAISE(IGNORE)``) while every guard
    is in place: each is a problem, and removed at start-up.
    """
    rows = conn.execute(
        "SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger'"
        " AND lower(tbl_name) IN ('audit_log', 'audit_seals') ORDER BY name"
    ).fetchall()
    return [(str(name), str(table)) for name, table in rows if name not in GUARDS]


def guard_problems_sync(conn: sqlite3.Connection) -> list[str]:
    """The append-only guards that are missing or differ from their definition, and foreign triggers."""
    stored = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'").fetchall())
    problems = []
    for name, sql in GUARDS.items():
        if name not in stored:
            problems.append(f"{name} missing")
        elif _normal(stored[name]) != _normal(sql):
            problems.append(f"{name} altered")
    problems.extend(f"{name} foreign (a trigger on {table})" for name, table in _foreign_triggers_sync(conn))
    return problems


def restore_guards_sync(conn: sqlite3.Connection) -> list[str]:
    """Recreate missing or altered guards, drop foreign triggers (caller's transaction); their names."""
    restored = []
    for name, _ in _foreign_triggers_sync(conn):
        conn.execute(f'DROP TRIGGER "{name.replace(chr(34), chr(34) * 2)}"')
        restored.append(f"{name} (foreign, removed)")
    for problem in guard_problems_sync(conn):
        name = problem.split()[0]
        conn.execute(f'DROP TRIGGER IF EXISTS "{name}"')
        conn.execute(GUARDS[name])
        restored.append(name)
    return restored


def evidence_sync(conn: sqlite3.Connection) -> AuditEvidence:
    """Entries, seals, high-water mark and guard problems, read in one transaction (one snapshot)."""
    conn.execute("BEGIN")
    try:
        entries = [_entry(r) for r in conn.execute(_SELECT_ALL).fetchall()]
        seals = [
            Seal(int(r[0]), int(r[1]), str(r[2]), str(r[3]))
            for r in conn.execute("SELECT seq, from_seq, key_id, signature FROM audit_seals ORDER BY seq")
        ]
        return AuditEvidence(entries, seals, _high_water_sync(conn), guard_problems_sync(conn))
    finally:
        conn.execute("COMMIT")


def head_sync(conn: sqlite3.Connection, *, with_rotation: bool = False) -> AuditHead | None:
    """The last signed entry, the seq signing began at, and (if asked: a scan) the last rotation's key."""
    row = conn.execute(_HEAD).fetchone()
    if row is None:
        return None
    rotated = None
    if with_rotation:
        rotated = conn.execute(
            "SELECT new_value FROM audit_log WHERE action = ? ORDER BY seq DESC LIMIT 1", (KEY_ROTATED,)
        ).fetchone()
    return AuditHead(int(row[0]), str(row[1]), int(row[3]), str(row[2]), rotated[0] if rotated else None)
