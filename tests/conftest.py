"""Shared fixtures: a real Mosquitto broker, configurations, publishers and daemons.

Every integration test talks to a real Mosquitto started here on a free port, with the
recommended settings from config/mosquitto.conf. If Mosquitto cannot be started the
tests fail loudly: they are never skipped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, cast

import aiomqtt
import asyncpg
import pytest
import yaml
from prometheus_client import CollectorRegistry

from coldwatch.broker import RunningBroker, free_port, start_mosquitto, stop_process, wait_listening
from coldwatch.config import Config, load_config
from coldwatch.daemon import Daemon
from coldwatch.pgserver import RunningPostgres, start_postgres, stop_postgres


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBroker]:
    """One real Mosquitto for the session; tests keep apart by topic prefix and client id."""
    data_dir = tmp_path_factory.mktemp("mosquitto")
    host, port = "127.0.0.1", free_port()
    process = start_mosquitto(data_dir, host, port)
    wait_listening(host, port, process, data_dir, 15)
    yield RunningBroker(host, port, "mosquitto", process)
    stop_process(process)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[RunningPostgres]:
    """One private PostgreSQL for the session; each test gets a database of its own."""
    server = start_postgres()
    yield server
    stop_postgres(server)


@dataclass
class Backend:
    """A storage backend under test: where its database is, and a way to look inside it."""

    name: str
    location: str  # a SQLite path or a postgresql:// URL

    @property
    def postgres(self) -> bool:
        """True for PostgreSQL."""
        return self.name == "postgresql"

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` through a separate connection (placeholders: ``?`` SQLite, ``$n`` PostgreSQL)."""
        return db_query(self.location, sql, *args)


def db_query(location: str | Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` on the database at ``location``, through a connection of their own."""
    text = str(location)
    if text.startswith("postgresql://"):

        async def fetch() -> list[tuple[Any, ...]]:
            conn = await asyncpg.connect(text)
            try:
                return [tuple(row) for row in await conn.fetch(sql, *args)]
            finally:
                await conn.close()

        # Callable from sync helpers inside a running event loop: a loop of its own, in a thread.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, fetch()).result(30)
    with sqlite3.connect(f"file:{text}?mode=ro", uri=True, timeout=10) as conn:
        return conn.execute(sql, args).fetchall()


def new_pg_database(server: RunningPostgres) -> str:
    """A new, empty database on ``server``; returns its URL."""
    name = f"cw_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        conn = await asyncpg.connect(server.url())
        try:
            await conn.execute(f"CREATE DATABASE {name}")
        finally:
            await conn.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, create()).result(30)
    return server.url(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Each storage backend in turn: a fresh SQLite file, or a fresh database on the private PostgreSQL."""
    if request.param == "sqlite":
        return Backend("sqlite", str(tmp_path / "data" / "coldwatch.db"))
    server: RunningPostgres = request.getfixturevalue("pg_server")
    return Backend("postgresql", new_pg_database(server))


@pytest.fixture
def prefix() -> str:
    """A topic prefix of this test's own, so tests cannot see each other's messages."""
    return f"cw{uuid.uuid4().hex[:10]}"


def device_entries(
    kind: str, count: int, *, site: str = "site1", area: str = "area1"
) -> list[dict[str, Any]]:
    """Registry entries for ``count`` devices of one kind."""
    short = {"particle_counter": "pc", "incubator": "inc", "cryoshipper": "ln2"}[kind]
    entries: list[dict[str, Any]] = []
    for i in range(count):
        entry: dict[str, Any] = {"id": f"{short}-{i:03d}", "kind": kind, "site": site, "area": area}
        if kind == "particle_counter":
            entry["grade"] = "ABCD"[i % 4]
        entries.append(entry)
    return entries


def write_config(
    path: Path,
    *,
    broker: RunningBroker,
    prefix: str,
    devices: Sequence[dict[str, Any]],
    http_listen: str = "127.0.0.1:0",
    **sections: dict[str, Any],
) -> Config:
    """Write a YAML configuration for a test and return it loaded."""
    data: dict[str, Any] = {
        "mqtt": {"url": broker.url, "client_id": f"{prefix}-collector", "topic_prefix": prefix},
        "storage": {"path": str(path.parent / "coldwatch.db"), "batch_max_delay_s": 0.02},
        "http": {"listen": http_listen},
        "devices": list(devices),
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return load_config(path, environ={})


def telemetry_topic(config: Config, device_id: str) -> str:
    """The telemetry topic of a registered device."""
    device = config.device_map()[device_id]
    return f"{config.mqtt.topic_prefix}/{device.site}/{device.area}/{device.kind.value}/{device_id}/telemetry"


def reading(seq: int, values: dict[str, float | bool], *, ts: float | None = None, **extra: Any) -> bytes:
    """A valid telemetry payload."""
    return json.dumps(
        {"ts": time.time() if ts is None else ts, "seq": seq, "values": values, **extra}
    ).encode()


async def publish_all(
    broker: RunningBroker,
    messages: Sequence[tuple[str, bytes]],
    *,
    clients: int = 4,
    window: int = 200,
) -> None:
    """Publish every message at QoS 1 from several clients; return when the broker has acked all."""

    async def worker(index: int) -> None:
        async with aiomqtt.Client(
            broker.host,
            broker.port,
            identifier=f"pub-{uuid.uuid4().hex[:8]}-{index}",
            max_inflight_messages=window,
            timeout=30,
        ) as client:
            mine = messages[index::clients]
            for start in range(0, len(mine), window):
                await asyncio.gather(
                    *(
                        client.publish(topic, payload, qos=1)
                        for topic, payload in mine[start : start + window]
                    )
                )

    await asyncio.gather(*(worker(i) for i in range(clients)))


def distinct_messages(db: Path | str) -> int:
    """Distinct (device, seq, ts) readings stored, read through a separate connection."""
    sql = "SELECT count(*) FROM (SELECT DISTINCT device, seq, ts_us FROM readings) AS d"
    if str(db).startswith("postgresql://"):
        try:
            return int(db_query(db, sql)[0][0])
        except asyncpg.UndefinedTableError:
            return 0
    if not Path(db).exists():
        return 0
    try:
        return int(db_query(db, sql)[0][0])
    except sqlite3.OperationalError:
        return 0


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    timeout_s: float = 30.0,
    interval_s: float = 0.1,
    what: str = "condition",
) -> None:
    """Wait for a condition another process makes true (nothing to await across processes)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(interval_s)


@dataclass
class InProcessDaemon:
    """A daemon running in the test's event loop."""

    daemon: Daemon
    registry: CollectorRegistry
    stop: asyncio.Event
    task: asyncio.Task[None]

    @property
    def base_url(self) -> str:
        """Where its HTTP endpoint listens."""
        return f"http://127.0.0.1:{self.daemon.http_port}"

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample from its registry (0 when absent)."""
        return self.registry.get_sample_value(name, labels or {}) or 0.0


@contextlib.asynccontextmanager
async def running_daemon(config: Config) -> AsyncIterator[InProcessDaemon]:
    """Run a daemon in this event loop until the block ends, then stop it cleanly."""
    registry = CollectorRegistry()
    ready = asyncio.Event()
    stop = asyncio.Event()
    daemon = Daemon(config, registry=registry, on_ready=lambda _: ready.set())
    task = asyncio.create_task(daemon.run(stop), name="daemon-under-test")
    ready_wait = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait({task, ready_wait}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        ready_wait.cancel()
        task.result()
    if ready_wait not in done:
        raise AssertionError("daemon did not start within 30 s")
    running = InProcessDaemon(daemon, registry, stop, task)
    await eventually(lambda: running.sample("coldwatch_broker_connected") == 1, what="broker connection")
    try:
        yield running
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def http_get(url: str, timeout_s: float = 10.0) -> tuple[int, bytes]:
    """GET ``url`` from a worker thread (the server may run in this event loop)."""

    def fetch() -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), bytes(exc.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0, b""  # not listening (yet)

    return await asyncio.to_thread(fetch)


class DaemonProcess:
    """``coldwatch run`` as a separate process, so a test can SIGKILL it."""

    def __init__(self, config_path: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the daemon."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "coldwatch", "run", "--config", str(self.config_path)],
                stdout=log,
                stderr=log,
                env=self.env,
                start_new_session=True,
            )

    def kill(self) -> None:
        """SIGKILL: no chance to flush or acknowledge anything."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self) -> int:
        """SIGTERM and wait for a clean exit; return the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)

    def log(self) -> str:
        """What the daemon logged."""
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


COMM_LOSS_OPEN = {
    "device": "inc-1",
    "kind": "incubator",
    "site": "s",
    "area": "lab",
    "metric": "device",
    "rule": "comm_loss",
    "severity": "action",
    "state": "active_unacknowledged",
}


def silent_incubator_config(
    path: Path,
    *,
    broker: RunningBroker,
    prefix: str,
    api: dict[str, Any],
    database: str | None = None,
    **sections: dict[str, Any],
) -> Config:
    """One incubator, inc-1, whose silence raises communication loss after 1 s; API users ``api``.

    ``database``: a SQLite path or PostgreSQL URL (default: coldwatch.db beside ``path``);
    ``sections``: further configuration sections (identity, site, ...).
    """
    return write_config(
        path,
        broker=broker,
        prefix=prefix,
        devices=[{"id": "inc-1", "kind": "incubator", "site": "s", "area": "lab"}],
        rules={"devices": {"inc-1": [{"type": "comm_loss", "timeout_s": 1}]}},
        api=api,
        storage={"path": database or str(path.parent / "coldwatch.db")},
        **cast("dict[str, Any]", sections),
    )


async def raise_comm_loss(broker: RunningBroker, config: Config, running: InProcessDaemon) -> None:
    """Publish one reading of inc-1, then wait for its silence to raise communication loss (alarm 1)."""
    await publish_all(broker, [(telemetry_topic(config, "inc-1"), reading(0, {"temp_c": 37.0}))], clients=1)
    await eventually(lambda: running.sample("coldwatch_alarms_open", COMM_LOSS_OPEN) == 1, what="an alarm")


async def check_backlog_drained_within_queue(
    config: Config, publish: Callable[[Sequence[tuple[str, bytes]]], Awaitable[None]], per_device: int = 300
) -> None:
    """Queue ``per_device`` readings of every device while the collector is away, then drain them.

    All must be stored, reading must have paused on the way, and the collector must never
    have held more messages than its ingest queue.
    """
    async with running_daemon(config):
        pass  # creates the collector's persistent session
    messages = [
        (telemetry_topic(config, d.id), reading(seq, {"temp_c": 37.0, "co2_pct": 5.0}))
        for seq in range(per_device)
        for d in config.devices
    ]
    await publish(messages)
    async with running_daemon(config) as running:
        await eventually(
            lambda: distinct_messages(config.storage.path) == len(messages),
            timeout_s=120,
            what="the whole backlog stored",
        )
        assert running.daemon.pipeline is not None
        assert running.daemon.pipeline.peak_depth <= config.ingest.queue_max
        assert running.sample("coldwatch_ingest_read_pauses_total") > 0
