"""The daemon: wires MQTT, the pipeline, storage and HTTP together in one TaskGroup."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import CollectorRegistry

from coldwatch.alarms import run_ticks, start_alarming
from coldwatch.api import ApiContext
from coldwatch.audit import AuditDraft
from coldwatch.audit_keys import Anchorer, anchor_path, current_signer, load_signer, start_up_checks
from coldwatch.audit_seal import Signer
from coldwatch.auth import Authenticator
from coldwatch.calibrating import run_calibration_checks
from coldwatch.config import Config
from coldwatch.console.web import Console
from coldwatch.errors import StorageError
from coldwatch.http import HttpServer, build_app
from coldwatch.metrics import Metrics
from coldwatch.mqtt import MqttSource
from coldwatch.notifying import notifications
from coldwatch.pipeline import Pipeline
from coldwatch.readiness import WriteProbe
from coldwatch.records.schedule import run_schedules
from coldwatch.routes import all_routes
from coldwatch.rules.engine import Engine
from coldwatch.rules.lifecycle import AlarmBook
from coldwatch.storage import DeviceState, Storage, open_storage
from coldwatch.storage.identity_store import identity_store
from coldwatch.storage.postgres import AlarmIds, PostgresStorage

__all__ = ["Daemon", "WorkerOptions", "config_loaded", "run_until_signalled"]

log = logging.getLogger(__name__)
DRAIN_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class WorkerOptions:
    """How a cluster member's per-partition Daemon differs from a standalone collector."""

    topics: list[str]  # the partition's devices only
    open_storage: Callable[[], Storage]  # fenced by the partition's lease
    alarm_ids: Callable[[], int]  # unique across the cluster
    on_notified: Callable[[], None]  # wakes the member's deliverer (the partitions plan, it sends)


@dataclass
class Daemon:
    """One collector. ``await daemon.run(stop)`` runs it until ``stop`` is set."""

    config: Config
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    on_ready: Callable[[Daemon], None] = lambda _: None
    http_port: int | None = None
    storage: Storage | None = None
    engine: Engine | None = None
    book: AlarmBook | None = None
    pipeline: Pipeline | None = None
    readiness: Callable[[], Awaitable[dict[str, bool]]] | None = None
    states: dict[str, DeviceState] | None = None
    # A cluster member runs one Daemon per partition it owns (coldwatch.cluster) with these set:
    worker: WorkerOptions | None = None

    async def run(self, stop: asyncio.Event) -> None:  # noqa: PLR0915 - the one place that wires a collector
        """Run until ``stop`` is set, then commit what is queued and shut down in order."""
        config, worker = self.config, self.worker
        # Every audit append in this collector's tasks is sealed with this key (coldwatch.audit_keys).
        signer = load_signer(config)
        current_signer.set(signer)
        storage = self.storage = self._storage()
        await storage.open()
        if worker is None and isinstance(storage, PostgresStorage):
            await _refuse_cluster_database(storage)
        anchorer = None
        async with contextlib.AsyncExitStack() as resources:
            resources.push_async_callback(storage.close)
            states = self.states = await storage.register_devices(config.devices)
            if worker is None:
                anchorer = await _start_audit(config, storage, signer)
                # The final anchor, once the last batch is committed (storage closes after it).
                resources.push_async_callback(anchorer.anchor_now)
            metrics = Metrics(self.registry, config.devices)
            if anchorer is not None:
                anchorer.on_failure = metrics.audit_anchor_failures.inc
            engine, book = await start_alarming(
                config, storage, states, metrics, only_own_alarms=worker is not None
            )
            book.allocate = await self._alarm_ids(storage)
            self.engine, self.book = engine, book
            notifier, deliverer = await resources.enter_async_context(
                notifications(config, book, metrics, storage)
            )
            prefix = config.mqtt.topic_prefix
            pipeline: Pipeline  # made below: the source's callbacks and the pipeline need each other
            source = MqttSource(
                config.mqtt,
                worker.topics if worker is not None else [f"{prefix}/#"],
                on_connection_change=self._connection_metric(metrics),
                # Back-pressure: reading stops while the writer's queue is (nearly) full.
                room=lambda: pipeline.has_room(),  # noqa: PLW0108 - pipeline is made below
                wait_room=lambda: pipeline.wait_room(),  # noqa: PLW0108 - pipeline is made below
                on_pause=metrics.read_pauses.inc,
                on_session_lost=lambda: _session_lost(metrics, pipeline),
                # A run that stored readings before had a session the broker should still hold.
                expect_session=any(s.last_seq is not None for s in states.values()),
            )
            pipeline = Pipeline(
                config,
                storage,
                metrics,
                states,
                source.ack,
                engine=engine,
                book=book,
                notifier=notifier,
                on_notified=worker.on_notified if worker is not None else deliverer.kick,
                resend=source.publish,
            )
            self.pipeline = pipeline
            metrics.oldest_unacked_us, metrics.unacked = source.oldest_unacked_us, source.unacked

            api_context = ApiContext(
                config, storage, pipeline.submit, states, Authenticator(config.api, os.environ)
            )
            console = Console(api_context)
            resources.push_async_callback(console.close)
            api = all_routes(api_context, console)
            readiness = functools.partial(
                _readiness, WriteProbe(storage, pipeline), source, config.ingest.max_unacked_age_s
            )
            self.readiness = readiness
            http = None
            if worker is None:
                http = HttpServer(
                    build_app(self.registry, readiness, api), config.http.host, config.http.port
                )
                self.http_port = http.port
            async with asyncio.TaskGroup() as tasks:
                ingest = tasks.create_task(source.run(pipeline.offer), name="mqtt-ingest")
                writer = tasks.create_task(pipeline.run_writer(), name="storage-writer")
                server = tasks.create_task(http.serve(), name="http") if http is not None else None
                ticks = tasks.create_task(run_ticks(pipeline.tick), name="rule-timers")
                checks = run_calibration_checks(identity_store(storage), config, pipeline)
                calibration = tasks.create_task(checks, name="calibration-check")
                notify = tasks.create_task(deliverer.run(), name="notify-deliver") if worker is None else None
                anchoring = tasks.create_task(anchorer.run(), name="audit-anchor") if anchorer else None
                # A cluster member's partition workers leave the schedules to the member.
                reports = (tasks.create_task(run_schedules(storage, config), name="report-schedules")
                           if config.reports.schedules and worker is None else None)  # fmt: skip
                # Configuration, rule state and imports live as long as the process: leave
                # them out of the collector's scans (full collections stalled the loop).
                gc.freeze()
                self.on_ready(self)
                await stop.wait()
                ticks.cancel()
                calibration.cancel()
                if reports is not None:
                    reports.cancel()
                if anchoring is not None:
                    anchoring.cancel()
                await _commit_queued(pipeline, source)
                if notify is not None:
                    # In-flight notifications finish (and are recorded); pending ones wait in the outbox.
                    await deliverer.drain(5.0)
                    notify.cancel()
                writer.cancel()
                ingest.cancel()
                if http is not None and server is not None:
                    http.stop()
                    try:
                        await asyncio.wait_for(asyncio.shield(server), 5)
                    except TimeoutError:
                        server.cancel()

    async def _alarm_ids(self, storage: Storage) -> Callable[[], int] | None:
        """Where alarm ids come from: the cluster's blocks, the shared sequence, or (SQLite) the book."""
        if self.worker is not None:
            return self.worker.alarm_ids
        if isinstance(storage, PostgresStorage):
            # Other collectors may write to the same database: ids from its shared sequence.
            ids = AlarmIds(storage, self.config.cluster.alarm_id_block)
            await ids.start()
            return ids
        return None

    def _storage(self) -> Storage:
        if self.worker is not None:
            return self.worker.open_storage()
        cfg = self.config.storage
        return open_storage(
            cfg.location,
            quarantine_max_rows=cfg.quarantine_max_rows,
            quarantine_max_bytes=cfg.quarantine_max_bytes,
        )

    @staticmethod
    def _connection_metric(metrics: Metrics) -> Callable[[bool], None]:
        def update(connected: bool) -> None:
            metrics.broker_connected.set(int(connected))
            if connected:
                metrics.broker_connects.inc()

        return update


def _session_lost(metrics: Metrics, pipeline: Pipeline) -> None:
    """The broker lost our session: count it and let the pipeline ask the devices to re-send."""
    metrics.broker_session_lost.inc()
    pipeline.session_lost(time.time_ns() // 1000)


async def _start_audit(config: Config, storage: Storage, signer: Signer) -> Anchorer:
    """Restore the audit trail's guards, record the start, and make the anchorer."""
    checks = await start_up_checks(storage, signer, time.time_ns() // 1000)
    await storage.record_audit([*checks, config_loaded(config)])
    return Anchorer(storage, signer, anchor_path(config), config.audit.anchor_interval_s)


async def _refuse_cluster_database(storage: PostgresStorage) -> None:
    """Refuse, before writing anything, to run outside a cluster on a cluster's database."""
    partitions = await storage.cluster_partitions()
    if partitions is not None:
        await storage.close()
        # Its alarms and device state belong to the members' partitions: a collector outside
        # the cluster would raise the same alarms again and block their batches.
        raise StorageError(
            f"{storage.where}: this database belongs to a cluster ({partitions} partitions): "
            "run this collector as a member (cluster.enabled: true), or give it a database of its own"
        )


async def _commit_queued(pipeline: Pipeline, source: MqttSource) -> None:
    """Stop taking messages, commit what is queued, and wait until the broker stops sending."""
    log.info("stopping: committing %d queued message(s)", pipeline.depth)
    pipeline.close_intake()
    try:
        await asyncio.wait_for(pipeline.drain(), DRAIN_TIMEOUT_S)
    except TimeoutError:
        log.warning("%d message(s) not committed; the broker will redeliver them", pipeline.depth)
    if not await source.wait_quiet():
        log.warning("the broker kept sending during shutdown")


async def _readiness(probe: WriteProbe, source: MqttSource, max_unacked_age_s: float) -> dict[str, bool]:
    """Connected, the database takes writes (writer undisturbed), nothing held unacknowledged long."""
    oldest_us = source.oldest_unacked_us()
    held_s = 0.0 if oldest_us is None else time.time_ns() / 1e9 - oldest_us / 1e6
    return {
        "broker_connected": source.connected.is_set(),
        "database_writable": await probe.writable(),
        "messages_acknowledged": held_s <= max_unacked_age_s,
    }


def config_loaded(config: Config, reason: str = "collector started with this configuration") -> AuditDraft:
    """The audit entry that records which configuration the collector runs with."""
    return AuditDraft(
        at_us=time.time_ns() // 1000,
        actor="coldwatch",
        action="config.loaded",
        object_type="config",
        object_id=config.source,
        old_value=None,
        new_value=f"sha256 {config.sha256}",
        reason=reason,
    )


class Runnable(Protocol):
    """A collector or a cluster member."""

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set."""


async def run_until_signalled(daemon: Runnable) -> None:
    """Run ``daemon`` until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await daemon.run(stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
