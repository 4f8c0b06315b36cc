"""SQLite storage through aiosqlite: WAL, batched transactions, versioned migrations.

One connection is one worker thread is one serialised writer. A batch is one
transaction; readings are keyed by (device, metric, ts, seq) so a redelivered message is
recognised and skipped rather than stored twice.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from pathlib import Path
from typing import Final

import aiosqlite

from coldwatch.audit import AuditDraft, AuditEntry, VerifyResult
from coldwatch.audit_seal import AuditEvidence, AuditHead
from coldwatch.catalogue import KINDS
from coldwatch.config import DeviceConfig
from coldwatch.console.rollup import ROLLUP_SCHEMA, late_minutes
from coldwatch.console.sql import CONSOLE_INDEXES
from coldwatch.errors import StorageError
from coldwatch.notify.outbox import OUTBOX_DEAD_LETTER_SCHEMA, OUTBOX_SCHEMA, enqueue_sync
from coldwatch.rules.lifecycle import Alarm, Transition
from coldwatch.rules.model import EngineReading
from coldwatch.rules.snapshot import RuleSnapshot
from coldwatch.storage.audit_sqlite import (
    AUDIT_SCHEMA,
    SEALS_SCHEMA,
    append_linked,
    evidence_sync,
    head_sync,
    read_all,
    restore_guards_sync,
    verify_stored,
)
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
from coldwatch.storage.identity_schema import IDENTITY_SCHEMA, INSERT_SIGNATURE
from coldwatch.storage.records_schema import RECORDS_SCHEMA
from coldwatch.storage.rows import RowIds, alarm_rows, quarantine_rows, reason_totals, transition_rows
from coldwatch.storage.sqlite_thread import in_transaction, on_thread

__all__ = ["MIGRATIONS", "SqliteStorage"]

# Each entry migrates from version N to N+1. Never edit a released entry: append one.
MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE devices (
        id INTEGER PRIMARY KEY,
        device_id TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        site TEXT NOT NULL,
        area TEXT NOT NULL,
        grade TEXT,
        last_seq INTEGER,
        last_ts_us INTEGER,
        last_received_us INTEGER,
        online INTEGER
    );
    CREATE TABLE metrics (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE
    );
    -- One row per metric value. The primary key doubles as the duplicate detector and
    -- as the index for "device, metric, time range" queries.
    CREATE TABLE readings (
        device INTEGER NOT NULL,
        metric INTEGER NOT NULL,
        ts_us INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        value REAL NOT NULL,
        received_us INTEGER NOT NULL,
        buffered INTEGER NOT NULL,
        PRIMARY KEY (device, metric, ts_us, seq)
    ) WITHOUT ROWID;
    CREATE TABLE quarantine (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        received_us INTEGER NOT NULL,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL,
        topic TEXT NOT NULL,
        device_id TEXT,
        payload BLOB NOT NULL
    );
    -- Totals survive the bounded quarantine's pruning: every rejection stays counted.
    CREATE TABLE rejection_totals (
        reason TEXT PRIMARY KEY,
        total INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE seq_gaps (
        id INTEGER PRIMARY KEY,
        device INTEGER NOT NULL REFERENCES devices(id),
        first_missing INTEGER NOT NULL,
        last_missing INTEGER NOT NULL,
        detected_us INTEGER NOT NULL
    );
    """,
    """
    CREATE TABLE alarms (
        id INTEGER PRIMARY KEY,
        device_id TEXT NOT NULL,
        metric TEXT NOT NULL,
        rule TEXT NOT NULL,
        severity TEXT NOT NULL,
        state TEXT NOT NULL,
        raised_ts_us INTEGER NOT NULL,
        raised_received_us INTEGER NOT NULL,
        cleared_ts_us INTEGER,
        value REAL,
        limit_value REAL,
        late INTEGER NOT NULL,
        detail TEXT NOT NULL,
        shelved_until_us INTEGER,
        shelved_by TEXT,
        acknowledged_by TEXT
    );
    -- One open alarm per device, metric and rule, enforced by the database too.
    CREATE UNIQUE INDEX alarms_one_open ON alarms(device_id, metric, rule) WHERE state != 'closed';
    CREATE INDEX alarms_by_device ON alarms(device_id, raised_ts_us);
    -- Append-only history: every change of every alarm, in device time and received time.
    CREATE TABLE alarm_transitions (
        id INTEGER PRIMARY KEY,
        alarm_id INTEGER NOT NULL REFERENCES alarms(id),
        event TEXT NOT NULL,
        ts_us INTEGER NOT NULL,
        received_us INTEGER NOT NULL,
        from_state TEXT,
        to_state TEXT NOT NULL,
        severity TEXT NOT NULL,
        value REAL,
        limit_value REAL,
        late INTEGER NOT NULL,
        actor TEXT NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE INDEX alarm_transitions_by_alarm ON alarm_transitions(alarm_id, id);
    """,
    OUTBOX_SCHEMA,
    AUDIT_SCHEMA,
    # A reading's arrival is kept as its delay after the reading's own time: a few seconds
    # for a live reading, so 2 to 4 bytes on disk instead of 8 (40 -> 36 bytes a value row,
    # benchmarks/ingest.py). ``readings`` stays, as a view with ``received_us``, for queries.
    """
    CREATE TABLE reading_rows (
        device INTEGER NOT NULL,
        metric INTEGER NOT NULL,
        ts_us INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        value REAL NOT NULL,
        received_delay_us INTEGER NOT NULL,
        buffered INTEGER NOT NULL,
        PRIMARY KEY (device, metric, ts_us, seq)
    ) WITHOUT ROWID;
    INSERT INTO reading_rows
        SELECT device, metric, ts_us, seq, value, received_us - ts_us, buffered FROM readings;
    DROP TABLE readings;
    CREATE VIEW readings AS
        SELECT device, metric, ts_us, seq, value, ts_us + received_delay_us AS received_us, buffered
        FROM reading_rows;
    """,
    # Gap states (coldwatch.recovery): open until every missing reading is stored again
    # (recovered) or the recovery time runs out (lost). Gaps recorded before re-send
    # requests existed were never asked for: they are recorded as lost.
    """
    ALTER TABLE seq_gaps ADD COLUMN state TEXT NOT NULL DEFAULT 'open';
    ALTER TABLE seq_gaps ADD COLUMN resolved_us INTEGER;
    UPDATE seq_gaps SET state = 'lost', resolved_us = detected_us;
    CREATE INDEX seq_gaps_open ON seq_gaps(device) WHERE state = 'open';
    """,
    # Signatures over the audit chain; entries written before stay verifiable by the chain.
    SEALS_SCHEMA,
    OUTBOX_DEAD_LETTER_SCHEMA,
    # The quarantine keeps a prefix of each payload, with the whole payload's size and
    # SHA-256 (-1 and '': the row predates this and its payload is whole).
    # kept_from: where the entry's kept payload starts in the sequence of every payload
    # byte the quarantine kept, so that the byte bound deletes by an index range.
    """
    ALTER TABLE quarantine ADD COLUMN payload_size INTEGER NOT NULL DEFAULT -1;
    ALTER TABLE quarantine ADD COLUMN payload_sha256 TEXT NOT NULL DEFAULT '';
    ALTER TABLE quarantine ADD COLUMN kept_from INTEGER NOT NULL DEFAULT 0;
    UPDATE quarantine SET kept_from = o.start FROM (
        SELECT id, coalesce(sum(length(payload)) OVER (
            ORDER BY id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS start
        FROM quarantine
    ) AS o WHERE quarantine.id = o.id;
    CREATE INDEX quarantine_by_offset ON quarantine(kept_from);
    """,
    # The console: the alarm list's order (open first, then newest first) and chart rollups.
    CONSOLE_INDEXES + ROLLUP_SCHEMA.format(rowid=" WITHOUT ROWID"),
    # People's accounts, sessions, service tokens, electronic signatures and QA reviews.
    IDENTITY_SCHEMA,
    # Rule state snapshots (coldwatch.rules.snapshot): a restart reads them instead of
    # judging every stored reading of the longest window again.
    """
    CREATE TABLE rule_snapshots (
        device_id TEXT PRIMARY KEY,
        ts_us INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        fingerprint TEXT NOT NULL,
        state BLOB NOT NULL
    );
    """,
    # GMP records: instruments and calibration, batches, shipments, generated reports.
    RECORDS_SCHEMA,
)

log = logging.getLogger(__name__)
_UPSERT_SNAPSHOT = (
    "INSERT INTO rule_snapshots(device_id, ts_us, seq, fingerprint, state) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT(device_id) DO UPDATE SET ts_us = excluded.ts_us, seq = excluded.seq, "
    "fingerprint = excluded.fingerprint, state = excluded.state"
)
CHECKPOINT_EVERY_S = 1.0

# Where the newest entry's kept payload ends (length() of a blob reads the record header).
_QUARANTINE_END = "SELECT kept_from + length(payload) FROM quarantine ORDER BY id DESC LIMIT 1"
_INSERT_INCOMING = "INSERT INTO temp.incoming VALUES (?, ?, ?, ?, ?, ?, ?)"
_INSERT_READINGS = "INSERT OR IGNORE INTO reading_rows VALUES "
# Rows per multi-row statement at most; a power of two, so that any count is a sum of a
# few statements and only a few statement texts are ever prepared (and cached).
_MOST_ROWS: Final = 512
# UPDATE ... FROM (VALUES ...) needs 3.33.
MIN_SQLITE: Final = (3, 33, 0)
_INSERT_GAP = "INSERT INTO seq_gaps(device, first_missing, last_missing, detected_us) VALUES (?, ?, ?, ?)"
_RESOLVE_GAP = (
    "UPDATE seq_gaps SET state = ?, resolved_us = ? WHERE device = ? AND first_missing = ? "
    "AND last_missing = ? AND detected_us = ? AND state = 'open'"
)
_OPEN_GAPS = (
    "SELECT d.device_id, g.first_missing, g.last_missing, g.detected_us FROM seq_gaps AS g "
    "JOIN devices AS d ON d.id = g.device WHERE g.state = 'open' ORDER BY g.id"
)
# Only readings that arrived after the gap was found can fill it: a seq number stored
# before may belong to an earlier numbering of the device (its counter restarted).
_STORED_SEQS = (
    "SELECT DISTINCT seq FROM reading_rows WHERE device = ? AND seq BETWEEN ? AND ? "
    "AND ts_us + received_delay_us >= ?"
)
_UPDATE_DEVICES_HEAD = (
    "UPDATE devices SET last_seq = v.column1, last_ts_us = v.column2, last_received_us = v.column3, "
    "online = v.column4 FROM (VALUES "
)
_UPDATE_DEVICES_TAIL = ") AS v WHERE devices.id = v.column5"
_FIND_DUPLICATES = """
    SELECT DISTINCT i.device, i.seq, i.ts_us FROM temp.incoming AS i
    WHERE EXISTS (SELECT 1 FROM reading_rows AS r WHERE r.device = i.device
                  AND r.metric = i.metric AND r.ts_us = i.ts_us AND r.seq = i.seq)
"""
# The rows of readings stored before (one metric row is enough): one statement, the
# readings found once (an IN list is an index), not a scan of the stage per reading.
_DROP_STORED = f"DELETE FROM temp.incoming WHERE (device, seq, ts_us) IN ({_FIND_DUPLICATES})"  # noqa: S608 - constants
_EXPORT = """
    SELECT d.device_id, d.kind, m.name, r.ts_us, r.value, r.received_us, r.buffered, r.seq
    FROM readings AS r JOIN devices AS d ON d.id = r.device JOIN metrics AS m ON m.id = r.metric
    WHERE (:device IS NULL OR d.device_id = :device)
      AND (:since IS NULL OR r.ts_us >= :since) AND (:until IS NULL OR r.ts_us < :until)
    ORDER BY d.device_id, r.ts_us, r.seq, m.name
"""


def _many(
    conn: sqlite3.Connection, head: str, rows: Sequence[tuple[object, ...]], tail: str = "", *, most: int
) -> int:
    """``head VALUES-rows tail`` for every row, in multi-row statements; the rows it changed.

    ``executemany`` steps once per row, and each step releases and takes back the GIL:
    while the event loop's thread runs Python, every row waited for it (up to the 5 ms
    switch interval). A multi-row statement binds all its rows and takes the GIL back once.
    """
    width = len(rows[0])
    one = "(" + ", ".join("?" * width) + ")"
    changed = 0
    at = 0
    size = 1 << (max(1, min(_MOST_ROWS, most // width)).bit_length() - 1)
    while size:
        while len(rows) - at >= size:
            chunk = rows[at : at + size]
            sql = head + ", ".join([one] * size) + tail
            changed += conn.execute(sql, [value for row in chunk for value in row]).rowcount
            at += size
        size >>= 1
    return changed


def _variable_limit(conn: sqlite3.Connection) -> int:
    return conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)


class SqliteStorage(RowIds):
    """The SQLite backend (the embedded default)."""

    def __init__(
        self,
        path: Path,
        *,
        quarantine_max_rows: int = 10_000,
        quarantine_max_bytes: int = QUARANTINE_MAX_BYTES,
        synchronous: str = "FULL",
        migrate: bool = True,
    ) -> None:
        self.path = path
        # migrate False (the reading commands): an older schema is refused, not upgraded, so
        # that a command run beside a collector of the previous version cannot change the
        # tables under it; the collector upgrades the schema when it starts.
        self._migrate_on_open = migrate
        self._quarantine_max_rows = quarantine_max_rows
        self._quarantine_max_bytes = quarantine_max_bytes
        self._synchronous = synchronous
        self._db: aiosqlite.Connection | None = None
        self._checkpointer: aiosqlite.Connection | None = None
        self._checkpointing: asyncio.Task[None] | None = None
        self._checkpointed_at = 0.0
        self._variables = 999  # host parameters one statement may have (read at open)
        super().__init__()

    @property
    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StorageError(f"{self.path}: storage is not open")
        return self._db

    async def open(self) -> None:
        """Open (creating if needed) and migrate the database; closed again if that fails."""
        try:
            await self._open()
        except BaseException:
            await self._close_main()
            raise

    async def _open(self) -> None:
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            need = ".".join(map(str, MIN_SQLITE))
            raise StorageError(
                f"{self.path}: SQLite {need} or newer is required, found {sqlite3.sqlite_version}"
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, one per batch.
            self._db = await aiosqlite.connect(self.path, isolation_level=None)
            db = self._db
            await db.execute("PRAGMA journal_mode=WAL")
            # FULL: a batch is acknowledged to the broker after COMMIT, so it must also
            # survive a power loss, not only a crash of this process.
            await db.execute(f"PRAGMA synchronous={self._synchronous}")
            await db.execute("PRAGMA foreign_keys=ON")
            await db.execute("PRAGMA busy_timeout=5000")
            self._variables = await on_thread(db, _variable_limit)
            # Checkpoints run on a connection of their own (see _maybe_checkpoint): run by
            # the committing connection, one stalled a batch for a hundred milliseconds.
            await db.execute("PRAGMA wal_autocheckpoint=0")
            await self._migrate()
            await db.execute(
                "CREATE TEMP TABLE IF NOT EXISTS incoming (device INTEGER, metric INTEGER, "
                "ts_us INTEGER, seq INTEGER, value REAL, received_delay_us INTEGER, buffered INTEGER)"
            )
            await self._load_metric_ids()
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"{self.path}: cannot open database: {exc}") from exc

    async def _migrate(self) -> None:
        db = self._conn
        async with db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        version = int(row[0]) if row else 0
        if version > len(MIGRATIONS):
            raise StorageError(
                f"{self.path}: schema version {version} is newer than this coldwatch ({len(MIGRATIONS)})"
            )
        if version < len(MIGRATIONS) and not self._migrate_on_open and version > 0:
            raise StorageError(
                f"{self.path}: schema version {version} is older than this coldwatch ({len(MIGRATIONS)}): "
                "start the collector (coldwatch run) once to upgrade it"
            )
        for target, script in enumerate(MIGRATIONS[version:], start=version + 1):
            log.info("%s: upgrading the schema to version %d", self.path, target)
            # One script per version, applied atomically together with its version number.
            try:
                await db.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version={target};\nCOMMIT;")
            except sqlite3.Error:
                # executescript stops at the failing statement with the transaction open.
                if db.in_transaction:
                    await db.execute("ROLLBACK")
                raise
        if version < len(MIGRATIONS) and version > 0:
            # A migration that copies a table leaves it all in the write-ahead log: fold it in.
            await db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            log.info("%s: schema at version %d", self.path, len(MIGRATIONS))

    async def _load_metric_ids(self) -> None:
        db = self._conn
        names = sorted({name for specs in KINDS.values() for name in specs})
        await db.executemany("INSERT OR IGNORE INTO metrics(name) VALUES (?)", [(n,) for n in names])
        async with db.execute("SELECT name, id FROM metrics") as cur:
            self._metric_rowid = {str(name): int(rowid) async for name, rowid in cur}

    def _maybe_checkpoint(self) -> None:
        """Start a checkpoint of the write-ahead log on a second connection, at most every second."""
        now = time.monotonic()
        if (self._checkpointing is not None and not self._checkpointing.done()) or (
            now - self._checkpointed_at < CHECKPOINT_EVERY_S
        ):
            return
        self._checkpointed_at = now
        self._checkpointing = asyncio.get_running_loop().create_task(self._checkpoint("PASSIVE"))

    async def _checkpoint(self, mode: str) -> None:
        try:
            if self._checkpointer is None:
                self._checkpointer = await aiosqlite.connect(self.path, isolation_level=None)
                await self._checkpointer.execute("PRAGMA busy_timeout=5000")
            await self._checkpointer.execute(f"PRAGMA wal_checkpoint({mode})")
        except Exception:  # a task boundary: the next one retries; the log only grows meanwhile
            log.exception("%s: checkpoint failed", self.path)

    async def close(self) -> None:
        """Close the connection (every batch is already committed)."""
        try:
            if self._checkpointing is not None:
                await self._checkpointing
            if self._checkpointer is not None:
                await self._checkpoint("TRUNCATE")
        finally:
            if self._checkpointer is not None:
                await self._checkpointer.close()
                self._checkpointer = None
            await self._close_main()

    async def _close_main(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def register_devices(self, devices: Sequence[DeviceConfig]) -> dict[str, DeviceState]:
        """Upsert the registered devices; return the remembered state of each."""
        db = self._conn
        await db.execute("BEGIN IMMEDIATE")
        try:
            await db.executemany(
                "INSERT INTO devices(device_id, kind, site, area, grade) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(device_id) DO UPDATE SET kind=excluded.kind, site=excluded.site, "
                "area=excluded.area, grade=excluded.grade",
                [(d.id, d.kind.value, d.site, d.area, d.grade) for d in devices],
            )
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        states: dict[str, DeviceState] = {}
        async with db.execute(
            "SELECT id, device_id, last_seq, last_ts_us, last_received_us, online FROM devices"
        ) as cur:
            async for rowid, device_id, last_seq, last_ts, last_recv, online in cur:
                self._device_rowid[device_id] = rowid
                self._device_by_rowid[rowid] = device_id
                states[device_id] = DeviceState(
                    last_seq, last_ts, last_recv, None if online is None else bool(online)
                )
        return {d.id: states[d.id] for d in devices}

    async def write_batch(self, batch: Batch) -> BatchResult:
        """Commit one batch in one transaction, in one trip to the connection's thread.

        Each await is a round trip through a busy event loop: with one per statement, a
        batch took ten times its SQL time, and an alarm's batch (transitions, audit,
        notifications) the most (benchmarks/ingest.py).
        """
        try:
            result = await on_thread(self._conn, in_transaction, self._write, batch)
        except (sqlite3.Error, OverflowError, ValueError) as exc:
            raise StorageError(f"{self.path}: batch write failed: {exc}") from exc
        self._maybe_checkpoint()
        return result

    def _write(self, conn: sqlite3.Connection, batch: Batch) -> BatchResult:
        """Everything a batch carries (in the caller's transaction, on the connection's thread)."""
        stored, duplicates = self._store_readings(conn, batch)
        late = late_minutes(batch.readings, self._device_rowid, self._metric_rowid)
        if late:  # minutes a chart rollup may hold already: rebuilt before their next use
            conn.executemany("INSERT OR IGNORE INTO chart_rollup_dirty VALUES (?, ?, ?)", late)
        if batch.rejections:
            self._quarantine(conn, batch.rejections)
        if batch.gaps:
            conn.executemany(_INSERT_GAP, [self._gap_row(g) for g in batch.gaps])
        if batch.gap_updates:
            conn.executemany(_RESOLVE_GAP, self._gap_update_rows(batch))
        if batch.transitions:
            self._write_transitions(conn, batch.transitions)
        if batch.notifications:
            enqueue_sync(conn, batch.notifications)
        if batch.signatures:
            conn.executemany(INSERT_SIGNATURE, batch.signatures)
        if batch.audit:
            # The link is read inside the transaction: the deliverer appends on its own connection.
            append_linked(conn, batch.audit)
        self._write_device_state(conn, batch)
        return BatchResult(stored=stored, duplicates=duplicates)

    def _write_device_state(self, conn: sqlite3.Connection, batch: Batch) -> None:
        """The devices' tracking state and rule snapshots the batch leaves them in."""
        if batch.devices:
            _many(
                conn,
                _UPDATE_DEVICES_HEAD,
                self._device_rows(batch),
                _UPDATE_DEVICES_TAIL,
                most=self._variables,
            )
        if batch.snapshots:
            conn.executemany(
                _UPSERT_SNAPSHOT,
                [(s.device_id, s.ts_us, s.seq, s.fingerprint, s.state) for s in batch.snapshots],
            )

    def _store_readings(
        self, conn: sqlite3.Connection, batch: Batch
    ) -> tuple[int, frozenset[tuple[str, int, int]]]:
        """Store the batch's readings (in the open transaction, on the connection's thread).

        Returns how many rows were new and which readings were stored already.
        """
        rows = self._reading_rows(batch, arrival_as_delay=True)  # SQLite's layout (migration 5)
        if not rows:
            return 0, frozenset()
        # Nearly every batch is all new: insert directly, and only when some row was
        # ignored take the slower path that tells which readings were stored before
        # (staging, a duplicate query and an insert from the stage cost 2.5 times as much).
        conn.execute("SAVEPOINT readings")
        stored = _many(conn, _INSERT_READINGS, rows, most=self._variables)
        if stored == len(rows):
            conn.execute("RELEASE readings")
            return stored, frozenset()
        conn.execute("ROLLBACK TO readings")
        conn.execute("RELEASE readings")
        conn.executemany(_INSERT_INCOMING, rows)
        duplicates = frozenset(
            (self._device_by_rowid[d], int(s), int(t)) for d, s, t in conn.execute(_FIND_DUPLICATES)
        )
        # A reading stored already is kept as it was: none of a later message's values are
        # added to it (one with a value the first lacked is not the same reading).
        conn.execute(_DROP_STORED)
        stored = conn.execute("INSERT OR IGNORE INTO reading_rows SELECT * FROM temp.incoming").rowcount
        conn.execute("DELETE FROM temp.incoming")
        return stored, duplicates

    def _quarantine(self, conn: sqlite3.Connection, rejections: list[QuarantineEntry]) -> None:
        newest = conn.execute(_QUARANTINE_END).fetchone()
        rows, end = quarantine_rows(rejections, newest[0] if newest else 0)
        conn.executemany(
            "INSERT INTO quarantine(received_us, reason, detail, topic, device_id, payload, payload_size, "
            "payload_sha256, kept_from) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        conn.executemany(
            "INSERT INTO rejection_totals(reason, total) VALUES (?, ?) "
            "ON CONFLICT(reason) DO UPDATE SET total = total + excluded.total",
            reason_totals(rejections),
        )
        # Bounded in rows and in payload bytes: the oldest entries go first; their totals above remain.
        conn.execute(
            "DELETE FROM quarantine WHERE id <= (SELECT max(id) FROM quarantine) - ?",
            (self._quarantine_max_rows,),
        )
        # The entries kept are the newest whose payloads lie wholly in the last max_bytes.
        conn.execute("DELETE FROM quarantine WHERE kept_from < ?", (end - self._quarantine_max_bytes,))

    def _write_transitions(self, conn: sqlite3.Connection, transitions: list[Transition]) -> None:
        conn.executemany(
            "INSERT INTO alarms(id, device_id, metric, rule, severity, state, raised_ts_us, "
            "raised_received_us, cleared_ts_us, value, limit_value, late, detail, shelved_until_us, "
            "shelved_by, acknowledged_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET severity=excluded.severity, state=excluded.state, "
            "cleared_ts_us=excluded.cleared_ts_us, value=excluded.value, limit_value=excluded.limit_value, "
            "detail=excluded.detail, shelved_until_us=excluded.shelved_until_us, "
            "shelved_by=excluded.shelved_by, acknowledged_by=excluded.acknowledged_by",
            alarm_rows(transitions),
        )
        conn.executemany(
            "INSERT INTO alarm_transitions(alarm_id, event, ts_us, received_us, from_state, to_state, "
            "severity, value, limit_value, late, actor, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            transition_rows(transitions),
        )

    async def open_gaps(self, devices: Sequence[str] | None = None) -> list[tuple[SeqGap, set[int]]]:
        """Gaps still open (of ``devices`` when given), each with the missing seqs stored since."""
        wanted = None if devices is None else set(devices)
        out: list[tuple[SeqGap, set[int]]] = []
        try:
            async with self._conn.execute(_OPEN_GAPS) as cur:
                rows = list(await cur.fetchall())
            for device_id, first, last, detected_us in rows:
                if wanted is not None and device_id not in wanted:
                    continue
                args = (self._device_rowid[device_id], first, last, detected_us)
                async with self._conn.execute(_STORED_SEQS, args) as cur:
                    stored = {int(r[0]) for r in await cur.fetchall()}
                out.append((SeqGap(device_id, int(first), int(last), int(detected_us)), stored))
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: cannot read open gaps: {exc}") from exc
        return out

    async def open_alarms(self, devices: Sequence[str] | None = None) -> tuple[list[Alarm], int]:
        """The alarms not yet closed (of ``devices`` only, when given), and the id the next alarm gets."""
        alarms = await self.alarms(open_only=True, limit=1_000_000)
        if devices is not None:
            wanted = set(devices)
            alarms = [a for a in alarms if a.key.device_id in wanted]
        async with self._conn.execute("SELECT coalesce(max(id), 0) + 1 FROM alarms") as cur:
            row = await cur.fetchone()
        return alarms, int(row[0]) if row else 1

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
    ) -> list[Alarm]:
        """Alarms matching every given filter, newest first (raised in [since, until))."""
        sql = (
            "SELECT a.id, a.device_id, a.metric, a.rule, a.severity, a.state, a.raised_ts_us, "
            "a.raised_received_us, a.value, a.limit_value, a.late, a.detail, a.cleared_ts_us, "
            "a.shelved_until_us, a.shelved_by, a.acknowledged_by "
            "FROM alarms AS a LEFT JOIN devices AS d ON d.device_id = a.device_id "
            "WHERE (:open = 0 OR a.state != 'closed') AND (:device IS NULL OR a.device_id = :device) "
            "AND (:site IS NULL OR d.site = :site) AND (:severity IS NULL OR a.severity = :severity) "
            "AND (:state IS NULL OR a.state = :state) AND (:since IS NULL OR a.raised_ts_us >= :since) "
            "AND (:until IS NULL OR a.raised_ts_us < :until) AND (:id IS NULL OR a.id = :id) "
            "ORDER BY a.raised_ts_us DESC, a.id DESC LIMIT :limit"
        )
        params = {
            "open": int(open_only),
            "device": device_id,
            "site": site,
            "severity": severity,
            "state": state,
            "since": since_us,
            "until": until_us,
            "id": alarm_id,
            "limit": limit,
        }
        async with self._conn.execute(sql, params) as cur:
            return [alarm_from_row(r) async for r in cur]

    async def alarm_history(self, alarm_id: int) -> list[dict[str, object]]:
        """Every transition of one alarm, oldest first."""
        async with self._conn.execute(
            "SELECT event, ts_us, received_us, from_state, to_state, severity, value, limit_value, late, "
            "actor, reason FROM alarm_transitions WHERE alarm_id = ? ORDER BY id",
            (alarm_id,),
        ) as cur:
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) async for row in cur]

    async def metric_readings(
        self, device_id: str, metric: str, since_us: int | None, until_us: int | None, limit: int
    ) -> list[tuple[int, float, int, bool]]:
        """(ts_us, value, received_us, buffered) of one device metric in [since, until), oldest first."""
        rowid, metric_id = self._device_rowid.get(device_id), self._metric_rowid.get(metric)
        if rowid is None or metric_id is None:
            return []
        async with self._conn.execute(
            "SELECT ts_us, value, received_us, buffered FROM readings WHERE device = ? AND metric = ? "
            "AND ts_us >= ? AND ts_us < ? ORDER BY ts_us, seq LIMIT ?",
            (
                rowid,
                metric_id,
                since_us if since_us is not None else -(2**63),
                until_us if until_us is not None else 2**63 - 1,
                limit,
            ),
        ) as cur:
            return [(int(t), float(v), int(r), bool(b)) async for t, v, r, b in cur]

    async def last_values(self, device_id: str) -> dict[str, float]:
        """The metric values of a device's newest reading."""
        rowid = self._device_rowid.get(device_id)
        if rowid is None:
            return {}
        names = self._metric_names()
        async with self._conn.execute(
            "SELECT metric, value FROM readings WHERE device = ?1 AND ts_us = "
            "(SELECT last_ts_us FROM devices WHERE id = ?1)",
            (rowid,),
        ) as cur:
            return {names[m]: float(v) async for m, v in cur}

    async def rule_snapshots(self, devices: Sequence[str]) -> list[RuleSnapshot]:
        """The stored rule snapshots of ``devices`` (one at most each)."""
        wanted = set(devices)
        async with self._conn.execute(
            "SELECT device_id, ts_us, seq, fingerprint, state FROM rule_snapshots"
        ) as cur:
            rows = await cur.fetchall()
        return [RuleSnapshot(d, int(t), int(q), str(f), bytes(b)) for d, t, q, f, b in rows if d in wanted]

    async def readings_since(
        self, device_id: str, since_us: int, *, after_seq: int | None = None
    ) -> AsyncIterator[EngineReading]:
        """A device's stored readings from ``since_us`` on (after (``since_us``, ``after_seq``)), in order."""
        rowid = self._device_rowid.get(device_id)
        if rowid is None:
            return
        names = self._metric_names()
        # Every metric named: the key (device, metric, ts_us, seq) is then searched once a
        # metric, not scanned across the device's whole history.
        marks = ", ".join("?" * len(names)) or "NULL"
        sql = "SELECT ts_us, seq, metric, value, received_us, buffered FROM readings WHERE device = ? AND "
        if after_seq is None:
            sql += f"metric IN ({marks}) AND ts_us >= ? ORDER BY ts_us, seq"  # placeholders only
            args: tuple[object, ...] = (rowid, *names, since_us)
        else:  # a row value: still one index range a metric
            sql += f"metric IN ({marks}) AND (ts_us, seq) > (?, ?) ORDER BY ts_us, seq"  # placeholders only
            args = (rowid, *names, since_us, after_seq)
        async with self._conn.execute(sql, args) as cur:
            rows = await cur.fetchall()  # one device's memory window: small
        for reading in group_readings(device_id, rows, names):
            yield reading

    async def record_audit(self, drafts: list[AuditDraft]) -> None:
        """Append audit entries in a transaction of their own (start-up, configuration)."""
        try:
            await on_thread(self._conn, in_transaction, append_linked, drafts)
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: audit write failed: {exc}") from exc

    async def verify_audit(self) -> VerifyResult:
        """Check the whole audit chain."""
        return await verify_stored(self._conn)

    def audit_entries(self) -> AsyncIterator[AuditEntry]:
        """Every audit entry in order."""
        return read_all(self._conn)

    async def audit_evidence(self) -> AuditEvidence:
        """Entries, seals, high-water mark and guard problems, in one snapshot."""
        return await on_thread(self._conn, evidence_sync)

    async def audit_head(self, *, with_rotation: bool = False) -> AuditHead | None:
        """The last signed entry (None before signing began); the last rotation's key if asked."""
        return await on_thread(self._conn, head_sync, with_rotation=with_rotation)

    async def restore_audit_guards(self) -> list[str]:
        """Recreate missing or altered append-only guards; return their names."""
        try:
            return await on_thread(self._conn, in_transaction, restore_guards_sync)
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: restoring the audit guards failed: {exc}") from exc

    async def check_writable(self) -> None:
        """Take and release the write lock: proves the database accepts writes now.

        Both statements run in one trip to the connection's thread: a batch on the same
        connection can never run between them.
        """
        try:
            await on_thread(self._conn, _take_write_lock)
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: not writable: {exc}") from exc

    async def export(
        self, device_id: str | None, since_us: int | None, until_us: int | None
    ) -> AsyncGenerator[ExportRow, None]:
        """Stream readings ordered by device, time and metric."""
        params = {"device": device_id, "since": since_us, "until": until_us}
        async with self._conn.execute(_EXPORT, params) as cur:
            cur.arraysize = 2000
            async for device, kind, metric, ts_us, value, received_us, buffered, seq in cur:
                yield ExportRow(device, kind, metric, ts_us, value, received_us, bool(buffered), seq)

    async def quarantine(self, limit: int = 100) -> list[QuarantineEntry]:
        """The most recent rejected messages, newest first."""
        async with self._conn.execute(
            "SELECT received_us, reason, detail, topic, device_id, payload, payload_size, payload_sha256 "
            "FROM quarantine ORDER BY id DESC LIMIT ?",
            (limit,),
        ) as cur:
            return [QuarantineEntry(*row) async for row in cur]

    async def rejection_totals(self) -> dict[str, int]:
        """Every rejection ever recorded, by reason (survives quarantine pruning)."""
        async with self._conn.execute("SELECT reason, total FROM rejection_totals") as cur:
            return {str(reason): int(total) async for reason, total in cur}

    async def counts(self) -> dict[str, int]:
        """Row counts by table."""
        out: dict[str, int] = {}
        for table in ("devices", "readings", "quarantine", "seq_gaps", "alarms", "alarm_transitions"):
            async with self._conn.execute(f"SELECT count(*) FROM {table}") as cur:  # noqa: S608
                row = await cur.fetchone()
                out[table] = int(row[0]) if row else 0
        return out


def _take_write_lock(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("ROLLBACK")
