"""Several collectors sharing the devices: partitions leased in PostgreSQL, failover by lease expiry.

The devices are split into ``cluster.partitions`` partitions by a hash of their id. Each
member holds leases on some partitions (rows of ``partition_leases``, renewed every
``lease_s / 3``) and runs, for each partition it holds, a collector of its own
(:class:`coldwatch.daemon.Daemon` with :class:`~coldwatch.daemon.WorkerOptions`): its own
MQTT session (client id ``<client_id>-pNNN``, persistent, subscribed to the partition's
devices only), rules engine, alarm book and pipeline. So all of one device's readings and
rule state stay on one member.

When a member dies its leases run out; the others take its partitions over (each member
aims at its fair share, ``ceil(partitions / live members)``). Taking over is a restart of
that partition: the broker hands the partition's MQTT session, with everything queued for
it, to the new owner; open alarms are loaded and recent readings judged again, as after a
restart, so nothing is raised twice and nothing is forgotten. A member that cannot renew
its leases stops its partitions before they can expire, and every batch checks its lease
inside its transaction (a fence), so a stalled member cannot write after a takeover. A
takeover never waits for a stalled member: see :mod:`coldwatch.leases`.

No coordination service besides PostgreSQL: leases are rows, the clock is the database's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import socket
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from coldwatch.api import ApiContext
from coldwatch.audit import AuditDraft
from coldwatch.audit_keys import Anchorer, anchor_path, current_signer, load_signer, start_up_checks
from coldwatch.auth import Authenticator
from coldwatch.config import Config, DeviceConfig
from coldwatch.console.web import Console
from coldwatch.daemon import DRAIN_TIMEOUT_S, Daemon, WorkerOptions, config_loaded
from coldwatch.errors import StorageError
from coldwatch.http import HttpServer, build_app
from coldwatch.leases import LeaseChange, Leases, session_settings
from coldwatch.metrics import render
from coldwatch.notify.deliver import Deliverer
from coldwatch.notify.messages import alertmanager_resend
from coldwatch.pipeline import UserAction
from coldwatch.records.schedule import run_schedules
from coldwatch.routes import all_routes
from coldwatch.rules.lifecycle import Alarm, LifecycleError, Transition
from coldwatch.storage import DeviceState
from coldwatch.storage.postgres import OUTBOX_CHANNEL, AlarmIds, Fence, PostgresStorage

__all__ = ["AlarmIds", "ClusterDaemon", "Leases", "member_name", "partition_of", "partition_topics"]

log = logging.getLogger(__name__)


def partition_of(device_id: str, partitions: int) -> int:
    """The partition of a device: a stable hash of its id (the same on every member and version)."""
    return zlib.crc32(device_id.encode()) % partitions


def partition_topics(config: Config, devices: Iterable[DeviceConfig]) -> list[str]:
    """Topic filters for exactly ``devices`` (site, area and kind are checked on arrival, as always)."""
    prefix = config.mqtt.topic_prefix
    return [f"{prefix}/+/+/+/{device.id}/#" for device in devices]


def member_name(config: Config) -> str:
    """The member's name: configured, or host name and process id."""
    if config.cluster.name:
        return config.cluster.name
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}"


@dataclass
class _Worker:
    partition: int
    generation: int
    daemon: Daemon
    stop: asyncio.Event
    task: asyncio.Task[None]


class _MergedMetrics(Collector):
    """Every partition's metrics in one exposition, each sample labelled with its partition."""

    def __init__(self, workers: Mapping[int, _Worker]) -> None:
        self._workers = workers

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        for partition, worker in sorted(self._workers.items()):
            text = render(worker.daemon.registry).decode()
            for family in text_string_to_metric_families(text):
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(family.name, family.documentation, family.type)
                for sample in family.samples:
                    labels = {**sample.labels, "partition": str(partition)}
                    merged.add_sample(sample.name, labels, sample.value, sample.timestamp, sample.exemplar)
        return families.values()


class _States(Mapping[str, DeviceState]):
    """Device states for the API: live from the owning partition here, else as last stored."""

    def __init__(self, owner: ClusterDaemon) -> None:
        self._owner = owner

    def __getitem__(self, device_id: str) -> DeviceState:
        worker = self._owner.worker_of(device_id)
        if worker is not None and worker.daemon.states is not None and device_id in worker.daemon.states:
            return worker.daemon.states[device_id]
        return self._owner.stored_states[device_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._owner.stored_states)

    def __len__(self) -> int:
        return len(self._owner.stored_states)


@dataclass
class ClusterDaemon:
    """One cluster member: leases, a collector per held partition, the deliverer, one HTTP endpoint."""

    config: Config
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    on_ready: Any = lambda _: None
    http_port: int | None = None
    name: str = ""
    workers: dict[int, _Worker] = field(default_factory=dict)
    stored_states: dict[str, DeviceState] = field(default_factory=dict)
    open_alarms: list[Alarm] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.name = self.name or member_name(self.config)
        # The lease owner: the name and a token of this process, so that two processes given
        # the same name (a restart while the old one hangs) never pass each other's fences.
        self.owner = f"{self.name}#{uuid.uuid4().hex[:8]}"
        self._storage: PostgresStorage | None = None
        self._held: dict[int, int] = {}  # partitions held (with or without a collector)
        self._stopping: dict[int, asyncio.Task[None]] = {}
        self._deliverer: Deliverer | None = None
        self._delivering: asyncio.Task[None] | None = None
        self._listener: asyncpg.Connection[Any] | None = None
        self._delivery_lock = asyncio.Lock()
        self._renewed_at = time.monotonic()
        cc = self.config.cluster
        self._by_partition: dict[int, list[DeviceConfig]] = {p: [] for p in range(cc.partitions)}
        for device in self.config.devices:
            self._by_partition[partition_of(device.id, cc.partitions)].append(device)
        self._owned = Gauge(
            "coldwatch_cluster_partitions_owned", "Partitions this member holds", registry=self.registry
        )
        self._members = Gauge(
            "coldwatch_cluster_members", "Live members of the cluster, as last seen", registry=self.registry
        )
        self._changes = Counter(
            "coldwatch_cluster_lease_changes",
            "Partition leases acquired, lost and released by this member",
            ["change"],
            registry=self.registry,
        )
        self._ended = Counter(
            "coldwatch_cluster_stalled_sessions_ended",
            "Database sessions of a stalled member, still inside a batch after its lease ran out, "
            "ended by this member to take its partitions over",
            registry=self.registry,
        )
        self.registry.register(_MergedMetrics(self.workers))

    def worker_of(self, device_id: str) -> _Worker | None:
        """The local collector of the device's partition, if this member holds it."""
        return self.workers.get(partition_of(device_id, self.config.cluster.partitions))

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; then stop every partition in order and hand the leases back."""
        config = self.config
        url = str(config.storage.url)  # Config refuses a cluster without PostgreSQL
        # Every member seals its appends with the site's key (its tasks inherit the signer).
        signer = load_signer(config)
        current_signer.set(signer)
        lease_s = config.cluster.lease_s
        storage = PostgresStorage(
            url,
            quarantine_max_rows=config.storage.quarantine_max_rows,
            quarantine_max_bytes=config.storage.quarantine_max_bytes,
            server_settings=session_settings(lease_s, "member"),
        )
        await storage.open()
        self._storage = storage
        # Leases on a connection of their own: exports or a busy pool must not delay renewal.
        lease_store = PostgresStorage(
            url,
            pool_size=1,
            migrate=False,
            writer=False,
            server_settings=session_settings(lease_s, "lease"),
        )
        await lease_store.open()
        try:
            self.stored_states = dict(await storage.register_devices(config.devices))
            checks = await start_up_checks(storage, signer, time.time_ns() // 1000)
            await storage.record_audit([*checks, self._joined()])
            anchorer = Anchorer(storage, signer, anchor_path(config), config.audit.anchor_interval_s)
            leases = Leases(lease_store, self.owner, config.cluster.partitions, lease_s)
            await leases.prepare()
            ids = AlarmIds(storage, config.cluster.alarm_id_block)
            await ids.start()
            api_context = ApiContext(
                config, storage, self._submit, _States(self), Authenticator(config.api, os.environ)
            )
            # Any member serves the console; its actions go where _submit sends them (the
            # member holding the alarm's partition).
            console = Console(api_context)
            api = all_routes(api_context, console)
            readiness = functools.partial(self._readiness, storage)
            http = HttpServer(build_app(self.registry, readiness, api), config.http.host, config.http.port)
            self.http_port = http.port
            async with asyncio.TaskGroup() as tasks:
                server = tasks.create_task(http.serve(), name="http")
                watchdog = tasks.create_task(self._watchdog(), name="cluster-watchdog")
                manage = tasks.create_task(self._manage(storage, leases, ids, stop), name="cluster-leases")
                anchoring = tasks.create_task(anchorer.run(), name="audit-anchor")
                # Every member schedules reports; an advisory lock lets one generate each.
                reports = (tasks.create_task(run_schedules(storage, config), name="report-schedules")
                           if config.reports.schedules else None)  # fmt: skip
                self.on_ready(self)
                await manage
                watchdog.cancel()
                anchoring.cancel()
                if reports is not None:
                    reports.cancel()
                http.stop()
                try:
                    await asyncio.wait_for(asyncio.shield(server), 5)
                except TimeoutError:
                    server.cancel()
            await anchorer.anchor_now()
            await console.close()
        finally:
            await lease_store.close()
            await storage.close()

    async def _manage(
        self, storage: PostgresStorage, leases: Leases, ids: AlarmIds, stop: asyncio.Event
    ) -> None:
        renew_s = self.config.cluster.renew_s
        refresh = asyncio.get_running_loop().create_task(self._refresh(storage, stop), name="cluster-refresh")
        while not stop.is_set():
            started = time.monotonic()
            try:
                async with asyncio.timeout(renew_s):
                    change = await leases.round()
            except Exception as exc:  # the database is away or slow: keep trying; the watchdog fences
                log.warning("cannot renew partition leases: %s", str(exc) or type(exc).__name__)
            else:
                self._renewed_at = started
                try:
                    async with asyncio.timeout(renew_s):
                        await self._apply(change, leases, ids)
                except Exception:  # a loop boundary: the next round sets things right
                    log.exception("cluster round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, renew_s - (time.monotonic() - started)))
        for partition in list(self.workers):
            self._stop_partition(partition, reason="released", commit=True)
        if self._stopping:
            await asyncio.wait(list(self._stopping.values()))
        await self._set_delivering(held=False)
        refresh.cancel()
        with contextlib.suppress(Exception):
            await leases.leave()

    def _fresh(self) -> bool:
        """Renewed recently enough that the leases cannot run out before the next renewal."""
        cc = self.config.cluster
        return time.monotonic() - self._renewed_at <= cc.lease_s - cc.renew_s / 2

    async def _watchdog(self) -> None:
        """Stop every partition (and the deliverer) when the leases may run out before renewal."""
        while True:
            await asyncio.sleep(0.25)
            if (self.workers or self._delivering is not None) and not self._fresh():
                log.error(
                    "leases not renewed for %.1f s: stopping every partition before they can expire",
                    time.monotonic() - self._renewed_at,
                )
                self._held.clear()
                for partition in list(self.workers):
                    self._stop_partition(partition, reason="lost", commit=False)
                await self._set_delivering(held=False)

    async def _refresh(self, storage: PostgresStorage, stop: asyncio.Event) -> None:
        """Keep the member's view of open alarms and device states current (off the renewal path)."""
        while not stop.is_set():
            try:
                self.open_alarms = await storage.alarms(open_only=True, limit=1_000_000)
                self.stored_states.update(await storage.device_states())
            except Exception as exc:  # a task boundary: the view is only as old as the last success
                log.warning("cannot refresh the cluster's view of alarms and devices: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.cluster.renew_s)

    async def _apply(self, change: LeaseChange, leases: Leases, ids: AlarmIds) -> None:
        self._members.set(change.members)
        self._ended.inc(change.ended)
        if change.lost:
            log.warning("partition(s) %s lost to other members", sorted(change.lost))
            for partition in sorted(change.lost):
                self._stop_partition(partition, reason="lost", commit=False)
        self._hand_over(change.surplus, leases)
        self._held = {
            p: g for p, g in change.held.items() if p not in change.surplus and p not in self._stopping
        }
        self._run_held(change, ids)
        self._owned.set(len(self._held))
        # One deliverer in the cluster: the holder of partition 0.
        await self._set_delivering(held=0 in self._held and self._fresh())
        if self._deliverer is not None:
            self._deliverer.kick()  # in case a NOTIFY was missed (listener reconnecting)

    def _hand_over(self, surplus: list[int], leases: Leases) -> None:
        """Stop surplus partitions in order (committing what they hold), then release their leases."""
        for partition in surplus:
            if partition in self._held or partition in self.workers:
                log.info("handing partition %d over to another member", partition)
                self._held.pop(partition, None)
                self._stop_partition(
                    partition,
                    reason="released",
                    commit=True,
                    then=functools.partial(leases.release, [partition]),
                )

    def _run_held(self, change: LeaseChange, ids: AlarmIds) -> None:
        """A collector for every held partition with devices, of the lease's generation."""
        for partition, generation in sorted(self._held.items()):
            worker = self.workers.get(partition)
            if worker is not None and (worker.generation != generation or worker.task.done()):
                if worker.task.done() and not worker.task.cancelled() and worker.task.exception():
                    log.error("partition %d stopped: %s", partition, worker.task.exception())
                self._stop_partition(partition, reason="restarted", commit=False)
                continue  # started again once the old collector has stopped
            if worker is None and partition not in self._stopping and self._by_partition[partition]:
                if not self._fresh():
                    break  # this round is too old to act on: the next one decides
                self._start_worker(partition, generation, ids)
                if partition in change.acquired:
                    self._changes.labels("acquired").inc()

    def _start_worker(self, partition: int, generation: int, ids: AlarmIds) -> None:
        config = self.config
        devices = self._by_partition[partition]
        mqtt = config.mqtt.model_copy(update={"client_id": f"{config.mqtt.client_id}-p{partition:03d}"})
        worker_config = config.model_copy(update={"devices": devices, "mqtt": mqtt})
        fence = Fence(partition, self.owner, generation)

        def open_storage() -> PostgresStorage:
            return PostgresStorage(
                str(config.storage.url),
                quarantine_max_rows=config.storage.quarantine_max_rows,
                quarantine_max_bytes=config.storage.quarantine_max_bytes,
                pool_size=2,
                fence=fence,
                migrate=False,  # the member migrated when it started
                server_settings=session_settings(config.cluster.lease_s, "writer"),
            )

        options = WorkerOptions(
            topics=partition_topics(config, devices),
            open_storage=open_storage,
            alarm_ids=ids,
            on_notified=self._kick_deliverer,
        )
        daemon = Daemon(worker_config, worker=options)
        stop = asyncio.Event()
        task = asyncio.get_running_loop().create_task(daemon.run(stop), name=f"partition-{partition}")
        self.workers[partition] = _Worker(partition, generation, daemon, stop, task)
        log.info("partition %d (generation %d, %d device(s)) started", partition, generation, len(devices))

    def _stop_partition(
        self,
        partition: int,
        *,
        reason: str,
        commit: bool,
        then: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Stop a partition's collector in the background (not started again until it has stopped).

        ``commit``: let it commit what it holds first (a hand-over). Otherwise (a lost lease,
        whose batches the fence refuses anyway) it is cancelled at once and the broker gives
        what it held to the partition's next holder. ``then`` runs once it has stopped.
        """
        worker = self.workers.pop(partition, None)
        if worker is None:
            return
        if commit:
            worker.stop.set()
        else:
            worker.task.cancel()

        async def finish() -> None:
            done, _ = await asyncio.wait({worker.task}, timeout=DRAIN_TIMEOUT_S + 15)
            if not done:
                worker.task.cancel()
                await asyncio.wait({worker.task}, timeout=10)
            if worker.task.done() and not worker.task.cancelled() and worker.task.exception() is not None:
                log.error("partition %d ended with an error: %s", partition, worker.task.exception())
            self._changes.labels(reason).inc()
            log.info("partition %d stopped (%s)", partition, reason)
            if then is not None:
                await then()

        def forget(task: asyncio.Task[None]) -> None:
            if self._stopping.get(partition) is task:
                del self._stopping[partition]
            if not task.cancelled() and task.exception() is not None:
                log.error("stopping partition %d failed: %s", partition, task.exception())

        stopping = asyncio.get_running_loop().create_task(finish(), name=f"stop-partition-{partition}")
        stopping.add_done_callback(forget)
        self._stopping[partition] = stopping
        self._owned.set(len(self._held))

    async def _set_delivering(self, *, held: bool) -> None:
        """Run the outbox deliverer (and its NOTIFY listener) while holding partition 0, and only then."""
        async with self._delivery_lock:
            if held and self._storage is not None:
                if self._deliverer is None:
                    am = self.config.notify.alertmanager
                    devices = self.config.device_map()

                    def resend(now_us: int) -> list[dict[str, Any]]:
                        base = self.config.console.base_url
                        return alertmanager_resend(self.open_alarms, devices, now_us, am, base) if am else []

                    self._deliverer = Deliverer(
                        self._storage.outbox(), self.config.notify, resend=resend if am else None
                    )
                    self._delivering = asyncio.get_running_loop().create_task(
                        self._deliverer.run(), name="notify-deliver"
                    )
                if self._listener is None or self._listener.is_closed():
                    await self._listen()
            elif not held and self._deliverer is not None:
                deliverer, delivering = self._deliverer, self._delivering
                self._deliverer = self._delivering = None
                await self._unlisten()
                await deliverer.drain(5.0)
                if delivering is not None:
                    delivering.cancel()
                    await asyncio.wait({delivering}, timeout=10)

    async def _listen(self) -> None:
        await self._unlisten()
        try:
            listener = await asyncpg.connect(
                str(self.config.storage.url),
                timeout=5,
                server_settings=session_settings(self.config.cluster.lease_s, "member"),
            )
            await listener.add_listener(OUTBOX_CHANNEL, self._on_outbox)
        except Exception as exc:  # rounds still wake the deliverer: slower, not lost
            log.warning("cannot listen for new notifications (retried every round): %s", exc)
        else:
            self._listener = listener

    async def _unlisten(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None and not listener.is_closed():
            with contextlib.suppress(Exception):
                await listener.close(timeout=5)

    def _on_outbox(self, *_: object) -> None:
        self._kick_deliverer()

    def _kick_deliverer(self) -> None:
        if self._deliverer is not None:
            self._deliverer.kick()

    async def _submit(self, action: UserAction) -> Transition:
        for worker in self.workers.values():
            book, pipeline = worker.daemon.book, worker.daemon.pipeline
            if (
                book is not None
                and pipeline is not None
                and any(a.id == action.alarm_id for a in book.open.values())
            ):
                return await pipeline.submit(action)
        owner = await self._holder_of_alarm(action.alarm_id)
        if owner is None:
            raise LifecycleError(f"no open alarm {action.alarm_id}")
        partition, member = owner
        raise LifecycleError(
            f"alarm {action.alarm_id} belongs to partition {partition}, held by cluster member "
            f"{member.split('#')[0] if member else '(none: being taken over)'}, not {self.name}: "
            "send the action there"
        )

    async def _holder_of_alarm(self, alarm_id: int) -> tuple[int, str | None] | None:
        """The partition of an open alarm and the member holding it, or None if no such open alarm."""
        if self._storage is None:
            return None
        found = await self._storage.alarms(alarm_id=alarm_id, open_only=True, limit=1)
        if not found:
            return None
        partition = partition_of(found[0].key.device_id, self.config.cluster.partitions)
        member = await self._storage.pool.fetchval(
            "SELECT owner FROM partition_leases WHERE partition = $1 AND expires_at > now()", partition
        )
        return partition, member

    async def _readiness(self, storage: PostgresStorage) -> dict[str, bool]:
        # Holding no partition is not a fault: a spare member waits for one to come free.
        checks = {"database_writable": True}
        try:
            await storage.check_writable()
        except StorageError:
            checks["database_writable"] = False
        # Every partition must be subscribed and committing: one stuck partition makes the member unready.
        for worker in list(self.workers.values()):
            if worker.daemon.readiness is not None:
                for name, ok in (await worker.daemon.readiness()).items():
                    checks[name] = checks.get(name, True) and ok
        return checks

    def _joined(self) -> AuditDraft:
        return config_loaded(self.config, f"cluster member {self.owner} started with this configuration")
