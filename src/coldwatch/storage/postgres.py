"""PostgreSQL storage through asyncpg: COPY for batches, versioned migrations, shared by collectors.

The same protocol and the same guarantees as the SQLite backend: a batch is one
transaction; readings are keyed by (device, metric, ts, seq), so a redelivered message is
recognised and skipped. Readings go to a TimescaleDB hypertable (compressed after a week)
when the extension can be created, else to a table range-partitioned by week on the
device timestamp; partitions are created as readings arrive for them.

Several collectors may share one database (see :mod:`coldwatch.cluster`): alarm ids come
from a sequence, audit appends are serialised by an advisory lock, and partitions and
registrations are created idempotently.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import asyncpg

from coldwatch.audit import AuditDraft, AuditEntry, VerifyResult
from coldwatch.audit_seal import AuditEvidence, AuditHead
from coldwatch.catalogue import KINDS
from coldwatch.config import DeviceConfig, redact
from coldwatch.console.rollup import ROLLUP_SCHEMA, late_minutes
from coldwatch.console.sql import CONSOLE_INDEXES
from coldwatch.errors import StorageError
from coldwatch.notify.model import AlarmFacts, Channel, OutboxItem, order_key_of
from coldwatch.notify.outbox import (
    LANE_HEADS,
    OUTBOX_DEAD_LETTER_SCHEMA_PG,
    SUMMARY,
    LaneHead,
    OutboxRow,
    PendingSummary,
    alarm_facts,
    histories,
    outbox_row,
)
from coldwatch.rules.lifecycle import Alarm, Transition
from coldwatch.rules.model import EngineReading
from coldwatch.rules.snapshot import RuleSnapshot
from coldwatch.storage import audit_pg
from coldwatch.storage.audit_pg import PgConnection
from coldwatch.storage.base import (
    QUARANTINE_MAX_BYTES,
    Batch,
    BatchResult,
    DeviceState,
    ExportRow,
    QuarantineEntry,
    SeqGap,
    alarm_from_row,
    group_readings,
)
from coldwatch.storage.identity_schema import IDENTITY_SCHEMA_PG, INSERT_SIGNATURE, pg_placeholders
from coldwatch.storage.records_schema import RECORDS_SCHEMA_PG
from coldwatch.storage.rows import RowIds, alarm_rows, quarantine_rows, reason_totals, transition_rows

__all__ = [
    "FENCE_LOCK",
    "MIGRATIONS_PG",
    "OUTBOX_CHANNEL",
    "AlarmIds",
    "Fence",
    "PostgresOutbox",
    "PostgresStorage",
]

log = logging.getLogger(__name__)

WEEK_US: Final = 7 * 86_400 * 1_000_000
MIGRATION_LOCK: Final = 0x636F6C64_6D696772  # "coldmigr"
PARTITION_LOCK: Final = 0x636F6C64_70617274  # "coldpart"
ALARM_ID_LOCK: Final = 0x636F6C64_616C6964  # "coldalid"
OUTBOX_CHANNEL: Final = "coldwatch_outbox"  # NOTIFY channel: notifications were enqueued
# With a partition number, the fence of that partition's batches (see coldwatch.leases).
FENCE_LOCK: Final = 0x63776665  # "cwfe"

# Each entry migrates from version N to N+1. Never edit a released entry: append one.
# The readings table itself is made by _create_readings (its form depends on TimescaleDB).
MIGRATIONS_PG: Final[tuple[str, ...]] = (
    """
    CREATE TABLE devices (
        id BIGSERIAL PRIMARY KEY,
        device_id TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        site TEXT NOT NULL,
        area TEXT NOT NULL,
        grade TEXT,
        last_seq BIGINT,
        last_ts_us BIGINT,
        last_received_us BIGINT,
        online BOOLEAN
    );
    CREATE TABLE metrics (
        id SERIAL PRIMARY KEY,
        name TEXT NOT NULL UNIQUE
    );
    CREATE TABLE quarantine (
        id BIGSERIAL PRIMARY KEY,
        received_us BIGINT NOT NULL,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL,
        topic TEXT NOT NULL,
        device_id TEXT,
        payload BYTEA NOT NULL
    );
    CREATE TABLE rejection_totals (
        reason TEXT PRIMARY KEY,
        total BIGINT NOT NULL
    );
    CREATE TABLE seq_gaps (
        id BIGSERIAL PRIMARY KEY,
        device BIGINT NOT NULL REFERENCES devices(id),
        first_missing BIGINT NOT NULL,
        last_missing BIGINT NOT NULL,
        detected_us BIGINT NOT NULL
    );
    CREATE TABLE alarms (
        id BIGINT PRIMARY KEY,
        device_id TEXT NOT NULL,
        metric TEXT NOT NULL,
        rule TEXT NOT NULL,
        severity TEXT NOT NULL,
        state TEXT NOT NULL,
        raised_ts_us BIGINT NOT NULL,
        raised_received_us BIGINT NOT NULL,
        cleared_ts_us BIGINT,
        value DOUBLE PRECISION,
        limit_value DOUBLE PRECISION,
        late BOOLEAN NOT NULL,
        detail TEXT NOT NULL,
        shelved_until_us BIGINT,
        shelved_by TEXT,
        acknowledged_by TEXT
    );
    -- Alarm ids for every collector sharing the database (handed out in blocks).
    CREATE SEQUENCE alarm_ids;
    CREATE UNIQUE INDEX alarms_one_open ON alarms(device_id, metric, rule) WHERE state <> 'closed';
    CREATE INDEX alarms_by_device ON alarms(device_id, raised_ts_us);
    CREATE TABLE alarm_transitions (
        id BIGSERIAL PRIMARY KEY,
        alarm_id BIGINT NOT NULL REFERENCES alarms(id),
        event TEXT NOT NULL,
        ts_us BIGINT NOT NULL,
        received_us BIGINT NOT NULL,
        from_state TEXT,
        to_state TEXT NOT NULL,
        severity TEXT NOT NULL,
        value DOUBLE PRECISION,
        limit_value DOUBLE PRECISION,
        late BOOLEAN NOT NULL,
        actor TEXT NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE INDEX alarm_transitions_by_alarm ON alarm_transitions(alarm_id, id);
    CREATE TABLE notification_outbox (
        id BIGSERIAL PRIMARY KEY,
        notification_id TEXT NOT NULL UNIQUE,
        channel TEXT NOT NULL,
        target TEXT NOT NULL,
        body BYTEA NOT NULL,
        alarm_id BIGINT,
        created_us BIGINT NOT NULL,
        next_attempt_us BIGINT,
        attempts INTEGER NOT NULL DEFAULT 0,
        delivered_us BIGINT,
        last_error TEXT
    );
    CREATE INDEX notification_outbox_pending ON notification_outbox(channel, target, id)
        WHERE delivered_us IS NULL AND next_attempt_us IS NOT NULL;
    CREATE INDEX notification_outbox_by_alarm ON notification_outbox(alarm_id);
    CREATE TABLE notification_attempts (
        id BIGSERIAL PRIMARY KEY,
        outbox_id BIGINT NOT NULL REFERENCES notification_outbox(id),
        at_us BIGINT NOT NULL,
        ok BOOLEAN NOT NULL,
        status INTEGER,
        error TEXT
    );
    CREATE INDEX notification_attempts_by_outbox ON notification_attempts(outbox_id, id);
    -- Which collector owns which partition of the devices, until when (coldwatch.cluster).
    CREATE TABLE partition_leases (
        partition INTEGER PRIMARY KEY,
        owner TEXT,
        expires_at TIMESTAMPTZ NOT NULL DEFAULT '-infinity',
        generation BIGINT NOT NULL DEFAULT 0
    );
    CREATE TABLE collectors (
        name TEXT PRIMARY KEY,
        seen_at TIMESTAMPTZ NOT NULL
    );
    """,
    audit_pg.AUDIT_SCHEMA_PG,
    # Gap states (coldwatch.recovery), as in SQLite: open, recovered or lost; gaps recorded
    # before re-send requests existed were never asked for and are recorded as lost.
    """
    ALTER TABLE seq_gaps ADD COLUMN state TEXT NOT NULL DEFAULT 'open';
    ALTER TABLE seq_gaps ADD COLUMN resolved_us BIGINT;
    UPDATE seq_gaps SET state = 'lost', resolved_us = detected_us;
    CREATE INDEX seq_gaps_open ON seq_gaps(device) WHERE state = 'open';
    """,
    # Signatures over the audit chain; entries written before stay verifiable by the chain.
    audit_pg.SEALS_SCHEMA_PG,
    OUTBOX_DEAD_LETTER_SCHEMA_PG,
    # The quarantine keeps a prefix of each payload, with the whole payload's size and
    # SHA-256 (-1 and '': the row predates this and its payload is whole).
    # kept_from: where the entry's kept payload starts in the sequence of every payload
    # byte the quarantine kept, so that the byte bound deletes by an index range.
    """
    ALTER TABLE quarantine ADD COLUMN payload_size BIGINT NOT NULL DEFAULT -1,
        ADD COLUMN payload_sha256 TEXT NOT NULL DEFAULT '',
        ADD COLUMN kept_from BIGINT NOT NULL DEFAULT 0;
    UPDATE quarantine AS q SET kept_from = o.start FROM (
        SELECT id, coalesce(sum(octet_length(payload)) OVER (
            ORDER BY id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS start
        FROM quarantine
    ) AS o WHERE q.id = o.id;
    CREATE INDEX quarantine_by_offset ON quarantine(kept_from);
    """,
    # The console: the alarm list's order (open first, then newest first) and chart rollups.
    CONSOLE_INDEXES + ROLLUP_SCHEMA.format(rowid=""),
    # People's accounts, sessions, service tokens, electronic signatures and QA reviews.
    IDENTITY_SCHEMA_PG,
    # Rule state snapshots (coldwatch.rules.snapshot), as on SQLite.
    """
    CREATE TABLE rule_snapshots (
        device_id TEXT PRIMARY KEY,
        ts_us BIGINT NOT NULL,
        seq BIGINT NOT NULL,
        fingerprint TEXT NOT NULL,
        state BYTEA NOT NULL
    );
    """,
    # GMP records: instruments and calibration, batches, shipments, generated reports.
    RECORDS_SCHEMA_PG,
)

_PLAIN_READINGS: Final = """
    CREATE TABLE readings (
        device BIGINT NOT NULL,
        metric INTEGER NOT NULL,
        ts_us BIGINT NOT NULL,
        seq BIGINT NOT NULL,
        value DOUBLE PRECISION NOT NULL,
        received_us BIGINT NOT NULL,
        buffered BOOLEAN NOT NULL,
        PRIMARY KEY (device, metric, ts_us, seq)
    )
"""
_UPSERT_SNAPSHOT: Final = (
    "INSERT INTO rule_snapshots(device_id, ts_us, seq, fingerprint, state) VALUES ($1, $2, $3, $4, $5) "
    "ON CONFLICT(device_id) DO UPDATE SET ts_us = excluded.ts_us, seq = excluded.seq, "
    "fingerprint = excluded.fingerprint, state = excluded.state"
)
_INCOMING: Final = (
    "CREATE TEMP TABLE IF NOT EXISTS incoming (device BIGINT, metric INTEGER, ts_us BIGINT, seq BIGINT, "
    "value DOUBLE PRECISION, received_us BIGINT, buffered BOOLEAN) ON COMMIT DELETE ROWS"
)
_INSERT_READINGS: Final = (
    "INSERT INTO readings SELECT * FROM incoming ON CONFLICT DO NOTHING RETURNING device, metric, ts_us, seq"
)
# Where the newest entry's kept payload ends (octet_length reads a value's stored size).
_QUARANTINE_END: Final = "SELECT kept_from + octet_length(payload) FROM quarantine ORDER BY id DESC LIMIT 1"
QUARANTINE_LOCK: Final = 0x636F6C64_71756172  # "coldquar"
_INSERT_GAP: Final = (
    "INSERT INTO seq_gaps(device, first_missing, last_missing, detected_us) VALUES ($1, $2, $3, $4)"
)
_RESOLVE_GAP: Final = (
    "UPDATE seq_gaps SET state = $1, resolved_us = $2 WHERE device = $3 AND first_missing = $4 "
    "AND last_missing = $5 AND detected_us = $6 AND state = 'open'"
)
# Only readings that arrived after the gap was found can fill it: a seq number stored
# before may belong to an earlier numbering of the device (its counter restarted).
_OPEN_GAPS: Final = (
    "SELECT d.device_id, g.first_missing, g.last_missing, g.detected_us, "
    "ARRAY(SELECT DISTINCT r.seq FROM readings AS r WHERE r.device = g.device "
    "AND r.seq BETWEEN g.first_missing AND g.last_missing AND r.received_us >= g.detected_us) "
    "FROM seq_gaps AS g JOIN devices AS d ON d.id = g.device "
    "WHERE g.state = 'open' AND ($1::text[] IS NULL OR d.device_id = ANY($1)) ORDER BY g.id"
)
_UPDATE_DEVICES: Final = (
    "UPDATE devices AS d SET last_seq = u.s, last_ts_us = u.t, last_received_us = u.r, online = u.o "
    "FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::boolean[], $5::bigint[]) AS u(s, t, r, o, id) "
    "WHERE d.id = u.id"
)
_UPSERT_ALARM: Final = (
    "INSERT INTO alarms(id, device_id, metric, rule, severity, state, raised_ts_us, raised_received_us, "
    "cleared_ts_us, value, limit_value, late, detail, shelved_until_us, shelved_by, acknowledged_by) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) "
    "ON CONFLICT(id) DO UPDATE SET severity=excluded.severity, state=excluded.state, "
    "cleared_ts_us=excluded.cleared_ts_us, value=excluded.value, limit_value=excluded.limit_value, "
    "detail=excluded.detail, shelved_until_us=excluded.shelved_until_us, "
    "shelved_by=excluded.shelved_by, acknowledged_by=excluded.acknowledged_by"
)
_INSERT_TRANSITION: Final = (
    "INSERT INTO alarm_transitions(alarm_id, event, ts_us, received_us, from_state, to_state, "
    "severity, value, limit_value, late, actor, reason) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
)
_ALARMS: Final = (
    "SELECT a.id, a.device_id, a.metric, a.rule, a.severity, a.state, a.raised_ts_us, "
    "a.raised_received_us, a.value, a.limit_value, a.late, a.detail, a.cleared_ts_us, "
    "a.shelved_until_us, a.shelved_by, a.acknowledged_by "
    "FROM alarms AS a LEFT JOIN devices AS d ON d.device_id = a.device_id "
    "WHERE (NOT $1 OR a.state <> 'closed') AND ($2::text IS NULL OR a.device_id = $2) "
    "AND ($3::text IS NULL OR d.site = $3) AND ($4::text IS NULL OR a.severity = $4) "
    "AND ($5::text IS NULL OR a.state = $5) AND ($6::bigint IS NULL OR a.raised_ts_us >= $6) "
    "AND ($7::bigint IS NULL OR a.raised_ts_us < $7) AND ($8::bigint IS NULL OR a.id = $8) "
    "AND ($9::text[] IS NULL OR a.device_id = ANY($9)) "
    "ORDER BY a.raised_ts_us DESC, a.id DESC LIMIT $10"
)
_EXPORT: Final = """
    SELECT d.device_id, d.kind, m.name, r.ts_us, r.value, r.received_us, r.buffered, r.seq
    FROM readings AS r JOIN devices AS d ON d.id = r.device JOIN metrics AS m ON m.id = r.metric
    WHERE ($1::text IS NULL OR d.device_id = $1)
      AND ($2::bigint IS NULL OR r.ts_us >= $2) AND ($3::bigint IS NULL OR r.ts_us < $3)
    ORDER BY d.device_id, r.ts_us, r.seq, m.name
"""


class PostgresStorage(RowIds):
    """The PostgreSQL backend (``COLDWATCH_DB=postgresql://...``)."""

    def __init__(
        self,
        url: str,
        *,
        quarantine_max_rows: int = 10_000,
        quarantine_max_bytes: int = QUARANTINE_MAX_BYTES,
        pool_size: int = 4,
        timescale: bool | None = None,
        fence: Fence | None = None,
        migrate: bool = True,
        writer: bool = True,
        server_settings: Mapping[str, str] | None = None,
    ) -> None:
        self.url = url
        self.where = redact(url)
        self._quarantine_max_rows = quarantine_max_rows
        self._quarantine_max_bytes = quarantine_max_bytes
        self._pool_size = pool_size
        self._want_timescale = timescale  # None: use it when it can be created
        self.fence = fence
        # migrate False: the schema must already be this version (a cluster's partitions, whose
        # member migrated; reading commands). writer False: no batches (an auditor's read-only
        # role, a standby will do).
        self._migrate_on_open = migrate
        self._writer = writer
        self._server_settings = dict(server_settings or {})  # session settings (a cluster's timeouts)
        self._pool: asyncpg.Pool[Any] | None = None
        super().__init__()
        self._partitions: set[int] = set()
        self.layout = "unknown"  # "timescaledb" or "partitioned", once open

    @property
    def pool(self) -> asyncpg.Pool[Any]:
        """The connection pool (open storage only)."""
        if self._pool is None:
            raise StorageError(f"{self.where}: storage is not open")
        return self._pool

    async def open(self) -> None:
        """Connect and apply pending migrations."""
        try:
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=1,
                max_size=self._pool_size,
                init=_init_connection if self._writer else None,  # the batches' staging table
                command_timeout=60,
                server_settings=self._server_settings,
            )
            async with self.pool.acquire() as conn:
                if self._migrate_on_open:
                    await self._migrate(conn)
                else:
                    await self._check_version(conn)
                self.layout = str(await conn.fetchval("SELECT value FROM storage_info WHERE key = 'layout'"))
                if self.layout == "timescaledb":
                    await self._check_timescale(conn)
                if self.layout == "partitioned":
                    names = await conn.fetch(
                        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                        "WHERE i.inhparent = 'readings'::regclass"
                    )
                    self._partitions = {int(n[0].rsplit("_w", 1)[1]) for n in names if "_w" in n[0]}
                if self._migrate_on_open:
                    await conn.execute(
                        "INSERT INTO metrics(name) SELECT unnest($1::text[]) ON CONFLICT (name) DO NOTHING",
                        sorted({name for specs in KINDS.values() for name in specs}),
                    )
                self._metric_rowid = {r[0]: r[1] for r in await conn.fetch("SELECT name, id FROM metrics")}
                if not self._writer:
                    # Readers register nothing: they look devices up as stored. (Writers learn
                    # the row ids of their own devices when registering them.)
                    self._device_rowid = {
                        r[0]: r[1] for r in await conn.fetch("SELECT device_id, id FROM devices")
                    }
                    self._device_by_rowid = {v: k for k, v in self._device_rowid.items()}
            if self._migrate_on_open and self.layout == "partitioned":
                # This week's and next week's partitions now: creating one locks the table.
                this_week = time.time_ns() // 1000 // WEEK_US
                await self._ensure_partitions([this_week, this_week + 1])
        except StorageError:
            await self.close()
            raise
        except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as exc:
            await self.close()
            raise StorageError(f"{self.where}: cannot open database: {exc}") from exc

    async def _check_timescale(self, conn: PgConnection) -> None:
        version = str(
            await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
        )
        found = re.match(r"(\d+)\.(\d+)", version)
        if found is None or (int(found[1]), int(found[2])) < (2, 11):
            # Older versions refuse inserts into compressed chunks: a backfill older than a
            # week would be refused (and retried) until its chunk is decompressed by hand.
            log.warning(
                "%s: TimescaleDB %s cannot insert into compressed chunks (2.11 can): "
                "backfills older than the compression delay will be refused",
                self.where,
                version,
            )

    async def _check_version(self, conn: PgConnection) -> None:
        """For reading commands: the schema must be exactly this coldwatch's (nothing is migrated)."""
        try:
            version = int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations"))
        except asyncpg.UndefinedTableError:
            version = 0
        if version != len(MIGRATIONS_PG):
            raise StorageError(
                f"{self.where}: schema version {version}, this coldwatch reads version {len(MIGRATIONS_PG)}"
                + (": start the collector once to migrate" if version < len(MIGRATIONS_PG) else "")
            )

    async def _migrate(self, conn: PgConnection) -> None:
        async with conn.transaction():
            # Collectors starting together: one migrates, the others wait and find it done.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS storage_info (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )
            version = int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations"))
            if version > len(MIGRATIONS_PG):
                raise StorageError(
                    f"{self.where}: schema version {version} is newer than this coldwatch "
                    f"({len(MIGRATIONS_PG)})"
                )
            for target, script in enumerate(MIGRATIONS_PG[version:], start=version + 1):
                await conn.execute(script)
                if target == 1:
                    await self._create_readings(conn)
                await conn.execute("INSERT INTO schema_migrations(version) VALUES ($1)", target)

    async def _create_readings(self, conn: PgConnection) -> None:
        """The readings table: a compressed hypertable with TimescaleDB, else weekly partitions."""
        available = await conn.fetchval("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")
        use = bool(available) if self._want_timescale is None else self._want_timescale
        if use:
            if not available:
                raise StorageError(f"{self.where}: TimescaleDB was asked for but is not installed")
            try:
                async with conn.transaction():  # a savepoint: fall back when it cannot load
                    await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
                    await conn.execute(_PLAIN_READINGS)
                    await conn.execute(
                        "SELECT create_hypertable('readings', 'ts_us', chunk_time_interval => $1::bigint)",
                        WEEK_US,
                    )
                    # Integer time: TimescaleDB needs to know "now" in the column's unit.
                    await conn.execute(
                        "CREATE FUNCTION coldwatch_now_us() RETURNS BIGINT LANGUAGE SQL STABLE AS "
                        "$$ SELECT (extract(epoch FROM now()) * 1000000)::bigint $$"
                    )
                    await conn.execute("SELECT set_integer_now_func('readings', 'coldwatch_now_us')")
                    await conn.execute(
                        "ALTER TABLE readings SET (timescaledb.compress, "
                        "timescaledb.compress_segmentby = 'device, metric', "
                        "timescaledb.compress_orderby = 'ts_us')"
                    )
                    await conn.execute("SELECT add_compression_policy('readings', $1::bigint)", WEEK_US)
            except asyncpg.PostgresError as exc:
                if self._want_timescale:
                    raise
                log.warning(
                    "%s: TimescaleDB is installed but unusable (%s): partitioning instead", self.where, exc
                )
            else:
                await conn.execute("INSERT INTO storage_info VALUES ('layout', 'timescaledb')")
                return
        await conn.execute(_PLAIN_READINGS.rstrip() + " PARTITION BY RANGE (ts_us)")
        await conn.execute("INSERT INTO storage_info VALUES ('layout', 'partitioned')")

    async def _ensure_partitions(self, weeks: Iterable[int]) -> None:
        wanted = set(weeks)
        if wanted:
            # Next week's partition a week early, so that no batch waits for the table lock
            # at the week's turn.
            wanted.add(max(wanted) + 1)
        missing = sorted(wanted - self._partitions)
        if not missing:
            return
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK)
            for week in missing:
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS readings_w{week} PARTITION OF readings "
                    f"FOR VALUES FROM ({week * WEEK_US}) TO ({(week + 1) * WEEK_US})"
                )
        self._partitions.update(missing)

    async def close(self) -> None:
        """Close every connection (every batch is already committed)."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def register_devices(self, devices: Sequence[DeviceConfig]) -> dict[str, DeviceState]:
        """Upsert the registered devices; return the remembered state of each."""
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.executemany(
                    "INSERT INTO devices(device_id, kind, site, area, grade) VALUES ($1, $2, $3, $4, $5) "
                    "ON CONFLICT(device_id) DO UPDATE SET kind=excluded.kind, site=excluded.site, "
                    "area=excluded.area, grade=excluded.grade "
                    # Unchanged rows are not locked: members' batches update device state meanwhile.
                    "WHERE (devices.kind, devices.site, devices.area, devices.grade) IS DISTINCT FROM "
                    "(excluded.kind, excluded.site, excluded.area, excluded.grade)",
                    sorted((d.id, d.kind.value, d.site, d.area, d.grade) for d in devices),
                )
                rows = await conn.fetch(
                    "SELECT id, device_id, last_seq, last_ts_us, last_received_us, online FROM devices "
                    "WHERE device_id = ANY($1::text[])",
                    [d.id for d in devices],
                )
        except asyncpg.PostgresError as exc:
            raise StorageError(f"{self.where}: cannot register devices: {exc}") from exc
        states: dict[str, DeviceState] = {}
        for rowid, device_id, last_seq, last_ts, last_recv, online in rows:
            self._device_rowid[device_id] = rowid
            self._device_by_rowid[rowid] = device_id
            states[device_id] = DeviceState(last_seq, last_ts, last_recv, online)
        return {d.id: states[d.id] for d in devices}

    async def cluster_partitions(self) -> int | None:
        """The partition count if cluster members have used this database, else None."""
        value = await self.pool.fetchval("SELECT value FROM storage_info WHERE key = 'partitions'")
        return None if value is None else int(value)

    async def device_states(self) -> dict[str, DeviceState]:
        """What is stored about every registered device (for members that do not hold it)."""
        rows = await self.pool.fetch(
            "SELECT device_id, last_seq, last_ts_us, last_received_us, online FROM devices"
        )
        return {r[0]: DeviceState(r[1], r[2], r[3], r[4]) for r in rows}

    async def write_batch(self, batch: Batch) -> BatchResult:
        """Commit one batch in one transaction (readings by COPY)."""
        rows = self._reading_rows(batch)
        try:
            if self.layout == "partitioned":
                await self._ensure_partitions({r.ts_us // WEEK_US for r, _ in batch.readings})
            async with self.pool.acquire() as conn, conn.transaction():
                if self.fence is not None:
                    await self._check_fence(conn, self.fence)
                stored, duplicates = await self._store_readings(conn, rows)
                await self._mark_late_minutes(conn, batch)
                if batch.rejections:
                    await self._quarantine(conn, batch.rejections)
                await self._write_gaps(conn, batch)
                if batch.transitions:
                    await self._write_transitions(conn, batch.transitions)
                if batch.notifications:
                    await enqueue(conn, batch.notifications)
                    # Wakes the cluster's deliverer, wherever it runs, when this commits.
                    await conn.execute(f"NOTIFY {OUTBOX_CHANNEL}")
                if batch.signatures:
                    await conn.executemany(pg_placeholders(INSERT_SIGNATURE), batch.signatures)
                if batch.audit:
                    await audit_pg.append(conn, batch.audit)
                await self._write_device_state(conn, batch)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, OverflowError, ValueError) as exc:
            raise self._batch_failed(exc) from exc
        return BatchResult(stored=stored, duplicates=duplicates)

    async def _write_device_state(self, conn: PgConnection, batch: Batch) -> None:
        """The devices' tracking state and rule snapshots the batch leaves them in."""
        if batch.devices:
            # One statement, rows in id order (one lock order for every member).
            columns = list(zip(*sorted(self._device_rows(batch), key=lambda row: row[4]), strict=True))
            await conn.execute(_UPDATE_DEVICES, *(list(c) for c in columns))
        if batch.snapshots:
            await conn.executemany(
                _UPSERT_SNAPSHOT,
                [(s.device_id, s.ts_us, s.seq, s.fingerprint, s.state) for s in batch.snapshots],
            )

    async def _mark_late_minutes(self, conn: PgConnection, batch: Batch) -> None:
        """Minutes a chart rollup may hold already: rebuilt before their next use."""
        late = late_minutes(batch.readings, self._device_rowid, self._metric_rowid)
        if late:
            await conn.executemany(
                "INSERT INTO chart_rollup_dirty VALUES ($1, $2, $3) ON CONFLICT DO NOTHING", late
            )

    def _batch_failed(self, exc: Exception) -> BaseException:
        """What a failed batch raises: a StorageError (retried), or the cancellation it hides."""
        if _cancelling():
            # The driver's clean-up (a ROLLBACK on a dead connection) failed and its error
            # replaced the cancellation: stop as asked, rather than be retried as a failed batch.
            return asyncio.CancelledError()
        return StorageError(f"{self.where}: batch write failed: {exc}")

    async def _check_fence(self, conn: PgConnection, fence: Fence) -> None:
        """Refuse the batch unless this collector still holds the partition's lease.

        The partition's fence stays held (shared) until COMMIT, and a member taking the
        partition over takes it exclusively first (ending this session if it has stalled):
        the batch either commits before the takeover or reads the new owner here. Taken
        before the lease is read, in a statement of its own (a statement reads rows as of
        its start).
        """
        await conn.execute("SELECT pg_advisory_xact_lock_shared($1, $2)", FENCE_LOCK, fence.partition)
        held = await conn.fetchval(
            "SELECT 1 FROM partition_leases WHERE partition = $1 AND owner = $2 AND generation = $3 "
            "AND expires_at > now()",
            fence.partition,
            fence.owner,
            fence.generation,
        )
        if held is None:
            raise StorageError(
                f"{self.where}: partition {fence.partition} is no longer leased to {fence.owner} "
                f"(generation {fence.generation}): batch refused"
            )

    async def _store_readings(
        self, conn: PgConnection, rows: list[tuple[int, int, int, int, float, int, bool]]
    ) -> tuple[int, frozenset[tuple[str, int, int]]]:
        if not rows:
            return 0, frozenset()
        await conn.copy_records_to_table("incoming", records=rows)  # emptied at COMMIT
        inserted = await conn.fetch(_INSERT_READINGS)
        if len(inserted) == len(rows):
            return len(inserted), frozenset()
        # A row not inserted whose key no other row of the batch inserted was stored before:
        # its reading is a redelivery (as on SQLite, one such metric row is enough).
        new = {tuple(r) for r in inserted}
        before = {row[:4] for row in rows} - new
        by_rowid = self._device_by_rowid
        readings = {(d, s, t) for d, _, t, s in before}
        # A reading stored already is kept as it was: none of a later message's values are
        # added to it (one with a value the first lacked is not the same reading).
        added = [row for row in new if (row[0], row[3], row[2]) in readings]
        if added:
            await conn.executemany(
                "DELETE FROM readings WHERE device = $1 AND metric = $2 AND ts_us = $3 AND seq = $4", added
            )
        return len(inserted) - len(added), frozenset((by_rowid[d], s, t) for d, s, t in readings)

    async def _quarantine(self, conn: PgConnection, rejections: list[QuarantineEntry]) -> None:
        # Collectors sharing the database number the kept bytes one after another (taken
        # before the totals' row locks, in every writer: one lock order).
        await conn.execute("SELECT pg_advisory_xact_lock($1)", QUARANTINE_LOCK)
        rows, end = quarantine_rows(rejections, int(await conn.fetchval(_QUARANTINE_END) or 0))
        await conn.executemany(
            "INSERT INTO quarantine(received_us, reason, detail, topic, device_id, payload, payload_size, "
            "payload_sha256, kept_from) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            rows,
        )
        await conn.executemany(
            "INSERT INTO rejection_totals(reason, total) VALUES ($1, $2) "
            "ON CONFLICT(reason) DO UPDATE SET total = rejection_totals.total + excluded.total",
            reason_totals(rejections),
        )
        await conn.execute(
            "DELETE FROM quarantine WHERE id <= (SELECT max(id) FROM quarantine) - $1",
            self._quarantine_max_rows,
        )
        # The entries kept are the newest whose payloads lie wholly in the last max_bytes.
        await conn.execute("DELETE FROM quarantine WHERE kept_from < $1", end - self._quarantine_max_bytes)

    async def _write_gaps(self, conn: PgConnection, batch: Batch) -> None:
        """New gaps, then the gaps that were recovered or lost (possibly the same, in one batch)."""
        if batch.gaps:
            await conn.executemany(_INSERT_GAP, [self._gap_row(g) for g in batch.gaps])
        if batch.gap_updates:
            await conn.executemany(_RESOLVE_GAP, self._gap_update_rows(batch))

    async def _write_transitions(self, conn: PgConnection, transitions: list[Transition]) -> None:
        await conn.executemany(_UPSERT_ALARM, alarm_rows(transitions))
        await conn.executemany(_INSERT_TRANSITION, transition_rows(transitions))

    async def reserve_alarm_ids(self, count: int) -> range:
        """``count`` alarm ids no other collector will use (a block of the shared sequence)."""
        try:
            return await self._reserve_alarm_ids(count)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise StorageError(f"{self.where}: cannot reserve alarm ids: {exc}") from exc

    async def _reserve_alarm_ids(self, count: int) -> range:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", ALARM_ID_LOCK)
            # Above every id handed out and every id stored.
            floor = int(
                await conn.fetchval(
                    "SELECT greatest((SELECT coalesce(max(id), 0) FROM alarms), "
                    "(SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM alarm_ids))"
                )
            )
            await conn.execute("SELECT setval('alarm_ids', $1)", floor + count)
        return range(floor + 1, floor + count + 1)

    async def open_gaps(self, devices: Sequence[str] | None = None) -> list[tuple[SeqGap, set[int]]]:
        """Gaps still open (of ``devices`` when given), each with the missing seqs stored since."""
        try:
            rows = await self.pool.fetch(_OPEN_GAPS, None if devices is None else list(devices))
        except (asyncpg.PostgresError, OSError) as exc:
            raise StorageError(f"{self.where}: cannot read open gaps: {exc}") from exc
        return [(SeqGap(r[0], r[1], r[2], r[3]), {int(s) for s in r[4]}) for r in rows]

    async def open_alarms(self, devices: Sequence[str] | None = None) -> tuple[list[Alarm], int]:
        """The alarms not yet closed (of ``devices`` when given), and the id the next alarm gets."""
        alarms = await self.alarms(open_only=True, limit=1_000_000, devices=devices)
        # Collectors on PostgreSQL take ids from AlarmIds (the shared sequence); this is only
        # the next id above every stored one, as on SQLite.
        return alarms, int(await self.pool.fetchval("SELECT coalesce(max(id), 0) + 1 FROM alarms"))

    async def alarms(
        self,
        *,
        open_only: bool = False,
        device_id: str | None = None,
        site: str | None = None,
        severity: str | None = None,
        state: str | None = None,
        since_us: int | None = None,
        until_us: int | None = None,
        alarm_id: int | None = None,
        limit: int = 1000,
        devices: Sequence[str] | None = None,
    ) -> list[Alarm]:
        """Alarms matching every given filter, newest first (raised in [since, until))."""
        rows = await self.pool.fetch(
            _ALARMS,
            open_only,
            device_id,
            site,
            severity,
            state,
            since_us,
            until_us,
            alarm_id,
            None if devices is None else list(devices),
            limit,
        )
        return [alarm_from_row(r) for r in rows]

    async def alarm_history(self, alarm_id: int) -> list[dict[str, object]]:
        """Every transition of one alarm, oldest first."""
        rows = await self.pool.fetch(
            "SELECT event, ts_us, received_us, from_state, to_state, severity, value, limit_value, "
            "late::int AS late, actor, reason FROM alarm_transitions WHERE alarm_id = $1 ORDER BY id",
            alarm_id,
        )
        return [dict(r) for r in rows]

    async def metric_readings(
        self, device_id: str, metric: str, since_us: int | None, until_us: int | None, limit: int
    ) -> list[tuple[int, float, int, bool]]:
        """(ts_us, value, received_us, buffered) of one device metric in [since, until), oldest first."""
        rowid, metric_id = self._device_rowid.get(device_id), self._metric_rowid.get(metric)
        if rowid is None or metric_id is None:
            return []
        rows = await self.pool.fetch(
            "SELECT ts_us, value, received_us, buffered FROM readings WHERE device = $1 AND metric = $2 "
            "AND ts_us >= $3 AND ts_us < $4 ORDER BY ts_us, seq LIMIT $5",
            rowid,
            metric_id,
            since_us if since_us is not None else -(2**63),
            until_us if until_us is not None else 2**63 - 1,
            limit,
        )
        return [(int(t), float(v), int(r), bool(b)) for t, v, r, b in rows]

    async def last_values(self, device_id: str) -> dict[str, float]:
        """The metric values of a device's newest reading."""
        rowid = self._device_rowid.get(device_id)
        if rowid is None:
            return {}
        names = self._metric_names()
        rows = await self.pool.fetch(
            "SELECT metric, value FROM readings WHERE device = $1 AND ts_us = "
            "(SELECT last_ts_us FROM devices WHERE id = $1)",
            rowid,
        )
        return {names[m]: float(v) for m, v in rows}

    async def rule_snapshots(self, devices: Sequence[str]) -> list[RuleSnapshot]:
        """The stored rule snapshots of ``devices`` (one at most each)."""
        rows = await self.pool.fetch(
            "SELECT device_id, ts_us, seq, fingerprint, state FROM rule_snapshots WHERE device_id = ANY($1)",
            list(devices),
        )
        return [RuleSnapshot(r[0], int(r[1]), int(r[2]), str(r[3]), bytes(r[4])) for r in rows]

    async def readings_since(
        self, device_id: str, since_us: int, *, after_seq: int | None = None
    ) -> AsyncIterator[EngineReading]:
        """A device's stored readings from ``since_us`` on (after (``since_us``, ``after_seq``)), in order."""
        rowid = self._device_rowid.get(device_id)
        if rowid is None:
            return
        names = self._metric_names()
        # Every metric named: the key (device, metric, ts_us, seq) is searched once a
        # metric, not scanned across the device's whole history.
        sql = "SELECT ts_us, seq, metric, value, received_us, buffered FROM readings "
        if after_seq is None:
            sql += "WHERE device = $1 AND metric = ANY($3::integer[]) AND ts_us >= $2 ORDER BY ts_us, seq"
            rows = await self.pool.fetch(sql, rowid, since_us, list(names))
        else:
            # ts_us >= $2 as well: the planner prunes weekly partitions by it, not by the row value.
            sql += "WHERE device = $1 AND metric = ANY($3::integer[]) AND ts_us >= $2 "
            sql += "AND (ts_us, seq) > ($2, $4) ORDER BY ts_us, seq"
            rows = await self.pool.fetch(sql, rowid, since_us, list(names), after_seq)
        for reading in group_readings(device_id, rows, names):
            yield reading

    async def record_audit(self, drafts: list[AuditDraft]) -> None:
        """Append audit entries in a transaction of their own (start-up, configuration)."""
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await audit_pg.append(conn, drafts)
        except asyncpg.PostgresError as exc:
            raise StorageError(f"{self.where}: audit write failed: {exc}") from exc

    async def verify_audit(self) -> VerifyResult:
        """Check the whole audit chain."""
        async with self.pool.acquire() as conn:
            return await audit_pg.verify_stored(conn)

    async def audit_entries(self) -> AsyncIterator[AuditEntry]:
        """Every audit entry in order."""
        async with self.pool.acquire() as conn:
            async for entry in audit_pg.read_all(conn):
                yield entry

    async def audit_evidence(self) -> AuditEvidence:
        """Entries, seals, high-water mark and guard problems, in one snapshot."""
        async with self.pool.acquire() as conn:
            return await audit_pg.evidence(conn)

    async def audit_head(self, *, with_rotation: bool = False) -> AuditHead | None:
        """The last signed entry (None before signing began); the last rotation's key if asked."""
        async with self.pool.acquire() as conn:
            return await audit_pg.head(conn, with_rotation=with_rotation)

    async def restore_audit_guards(self) -> list[str]:
        """Recreate missing, disabled or altered append-only guards; return their names."""
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                # One restorer at a time across the collectors sharing the database.
                await conn.execute("SELECT pg_advisory_xact_lock($1)", audit_pg.AUDIT_LOCK)
                return await audit_pg.restore_guards(conn)
        except asyncpg.PostgresError as exc:
            raise StorageError(f"{self.where}: restoring the audit guards failed: {exc}") from exc

    async def check_writable(self) -> None:
        """A write transaction that changes nothing: proves the database accepts writes now."""
        try:
            async with self.pool.acquire(timeout=5) as conn, conn.transaction():
                await conn.execute("SELECT txid_current()")
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise StorageError(f"{self.where}: not writable: {exc}") from exc

    async def export(
        self, device_id: str | None, since_us: int | None, until_us: int | None
    ) -> AsyncGenerator[ExportRow, None]:
        """Stream readings ordered by device, time and metric."""
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            async for r in conn.cursor(_EXPORT, device_id, since_us, until_us, prefetch=2000):
                yield ExportRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7])

    async def quarantine(self, limit: int = 100) -> list[QuarantineEntry]:
        """The most recent rejected messages, newest first."""
        rows = await self.pool.fetch(
            "SELECT received_us, reason, detail, topic, device_id, payload, payload_size, payload_sha256 "
            "FROM quarantine ORDER BY id DESC LIMIT $1",
            limit,
        )
        return [QuarantineEntry(r[0], r[1], r[2], r[3], r[4], bytes(r[5]), r[6], r[7]) for r in rows]

    async def rejection_totals(self) -> dict[str, int]:
        """Every rejection ever recorded, by reason (survives quarantine pruning)."""
        return {
            str(r[0]): int(r[1]) for r in await self.pool.fetch("SELECT reason, total FROM rejection_totals")
        }

    async def counts(self) -> dict[str, int]:
        """Row counts by table."""
        out: dict[str, int] = {}
        for table in ("devices", "readings", "quarantine", "seq_gaps", "alarms", "alarm_transitions"):
            out[table] = int(await self.pool.fetchval(f"SELECT count(*) FROM {table}"))  # noqa: S608
        return out

    def outbox(self) -> PostgresOutbox:
        """The notification outbox on this database, for the deliverer."""
        return PostgresOutbox(self.pool)


class AlarmIds:
    """Alarm ids unique across collectors sharing the database: blocks of the shared sequence.

    The alarm book asks for an id synchronously, so two blocks are kept reserved ahead and
    a new one is fetched (retrying until it arrives) whenever one is taken into use: two
    whole blocks would have to be used up within one database round trip before an id is
    missing, and then the batch fails loudly rather than reuse an id.
    """

    AHEAD: Final = 2

    def __init__(self, storage: PostgresStorage, block: int) -> None:
        self._storage = storage
        self._block = block
        self._ready: deque[range] = deque()
        self._current: Iterator[int] = iter(())
        self._fetching: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Reserve the first blocks."""
        for _ in range(self.AHEAD + 1):
            self._ready.append(await self._storage.reserve_alarm_ids(self._block))
        self._current = iter(self._ready.popleft())

    def __call__(self) -> int:
        """The next id (synchronous: the alarm book asks while it applies events)."""
        for alarm_id in self._current:
            return alarm_id
        if self._fetching is None or self._fetching.done():
            self._fetching = asyncio.get_running_loop().create_task(self._fetch())
        if not self._ready:
            raise StorageError("no alarm id reserved: whole blocks were used before the next one arrived")
        self._current = iter(self._ready.popleft())
        return next(self._current)

    async def _fetch(self) -> None:
        delay = 0.2
        while len(self._ready) < self.AHEAD:
            try:
                self._ready.append(await self._storage.reserve_alarm_ids(self._block))
            except Exception:  # a task boundary: the database is away; ids must come eventually
                log.exception("cannot reserve alarm ids; retrying")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)


@dataclass(frozen=True, slots=True)
class Fence:
    """A partition lease a collector must still hold for its batches to commit."""

    partition: int
    owner: str
    generation: int


def _cancelling() -> bool:
    """The current task has been asked to cancel (even if the CancelledError was lost on the way)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _init_connection(conn: PgConnection) -> None:
    await conn.execute(_INCOMING)


async def enqueue(conn: PgConnection, items: Iterable[OutboxItem]) -> None:
    """Insert ``items`` (due at once) in the caller's transaction; an id already stored is skipped."""
    rows = [
        (
            i.notification_id,
            i.channel.value,
            i.target,
            i.body,
            i.alarm_id,
            i.created_us,
            i.created_us,
            order_key_of(i),
        )
        for i in items
    ]
    if rows:
        await conn.executemany(
            "INSERT INTO notification_outbox(notification_id, channel, target, body, alarm_id, "
            "created_us, next_attempt_us, attempts, order_key) VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8) "
            "ON CONFLICT (notification_id) DO NOTHING",
            rows,
        )


_DUE: Final = """
    SELECT o.id, o.notification_id, o.channel, o.target, o.body, o.alarm_id, o.attempts, o.created_us,
           o.order_key, o.rejections
    FROM notification_outbox AS o
    WHERE o.delivered_us IS NULL AND o.next_attempt_us IS NOT NULL AND o.next_attempt_us <= $1
      AND ($3::text IS NULL OR (o.channel = $3 AND o.target = $4))
      AND NOT EXISTS (
          SELECT 1 FROM notification_outbox AS p
          WHERE p.channel = o.channel AND p.target = o.target AND p.order_key = o.order_key AND p.id < o.id
            AND p.delivered_us IS NULL AND p.next_attempt_us > $1)
    ORDER BY o.id LIMIT $2
"""


class PostgresOutbox:
    """The notification outbox in PostgreSQL: the same order keys and rules as the SQLite outbox."""

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool

    async def due(
        self, now_us: int, limit: int = 100, *, lane: tuple[Channel, str] | None = None
    ) -> list[OutboxRow]:
        """Rows due at ``now_us``, oldest first, none behind an older row of its key that waits to retry."""
        rows = await self._pool.fetch(
            _DUE, now_us, limit, lane[0].value if lane else None, lane[1] if lane else None
        )
        return [outbox_row(r) for r in rows]

    async def lane_heads(self) -> list[LaneHead]:
        """Per receiver with pending rows: when the next is due, and whether a new one is."""
        rows = await self._pool.fetch(LANE_HEADS)
        return [LaneHead((Channel(c), str(t)), int(n), bool(f)) for c, t, n, f in rows]

    async def record_attempt(
        self,
        outbox_id: int,
        *,
        at_us: int,
        ok: bool,
        status: int | None,
        error: str | None,
        next_attempt_us: int | None,
        audit: AuditDraft | None = None,
        rejected: bool = False,
        dead: bool = False,
        notices: Sequence[OutboxItem] = (),
    ) -> None:
        """Record one delivery attempt in a transaction of its own (see ``SqliteOutbox.record_attempt``)."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO notification_attempts(outbox_id, at_us, ok, status, error) "
                "VALUES ($1, $2, $3, $4, $5)",
                outbox_id,
                at_us,
                ok,
                status,
                error,
            )
            await conn.execute(
                "UPDATE notification_outbox SET attempts = attempts + 1, last_error = $1, "
                "rejections = rejections + $6, delivered_us = CASE WHEN $2 THEN $3::bigint END, "
                "next_attempt_us = CASE WHEN $2 OR $7 THEN NULL ELSE $4::bigint END, "
                "dead_lettered_us = CASE WHEN $7 THEN $3::bigint END WHERE id = $5",
                error,
                ok,
                at_us,
                next_attempt_us,
                outbox_id,
                int(rejected),
                dead,
            )
            if notices:
                await enqueue(conn, notices)
            if audit is not None:
                await audit_pg.append(conn, [audit])

    async def pending_summary(self) -> PendingSummary:
        """How many rows wait for delivery, and since when the oldest does."""
        row = await self._pool.fetchrow(SUMMARY)
        return PendingSummary(int(row[0]), row[1], int(row[2])) if row else PendingSummary(0, None)

    async def load_facts(self, alarm_ids: Collection[int] | None = None) -> list[AlarmFacts]:
        """What the planner needs to carry on after a restart, for every open alarm (of ``alarm_ids``)."""
        history = histories(
            await self._pool.fetch(
                "SELECT t.alarm_id, t.event, t.received_us, t.severity FROM alarm_transitions AS t "
                "JOIN alarms AS a ON a.id = t.alarm_id WHERE a.state <> 'closed' "
                "AND ($1::bigint[] IS NULL OR t.alarm_id = ANY($1)) ORDER BY t.alarm_id, t.id",
                None if alarm_ids is None else sorted(alarm_ids),
            )
        )
        outbox_rows = await self._pool.fetch(
            "SELECT alarm_id, notification_id, channel, target FROM notification_outbox "
            "WHERE alarm_id = ANY($1::bigint[])",
            sorted(history),
        )
        return alarm_facts(history, outbox_rows)

    async def close(self) -> None:
        """Nothing of its own to close: the pool belongs to the storage."""
