"""The pipelined writer: the next batch is judged while the previous one commits.

Driven through ``Pipeline.offer`` and ``Pipeline.run_writer`` on real SQLite storage,
without MQTT: each test looks at what was committed when each batch was acknowledged.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from coldwatch.alarms import start_alarming
from coldwatch.config import Config
from coldwatch.metrics import Metrics
from coldwatch.mqtt import Delivery
from coldwatch.pipeline import Pipeline
from coldwatch.storage.sqlite import SqliteStorage

DEVICE = {"id": "inc-1", "kind": "incubator", "site": "s", "area": "a"}
TOPIC = "coldwatch/s/a/incubator/inc-1/telemetry"


class Writer:
    """A pipeline on real storage whose acknowledgements record what was committed by then."""

    pipeline: Pipeline

    def __init__(self, config: Config, storage: SqliteStorage) -> None:
        self.config = config
        self.storage = storage
        self.acked: list[list[int]] = []  # seq of each acknowledged batch, in order
        self.device_row_at_ack: list[tuple[int, int]] = []  # (last_seq, stored readings) then
        self.on_ack: Callable[[], None] = lambda: None
        self.registry = CollectorRegistry()

    def ack(self, deliveries: list[Delivery]) -> None:
        self.acked.append([json.loads(d.payload)["seq"] for d in deliveries])
        with sqlite3.connect(self.config.storage.path) as conn:
            last_seq = conn.execute("SELECT last_seq FROM devices").fetchone()[0]
            stored = conn.execute("SELECT count(DISTINCT seq) FROM readings").fetchone()[0]
        self.device_row_at_ack.append((last_seq, stored))
        self.on_ack()

    def offer(self, seq: int, ts_s: float, *, temp_c: float = 37.0, mid: int | None = None) -> None:
        body = {"ts": ts_s, "seq": seq, "values": {"temp_c": temp_c, "co2_pct": 5.0}}
        now_us = time.time_ns() // 1000
        mid = seq + 1 if mid is None else mid
        self.pipeline.offer(Delivery(TOPIC, json.dumps(body).encode(), 1, mid, False, 1, now_us))

    async def drain(self) -> None:
        """Run the writer until everything offered is committed."""
        task = asyncio.create_task(self.pipeline.run_writer())
        try:
            async with asyncio.timeout(10):
                await self.pipeline.drain()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def sample(self, name: str) -> float:
        """A per-device sample of the test's device (0 when absent)."""
        return self.registry.get_sample_value(name, {"device": "inc-1", "kind": "incubator", "site": "s",
                                                     "area": "a"}) or 0.0  # fmt: skip


@pytest.fixture
async def writer(tmp_path: Path) -> AsyncIterator[Writer]:
    config = Config.model_validate(
        {"storage": {"path": str(tmp_path / "c.db"), "batch_max": 2}, "devices": [DEVICE]}
    )
    storage = SqliteStorage(Path(config.storage.path), synchronous="NORMAL")
    await storage.open()
    states = await storage.register_devices(config.devices)
    writer = Writer(config, storage)
    metrics = Metrics(writer.registry, config.devices)
    engine, book = await start_alarming(config, storage, states, metrics)
    writer.pipeline = Pipeline(config, storage, metrics, states, writer.ack, engine=engine, book=book)
    try:
        yield writer
    finally:
        await storage.close()


async def test_each_commit_writes_the_device_state_of_its_own_batch(writer: Writer) -> None:
    """A batch's device row is that batch's newest reading, although the next one was judged meanwhile."""
    now = time.time()
    for seq in (1, 2, 3, 9):  # a gap 4..8 is found in the second batch
        writer.offer(seq, now - 10 + seq * 0.01)
    await writer.drain()
    assert writer.acked == [[1, 2], [3, 9]]
    # When [1, 2] was acknowledged, the stored device row said 2, not 9: a crash there
    # leaves seq 3..9 to be redelivered and the gap 4..8 to be found again.
    assert writer.device_row_at_ack == [(2, 2), (9, 4)]
    with sqlite3.connect(writer.config.storage.path) as conn:
        assert conn.execute("SELECT first_missing, last_missing FROM seq_gaps").fetchall() == [(4, 8)]


async def test_a_fault_after_a_commit_stops_the_writer_at_once(writer: Writer) -> None:
    """A fault in what follows a commit ends the writer with that fault, without waiting for more work."""

    def fail() -> None:
        raise RuntimeError("accounting fault")

    writer.on_ack = fail
    writer.offer(1, time.time())
    task = asyncio.create_task(writer.pipeline.run_writer())
    async with asyncio.timeout(5):
        with pytest.raises(ExceptionGroup) as caught:
            await task
    assert caught.group_contains(RuntimeError, match="accounting fault")


async def test_a_fault_judging_commits_the_batch_in_flight_first(
    writer: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When judging the next batch fails, the batch being committed is still committed and acknowledged."""
    original = writer.pipeline._build
    started = asyncio.Event()
    failed = asyncio.Event()
    release = asyncio.Event()

    def build(items: list[Any]) -> Any:
        if started.is_set():
            failed.set()
            raise RuntimeError("rules fault")
        started.set()
        return original(items)

    async def slow_write(batch: Any, *, write: Any = writer.storage.write_batch) -> Any:
        await release.wait()  # the first commit is still in flight while the next is judged
        return await write(batch)

    monkeypatch.setattr(writer.pipeline, "_build", build)
    monkeypatch.setattr(writer.storage, "write_batch", slow_write)
    now = time.time()
    for seq in (1, 2, 3, 4):
        writer.offer(seq, now - 10 + seq * 0.01)
    task = asyncio.create_task(writer.pipeline.run_writer())
    async with asyncio.timeout(5):
        await failed.wait()
    for _ in range(10):  # let every task run what it can
        await asyncio.sleep(0)
    assert not task.done()  # the judge waits for the batch in flight
    release.set()
    async with asyncio.timeout(5):
        with pytest.raises(ExceptionGroup) as caught:
            await task
    assert caught.group_contains(RuntimeError, match="rules fault")
    assert writer.acked == [[1, 2]]
    assert writer.device_row_at_ack == [(2, 2)]


async def test_a_message_received_twice_in_one_batch_is_kept_and_counted_once(writer: Writer) -> None:
    """A redelivered copy arriving before the first is committed is stored, judged and counted once."""
    now = time.time()
    writer.offer(1, now - 1)
    writer.offer(1, now - 1, mid=7)  # the broker's redelivery of the same message
    await writer.drain()
    assert writer.acked == [[1, 1]]
    assert writer.device_row_at_ack == [(1, 1)]
    assert writer.sample("coldwatch_readings_total") == 1
    assert writer.registry.get_sample_value("coldwatch_duplicate_readings_total") == 1


async def test_a_different_message_with_the_same_seq_and_time_is_a_duplicate_of_the_first(
    writer: Writer,
) -> None:
    """The same seq and time with other values: the reading the rules judged stays, whole; one duplicate.

    By the payload contract seq numbers readings: the first message is the reading (judged
    and stored), a second one with its seq and time is a duplicate whatever it carries.
    Its values are neither judged nor added to the stored reading (they used to be, metric
    by metric, for a metric the first lacked).
    """
    now = time.time()
    writer.offer(1, now - 1)
    writer.offer(1, now - 1, temp_c=39.0, mid=7)
    await writer.drain()
    with sqlite3.connect(writer.config.storage.path) as conn:
        temp = "SELECT value FROM readings WHERE metric = (SELECT id FROM metrics WHERE name = 'temp_c')"
        assert conn.execute(temp).fetchall() == [(37.0,)]
        assert conn.execute("SELECT count(DISTINCT seq) FROM readings").fetchall() == [(1,)]
    assert writer.registry.get_sample_value("coldwatch_duplicate_readings_total") == 1
