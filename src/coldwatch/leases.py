"""Partition leases in PostgreSQL: renewal, fair share, and a takeover no stalled holder can block.

A lease is a row of ``partition_leases`` (owner, generation, expiry by the database's
clock), renewed every ``lease_s / 3``. Every batch of a partition holds the partition's
*fence* (a transaction-scoped advisory lock, shared) from before it checks its lease until
it commits (:meth:`coldwatch.storage.postgres.PostgresStorage.write_batch`). A member taking
an expired lease over takes the fence exclusively in the same transaction that changes the
owner. If the previous holder is still inside a batch, it has stalled (frozen, or cut off
from the database with its session left open on the server): a healthy member stops its
partitions before its leases can expire. The taker then ends that holder's sessions, which
rolls their transactions back, and takes the fence. So a batch either commits before the
takeover or sees the new owner and is refused, and a takeover never waits for the holder.

Sessions that hold other locks (a lease round, an audit append) are ended by the server
itself once they idle inside a transaction for long (:func:`session_settings`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Literal

import asyncpg

from coldwatch.errors import StorageError
from coldwatch.storage.audit_pg import PgConnection
from coldwatch.storage.postgres import FENCE_LOCK, PostgresStorage

__all__ = ["LeaseChange", "Leases", "session_settings"]

log = logging.getLogger(__name__)

# PostgreSQL 14: pg_terminate_backend(pid, timeout) waits until the session has ended.
MIN_SERVER_VERSION: Final = (14,)

# The sessions holding the fence of the given partitions (not this one), each told to end.
_END_FENCE_HOLDERS: Final = """
    SELECT l.objid::int, l.pid, pg_terminate_backend(l.pid)
    FROM pg_locks AS l
    WHERE l.locktype = 'advisory' AND l.granted AND l.pid <> pg_backend_pid()
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid = $1::bigint::oid AND l.objid = ANY($2::int[]::oid[]) AND l.objsubid = 2
"""
# Wait (up to $2 ms each) until those of the sessions still there have ended, and so released their
# locks. They were all told at once, so they end together: the waits do not add up.
_WAIT_ENDED: Final = """
    SELECT pg_terminate_backend(a.pid, $2::bigint) FROM pg_stat_activity AS a WHERE a.pid = ANY($1::int[])
"""


def _ms(seconds: float) -> str:
    return str(max(1, math.ceil(seconds * 1000)))


def session_settings(lease_s: float, role: Literal["member", "writer", "lease"]) -> dict[str, str]:
    """Server settings for a member's database sessions: none holds a lock long past a lease.

    A session idle inside a transaction (its member frozen, or cut off) is ended by the server,
    and its locks go with it: a ``lease`` session (renewals and takeovers, transactions of
    milliseconds) before its lease rows expire; a ``member`` session (alarm ids, audit
    entries, notification attempts) after a lease. A partition's ``writer`` stalled inside a
    batch is ended at the takeover by the member taking its partition over; the server's own
    limit is the fallback, should that member not be allowed to end it.
    """
    idle_s = {"lease": lease_s / 2, "member": lease_s, "writer": 2 * lease_s}[role]
    settings = {
        "idle_in_transaction_session_timeout": _ms(idle_s),
        # A peer gone silent is noticed by the server within about a lease, rather than after the
        # operating system's two hours (these apply to TCP connections; a Unix socket ignores them).
        "tcp_keepalives_idle": str(max(1, math.ceil(lease_s / 3))),
        "tcp_keepalives_interval": str(max(1, math.ceil(lease_s / 9))),
        "tcp_keepalives_count": "3",
        "tcp_user_timeout": _ms(lease_s),
    }
    if role == "lease":  # a round never waits long, and never outlives its time limit on the server
        settings["lock_timeout"] = _ms(lease_s / 3)
        settings["statement_timeout"] = _ms(lease_s / 3)
    return settings


@dataclass
class LeaseChange:
    """What one renewal round decided."""

    held: dict[int, int] = field(default_factory=dict)  # partition -> generation, after the round
    acquired: dict[int, int] = field(default_factory=dict)
    lost: set[int] = field(default_factory=set)
    surplus: list[int] = field(default_factory=list)  # to hand back: more than the fair share
    members: int = 1
    ended: int = 0  # sessions of stalled previous holders ended to take their partitions


class Leases:
    """The partition leases of one member, in PostgreSQL (``partition_leases``, ``collectors``)."""

    def __init__(self, storage: PostgresStorage, name: str, partitions: int, lease_s: float) -> None:
        self._storage = storage
        self.name = name
        self.partitions = partitions
        self.lease_s = lease_s
        self.held: dict[int, int] = {}

    async def prepare(self) -> None:
        """Create the partitions' rows; refuse a partition count other members do not share."""
        async with self._storage.pool.acquire() as conn, conn.transaction():
            version = conn.get_server_version()
            if version[:1] < MIN_SERVER_VERSION:
                raise StorageError(
                    f"cluster mode needs PostgreSQL {MIN_SERVER_VERSION[0]} or later; "
                    f"the server is {version.major}.{version.minor}"
                )
            await conn.execute(
                "INSERT INTO storage_info VALUES ('partitions', $1) ON CONFLICT (key) DO NOTHING",
                str(self.partitions),
            )
            stored = int(await conn.fetchval("SELECT value FROM storage_info WHERE key = 'partitions'"))
            if stored != self.partitions:
                raise StorageError(
                    f"the cluster has {stored} partitions and this member is configured with "
                    f"{self.partitions}: every member must use the same cluster.partitions"
                )
            await conn.execute(
                "INSERT INTO partition_leases(partition) SELECT generate_series(0, $1 - 1) "
                "ON CONFLICT (partition) DO NOTHING",
                self.partitions,
            )

    async def round(self) -> LeaseChange:
        """Heartbeat, renew what is held, take free partitions up to the fair share; say what changed."""
        lease = self.lease_s
        change = LeaseChange()
        async with self._storage.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO collectors(name, seen_at) VALUES ($1, now()) "
                "ON CONFLICT (name) DO UPDATE SET seen_at = now()",
                self.name,
            )
            renewed = await conn.fetch(
                "UPDATE partition_leases SET expires_at = now() + make_interval(secs => $2) "
                "WHERE owner = $1 AND expires_at > now() RETURNING partition, generation",
                self.name,
                lease,
            )
            held = {int(r[0]): int(r[1]) for r in renewed}
            change.lost = {p for p, g in self.held.items() if held.get(p) != g}
            change.members = int(
                await conn.fetchval(
                    "SELECT count(*) FROM collectors WHERE seen_at > now() - make_interval(secs => $1)",
                    lease,
                )
            )
            fair = math.ceil(self.partitions / max(1, change.members))
            if len(held) < fair:
                # Rows another member is taking right now are skipped (they are not stalled).
                expired = await conn.fetch(
                    "SELECT partition FROM partition_leases WHERE expires_at <= now() "
                    "ORDER BY partition LIMIT $1 FOR UPDATE SKIP LOCKED",
                    fair - len(held),
                )
                fenced = await self._fence(conn, [int(r[0]) for r in expired], change)
                if fenced:
                    taken = await conn.fetch(
                        "UPDATE partition_leases SET owner = $1, generation = generation + 1, "
                        "expires_at = now() + make_interval(secs => $2) "
                        "WHERE partition = ANY($3::int[]) RETURNING partition, generation",
                        self.name,
                        lease,
                        fenced,
                    )
                    change.acquired = {int(r[0]): int(r[1]) for r in taken}
                    held.update(change.acquired)
            elif len(held) > fair:
                change.surplus = sorted(held)[fair:]
        self.held = held
        change.held = dict(held)
        return change

    async def _fence(self, conn: PgConnection, partitions: list[int], change: LeaseChange) -> list[int]:
        """Of expired ``partitions``, those whose fence this round now holds exclusively.

        A partition whose fence is still held has a stalled previous holder inside a batch:
        its sessions are ended (their transactions roll back) and the fence taken after all.
        """
        if not partitions:
            return []
        fenced = await self._try_fences(conn, partitions)
        busy = [p for p in partitions if p not in fenced]
        if not busy:
            return fenced
        # Within the round's time limit (the lease session's statement_timeout, lease_s / 3); the
        # server looks every 100 ms whether a session has ended.
        wait_ms = max(150, min(1000, int(self.lease_s / 6 * 1000)))
        try:
            async with conn.transaction():  # a savepoint: a refusal must not undo the round
                ended = await conn.fetch(_END_FENCE_HOLDERS, FENCE_LOCK, busy)
                if ended:
                    await conn.execute(_WAIT_ENDED, [int(r[1]) for r in ended], wait_ms)
        except asyncpg.PostgresError as exc:
            # For example a role that may not end the other members' sessions: such a session
            # ends at idle_in_transaction_session_timeout (or when its member wakes) instead.
            log.warning("cannot end the stalled sessions holding partitions %s: %s", busy, exc)
            return fenced
        for partition, pid, _ in ended:
            log.warning(
                "partition %d: ending the session (server process %d) its previous holder left inside "
                "a batch: that member has stalled, its lease ran out",
                partition,
                pid,
            )
        change.ended += sum(1 for *_, told in ended if told)
        return sorted(fenced + await self._try_fences(conn, busy))

    async def _try_fences(self, conn: PgConnection, partitions: list[int]) -> list[int]:
        """Those of ``partitions`` whose fence could be taken at once (held until the round commits)."""
        rows = await conn.fetch(
            "SELECT p FROM unnest($2::int[]) AS p WHERE pg_try_advisory_xact_lock($1, p)",
            FENCE_LOCK,
            partitions,
        )
        return [int(r[0]) for r in rows]

    async def release(self, partitions: Iterable[int]) -> None:
        """Hand partitions back at once (their collectors have stopped and committed)."""
        wanted = list(partitions)
        if not wanted:
            return
        await self._storage.pool.execute(
            "UPDATE partition_leases SET owner = NULL, expires_at = '-infinity' "
            "WHERE owner = $1 AND partition = ANY($2::int[])",
            self.name,
            wanted,
        )
        for p in wanted:
            self.held.pop(p, None)

    async def leave(self) -> None:
        """Release everything and leave the member list (a clean shutdown)."""
        await self.release(list(self.held))
        await self._storage.pool.execute("DELETE FROM collectors WHERE name = $1", self.name)
