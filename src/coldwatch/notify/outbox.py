"""The notification outbox in SQLite: what must be sent, every attempt, and what was delivered.

Items are enqueued in the same transaction as the alarm transitions that caused them
(:func:`enqueue` runs inside the storage's batch transaction), so a notification exists
if and only if its cause was committed. The deliverer, on a connection of its own, takes
due rows and records every attempt in a transaction of its own. Rows are never deleted:
the outbox and its attempts are the audit trail of who was told what, and when.

A row is *pending* while ``delivered_us IS NULL AND next_attempt_us IS NOT NULL``;
``next_attempt_us`` NULL on an undelivered row means nothing more will be attempted: the
row is *dead-lettered* (``dead_lettered_us`` says when): its receiver rejected it
permanently too often, or was removed from the configuration. Rows of one receiver
(channel, target) with the same ``order_key`` (one alarm; for Alertmanager one alert
identity) are delivered in order: a row is not due while an older row of its key waits
for a retry. Rows of other keys are not held back, so one alarm's failing notification
never delays another alarm's.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiosqlite

from coldwatch.audit import AuditDraft
from coldwatch.notify.failures import DEAD_LETTER_PREFIX
from coldwatch.notify.model import AlarmFacts, Channel, HistoryEntry, OutboxItem, order_key_of
from coldwatch.rules.model import Severity
from coldwatch.storage.audit_sqlite import append_linked
from coldwatch.storage.sqlite_thread import in_transaction, on_thread

__all__ = [
    "LANE_HEADS",
    "OUTBOX_DEAD_LETTER_SCHEMA",
    "OUTBOX_DEAD_LETTER_SCHEMA_PG",
    "OUTBOX_SCHEMA",
    "SUMMARY",
    "LaneHead",
    "OutboxRow",
    "OutboxStore",
    "PendingSummary",
    "SqliteOutbox",
    "alarm_facts",
    "connect",
    "enqueue",
    "enqueue_sync",
    "escalations_sent",
    "histories",
    "load_facts",
    "outbox_row",
    "parse_escalation",
]

# Append to the storage MIGRATIONS as one new entry (never edit a released entry).
OUTBOX_SCHEMA = """
CREATE TABLE notification_outbox (
    id INTEGER PRIMARY KEY,
    notification_id TEXT NOT NULL UNIQUE,
    channel TEXT NOT NULL,
    target TEXT NOT NULL,
    body BLOB NOT NULL,
    alarm_id INTEGER,
    created_us INTEGER NOT NULL,
    next_attempt_us INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    delivered_us INTEGER,
    last_error TEXT
);
-- The pending rows of each lane, in order: what the deliverer reads on every wake-up.
CREATE INDEX notification_outbox_pending ON notification_outbox(channel, target, id)
    WHERE delivered_us IS NULL AND next_attempt_us IS NOT NULL;
CREATE INDEX notification_outbox_by_alarm ON notification_outbox(alarm_id);
-- Append-only: every delivery attempt with its outcome.
CREATE TABLE notification_attempts (
    id INTEGER PRIMARY KEY,
    outbox_id INTEGER NOT NULL REFERENCES notification_outbox(id),
    at_us INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    status INTEGER,
    error TEXT
);
CREATE INDEX notification_attempts_by_outbox ON notification_attempts(outbox_id, id);
"""

# Appended to both backends' migrations: order keys (per-alarm delivery order instead of
# one queue per receiver), permanent rejections counted, dead letters marked. Rows given up
# before (their receiver was removed) become dead letters; existing rows get the key the
# planner gives them now.
_DEAD_LETTER_MIGRATION = """
ALTER TABLE notification_outbox ADD COLUMN order_key TEXT;
ALTER TABLE notification_outbox ADD COLUMN rejections INTEGER NOT NULL DEFAULT 0;
ALTER TABLE notification_outbox ADD COLUMN dead_lettered_us {bigint};
UPDATE notification_outbox SET order_key = CASE
    WHEN channel = 'alertmanager' AND alarm_id IS NOT NULL THEN coalesce(
        (SELECT 'alert/' || a.device_id || '/' || a.metric || '/' || a.rule
         FROM alarms AS a WHERE a.id = notification_outbox.alarm_id),
        'alarm/' || alarm_id)
    WHEN alarm_id IS NOT NULL THEN 'alarm/' || alarm_id
    ELSE 'id/' || notification_id END;
UPDATE notification_outbox SET dead_lettered_us = coalesce(
    (SELECT max(at_us) FROM notification_attempts AS t WHERE t.outbox_id = notification_outbox.id),
    created_us)
    WHERE delivered_us IS NULL AND next_attempt_us IS NULL;
DROP INDEX notification_outbox_pending;
-- The pending rows of each receiver and order key, in order: what the deliverer reads.
CREATE INDEX notification_outbox_pending ON notification_outbox(channel, target, order_key, id)
    WHERE delivered_us IS NULL AND next_attempt_us IS NOT NULL;
CREATE INDEX notification_outbox_dead ON notification_outbox(dead_lettered_us)
    WHERE dead_lettered_us IS NOT NULL;
"""
OUTBOX_DEAD_LETTER_SCHEMA = _DEAD_LETTER_MIGRATION.format(bigint="INTEGER")
OUTBOX_DEAD_LETTER_SCHEMA_PG = _DEAD_LETTER_MIGRATION.format(bigint="BIGINT")

_DUE = """
    SELECT o.id, o.notification_id, o.channel, o.target, o.body, o.alarm_id, o.attempts, o.created_us,
           o.order_key, o.rejections
    FROM notification_outbox AS o
    WHERE o.delivered_us IS NULL AND o.next_attempt_us IS NOT NULL AND o.next_attempt_us <= :now
      AND (:channel IS NULL OR (o.channel = :channel AND o.target = :target))
      AND NOT EXISTS (
          SELECT 1 FROM notification_outbox AS p
          WHERE p.channel = o.channel AND p.target = o.target AND p.order_key = o.order_key AND p.id < o.id
            AND p.delivered_us IS NULL AND p.next_attempt_us > :now)
    ORDER BY o.id LIMIT :limit
"""
# Per receiver: the earliest next attempt among the first pending rows of its order keys,
# and whether one of them was never attempted (a new notification).
LANE_HEADS = """
    SELECT channel, target, min(next_attempt_us), max(CASE WHEN attempts = 0 THEN 1 ELSE 0 END)
    FROM notification_outbox
    WHERE id IN (SELECT min(id) FROM notification_outbox
                 WHERE delivered_us IS NULL AND next_attempt_us IS NOT NULL
                 GROUP BY channel, target, order_key)
    GROUP BY channel, target
"""
SUMMARY = """
    SELECT count(*), min(created_us),
           (SELECT count(*) FROM notification_outbox WHERE dead_lettered_us IS NOT NULL)
    FROM notification_outbox WHERE delivered_us IS NULL AND next_attempt_us IS NOT NULL
"""


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A stored notification, as the deliverer sends it."""

    id: int
    notification_id: str
    channel: Channel
    target: str
    body: bytes
    alarm_id: int | None
    attempts: int
    created_us: int
    order_key: str = ""
    rejections: int = 0  # permanent rejections so far


def outbox_row(r: Sequence[Any]) -> OutboxRow:
    """An :class:`OutboxRow` from a row of the due query (either backend)."""
    return OutboxRow(
        int(r[0]),
        str(r[1]),
        Channel(r[2]),
        str(r[3]),
        bytes(r[4]),
        r[5],
        int(r[6]),
        int(r[7]),
        str(r[8] or ""),
        int(r[9]),
    )


@dataclass(frozen=True, slots=True)
class LaneHead:
    """What the deliverer needs to know about one receiver's pending rows to schedule it."""

    lane: tuple[Channel, str]
    next_attempt_us: int  # the earliest next attempt of a row not held back by an older one
    fresh: bool  # a row never attempted is due (a new notification)


@dataclass(frozen=True, slots=True)
class PendingSummary:
    """How much is waiting to be delivered (for metrics: the alarm path itself is watched)."""

    count: int
    oldest_created_us: int | None
    dead_lettered: int = 0  # rows in the dead-letter state (never delivered, no longer retried)


class OutboxStore(Protocol):
    """Where the deliverer finds its work: the outbox of the SQLite or PostgreSQL backend."""

    async def due(
        self, now_us: int, limit: int = 100, *, lane: tuple[Channel, str] | None = None
    ) -> list[OutboxRow]:
        """Rows due at ``now_us``, oldest first, none behind an older row of its key that waits to retry."""

    async def lane_heads(self) -> list[LaneHead]:
        """Per receiver with pending rows: when the next is due, and whether a new one is."""

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
        """Record one delivery attempt in a transaction of its own.

        ``rejected``: a permanent rejection (counted on the row). ``dead``: the row is
        dead-lettered; ``notices`` (about it, to other receivers) are enqueued with it.
        """

    async def pending_summary(self) -> PendingSummary:
        """How many rows wait for delivery, and since when the oldest does."""

    async def load_facts(self, alarm_ids: Collection[int] | None = None) -> list[AlarmFacts]:
        """What the planner needs to carry on after a restart, for every open alarm (of ``alarm_ids``)."""

    async def close(self) -> None:
        """Release what the store holds."""


class SqliteOutbox:
    """The outbox on a SQLite connection of the deliverer's own."""

    def __init__(self, db: aiosqlite.Connection, *, owned: bool = False) -> None:
        self.db = db
        self._owned = owned

    async def due(
        self, now_us: int, limit: int = 100, *, lane: tuple[Channel, str] | None = None
    ) -> list[OutboxRow]:
        """Rows due at ``now_us``, oldest first, none behind an older row of its key that waits to retry."""
        params = {
            "now": now_us,
            "limit": limit,
            "channel": lane[0].value if lane else None,
            "target": lane[1] if lane else None,
        }
        async with self.db.execute(_DUE, params) as cur:
            return [outbox_row(r) async for r in cur]

    async def lane_heads(self) -> list[LaneHead]:
        """Per receiver with pending rows: when the next is due, and whether a new one is."""
        async with self.db.execute(LANE_HEADS) as cur:
            return [
                LaneHead((Channel(channel), str(target)), int(next_us), bool(fresh))
                async for channel, target, next_us, fresh in cur
            ]

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
        """Record one delivery attempt in a transaction of its own; ``ok`` marks the row delivered.

        ``rejected`` counts a permanent rejection; ``dead`` dead-letters the row (nothing
        more will be attempted) and enqueues ``notices`` in the same transaction.
        """

        def record(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO notification_attempts(outbox_id, at_us, ok, status, error) "
                "VALUES (?, ?, ?, ?, ?)",
                (outbox_id, at_us, int(ok), status, error),
            )
            conn.execute(
                "UPDATE notification_outbox SET attempts = attempts + 1, last_error = ?, "
                "rejections = rejections + ?, delivered_us = CASE WHEN ? THEN ? END, "
                "next_attempt_us = CASE WHEN ? OR ? THEN NULL ELSE ? END, "
                "dead_lettered_us = CASE WHEN ? THEN ? END WHERE id = ?",
                (
                    error,
                    int(rejected),
                    int(ok),
                    at_us,
                    int(ok),
                    int(dead),
                    next_attempt_us,
                    int(dead),
                    at_us,
                    outbox_id,
                ),
            )
            if notices:
                enqueue_sync(conn, notices)
            if audit is not None:
                # Every notification sent or failed is in the audit trail, in the same transaction.
                append_linked(conn, [audit])

        await on_thread(self.db, in_transaction, record)

    async def pending_summary(self) -> PendingSummary:
        """How many rows wait for delivery, and since when the oldest does."""
        async with self.db.execute(SUMMARY) as cur:
            row = await cur.fetchone()
        return PendingSummary(int(row[0]), row[1], int(row[2])) if row else PendingSummary(0, None)

    async def load_facts(self, alarm_ids: Collection[int] | None = None) -> list[AlarmFacts]:
        """See :func:`load_facts`."""
        return await load_facts(self.db, alarm_ids)

    async def close(self) -> None:
        """Close the connection if this store opened it."""
        if self._owned:
            await self.db.close()


async def connect(path: Path | str) -> aiosqlite.Connection:
    """A connection of the deliverer's own to the database at ``path`` (WAL, explicit transactions)."""
    db = await aiosqlite.connect(path, isolation_level=None)
    await db.execute("PRAGMA journal_mode=WAL")
    await db.execute("PRAGMA synchronous=FULL")
    await db.execute("PRAGMA busy_timeout=5000")
    return db


async def enqueue(db: aiosqlite.Connection, items: Iterable[OutboxItem]) -> int:
    """Insert ``items`` (due at once); an id already stored is skipped. Returns rows inserted.

    Runs in the caller's transaction: call it inside the batch that stores the transitions.
    """
    return await on_thread(db, enqueue_sync, list(items))


def enqueue_sync(conn: sqlite3.Connection, items: Iterable[OutboxItem]) -> int:
    """:func:`enqueue` on the connection's own thread."""
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
    if not rows:
        return 0
    before = conn.total_changes
    conn.executemany(
        "INSERT OR IGNORE INTO notification_outbox(notification_id, channel, target, body, alarm_id, "
        "created_us, next_attempt_us, attempts, order_key) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?)",
        rows,
    )
    return conn.total_changes - before


def parse_escalation(notification_id: str) -> tuple[int, int, int] | None:
    """(episode start, tier, repeat) of an escalation notification id, None for other ids."""
    parts = notification_id.split("/")
    if len(parts) != 6 or parts[0] != "esc":  # esc/<alarm>/<since>/<tier>/<repeat>/<webhook>
        return None
    return int(parts[2]), int(parts[3]), int(parts[4])


async def escalations_sent(
    db: aiosqlite.Connection, alarm_id: int, since_us: int | None = None
) -> set[tuple[int, int]]:
    """The (tier, repeat) pairs enqueued for ``alarm_id`` (in the episode that began at ``since_us``)."""
    sent: set[tuple[int, int]] = set()
    async with db.execute(
        "SELECT notification_id FROM notification_outbox WHERE alarm_id = ? AND notification_id LIKE 'esc/%'",
        (alarm_id,),
    ) as cur:
        async for (nid,) in cur:
            parsed = parse_escalation(str(nid))
            if parsed is not None and (since_us is None or parsed[0] == since_us):
                sent.add((parsed[1], parsed[2]))
    return sent


async def load_facts(db: aiosqlite.Connection, alarm_ids: Collection[int] | None = None) -> list[AlarmFacts]:
    """What the planner needs to carry on after a restart, for every open alarm (of ``alarm_ids``).

    Reads the SQLite backend's ``alarms`` and ``alarm_transitions`` tables (read-only) and
    the outbox.
    """
    try:
        async with db.execute(
            "SELECT t.alarm_id, t.event, t.received_us, t.severity FROM alarm_transitions AS t "
            "JOIN alarms AS a ON a.id = t.alarm_id WHERE a.state != 'closed' ORDER BY t.alarm_id, t.id"
        ) as cur:
            history = histories(await cur.fetchall(), alarm_ids)
    except sqlite3.OperationalError as exc:  # no alarm tables: nothing is open
        if "no such table" not in str(exc):
            raise
        history = {}
    async with db.execute(
        "SELECT alarm_id, notification_id, channel, target FROM notification_outbox "
        "WHERE alarm_id IN (SELECT value FROM json_each(?))",
        (json.dumps(sorted(history)),),
    ) as cur:
        return alarm_facts(history, await cur.fetchall())


def histories(
    rows: Iterable[Sequence[Any]], alarm_ids: Collection[int] | None = None
) -> dict[int, list[HistoryEntry]]:
    """Transitions (alarm id, event, received_us, severity) in order, by alarm (of ``alarm_ids``)."""
    wanted = None if alarm_ids is None else set(alarm_ids)
    history: dict[int, list[HistoryEntry]] = {}
    for alarm_id, event, received_us, severity in rows:
        if wanted is None or int(alarm_id) in wanted:
            history.setdefault(int(alarm_id), []).append(
                HistoryEntry(str(event), int(received_us), Severity[str(severity).upper()])
            )
    return history


def alarm_facts(
    history: dict[int, list[HistoryEntry]], outbox_rows: Iterable[Sequence[Any]]
) -> list[AlarmFacts]:
    """The facts of each alarm in ``history``, from its outbox rows (alarm id, id, channel, target)."""
    sent: dict[int, set[tuple[int, int, int]]] = {}
    notified: dict[int, set[str]] = {}
    for alarm_id, nid, channel, target in outbox_rows:
        key = int(alarm_id)
        parsed = parse_escalation(str(nid))
        if parsed is not None:
            sent.setdefault(key, set()).add(parsed)
        # A notice about a dead letter does not make its receiver one of the alarm's audience.
        if channel == Channel.WEBHOOK.value and not str(nid).startswith(DEAD_LETTER_PREFIX):
            notified.setdefault(key, set()).add(str(target))
    return [
        AlarmFacts(
            alarm_id, tuple(entries), frozenset(sent.get(alarm_id, ())), frozenset(notified.get(alarm_id, ()))
        )
        for alarm_id, entries in history.items()
    ]
