"""The deliverer: posts outbox rows over HTTP, records every attempt, retries with backoff.

The only module that imports the HTTP client. It works on a database connection of its
own (the storage's connection belongs to the batch writer). Each receiver (channel,
target) is served by one task at a time, one request at a time, so a slow or dead
receiver never holds up the others. Within a receiver, notifications are delivered in
order per *order key* (one alarm; for Alertmanager one alert identity): a row that
failed holds back only the later rows of its own key, never another alarm's.

What an answer means is decided in :mod:`coldwatch.notify.failures`: an outage (5xx,
408, 429, no answer) is retried with jittered exponential backoff for as long as it
lasts, honouring Retry-After; a permanent rejection (other 4xx) is retried a bounded
number of times and then dead-lettered, with notices to the other channels. Retry times
are kept *in the database*, so a restarted deliverer carries on where the last one
stopped. Once outages hit two different order keys in one pass, the receiver is taken
to be down: it is then probed with one request per retry interval (plus one for each new
notification) instead of every pending row. The deliverer sleeps until the earliest retry
(or Alertmanager re-send) is due, or until :meth:`Deliverer.kick` says something new was
enqueued: it never polls.

Delivery is at least once: a request that reached its receiver but whose answer was lost
is sent again, with the same ``Idempotency-Key`` (webhooks) or the same labels
(Alertmanager, which merges repeated alerts).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiosqlite
import httpx
import orjson

from coldwatch import __version__
from coldwatch.audit import AuditDraft
from coldwatch.notify import outbox
from coldwatch.notify.config import NotifyConfig
from coldwatch.notify.failures import DeadLetter, Verdict, classify, dead_letter_notices, retry_after_s
from coldwatch.notify.messages import rfc3339
from coldwatch.notify.model import ALERTMANAGER_TARGET, Channel, OutboxItem
from coldwatch.notify.outbox import OutboxRow

__all__ = ["Deliverer", "backoff_s"]

log = logging.getLogger(__name__)
US = 1_000_000
Lane = tuple[Channel, str]
ALERTMANAGER_LANE: Lane = (Channel.ALERTMANAGER, ALERTMANAGER_TARGET)
ResendSource = Callable[[int], Sequence[Mapping[str, Any]]]
# Outages on this many order keys in one pass: the receiver is down, not one payload.
OUTAGE_KEYS = 2


def backoff_s(attempt: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """The delay before retry number ``attempt`` (1 = after the first failure), jittered.

    Derived from the attempt count alone, which is stored, so it survives a restart.
    """
    ceiling = min(max_s, initial_s * 2.0 ** min(attempt - 1, 62))
    return rng.uniform(ceiling / 2, ceiling)


def _wall_clock_us() -> int:
    return time.time_ns() // 1000


class Deliverer:
    """Delivers the outbox on ``db`` (a connection of its own) until stopped or drained.

    ``resend(now_us)``, if given, returns the firing alerts to re-send to Alertmanager
    every ``alertmanager.resend_s`` (see :func:`coldwatch.notify.messages.alertmanager_resend`).
    """

    def __init__(
        self,
        db: aiosqlite.Connection | outbox.OutboxStore,
        config: NotifyConfig,
        *,
        resend: ResendSource | None = None,
        client: httpx.AsyncClient | None = None,
        clock_us: Callable[[], int] = _wall_clock_us,
        rng: random.Random | None = None,
        batch_limit: int = 100,
    ) -> None:
        self._db: outbox.OutboxStore = outbox.SqliteOutbox(db) if isinstance(db, aiosqlite.Connection) else db
        self.config = config
        self._resend = resend if config.alertmanager is not None else None
        self._client = client
        self._clock_us = clock_us
        self._rng = rng or random.Random()
        self._batch_limit = batch_limit
        self._db_lock = asyncio.Lock()  # one transaction at a time on our connection
        self._wake = asyncio.Event()
        self._finished = asyncio.Event()
        self._lanes: dict[Lane, asyncio.Task[None]] = {}
        self._closing = False
        self._running = False
        self._next_resend_us = 0  # re-send at once on start: Alertmanager may have restarted too
        # For metrics (plain counters; the metrics module exports them).
        self.delivered: Counter[str] = Counter()  # notifications delivered, by channel
        self.failed: Counter[str] = Counter()  # failed attempts, by channel
        self.resends: Counter[str] = Counter()  # Alertmanager re-sends, "ok" / "failed"
        self.dead_lettered: Counter[str] = Counter()  # notifications dead-lettered, by channel
        self.pending = 0  # rows waiting, as of the last wake-up
        self.oldest_pending_us: int | None = None
        self.dead_letters = 0  # rows in the dead-letter state, as of the last wake-up
        # Receivers taken to be down: retried no earlier than this (new rows still probe).
        self._down_until: dict[Lane, int] = {}
        # Down receivers whose new rows were not among the first due rows (a long backlog):
        # not spawned again for new rows until the next kick, so the loop never spins.
        self._no_fresh: set[Lane] = set()
        self.changed = asyncio.Condition()  # notified after every attempt

    def kick(self) -> None:
        """Wake up: new items were enqueued (call after the batch that stored them commits)."""
        self._no_fresh.clear()
        self._wake.set()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Deliver until ``stop`` is set or :meth:`drain` is called; in-flight requests finish."""
        if self._running:
            raise RuntimeError("this deliverer is already running")
        self._running = True
        self._finished.clear()
        self._lanes.clear()
        client = self._client or httpx.AsyncClient(headers={"User-Agent": f"coldwatch/{__version__}"})
        try:
            async with asyncio.TaskGroup() as tasks:
                watcher = tasks.create_task(self._watch(stop), name="notify-stop") if stop else None
                await self._loop(tasks, client)
                if watcher is not None:
                    watcher.cancel()
        finally:
            if self._client is None:
                await client.aclose()
            self._running = False
            self._finished.set()

    async def drain(self, timeout_s: float) -> bool:
        """Stop: finish the requests in flight, start no new one. False if cut short at ``timeout_s``."""
        self._closing = True
        self._wake.set()
        if not self._running:
            return True
        try:
            await asyncio.wait_for(self._finished.wait(), timeout_s)
        except TimeoutError:
            # Unrecorded requests stay due: the next start sends them again (same idempotency key).
            for task in list(self._lanes.values()):
                task.cancel()
            await self._finished.wait()
            return False
        return True

    async def _watch(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._closing = True
        self._wake.set()

    async def _loop(self, tasks: asyncio.TaskGroup, client: httpx.AsyncClient) -> None:
        while not self._closing:
            self._wake.clear()  # before reading: a kick from now on is not lost
            now = self._clock_us()
            try:
                async with self._db_lock:
                    heads = await self._db.lane_heads()
                    summary = await self._db.pending_summary()
            except Exception:  # a loop boundary: a database error of either backend is retried
                log.exception("cannot read the notification outbox; retrying")
                await self._sleep_until(now + round(self.config.retry_initial_s * US), now)
                continue
            self.pending, self.oldest_pending_us = summary.count, summary.oldest_created_us
            self.dead_letters = summary.dead_lettered
            wake_at: int | None = None
            for head in heads:
                if head.lane in self._lanes:
                    continue
                start_us = head.next_attempt_us
                # A new notification probes a receiver taken to be down at once.
                if not head.fresh or head.lane in self._no_fresh:
                    start_us = max(start_us, self._down_until.get(head.lane, 0))
                if start_us <= now:
                    self._spawn(tasks, client, head.lane)
                else:
                    wake_at = start_us if wake_at is None else min(wake_at, start_us)
            if self._resend is not None and ALERTMANAGER_LANE not in self._lanes:
                if self._next_resend_us <= now:
                    self._spawn(tasks, client, ALERTMANAGER_LANE)
                else:
                    wake_at = self._next_resend_us if wake_at is None else min(wake_at, self._next_resend_us)
            await self._sleep_until(wake_at, now)

    async def _sleep_until(self, wake_at_us: int | None, now_us: int) -> None:
        """Wait for a kick, a lane finishing, a stop, or ``wake_at_us``."""
        timeout = None if wake_at_us is None else max(0.0, (wake_at_us - now_us) / US)
        try:
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            pass

    def _spawn(self, tasks: asyncio.TaskGroup, client: httpx.AsyncClient, lane: Lane) -> None:
        self._lanes[lane] = tasks.create_task(self._lane(client, lane), name=f"notify-{lane[0]}-{lane[1]}")

    async def _lane(self, client: httpx.AsyncClient, lane: Lane) -> None:
        """Send a receiver's due rows, in order per order key, until none is due or it is down."""
        try:
            while not self._closing:
                resend_due = self._resend is not None and self._next_resend_us <= self._clock_us()
                if lane == ALERTMANAGER_LANE and resend_due:
                    await self._resend_now(client)
                async with self._db_lock:
                    now = self._clock_us()
                    rows = await self._db.due(now, self._batch_limit, lane=lane)
                groups = _by_order_key(rows)
                probing = self._down_until.get(lane, 0) > now
                if probing:  # down: only new notifications are tried before the retry time
                    groups = [g for g in groups if g[0].attempts == 0]
                    if not groups:
                        self._no_fresh.add(lane)
                if not groups or not await self._pass(client, lane, groups, probing=probing):
                    return
        except Exception:
            log.exception("notification lane %s/%s failed; retrying", *lane)
            # Do not spin on a persistent fault: the next wake-up spawns the lane again.
            await asyncio.sleep(self.config.retry_initial_s)
        finally:
            self._lanes.pop(lane, None)
            self._wake.set()

    async def _pass(
        self, client: httpx.AsyncClient, lane: Lane, groups: list[list[OutboxRow]], *, probing: bool
    ) -> bool:
        """Attempt each group's rows in order, a group stopping at its first failure.

        False if the lane must stop: closing, or outages on enough order keys to take the
        receiver to be down (one while probing).
        """
        outages: list[int] = []
        for group in groups:
            for row in group:
                if self._closing:
                    return False
                verdict, next_us = await self._attempt(client, row)
                if verdict is Verdict.DELIVERED:
                    self._down_until.pop(lane, None)
                    probing = False
                    continue
                if verdict is Verdict.OUTAGE and next_us is not None:
                    outages.append(next_us)
                break  # the rest of this key waits behind the failed row
            if outages and len(outages) >= (1 if probing else OUTAGE_KEYS):
                # Down until its earliest retry: of the rows that just failed, or of one not
                # attempted in this pass whose own retry comes sooner (else it would wait past
                # its backoff for the others').
                async with self._db_lock:
                    heads = await self._db.lane_heads()
                sooner = [h.next_attempt_us for h in heads if h.lane == lane and not h.fresh]
                self._down_until[lane] = max(self._down_until.get(lane, 0), min([*outages, *sooner]))
                return False
        return True

    def _receiver(self, row: OutboxRow) -> tuple[str, dict[str, str], float] | None:
        """URL, headers and timeout of a row's receiver, from the current configuration."""
        headers = {"Content-Type": "application/json"}
        if row.channel is Channel.ALERTMANAGER:
            am = self.config.alertmanager
            return None if am is None else (am.alerts_url, headers, am.timeout_s)
        hook = self.config.webhooks.get(row.target)
        if hook is None:
            return None
        headers["Idempotency-Key"] = row.notification_id
        headers.update({k: v.get_secret_value() for k, v in hook.headers.items()})
        return hook.url, headers, hook.timeout_s

    async def _attempt(self, client: httpx.AsyncClient, row: OutboxRow) -> tuple[Verdict, int | None]:
        """One delivery attempt of ``row``, recorded: its verdict and, if retried, when."""
        receiver = self._receiver(row)
        if receiver is None:
            gone = f"no {row.channel.value} receiver {row.target!r} in the configuration: given up"
            log.error("notification %s: %s", row.notification_id, gone)
            await self._dead_letter(row, status=None, error=gone, at_us=self._clock_us(), rejected=False)
            return Verdict.REJECTED, None
        url, headers, timeout_s = receiver
        content = row.body
        if row.channel is Channel.WEBHOOK:
            body = orjson.loads(row.body)
            body["sent_at"] = rfc3339(self._clock_us())
            content = orjson.dumps(body)
        status: int | None = None
        error: str | None = None
        wait_s: float | None = None
        try:
            response = await client.post(url, content=content, headers=headers, timeout=timeout_s)
            status = response.status_code
            verdict = classify(status)
            if verdict is not Verdict.DELIVERED:
                error = f"HTTP {status}: {response.text[:200]}"
                wait_s = retry_after_s(response.headers.get("retry-after"), self._clock_us())
        except httpx.HTTPError as exc:
            verdict, error = Verdict.OUTAGE, f"{type(exc).__name__}: {exc}"[:500]
        at_us = self._clock_us()
        if verdict is Verdict.DELIVERED:
            await self._record(row, ok=True, status=status, error=None, next_attempt_us=None, at_us=at_us)
            return verdict, None
        assert error is not None
        rejected = verdict is Verdict.REJECTED
        if rejected and row.rejections + 1 >= self.config.dead_letter_after_rejections:
            await self._dead_letter(row, status=status, error=error, at_us=at_us, rejected=True)
            return verdict, None
        delay = backoff_s(row.attempts + 1, self.config.retry_initial_s, self.config.retry_max_s, self._rng)
        if wait_s is not None and verdict is Verdict.OUTAGE:
            delay = max(delay, min(wait_s, self.config.retry_after_max_s))
        next_us = at_us + round(delay * US)
        log.warning(
            "notification %s to %s %s (attempt %d): %s; retry in %.1f s",
            row.notification_id,
            row.target,
            "rejected" if rejected else "failed",
            row.attempts + 1,
            error,
            delay,
        )
        await self._record(
            row, ok=False, status=status, error=error, next_attempt_us=next_us, at_us=at_us, rejected=rejected
        )
        return verdict, next_us

    async def _dead_letter(
        self, row: OutboxRow, *, status: int | None, error: str, at_us: int, rejected: bool
    ) -> None:
        """Give ``row`` up: dead-letter it, and tell the other channels about it."""
        dead = DeadLetter(
            row.notification_id,
            row.channel,
            row.target,
            row.body,
            row.alarm_id,
            row.attempts + 1,
            status,
            error,
            at_us,
        )
        notices = dead_letter_notices(self.config, dead)
        log.error(
            "notification %s to %s dead-lettered after %d attempt(s): %s; %d notice(s) to other receivers",
            row.notification_id,
            row.target,
            row.attempts + 1,
            error,
            len(notices),
        )
        await self._record(
            row,
            ok=False,
            status=status,
            error=error,
            next_attempt_us=None,
            at_us=at_us,
            rejected=rejected,
            dead=True,
            notices=notices,
        )

    async def _record(
        self,
        row: OutboxRow,
        *,
        ok: bool,
        status: int | None,
        error: str | None,
        next_attempt_us: int | None,
        at_us: int | None = None,
        rejected: bool = False,
        dead: bool = False,
        notices: Sequence[OutboxItem] = (),
    ) -> None:
        at = self._clock_us() if at_us is None else at_us
        async with self._db_lock:
            if ok:
                action, outcome = "notification.sent", "delivered"
            elif dead:
                action, outcome = "notification.dead_lettered", "dead-lettered, no longer retried"
            else:
                action, outcome = (
                    "notification.failed",
                    "rejected, retrying" if rejected else "failed, retrying",
                )
            reason = error or f"attempt {row.attempts + 1}"
            if dead:
                told = ", ".join(f"{n.channel.value} {n.target}" for n in notices) or "nobody else configured"
                reason = f"{reason}; after {row.attempts + 1} attempt(s); notices to: {told}"
            audit = AuditDraft(
                at_us=at,
                actor="coldwatch",
                action=action,
                object_type="notification",
                object_id=row.notification_id,
                old_value=None,
                new_value=f"{row.channel.value} {row.target}: {outcome} (HTTP {status})",
                reason=reason,
            )
            await self._db.record_attempt(
                row.id,
                at_us=at,
                ok=ok,
                status=status,
                error=error,
                next_attempt_us=next_attempt_us,
                audit=audit,
                rejected=rejected,
                dead=dead,
                notices=notices,
            )
        (self.delivered if ok else self.failed)[row.channel.value] += 1
        if dead:
            self.dead_lettered[row.channel.value] += 1
            self.dead_letters += 1
            if notices:
                self._wake.set()  # the notices are new rows
        async with self.changed:
            self.changed.notify_all()

    async def _resend_now(self, client: httpx.AsyncClient) -> None:
        """Re-send every firing alert, so Alertmanager keeps them firing (not recorded: periodic)."""
        am = self.config.alertmanager
        assert am is not None
        assert self._resend is not None
        now = self._clock_us()
        self._next_resend_us = now + round(am.resend_s * US)
        alerts = list(self._resend(now))
        if not alerts:
            return
        try:
            response = await client.post(am.alerts_url, json=alerts, timeout=am.timeout_s)
            ok = response.is_success
        except httpx.HTTPError as exc:
            log.warning("Alertmanager re-send failed: %s", exc)
            ok = False
        self.resends["ok" if ok else "failed"] += 1
        async with self.changed:
            self.changed.notify_all()


def _by_order_key(rows: Sequence[OutboxRow]) -> list[list[OutboxRow]]:
    """Due rows grouped by order key (each in id order): new notifications' groups first.

    A group whose first row was never attempted goes before groups being retried, so a
    notification that keeps failing never keeps a new one waiting.
    """
    groups: dict[str, list[OutboxRow]] = {}
    for row in rows:
        groups.setdefault(row.order_key or f"id/{row.id}", []).append(row)
    return sorted(groups.values(), key=lambda g: (g[0].attempts > 0, g[0].id))
