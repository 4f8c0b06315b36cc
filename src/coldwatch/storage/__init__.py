"""Storage backends behind one small protocol."""

from __future__ import annotations

from pathlib import Path

from coldwatch.config import POSTGRES_SCHEMES
from coldwatch.errors import StorageError
from coldwatch.storage.base import (
    QUARANTINE_MAX_BYTES,
    Batch,
    BatchResult,
    DeviceState,
    ExportRow,
    QuarantineEntry,
    SeqGap,
    Storage,
)
from coldwatch.storage.sqlite import SqliteStorage

__all__ = [
    "Batch",
    "BatchResult",
    "DeviceState",
    "ExportRow",
    "QuarantineEntry",
    "SeqGap",
    "SqliteStorage",
    "Storage",
    "open_existing",
    "open_storage",
]


def open_storage(
    location: str | Path,
    *,
    quarantine_max_rows: int = 10_000,
    quarantine_max_bytes: int = QUARANTINE_MAX_BYTES,
) -> Storage:
    """Build the backend for ``location`` (a SQLite path or a ``postgresql://`` URL); then ``open()`` it."""
    text = str(location)
    if text.startswith(POSTGRES_SCHEMES):
        from coldwatch.storage.postgres import PostgresStorage  # noqa: PLC0415 - asyncpg only when used

        return PostgresStorage(
            text, quarantine_max_rows=quarantine_max_rows, quarantine_max_bytes=quarantine_max_bytes
        )
    return SqliteStorage(
        Path(text), quarantine_max_rows=quarantine_max_rows, quarantine_max_bytes=quarantine_max_bytes
    )


def open_existing(location: str | Path) -> Storage:
    """The backend of a database that must exist already (for the reading commands)."""
    text = str(location)
    if text.startswith(POSTGRES_SCHEMES):
        from coldwatch.storage.postgres import PostgresStorage  # noqa: PLC0415 - asyncpg only when used

        return PostgresStorage(text, migrate=False, writer=False, pool_size=2)
    if not Path(text).exists():
        raise StorageError(f"{text}: no database (has the collector run?)")
    return SqliteStorage(Path(text), migrate=False)
