"""Storage backends behind one small protocol."""

from __future__ import annotations

from pathlib import Path

from coldwatch.errors import StorageError
from coldwatch.storage.base import (
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
    "open_storage",
]


def open_storage(location: str | Path, *, quarantine_max_rows: int = 10_000) -> Storage:
    """Build the backend for ``location`` (a SQLite path); call ``open()`` on the result."""
    text = str(location)
    if text.startswith(("postgresql://", "postgres://")):
        msg = (
            f"{text.rsplit('@', maxsplit=1)[-1]}: PostgreSQL storage is not available yet; use a SQLite path"
        )
        raise StorageError(msg)
    return SqliteStorage(Path(text), quarantine_max_rows=quarantine_max_rows)
