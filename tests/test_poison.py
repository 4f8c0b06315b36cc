"""Poison messages: whatever one message holds, it ends counted, quarantined and acknowledged.

Against the real Mosquitto and real databases: payloads nested 2,000 deep, 1e308
timestamps, duplicate keys, implausible values, faults of the collector itself, and
payloads of 1 MiB for the quarantine's bounds.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from coldwatch.broker import RunningBroker
from coldwatch.config import Config
from coldwatch.payload import Reason, decode
from coldwatch.pgserver import RunningPostgres
from coldwatch.rules.model import EngineReading
from coldwatch.storage import Batch, BatchResult, SqliteStorage
from coldwatch.storage.postgres import MIGRATIONS_PG, PostgresStorage
from coldwatch.storage.sqlite import MIGRATIONS
from tests.conftest import (
    Backend,
    InProcessDaemon,
    db_query,
    device_entries,
    distinct_messages,
    eventually,
    http_get,
    new_pg_database,
    publish_all,
    reading,
    running_daemon,
    telemetry_topic,
    write_config,
)

GOOD = {"temp_c": 37.0, "co2_pct": 5.0, "rh_pct": 95.0}
MIB = 1024 * 1024


def labels(device_id: str) -> dict[str, str]:
    """The per-device labels of a test incubator."""
    return {"device": device_id, "kind": "incubator", "site": "site1", "area": "area1"}


def poison(config: Config, device_id: str) -> list[tuple[str, bytes, Reason]]:
    """One message of each kind that once stalled the pipeline or was stored though implausible."""
    topic = telemetry_topic(config, device_id)
    now = b"%.3f" % time.time()
    deep = b'{"ts": ' + now + b', "seq": 1, "values": {"temp_c": ' + b"[" * 2000 + b"]" * 2000 + b"}}"
    return [
        (topic, deep, Reason.INVALID_JSON),
        (topic, b'{"ts": 1e308, "seq": 1, "values": {"temp_c": 37.0}}', Reason.INVALID_TS),
        (
            topic,
            b'{"ts": ' + now + b', "seq": 1, "values": {"temp_c": 99, "temp_c": 37}}',
            Reason.DUPLICATE_KEY,
        ),
        (topic, reading(1, {"rh_pct": 1e300}), Reason.OUT_OF_RANGE),
        (topic, reading(1, {"temp_c": 37.0, "co2_pct": 5.0, "rh_pct": 100.5}), Reason.OUT_OF_RANGE),
    ]


def rejected(running: InProcessDaemon) -> dict[str, int]:
    """Rejections counted by this daemon, by reason (reasons with none left out)."""
    counts = {
        r.value: int(running.sample("coldwatch_messages_rejected_total", {"reason": r.value})) for r in Reason
    }
    return {reason: n for reason, n in counts.items() if n}


async def check_nothing_redelivered(
    broker: RunningBroker, config: Config, running: InProcessDaemon, seq: int
) -> None:
    """A fresh reading published now is stored, and nothing before it came again.

    The broker resends a session's unacknowledged messages before anything newer, so once
    the fresh reading is stored, every redelivery would have been taken (and counted).
    """
    await publish_all(broker, [(telemetry_topic(config, "inc-000"), reading(seq, GOOD))], clients=1)
    await eventually(
        lambda: running.sample("coldwatch_readings_total", labels("inc-000")) == 1, what="fresh reading"
    )
    assert rejected(running) == {}, "a rejected message was redelivered: it had not been acknowledged"
    assert running.sample("coldwatch_duplicate_readings_total") == 0
    assert running.sample("coldwatch_unacked_messages") == 0


async def test_poison_is_rejected_acknowledged_and_never_redelivered(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend
) -> None:
    """Deep nesting, 1e308 ts, duplicate keys, implausible values: counted, quarantined, acked; good kept."""
    config = write_config(
        tmp_path / "c.yaml",
        broker=broker,
        prefix=prefix,
        devices=device_entries("incubator", 3),
        storage={"path": backend.location},
    )
    bad = [message for device in ("inc-000", "inc-001") for message in poison(config, device)]
    good = [
        (telemetry_topic(config, f"inc-00{d}"), reading(seq, GOOD)) for seq in range(10) for d in range(3)
    ]
    expected: dict[str, int] = {}
    for _, _, reason in bad:
        expected[reason.value] = expected.get(reason.value, 0) + 1
    async with running_daemon(config) as running:
        await publish_all(broker, [(t, p) for t, p, _ in bad] + good, clients=1)
        await eventually(
            lambda: (
                sum(running.sample("coldwatch_readings_total", labels(f"inc-00{d}")) for d in range(3)) == 30
                and sum(rejected(running).values()) == len(bad)
            ),
            timeout_s=60,
            what="every message taken",
        )
        assert rejected(running) == expected
        assert not running.task.done()
    quarantined = dict(backend.query("SELECT reason, count(*) FROM quarantine GROUP BY reason"))
    assert {reason: int(n) for reason, n in quarantined.items()} == expected
    assert distinct_messages(backend.location) == 30
    assert backend.query("SELECT max(value) FROM readings")[0][0] <= 100.0, "no implausible value stored"
    async with running_daemon(config) as running:
        await check_nothing_redelivered(broker, config, running, seq=10)
    assert int(backend.query("SELECT count(*) FROM quarantine")[0][0]) == len(bad)


async def test_more_poison_than_receive_maximum_does_not_stop_delivery(
    broker: RunningBroker, prefix: str, tmp_path: Path
) -> None:
    """Four times receive_maximum poison messages ahead of good ones: the good ones still arrive."""
    config = write_config(
        tmp_path / "c.yaml",
        broker=broker,
        prefix=prefix,
        devices=device_entries("incubator", 1),
        mqtt={"receive_maximum": 10},
    )
    topic = telemetry_topic(config, "inc-000")
    deep = b'{"ts": 1700000000, "seq": 1, "values": {"temp_c": ' + b"[" * 2000 + b"]" * 2000 + b"}}"
    huge_ts = b'{"ts": 1e308, "seq": 1, "values": {"temp_c": 37.0}}'
    bad = [(topic, deep if i % 2 else huge_ts) for i in range(40)]
    good = [(topic, reading(seq, GOOD)) for seq in range(50)]
    async with running_daemon(config) as running:
        await publish_all(broker, bad + good, clients=1)
        await eventually(
            lambda: running.sample("coldwatch_readings_total", labels("inc-000")) == 50,
            timeout_s=60,
            what="the good readings behind the poison",
        )
        assert rejected(running) == {"invalid_json": 20, "invalid_ts": 20}
    async with running_daemon(config) as running:
        await check_nothing_redelivered(broker, config, running, seq=50)


def _fault_when(matches: Callable[[Any], bool], original: Callable[..., Any]) -> Callable[..., Any]:
    """``original``, raising for arguments that ``matches``: a fault injected into the collector."""

    def faulty(*args: Any, **kwargs: Any) -> Any:
        if matches(args):
            message = "injected fault"
            raise RuntimeError(message)
        return original(*args, **kwargs)

    return faulty


async def test_faults_on_single_messages_are_isolated_counted_and_logged_once(
    broker: RunningBroker,
    prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Decoder, tracker or rules faults on 600 messages: the rest stored, one traceback per kind."""
    config = write_config(
        tmp_path / "c.yaml", broker=broker, prefix=prefix, devices=device_entries("incubator", 4)
    )
    caplog.set_level(logging.ERROR)
    async with running_daemon(config) as running:
        daemon = running.daemon
        assert daemon.pipeline is not None
        assert daemon.engine is not None
        # inc-001 cannot be decoded, inc-002 cannot be tracked, inc-003's rules fail.
        monkeypatch.setattr("coldwatch.pipeline.decode", _fault_when(lambda a: "/inc-001/" in a[0], decode))
        tracker = daemon.pipeline._tracker
        monkeypatch.setattr(tracker, "observe", _fault_when(lambda a: a[0] == "inc-002", tracker.observe))
        engine = daemon.engine

        def rules_fail(args: tuple[Any, ...]) -> bool:
            return isinstance(args[0], EngineReading) and args[0].device_id == "inc-003"

        monkeypatch.setattr(engine, "ingest", _fault_when(rules_fail, engine.ingest))
        messages = [
            (telemetry_topic(config, f"inc-00{d}"), reading(seq, GOOD))
            for seq in range(200)
            for d in range(4)
        ]
        await publish_all(broker, messages, clients=1)
        await eventually(
            lambda: (
                running.sample("coldwatch_readings_total", labels("inc-000")) == 200
                and running.sample("coldwatch_readings_total", labels("inc-003")) == 200
                and rejected(running).get("internal_error") == 400
            ),
            timeout_s=60,
            what="every message taken",
        )
        assert rejected(running) == {"internal_error": 400}
        assert running.sample("coldwatch_rule_errors_total") == 200
        assert running.sample("coldwatch_unacked_messages") == 0
        monkeypatch.undo()
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert len(tracebacks) == 3, [r.getMessage() for r in tracebacks]  # decode, judge, rules: once each
    with sqlite3.connect(config.storage.path) as conn:
        by_device = dict(
            conn.execute("SELECT device_id, count(*) FROM quarantine GROUP BY device_id").fetchall()
        )
        details = {row[0] for row in conn.execute("SELECT detail FROM quarantine")}
    assert by_device == {None: 200, "inc-002": 200}  # an undecodable message names no device
    assert details == {"RuntimeError: injected fault"}
    assert distinct_messages(config.storage.path) == 400  # inc-000 and inc-003
    async with running_daemon(config) as running:
        await check_nothing_redelivered(broker, config, running, seq=200)


async def test_held_unacknowledged_messages_show_in_a_metric_and_readiness(
    broker: RunningBroker, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Messages held unacknowledged past ingest.max_unacked_age_s show in the gauge and fail /readyz."""
    config = write_config(
        tmp_path / "c.yaml",
        broker=broker,
        prefix=prefix,
        devices=device_entries("incubator", 1),
        ingest={"max_unacked_age_s": 1.0},
    )
    topic = telemetry_topic(config, "inc-000")
    async with running_daemon(config) as running:
        ready_url = f"{running.base_url}/readyz"

        async def checks() -> dict[str, bool]:
            status, body = await http_get(ready_url)
            assert status in {200, 503}
            result: dict[str, bool] = json.loads(body)["checks"]
            assert (status == 200) == all(result.values())
            return result

        assert (await checks())["messages_acknowledged"] is True
        # A batch commit that hangs (as on a database that stopped answering): the
        # message it holds stays unacknowledged.
        storage = running.daemon.storage
        assert storage is not None
        release = asyncio.Event()
        write_batch = storage.write_batch

        async def hanging_write(batch: Batch) -> BatchResult:
            await release.wait()
            return await write_batch(batch)

        monkeypatch.setattr(storage, "write_batch", hanging_write)
        try:
            await publish_all(broker, [(topic, reading(0, GOOD))], clients=1)
            await eventually(
                lambda: running.sample("coldwatch_oldest_unacked_message_age_seconds") > 1.0,
                timeout_s=30,
                what="a message held past the bound",
            )
            assert running.sample("coldwatch_unacked_messages") == 1
            assert await checks() == {
                "broker_connected": True,
                "database_writable": True,
                "messages_acknowledged": False,
            }
        finally:
            release.set()
        await eventually(lambda: distinct_messages(config.storage.path) == 1, timeout_s=30, what="stored")
        await eventually(
            lambda: running.sample("coldwatch_unacked_messages") == 0, timeout_s=30, what="acknowledged"
        )
        assert running.sample("coldwatch_oldest_unacked_message_age_seconds") == 0
        assert (await checks())["messages_acknowledged"] is True


def _database_bytes(backend: Backend) -> int:
    """The space the database takes: SQLite's file and its write-ahead log, or PostgreSQL's database."""
    if backend.postgres:
        return int(backend.query("SELECT pg_database_size(current_database())")[0][0])
    path = Path(backend.location)
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())


def _big_payload(index: int, size: int) -> bytes:
    """A telemetry-looking payload of exactly ``size`` bytes, different for every ``index``."""
    head = b'{"ts": 1700000000, "seq": %d, "pad": "' % index
    return head + b"x" * (size - len(head) - 2) + b'"}'


async def test_quarantine_keeps_a_prefix_and_grows_by_a_bounded_amount(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend
) -> None:
    """200 rejected payloads of 1 MiB add a few megabytes, not 200: each keeps 4 KiB, its size and SHA-256."""
    config = write_config(
        tmp_path / "c.yaml",
        broker=broker,
        prefix=prefix,
        devices=device_entries("incubator", 1),
        storage={"path": backend.location},
    )
    topic = telemetry_topic(config, "inc-000")
    payloads = [_big_payload(i, MIB) for i in range(200)]
    async with running_daemon(config) as running:
        before = _database_bytes(backend)
        await publish_all(broker, [(topic, p) for p in payloads], clients=2, window=20)
        await eventually(
            lambda: running.sample("coldwatch_messages_rejected_total", {"reason": "too_large"}) == 200,
            timeout_s=120,
            what="200 rejections",
        )
        grown = _database_bytes(backend) - before
    assert grown < 8 * MIB, f"the database grew by {grown} bytes"
    kept = backend.query("SELECT count(*), max(length(payload)) FROM quarantine")
    assert kept == [(200, 4096)]
    output = subprocess.run(
        [
            sys.executable,
            "-m",
            "coldwatch",
            "quarantine",
            "--config",
            str(tmp_path / "c.yaml"),
            "--limit",
            "200",
        ],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    lines = [json.loads(line) for line in output.splitlines()]
    assert lines[0] == {"totals_by_reason": {"too_large": 200}}
    entries = lines[1:]
    assert len(entries) == 200
    assert {e["size"] for e in entries} == {MIB}
    assert {e["truncated"] for e in entries} == {True}
    assert {e["sha256"] for e in entries} == {hashlib.sha256(p).hexdigest() for p in payloads}
    assert all(len(e["payload"]) <= 4096 for e in entries)


async def test_quarantine_is_bounded_in_bytes(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend
) -> None:
    """With 64 KiB for the quarantine, only the newest rejections that fit stay; the totals count all."""
    config = write_config(
        tmp_path / "c.yaml",
        broker=broker,
        prefix=prefix,
        devices=device_entries("incubator", 1),
        storage={
            "path": backend.location,
            "quarantine_max_bytes": 64 * 1024,
            "quarantine_payload_bytes": 3000,
        },
    )
    topic = telemetry_topic(config, "inc-000")
    payloads = [_big_payload(i, 70_000) for i in range(60)]
    async with running_daemon(config) as running:
        await publish_all(broker, [(topic, p) for p in payloads], clients=1, window=10)
        await eventually(
            lambda: running.sample("coldwatch_messages_rejected_total", {"reason": "too_large"}) == 60,
            timeout_s=60,
            what="60 rejections",
        )
    rows, kept_bytes = backend.query("SELECT count(*), sum(length(payload)) FROM quarantine")[0]
    assert rows == 64 * 1024 // 3000  # 21 whole prefixes fit
    assert int(kept_bytes) <= 64 * 1024
    newest = backend.query("SELECT payload_sha256 FROM quarantine ORDER BY id DESC LIMIT 1")[0][0]
    assert newest == hashlib.sha256(payloads[-1]).hexdigest(), "the newest entries are the ones kept"
    assert backend.query("SELECT total FROM rejection_totals WHERE reason = 'too_large'") == [(60,)]


# --- existing databases ----------------------------------------------------------------

OLD_PAYLOAD = b'{"ts": 1, "x": "\xff"}'


async def test_sqlite_quarantine_of_an_older_schema_upgrades(tmp_path: Path) -> None:
    """Rows quarantined before the upgrade keep their whole payload and read back with its size and hash."""
    path = tmp_path / "old.db"
    mine = next(i for i, script in enumerate(MIGRATIONS) if "payload_sha256" in script)
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for version, script in enumerate(MIGRATIONS[:mine], start=1):
            conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version={version};\nCOMMIT;")
        conn.executemany(
            "INSERT INTO quarantine(received_us, reason, detail, topic, device_id, payload) "
            "VALUES (?, 'invalid_utf8', 'd', 't', NULL, ?)",
            [(1, OLD_PAYLOAD), (2, OLD_PAYLOAD * 2), (3, OLD_PAYLOAD)],
        )
    storage = SqliteStorage(path)
    await storage.open()
    try:
        entry = (await storage.quarantine())[-1]
    finally:
        await storage.close()
    n = len(OLD_PAYLOAD)
    offsets = [row[0] for row in db_query(path, "SELECT kept_from FROM quarantine ORDER BY id")]
    assert offsets == [0, n, 3 * n], "the byte bound counts the rows kept before the upgrade"
    assert entry.payload == OLD_PAYLOAD
    assert entry.payload_size == len(OLD_PAYLOAD)
    assert entry.payload_sha256 == hashlib.sha256(OLD_PAYLOAD).hexdigest()
    assert not entry.truncated


async def test_pg_quarantine_of_an_older_schema_upgrades(
    pg_server: RunningPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL rows quarantined before the upgrade read back whole, with size, hash and byte offsets."""
    url = new_pg_database(pg_server)
    mine = next(i for i, script in enumerate(MIGRATIONS_PG) if "payload_sha256" in script)
    with monkeypatch.context() as older:  # a collector of the version before
        older.setattr("coldwatch.storage.postgres.MIGRATIONS_PG", MIGRATIONS_PG[:mine])
        storage = PostgresStorage(url)
        await storage.open()
        await storage.pool.executemany(
            "INSERT INTO quarantine(received_us, reason, detail, topic, device_id, payload) "
            "VALUES ($1, 'invalid_utf8', 'd', 't', NULL, $2)",
            [(1, OLD_PAYLOAD), (2, OLD_PAYLOAD * 2), (3, OLD_PAYLOAD)],
        )
        await storage.close()
    storage = PostgresStorage(url)
    await storage.open()
    try:
        entry = (await storage.quarantine())[-1]
    finally:
        await storage.close()
    n = len(OLD_PAYLOAD)
    offsets = [row[0] for row in db_query(url, "SELECT kept_from FROM quarantine ORDER BY id")]
    assert offsets == [0, n, 3 * n], "the byte bound counts the rows kept before the upgrade"
    assert (entry.payload, entry.payload_size, entry.truncated) == (OLD_PAYLOAD, n, False)
    assert entry.payload_sha256 == hashlib.sha256(OLD_PAYLOAD).hexdigest()
