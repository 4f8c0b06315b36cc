"""Where a report's figures came from: printed on every page of the report.

The coldwatch version, the database (never a secret: an SQLite file's name, or a
PostgreSQL host, port and database name without user or password), the query in words,
the generation time and the sealed audit trail's head when the report was generated (an
inspector can check that the trail up to that entry is intact and that the report's
generation is recorded after it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import coldwatch
from coldwatch.storage.base import Storage
from coldwatch.storage.sqlite import SqliteStorage

__all__ = ["Provenance", "database_label", "provenance"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Provenance:
    """What a report says about its own origin."""

    version: str
    database: str
    query: str
    generated_us: int
    audit_head_seq: int
    audit_head_hash: str

    @property
    def generated_utc(self) -> str:
        """The generation time, UTC, to the second."""
        return (_EPOCH + timedelta(microseconds=self.generated_us)).strftime("%Y-%m-%d %H:%M:%S UTC")

    def line(self) -> str:
        """The one-line footer every page carries."""
        head = (
            f"audit head #{self.audit_head_seq} {self.audit_head_hash[:12]}"
            if self.audit_head_hash
            else ("audit trail empty")
        )
        return (
            f"coldwatch {self.version} · {self.database} · {self.query} · "
            f"generated {self.generated_utc} · {head}"
        )


def database_label(storage: Storage) -> str:
    """The database in words, without user, password or directory."""
    if isinstance(storage, SqliteStorage):
        return f"SQLite {storage.path.name}"
    where = str(getattr(storage, "where", ""))
    parts = urlsplit(where)
    if parts.hostname is None:
        return "PostgreSQL"
    port = f":{parts.port}" if parts.port else ""
    return f"PostgreSQL {parts.hostname}{port}/{parts.path.lstrip('/')}"


async def provenance(storage: Storage, query: str, now_us: int) -> Provenance:
    """The provenance of a report generated now from ``storage`` by ``query``."""
    head = await storage.audit_head()
    return Provenance(
        version=coldwatch.__version__,
        database=database_label(storage),
        query=query,
        generated_us=now_us,
        audit_head_seq=0 if head is None else head.seq,
        audit_head_hash="" if head is None else head.hash,
    )
