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
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from coldwatch.alarms import run_ticks, start_alarming
from coldwatch.api import ApiContext, build_router
from coldwatch.audit import AuditDraft
from coldwatch.auth import Authenticator
from coldwatch.config import Config
from coldwatch.errors import StorageError
from coldwatch.http import HttpServer, build_app
from coldwatch.metrics import Metrics
from coldwatch.mqtt import MqttSource
from coldwatch.notifying import notifications
from coldwatch.pipeline import Pipeline
from coldwatch.rules.engine import Engine
from coldwatch.rules.lifecycle import AlarmBook
from coldwatch.storage import Storage, open_storage

__all__ = ["Daemon", "run_until_signalled"]

log = logging.getLogger(__name__)
DRAIN_TIMEOUT_S = 15.0


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

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then commit what is queued and shut down in order."""
        config = self.config
        storage = open_storage(config.storage.path, quarantine_max_rows=config.storage.quarantine_max_rows)
        await storage.open()
        self.storage = storage
        async with contextlib.AsyncExitStack() as resources:
            resources.push_async_callback(storage.close)
            states = await storage.register_devices(config.devices)
            await storage.record_audit([_config_loaded(config)])
            metrics = Metrics(self.registry, config.devices)
            engine, book = await start_alarming(config, storage, states, metrics)
            self.engine, self.book = engine, book
            notifier, deliverer = await resources.enter_async_context(notifications(config, book, metrics))
            prefix = config.mqtt.topic_prefix
            source = MqttSource(
                config.mqtt,
                [f"{prefix}/#"],
                on_connection_change=self._connection_metric(metrics),
                # Back-pressure: reading stops while the writer's queue is (nearly) full.
                room=lambda: pipeline.has_room(),  # noqa: PLW0108 - pipeline is made below
                wait_room=lambda: pipeline.wait_room(),  # noqa: PLW0108 - pipeline is made below
                on_pause=metrics.read_pauses.inc,
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
                on_notified=deliverer.kick,
            )
            self.pipeline = pipeline

            api = build_router(
                ApiContext(config, storage, pipeline.submit, states, Authenticator(config.api, os.environ))
            )
            readiness = functools.partial(_readiness, storage, source, pipeline)
            http = HttpServer(build_app(self.registry, readiness, api), config.http.host, config.http.port)
            self.http_port = http.port
            async with asyncio.TaskGroup() as tasks:
                ingest = tasks.create_task(source.run(pipeline.offer), name="mqtt-ingest")
                writer = tasks.create_task(pipeline.run_writer(), name="storage-writer")
                server = tasks.create_task(http.serve(), name="http")
                ticks = tasks.create_task(run_ticks(pipeline.tick), name="rule-timers")
                notify = tasks.create_task(deliverer.run(), name="notify-deliver")
                # Configuration, rule state and imports live as long as the process: leave
                # them out of the collector's scans (full collections stalled the loop).
                gc.freeze()
                self.on_ready(self)
                await stop.wait()
                log.info("stopping: committing %d queued message(s)", pipeline.depth)
                ticks.cancel()
                pipeline.close_intake()
                try:
                    await asyncio.wait_for(pipeline.drain(), DRAIN_TIMEOUT_S)
                except TimeoutError:
                    log.warning("%d message(s) not committed; the broker will redeliver them", pipeline.depth)
                if not await source.wait_quiet():
                    log.warning("the broker kept sending during shutdown")
                # In-flight notifications finish (and are recorded); pending ones wait in the outbox.
                await deliverer.drain(5.0)
                notify.cancel()
                http.stop()
                writer.cancel()
                ingest.cancel()
                try:
                    await asyncio.wait_for(asyncio.shield(server), 5)
                except TimeoutError:
                    server.cancel()

    @staticmethod
    def _connection_metric(metrics: Metrics) -> Callable[[bool], None]:
        def update(connected: bool) -> None:
            metrics.broker_connected.set(int(connected))
            if connected:
                metrics.broker_connects.inc()

        return update


async def _readiness(storage: Storage, source: MqttSource, pipeline: Pipeline) -> dict[str, bool]:
    """Connected to the broker, and the database takes writes."""
    writable = True
    try:
        await storage.check_writable()
    except StorageError:
        writable = False
    return {
        "broker_connected": source.connected.is_set(),
        "database_writable": writable and pipeline.last_write_ok,
    }


def _config_loaded(config: Config) -> AuditDraft:
    """The audit entry that records which configuration the collector runs with."""
    return AuditDraft(
        at_us=time.time_ns() // 1000,
        actor="coldwatch",
        action="config.loaded",
        object_type="config",
        object_id=config.source,
        old_value=None,
        new_value=f"sha256 {config.sha256}",
        reason="collector started with this configuration",
    )


async def run_until_signalled(daemon: Daemon) -> None:
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
