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
from coldwatch.errors import StorageError
from coldwatch.storage.rows import audit_rows
from coldwatch.storage.sqlite_thread import on_thread

__all__ = [
    "AUDIT_SCHEMA",
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
    return max(last_seq, _high_water_sync(conn)) + 1, last_hash


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
