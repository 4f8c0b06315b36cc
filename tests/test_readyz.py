"""/readyz answers without disturbing the batch writer (real broker load, real databases)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx

from coldwatch.broker import RunningBroker
from coldwatch.readiness import WriteProbe
from coldwatch.storage import open_storage
from tests.conftest import (
    Backend,
    device_entries,
    distinct_messages,
    eventually,
    publish_all,
    reading,
    running_daemon,
    telemetry_topic,
    write_config,
)

PROBES_PER_S = 50


async def test_probes_at_50_per_second_never_disturb_ingest(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend
) -> None:
    """/readyz at 50/s while a broker load is stored: no storage error, no 503, every reading kept."""
    devices = device_entries("incubator", 20)
    config = write_config(
        tmp_path / "c.yaml",
        broker=broker,
        prefix=prefix,
        devices=devices,
        storage={"path": backend.location, "batch_max_delay_s": 0.005},
    )
    start = time.time() - 3600
    messages = [
        (telemetry_topic(config, d["id"]), reading(seq, {"temp_c": 37.0, "co2_pct": 5.0}, ts=start + seq))
        for seq in range(400)
        for d in devices
    ]
    statuses: list[tuple[int, str]] = []
    async with running_daemon(config) as running:
        done = asyncio.Event()

        async def hammer() -> None:
            loop = asyncio.get_running_loop()
            began = loop.time()
            async with (
                httpx.AsyncClient(base_url=running.base_url, timeout=10) as client,
                asyncio.TaskGroup() as probes,
            ):

                async def probe() -> None:
                    response = await client.get("/readyz")
                    statuses.append((response.status_code, response.text))

                sent = 0
                while not done.is_set():
                    probes.create_task(probe())
                    sent += 1
                    # A probe rate (each probe on its own, as a kubelet sends them), not a wait.
                    await asyncio.sleep(max(0.0, began + sent / PROBES_PER_S - loop.time()))

        prober = asyncio.create_task(hammer())
        try:
            # Paced in steps, so that ingest lasts several seconds of probes (a load, not one burst).
            step = len(messages) // 40
            for first in range(0, len(messages), step):
                await publish_all(broker, messages[first : first + step], clients=2)
                await asyncio.sleep(0.2)
            await eventually(
                lambda: distinct_messages(backend.location) == len(messages),
                timeout_s=180,
                what="the whole load stored",
            )
        finally:
            done.set()
            await prober
        errors = running.sample("coldwatch_storage_errors_total")
    failed = [s for s in statuses if s[0] != 200]
    assert len(statuses) >= 200, len(statuses)
    assert not failed, f"{len(failed)} of {len(statuses)} probes failed, e.g. {failed[:3]}"
    assert errors == 0


@contextlib.asynccontextmanager
async def _write_lock_held(backend: Backend) -> AsyncIterator[None]:
    """Another client holds the lock that the collector's writes need, until the block ends."""
    if backend.postgres:
        conn = await asyncpg.connect(backend.location)
        try:
            async with conn.transaction():
                await conn.execute("LOCK TABLE readings IN ACCESS EXCLUSIVE MODE")
                yield
        finally:
            await conn.close()
        return
    conn_sqlite = sqlite3.connect(backend.location, isolation_level=None)
    try:
        conn_sqlite.execute("BEGIN IMMEDIATE")
        yield
        conn_sqlite.execute("ROLLBACK")
    finally:
        conn_sqlite.close()


async def test_a_batch_stalled_on_a_lock_makes_the_probe_not_ready(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend
) -> None:
    """A batch that cannot commit (a lock held elsewhere) turns /readyz 503 within the freshness bound."""
    devices = device_entries("incubator", 1)
    config = write_config(
        tmp_path / "c.yaml", broker=broker, prefix=prefix, devices=devices, storage={"path": backend.location}
    )
    topic = telemetry_topic(config, devices[0]["id"])

    async def answers(client: httpx.AsyncClient, code: int) -> bool:
        return (await client.get("/readyz")).status_code == code

    async with (
        running_daemon(config) as running,
        httpx.AsyncClient(base_url=running.base_url, timeout=30) as client,
    ):
        await publish_all(broker, [(topic, reading(0, {"temp_c": 37.0}))], clients=1)
        await eventually(lambda: distinct_messages(backend.location) == 1, what="the first reading stored")
        assert await answers(client, 200)
        async with _write_lock_held(backend):
            await publish_all(broker, [(topic, reading(1, {"temp_c": 37.0}))], clients=1)
            stalled = time.monotonic()
            # The bound is the probe's 5 s freshness (PostgreSQL's statement timeout is a minute).
            await eventually(lambda: answers(client, 503), timeout_s=20, what="not ready while stalled")
            assert time.monotonic() - stalled < 20
        await eventually(lambda: distinct_messages(backend.location) == 2, timeout_s=60, what="stored after")
        await eventually(lambda: answers(client, 200), timeout_s=20, what="ready again")


class _Writer:
    """The writer's outcome as the pipeline reports it."""

    def __init__(self) -> None:
        self.last_write_ok = True
        self.last_write_at: float | None = None
        self.writing_since: float | None = None


async def test_probe_answers_from_the_writer_and_checks_only_when_idle(
    tmp_path: Path, backend: Backend
) -> None:
    """A fresh commit answers alone, a failed or stalled batch: not writable; idle: one shared check."""
    storage = open_storage(backend.location)
    await storage.open()
    try:
        now = [1000.0]
        writer = _Writer()
        probe = WriteProbe(storage, writer, fresh_s=5.0, clock=lambda: now[0])
        writer.last_write_at = 998.0
        assert await probe.writable()
        assert probe.checks == 0
        writer.last_write_ok = False
        assert not await probe.writable()
        writer.last_write_ok = True
        now[0] = 1010.0  # idle for 12 s: concurrent probes share one real check
        assert all(await asyncio.gather(*(probe.writable() for _ in range(20))))
        assert probe.checks == 1
        now[0] = 1016.0
        assert await probe.writable()
        assert probe.checks == 2
        writer.last_write_at = 1018.0  # then a batch started at 1019, still not committed at 1024
        writer.writing_since = 1019.0
        now[0] = 1022.0
        assert await probe.writable()
        now[0] = 1024.0
        assert not await probe.writable()
        assert probe.checks == 2
    finally:
        await storage.close()
