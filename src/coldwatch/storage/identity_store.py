"""Where accounts, sessions, tokens, signatures and reviews are read and written, on either backend.

Every change is a short list of guarded writes committed in one transaction together
with its audit entries, so a change and its record in the audit trail commit together
or not at all. A guarded write names the rows it must touch: when it touches another
number (the account was disabled meanwhile, the alarm was reviewed already), the
transaction is rolled back and :class:`WriteRefusedError` says why.

SQL is written once, with SQLite's ``?`` placeholders; the PostgreSQL store numbers them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import aiosqlite
import asyncpg

from coldwatch.audit import AuditDraft
from coldwatch.errors import ColdwatchError, StorageError
from coldwatch.storage import audit_pg
from coldwatch.storage.audit_sqlite import append_linked
from coldwatch.storage.base import Storage
from coldwatch.storage.identity_schema import pg_placeholders
from coldwatch.storage.sqlite import SqliteStorage
from coldwatch.storage.sqlite_thread import in_transaction, on_thread

__all__ = ["IDENTITY_LOCK", "IdentityStore", "Write", "WriteRefusedError", "identity_store", "is_postgres"]


IDENTITY_LOCK: Final = 0x636F6C64_69647479  # "coldidty": serialises identity changes


class WriteRefusedError(ColdwatchError):
    """A guarded write found the database not as expected; nothing was committed."""


@dataclass(frozen=True, slots=True)
class Write:
    """One statement of a change; ``expect`` rows touched, else the change is refused with ``refusal``."""

    sql: str
    params: tuple[Any, ...] = ()
    expect: int | None = None
    refusal: str = ""


class IdentityStore(Protocol):
    """Reads, and atomic guarded changes with their audit entries."""

    async def fetch(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Rows of one query."""

    async def apply(self, writes: Sequence[Write], audit: Sequence[AuditDraft]) -> None:
        """Commit ``writes`` and ``audit`` in one transaction, or nothing (raises WriteRefusedError)."""


class _SqliteIdentity:
    def __init__(self, storage: SqliteStorage) -> None:
        self._storage = storage

    @property
    def _db(self) -> aiosqlite.Connection:
        return self._storage._conn  # noqa: SLF001 - the backend's one connection: one writer, in order

    async def fetch(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        try:
            return [tuple(r) for r in await self._db.execute_fetchall(sql, params)]
        except sqlite3.Error as exc:
            raise StorageError(f"{self._storage.path}: {exc}") from exc

    async def apply(self, writes: Sequence[Write], audit: Sequence[AuditDraft]) -> None:
        try:
            await on_thread(self._db, in_transaction, _apply_sqlite, list(writes), list(audit))
        except sqlite3.Error as exc:
            raise StorageError(f"{self._storage.path}: {exc}") from exc


def _apply_sqlite(conn: sqlite3.Connection, writes: list[Write], audit: list[AuditDraft]) -> None:
    for write in writes:
        touched = conn.execute(write.sql, write.params).rowcount
        if write.expect is not None and touched != write.expect:
            raise WriteRefusedError(write.refusal or "the database changed meanwhile: try again")
    append_linked(conn, audit)


class _PgIdentity:
    def __init__(self, pool: asyncpg.Pool[Any], where: str) -> None:
        self._pool = pool
        self._where = where

    async def fetch(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        try:
            async with self._pool.acquire() as conn:
                return [tuple(r) for r in await conn.fetch(pg_placeholders(sql), *params)]
        except asyncpg.PostgresError as exc:
            raise StorageError(f"{self._where}: {exc}") from exc

    async def apply(self, writes: Sequence[Write], audit: Sequence[AuditDraft]) -> None:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                # One identity change at a time (as SQLite's single writer does): a guard's
                # subquery then sees every change committed before it, across collectors.
                await conn.execute("SELECT pg_advisory_xact_lock($1)", IDENTITY_LOCK)
                for write in writes:
                    status = await conn.execute(pg_placeholders(write.sql), *write.params)
                    touched = int(status.rsplit(" ", 1)[-1]) if status[-1:].isdigit() else 0
                    if write.expect is not None and touched != write.expect:
                        raise WriteRefusedError(write.refusal or "the database changed meanwhile: try again")
                await audit_pg.append(conn, audit)
        except asyncpg.PostgresError as exc:
            raise StorageError(f"{self._where}: {exc}") from exc


def identity_store(storage: Storage) -> IdentityStore:
    """The identity store on an open backend's own connections."""
    if isinstance(storage, SqliteStorage):
        return _SqliteIdentity(storage)
    from coldwatch.storage.postgres import PostgresStorage  # noqa: PLC0415 - asyncpg only when used

    if isinstance(storage, PostgresStorage):
        return _PgIdentity(storage.pool, storage.where)
    raise StorageError(f"no identity store for {type(storage).__name__}")


def is_postgres(store: IdentityStore) -> bool:
    """Whether ``store`` writes to PostgreSQL (for the rare statement the two dialects spell apart)."""
    return isinstance(store, _PgIdentity)
