"""The ingest pipeline: decoded messages in, committed batches out, then acknowledgements.

The MQTT task decodes each message (pure) and puts it on a bounded queue; the writer
task takes what is queued, up to a batch size or a short delay, commits it in one
transaction and only then acknowledges the messages to the broker, in arrival order.
A full queue makes the MQTT task wait, which stops acknowledgements and so, through
the broker's in-flight window, slows delivery: back-pressure instead of unbounded memory.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Literal, NamedTuple

from coldwatch.audit import AuditDraft
from coldwatch.config import Config
from coldwatch.errors import StorageError
from coldwatch.export import format_ts
from coldwatch.metrics import Metrics
from coldwatch.mqtt import READ_BURST, Delivery, backoff_delays
from coldwatch.notify.planner import Notifier
from coldwatch.payload import Reason, Rejection, Status, Telemetry, decode
from coldwatch.ratelog import RateLimitedLog
from coldwatch.recovering import Recovery, SessionLost
from coldwatch.rules.engine import Engine, Readback
from coldwatch.rules.lifecycle import Alarm, AlarmBook, LifecycleError, Transition
from coldwatch.rules.model import AlarmEvent, AlarmKey, EngineReading, EventKind
from coldwatch.sequence import SeqEvent, SeqTracker
from coldwatch.signatures import SignatureDraft, alarm_facts, bind
from coldwatch.storage.base import Batch, BatchResult, DeviceState, QuarantineEntry, Storage

__all__ = ["Pipeline"]

_RAISING = frozenset({EventKind.RAISED, EventKind.SEVERITY_CHANGED})  # events that page someone
log = logging.getLogger(__name__)
_DETAIL_CHARS = 300  # of an internal error's message, in its quarantine entry


def internal_error(exc: Exception, device_id: str | None = None) -> Rejection:
    """The rejection of a message the collector failed on (its own fault, caught)."""
    return Rejection(Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"[:_DETAIL_CHARS], device_id)


@dataclass(frozen=True, slots=True)
class Tick:
    """The current time, for the rules' timers (communication loss)."""

    now_us: int


@dataclass(frozen=True, slots=True)
class UserAction:
    """A named user's action on an alarm, applied by the writer like everything else."""

    kind: Literal["acknowledge", "shelve", "unshelve"]
    alarm_id: int
    actor: str
    reason: str
    until_us: int | None = None
    # The electronic signature of the action (coldwatch.signatures), bound to the alarm when applied.
    signature: SignatureDraft | None = None


@dataclass(frozen=True, slots=True)
class BookCheck:
    """Alarm events decided from the open alarms as the writer sees them (calibration due dates)."""

    now_us: int
    decide: Callable[[Mapping[AlarmKey, Alarm]], list[AlarmEvent]]


@dataclass(frozen=True, slots=True)
class ResendEcho:
    """A re-send request seen on our own subscription: acknowledged, nothing stored."""


Decoded = Telemetry | Status | Rejection | Tick | UserAction | SessionLost | ResendEcho | BookCheck


@dataclass(slots=True)
class _Item:
    delivery: Delivery | None  # None for ticks and user actions: nothing to acknowledge
    decoded: Decoded
    reply: asyncio.Future[Transition] | None = None
    outcome: Transition | None = None


class _Judged(NamedTuple):
    """A batch judged by the rules, waiting for (or in) its commit."""

    items: list[_Item]
    batch: Batch
    alarm_readings_us: list[int]  # live readings that raised an alarm in it


def audit_draft(transition: Transition) -> AuditDraft:
    """The audit trail entry of one alarm transition (system or user)."""
    alarm = transition.alarm
    measured = "".join(
        f"{name} {number} "
        for name, number in (("value", alarm.value), ("limit", alarm.limit))
        if number is not None
    )
    facts = (
        f"{alarm.key.rule} on {alarm.key.device_id}/{alarm.key.metric}: {measured}"
        f"at {format_ts(transition.ts_us)} (device time)"
    )
    new_value = f"{alarm.state.value} {alarm.severity.label}" + (" late" if alarm.late else "")
    if transition.event == "shelved" and alarm.shelved_until_us is not None:
        # The shelve's end is what the user chose: the trail must say until when.
        new_value += f", shelved until {format_ts(alarm.shelved_until_us)}"
    return AuditDraft(
        at_us=transition.received_us,
        actor=transition.actor,
        action=f"alarm.{transition.event}",
        object_type="alarm",
        object_id=str(alarm.id),
        old_value=transition.from_state.value if transition.from_state else None,
        new_value=new_value,
        reason=transition.reason or facts,
    )


class Pipeline:
    """Decodes, batches, stores and acknowledges messages."""

    def __init__(
        self,
        config: Config,
        storage: Storage,
        metrics: Metrics,
        states: dict[str, DeviceState],
        ack: Callable[[list[Delivery]], None],
        *,
        engine: Engine,
        book: AlarmBook,
        notifier: Notifier | None = None,
        on_notified: Callable[[], None] = lambda: None,
        clock_us: Callable[[], int] = lambda: time.time_ns() // 1000,
        resend: Callable[[str, bytes], bool] | None = None,
    ) -> None:
        self._config = config
        # Readings missing upstream: asked for again (``resend`` publishes a request).
        self.recovery = Recovery(config, book, metrics, states, alarms=self._alarms, resend=resend)
        self._devices = config.device_map()
        self._storage = storage
        self._metrics = metrics
        self._tracker = SeqTracker(states)
        self._ack = ack
        self.engine = engine
        self.book = book
        self.notifier = notifier
        self._on_notified = on_notified
        self._clock_us = clock_us
        self._ranges = config.ingest.ranges()
        # Faults on single messages are counted exactly but logged once a minute per kind.
        self._faults = RateLimitedLog(log)
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=config.ingest.queue_max)
        self._taken: list[_Item] = []  # taken from the queue for the next batch
        self._judged = 0  # messages of batches judged and not yet committed
        # At most two batches between the queue and their commit: one being committed, one
        # judged (or being judged) meanwhile.
        self._ahead = asyncio.Semaphore(2)
        self._overflow: deque[_Item] = deque()
        self._room = asyncio.Event()
        self.peak_depth = 0  # the most messages ever held (back-pressure bounds it)
        # Reading stops this far below the queue's end: a read burst always fits.
        self._room_below = max(1, config.ingest.queue_max - 2 * READ_BURST)
        self.committed = asyncio.Condition()
        self.last_write_ok = True
        self.last_write_at: float | None = None  # monotonic time of the last commit (readiness)
        self.writing_since: float | None = None  # monotonic start of the batch write in progress
        self._closing = False
        metrics.queue_depth = lambda: self.depth
        for device_id, state in states.items():
            if state.last_received_us is not None:
                metrics.last_received_us[device_id] = state.last_received_us
            if state.online is not None:
                metrics.per_device.online[device_id] = int(state.online)

    @property
    def depth(self) -> int:
        """Messages received and not yet committed."""
        return self._queue.qsize() + len(self._taken) + self._judged + len(self._overflow)

    def has_room(self) -> bool:
        """Whether the MQTT side may read more: a burst of reads must still fit in the queue."""
        # Every message held counts (queued, being batched and being committed): the
        # configured queue size bounds what this process holds, not just the queue.
        return not self._overflow and self.depth < self._room_below

    def _judged_batch(self, items: list[_Item]) -> None:
        """The batch being taken is judged: it waits for (or is in) its commit."""
        self._judged += len(items)
        self._taken = []

    def _done_writing(self, items: list[_Item]) -> None:
        """A batch is committed: its messages no longer count, so the reader may go on."""
        self._judged -= len(items)
        if self.has_room():
            self._room.set()

    async def wait_room(self) -> None:
        """Wait until :meth:`has_room` (the writer takes items out)."""
        while not self.has_room():
            self._room.clear()
            await self._room.wait()

    def offer(self, delivery: Delivery) -> None:
        """Decode one delivery and queue it for the writer without waiting (the MQTT callback).

        The broker sends at most ``mqtt.receive_maximum`` messages unacknowledged, and the
        queue is larger (checked by the configuration), so there is room: the backlog stays
        at the broker, held by MQTT flow control, never in this process.
        """
        if self._closing:
            return
        if delivery.topic.endswith("/resend"):
            # Our own request (subscribed to the whole prefix): nothing to store.
            item = _Item(delivery, ResendEcho())
        else:
            try:
                decoded = self._decode(delivery)
            except Exception as exc:
                self._faults.exception("decode", "could not decode a message on %s", delivery.topic[:200])
                decoded = internal_error(exc)
            item = _Item(delivery, decoded)
        self.peak_depth = max(self.peak_depth, self.depth + 1)
        if self._overflow or self._queue.full():
            # Only without flow control (MQTT 3.1.1 on a broker that does not cap what it
            # sends in flight): kept in order, counted in the queue depth.
            self._overflow.append(item)
            return
        self._queue.put_nowait(item)

    def _decode(self, delivery: Delivery) -> Telemetry | Status | Rejection:
        ingest = self._config.ingest
        return decode(
            delivery.topic,
            delivery.payload,
            self._clock_us(),
            self._devices,
            prefix=self._config.mqtt.topic_prefix,
            max_payload_bytes=ingest.max_payload_bytes,
            max_future_skew_s=ingest.max_future_skew_s,
            ranges=self._ranges,
        )

    def session_lost(self, at_us: int) -> None:
        """Queue the news that the broker lost our session (ahead of any message it sends next)."""
        item = _Item(None, SessionLost(at_us, self._config.mqtt.client_id))
        if self._overflow or self._queue.full():
            self._overflow.append(item)
        else:
            self._queue.put_nowait(item)

    async def _load_gaps(self) -> None:
        """Take up the gaps left open by the previous run."""
        self.recovery.load(await self._storage.open_gaps(list(self._devices)), self._clock_us())

    def tick(self, now_us: int) -> None:
        """Queue a timer tick unless the queue is full (a later tick will do)."""
        if not self._closing and not self._queue.full():
            self._queue.put_nowait(_Item(None, Tick(now_us)))

    def check(self, check: BookCheck) -> None:
        """Queue a check of alarms against the open ones, unless the queue is full (the next one will do)."""
        if not self._closing and not self._queue.full():
            self._queue.put_nowait(_Item(None, check))

    async def run_writer(self) -> None:
        """Commit batches until cancelled.

        The next batch is taken and judged while the previous one is being committed (on
        the database's own thread or server), so the rules and the database work side by
        side; batches still commit one at a time, in order. Both halves run in one task
        group: a failure of either stops the writer at once.
        """
        await self._load_gaps()  # before the first batch is judged
        handoff: asyncio.Queue[_Judged] = asyncio.Queue(maxsize=1)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._judge_batches(handoff), name="rules-judge")
            tasks.create_task(self._commit_batches(handoff), name="storage-commit")

    async def _judge_batches(self, handoff: asyncio.Queue[_Judged]) -> None:
        while True:
            await self._ahead.acquire()  # released once a batch is committed
            items = await self._take_batch()
            try:
                judged = await self._build(items)
            except BaseException:
                # What is being committed is committed and acknowledged before the writer stops.
                await handoff.join()
                raise
            self._judged_batch(items)
            await handoff.put(judged)

    async def _commit_batches(self, handoff: asyncio.Queue[_Judged]) -> None:
        while True:
            judged = await handoff.get()
            await self._store(judged)
            handoff.task_done()
            self._ahead.release()

    def close_intake(self) -> None:
        """Stop queueing new messages (shutdown).

        They stay unacknowledged, so the broker keeps them for the next start.
        """
        self._closing = True

    async def drain(self) -> None:
        """Wait until everything queued is committed and acknowledged."""
        async with self.committed:
            await self.committed.wait_for(lambda: self.depth == 0)

    async def _take_batch(self) -> list[_Item]:
        storage_cfg = self._config.storage
        # Items move from the queue straight into self._taken, so depth never undercounts:
        # shutdown waits for depth 0 and must not see a half-assembled batch as done.
        items = self._taken
        items.append(await self._queue.get())
        deadline = asyncio.get_running_loop().time() + storage_cfg.batch_max_delay_s
        while len(items) < storage_cfg.batch_max:
            while not self._queue.empty() and len(items) < storage_cfg.batch_max:
                items.append(self._queue.get_nowait())
            remaining = deadline - asyncio.get_running_loop().time()
            if len(items) >= storage_cfg.batch_max or remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    items.append(await self._queue.get())
            except TimeoutError:
                break
        while self._overflow and not self._queue.full():
            self._queue.put_nowait(self._overflow.popleft())
        if self.has_room():
            self._room.set()
        return items

    async def _build(self, items: list[_Item]) -> _Judged:
        batch = Batch()
        raised_us: list[int] = []  # device times of live readings that raised an alarm
        taken: dict[tuple[str, int, int], bytes] = {}  # (device, seq, ts) -> payload, this batch
        for item in items:
            decoded = item.decoded
            if isinstance(decoded, Telemetry):
                wanted = self.engine.stored_wanted(decoded.device_id, decoded.ts_us, decoded.seq)
                if wanted is not None:
                    await self._read_back(wanted)
            try:
                self._take_item(batch, item, taken, raised_us)
            except Exception as exc:
                self._isolate(batch, item, exc)
        self.recovery.step(batch, self._clock_us())
        self._snapshot(batch)
        batch.audit += [audit_draft(t) for t in batch.transitions]
        if self.notifier is not None:
            # Every batch, ticks included: escalations fall due with time alone.
            batch.notifications = self.notifier.plan(
                batch.transitions, self.book.open.values(), self._clock_us()
            )
        return _Judged(items, batch, raised_us)

    async def _read_back(self, wanted: Readback) -> None:
        """Give the rules the stored readings a late reading's rewind judges again.

        Rare (a late reading within the horizon) and small (a device's readings since a
        checkpoint: at most a sixteenth of the horizon before the late one, and the rest up to
        its newest). The batch being committed meanwhile may or may not be in what is read:
        the rules keep its readings until they hear it is committed. A database that cannot
        be read is retried, as a commit is: the late reading is never judged on part of
        its history.
        """
        storage_cfg = self._config.storage
        next_delay = backoff_delays(storage_cfg.retry_initial_s, storage_cfg.retry_max_s, random.Random())
        while True:
            try:
                rows = [
                    r
                    async for r in self._storage.readings_since(
                        wanted.device_id, wanted.since_us, after_seq=wanted.after[1]
                    )
                ]
                break
            except Exception as exc:  # any backend's error: retried, as a commit is
                self._metrics.storage_errors.inc()
                delay = next_delay()
                log.error(  # noqa: TRY400 - expected, retried
                    "reading back %s for a late reading failed (%s); retrying in %.1f s",
                    wanted.device_id,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
        self._metrics.late_readbacks.inc()
        self.engine.give_stored(wanted, rows)

    def _take_item(
        self, batch: Batch, item: _Item, taken: dict[tuple[str, int, int], bytes], raised_us: list[int]
    ) -> None:
        """Add one item to the batch: judged, stored, rejected or applied."""
        decoded, delivery = item.decoded, item.delivery
        if self._take_internal(batch, item):
            return
        assert delivery is not None
        if isinstance(decoded, Telemetry):
            key = (decoded.device_id, decoded.seq, decoded.ts_us)
            first = taken.setdefault(key, delivery.payload)
            if first is not delivery.payload and first == delivery.payload:
                batch.copies += 1  # the same message again: acknowledged with the batch, kept once
                return
            try:
                self._telemetry(batch, decoded, delivery.received_us, raised_us)
            except BaseException:
                if taken.get(key) is delivery.payload:
                    del taken[key]  # a later copy is not a copy of something stored
                raise
        elif isinstance(decoded, Status):
            state = self._tracker.state(decoded.device_id)
            state.online = decoded.online
            batch.devices[decoded.device_id] = replace(state)
            events = self.engine.status(decoded.device_id, online=decoded.online, at_us=delivery.received_us)
            self._alarms(batch, events, delivery.received_us)
        elif isinstance(decoded, Rejection):
            self._reject(batch, delivery, decoded)

    def _take_internal(self, batch: Batch, item: _Item) -> bool:
        """Apply an item that is no message (a tick, a user action, news, a check); False for a message."""
        decoded = item.decoded
        if isinstance(decoded, Tick):
            self._alarms(batch, self.engine.advance(decoded.now_us), decoded.now_us)
        elif isinstance(decoded, UserAction):
            self._user_action(batch, item, decoded)
        elif isinstance(decoded, SessionLost):
            self.recovery.session_lost(batch, decoded)
        elif isinstance(decoded, BookCheck):
            self._alarms(batch, decoded.decide(self.book.open), decoded.now_us)
        else:
            return isinstance(decoded, ResendEcho)
        return True

    def _reject(self, batch: Batch, delivery: Delivery, rejection: Rejection) -> None:
        batch.rejections.append(
            QuarantineEntry.of(
                received_us=delivery.received_us,
                reason=rejection.reason.value,
                detail=rejection.detail,
                topic=delivery.topic,
                device_id=rejection.device_id,
                payload=delivery.payload,
                keep_bytes=self._config.storage.quarantine_payload_bytes,
            )
        )

    def _isolate(self, batch: Batch, item: _Item, exc: Exception) -> None:
        """One item failed while being judged: the batch goes on without it.

        A message becomes an ``internal_error`` rejection (quarantined, counted and
        acknowledged with the batch: never redelivered forever); a user action fails to
        its caller; a timer tick is skipped (the next one comes within a second).
        """
        self._faults.exception("judge", "could not judge %s", type(item.decoded).__name__)
        delivery = item.delivery
        if delivery is not None:
            device_id = getattr(item.decoded, "device_id", None)
            self._drop_reading(batch, item.decoded)
            self._reject(batch, delivery, internal_error(exc, device_id))
        elif item.reply is not None and not item.reply.done():
            item.outcome = None
            item.reply.set_exception(exc)

    @staticmethod
    def _drop_reading(batch: Batch, decoded: Decoded) -> None:
        """Take the reading of a failed message out of ``batch``, if it was added already.

        A reading is added before it is judged, and the rules' and alarms' own faults are
        caught there (the reading is stored, the fault counted): what can fail after it is
        the tracking of its device, whose sequence state then counts it as seen.
        """
        if batch.readings and batch.readings[-1][0] is decoded:
            batch.readings.pop()

    def _telemetry(self, batch: Batch, decoded: Telemetry, received_us: int, raised_us: list[int]) -> None:
        """Track, store and judge one reading."""
        metrics = self._metrics
        observation = self._tracker.observe(decoded.device_id, decoded.seq, decoded.ts_us, received_us)
        if observation.gap is not None:
            batch.gaps.append(observation.gap)
        if observation.event is SeqEvent.RESTART:
            metrics.per_device.add(metrics.per_device.seq_restarts, decoded.device_id)
        self.recovery.reading(batch, decoded.device_id, decoded.seq, observation, received_us)
        batch.readings.append((decoded, received_us))
        batch.devices[decoded.device_id] = replace(self._tracker.state(decoded.device_id))
        reading = EngineReading(
            decoded.device_id, decoded.ts_us, dict(decoded.values), decoded.seq, decoded.buffered, received_us
        )
        events = self._judge(reading)
        if self.engine.took_copy(decoded.device_id):
            # Judged before, so stored before (or in a batch being committed): kept once,
            # as first received, and counted as a duplicate.
            self._drop_reading(batch, decoded)
            batch.copies += 1
        if not decoded.buffered and any(e.kind in _RAISING for e in events):
            raised_us.append(decoded.ts_us)
        try:
            self._alarms(batch, events, received_us)
        except Exception:
            self._rule_fault(reading)

    def _snapshot(self, batch: Batch) -> None:
        """The rule state of the batch's devices that is due to be written, with the batch."""
        if not batch.readings:
            return
        try:
            batch.snapshots = self.engine.snapshots_due(dict.fromkeys(r.device_id for r, _ in batch.readings))
        except Exception:
            # A restart then judges more stored readings again; the batch is stored all the same.
            self._metrics.rule_errors.inc()
            self._faults.exception("snapshot", "rule state snapshot failed")

    def _judge(self, reading: EngineReading) -> list[AlarmEvent]:
        """The rules' verdict on one reading; a fault in a rule never stops the writer."""
        try:
            return self.engine.ingest(reading)
        except Exception:
            self._rule_fault(reading)
            self.engine.failed(reading)  # stored, not judged: never judged again either
            return []

    def _rule_fault(self, reading: EngineReading) -> None:
        """A rule or the alarm lifecycle failed on a valid reading: stored all the same, counted, logged."""
        self._metrics.rule_errors.inc()
        self._faults.exception("rules", "rules failed on %s seq %d", reading.device_id, reading.seq)

    def _user_action(self, batch: Batch, item: _Item, action: UserAction) -> None:
        now_us = self._clock_us()
        book = self.book
        try:
            if action.kind == "acknowledge":
                transition = book.acknowledge(action.alarm_id, action.actor, action.reason, now_us)
            elif action.kind == "shelve":
                assert action.until_us is not None
                transition = book.shelve(
                    action.alarm_id, action.actor, action.reason, action.until_us, now_us
                )
            else:
                transition = book.unshelve(action.alarm_id, action.actor, action.reason, now_us)
        except LifecycleError as exc:
            if item.reply is not None and not item.reply.done():
                item.reply.set_exception(exc)
            return
        batch.transitions.append(transition)
        item.outcome = transition
        if action.signature is not None:
            alarm = transition.alarm
            facts = alarm_facts(
                alarm.id, alarm.key.device_id, alarm.key.metric, alarm.key.rule, alarm.raised_ts_us
            )
            row, draft = bind(
                "alarm",
                str(alarm.id),
                action.kind,
                facts,
                action.signature,
                transition.received_us,
                self._config.site.timezone,
            )
            batch.signatures.append(row)
            batch.audit.append(draft)

    async def submit(self, action: UserAction) -> Transition:
        """Apply a user action; return its transition once committed."""
        reply: asyncio.Future[Transition] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Item(None, action, reply))
        return await reply

    def _alarms(self, batch: Batch, events: list[AlarmEvent], received_us: int) -> None:
        if events:
            batch.transitions += self.book.apply(events, received_us)

    async def _commit(self, items: list[_Item]) -> None:
        """Judge and commit one batch, with nothing in flight (the writer's step, unpipelined)."""
        judged = await self._build(items)
        self._judged_batch(items)
        await self._store(judged)

    async def _store(self, judged: _Judged) -> None:
        """Commit a judged batch, then acknowledge its messages and account for it."""
        items, batch, alarm_readings_us = judged
        if not (
            batch.readings
            or batch.rejections
            or batch.transitions
            or batch.devices
            or batch.notifications
            or batch.audit
            or batch.gap_updates
        ):
            # A timer tick that changed nothing: no transaction, no fsync.
            self._ack([item.delivery for item in items if item.delivery is not None])
            self._done_writing(items)
            async with self.committed:
                self.committed.notify_all()
            return
        storage_cfg = self._config.storage
        next_delay = backoff_delays(storage_cfg.retry_initial_s, storage_cfg.retry_max_s, random.Random())
        self.writing_since = time.monotonic()
        while True:
            started = time.perf_counter()
            try:
                result = await self._storage.write_batch(batch)
                break
            except StorageError as exc:
                # Nothing is acknowledged, so nothing is lost: keep the batch and retry.
                self.last_write_ok = False
                self._metrics.storage_errors.inc()
                delay = next_delay()
                log.error("%s; retrying in %.1f s", exc, delay)  # noqa: TRY400 - expected, retried
                await asyncio.sleep(delay)
        self.last_write_ok = True
        self.last_write_at = time.monotonic()
        self.writing_since = None
        self._metrics.batch_seconds.observe(time.perf_counter() - started)
        # The database holds these readings now: the rules need not (late data read back).
        self.engine.committed((r.device_id, r.ts_us, r.seq) for r, _ in batch.readings)
        self._observe_delays(batch, alarm_readings_us)
        self._metrics.batch_size.observe(len(items))
        self._ack([item.delivery for item in items if item.delivery is not None])
        for item in items:
            if item.reply is not None and item.outcome is not None and not item.reply.done():
                item.reply.set_result(item.outcome)
        self._done_writing(items)
        if batch.notifications:
            self._on_notified()
        self._account(batch, result)
        async with self.committed:
            self.committed.notify_all()

    def _observe_delays(self, batch: Batch, alarm_readings_us: list[int]) -> None:
        committed_us = self._clock_us()
        for reading, _ in batch.readings:
            if not reading.buffered:
                self._metrics.ingest_delay.observe((committed_us - reading.ts_us) / 1e6)
        for ts_us in alarm_readings_us:
            self._metrics.alarm_delay.observe((committed_us - ts_us) / 1e6)

    def _account(self, batch: Batch, result: BatchResult) -> None:
        metrics = self._metrics
        if batch.copies:
            metrics.duplicates.inc(batch.copies)
        for reading, received_us in batch.readings:
            if (reading.device_id, reading.seq, reading.ts_us) in result.duplicates:
                metrics.duplicates.inc()
            else:
                self._account_reading(reading, received_us, batch.devices[reading.device_id])
        for gap in batch.gaps:
            metrics.per_device.add(metrics.per_device.seq_missing, gap.device_id, gap.count)
        for _, outcome, _ in batch.gap_updates:
            metrics.gaps_resolved.labels(outcome).inc()
        for rejection in batch.rejections:
            metrics.rejected.labels(rejection.reason).inc()
        for device_id, state in batch.devices.items():
            if state.online is not None:
                metrics.per_device.online[device_id] = int(state.online)
        for transition in batch.transitions:
            metrics.alarm_transitions.labels(transition.alarm.key.rule, transition.event).inc()

    def _account_reading(self, reading: Telemetry, received_us: int, state: DeviceState) -> None:
        """Metrics of one stored reading, given its device's state as of its own batch.

        (The next batch may have been judged already: the tracker's state is ahead.)
        """
        metrics = self._metrics
        series = metrics.per_device
        series.add(series.readings, reading.device_id)
        metrics.values.labels(self._devices[reading.device_id].kind.value).inc(len(reading.values))
        if reading.buffered:
            series.add(series.buffered, reading.device_id)
        metrics.last_received_us[reading.device_id] = received_us
        # Only the newest reading sets the "last value": a backfilled old one must not.
        if state.last_ts_us is None or reading.ts_us >= state.last_ts_us:
            for name, value in reading.values:
                series.last_value.setdefault(reading.device_id, {})[name] = float(value)
            series.last_ts_s[reading.device_id] = reading.ts_us / 1e6
