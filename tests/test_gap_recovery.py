"""Readings lost upstream are asked for again: the re-send protocol, gap states, broker session loss."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import aiomqtt
import httpx

from coldwatch.broker import RunningBroker, free_port, run_mosquitto
from coldwatch.recovery import GapBook
from coldwatch.storage import open_storage
from coldwatch.storage.base import Batch, DeviceState, SeqGap
from coldwatch.storage.sqlite import MIGRATIONS, SqliteStorage
from simulators.publisher import run_simulation
from tests.conftest import (
    Backend,
    db_query,
    device_entries,
    distinct_messages,
    eventually,
    running_daemon,
    write_config,
)
from tests.identity_helpers import FAST_IDENTITY, OPERATOR_PW, opened, people
from tests.test_notify import Receiver

US = 1_000_000
TOKEN = "op-" + "5" * 40
# The broker must lose what it acknowledged: no save of its state before the kill.
NO_AUTOSAVE = "autosave_interval 3600\nautosave_on_changes false\n" + (
    "user root\n" if os.geteuid() == 0 else ""  # keep the test's data directory writable for it
)


def book(**overrides: Any) -> GapBook:
    """A gap book with test-sized bounds."""
    settings: dict[str, Any] = {"timeout_s": 60.0, "retry_s": 5.0, "max_attempts": 3, "max_per_s": 10.0}
    settings.update(overrides)
    return GapBook(**settings)


def test_gap_is_requested_with_bounded_retries() -> None:
    """An open gap is asked for at once, again every retry_s, and at most max_attempts times."""
    gaps = book()
    gaps.open(SeqGap("inc-1", 10, 14, 0))
    first = gaps.due(0)
    assert [(r.device_id, r.from_seq, r.to_seq) for r in first] == [("inc-1", 10, 14)]
    assert json.loads(first[0].payload()) == {"from_seq": 10, "to_seq": 14, "request_id": first[0].request_id}
    assert gaps.due(4 * US) == []  # not before retry_s
    sent = [r for t in range(5, 100, 5) for r in gaps.due(t * US)]
    assert len(sent) == 2  # three attempts in all


def test_requests_are_rate_limited_over_all_devices() -> None:
    """However many gaps are open, no more than max_per_s requests go out per second."""
    gaps = book(max_per_s=5.0, max_attempts=100, retry_s=0.001)
    for i in range(50):
        gaps.open(SeqGap(f"d{i}", 1, 1, 0))
    per_second = [len(gaps.due(t * US)) for t in range(10)]
    assert max(per_second) <= 5
    assert sum(per_second) == 5 * 10


def test_gap_recovered_only_when_every_missing_seq_is_stored() -> None:
    """A gap is recovered once each missing seq is stored, in any order; other seqs do not count."""
    gaps = book()
    gap = SeqGap("inc-1", 10, 13, 0)
    gaps.open(gap)
    assert gaps.stored("inc-1", 9, 1) == []
    assert gaps.stored("inc-1", 12, 1) == []
    assert gaps.stored("inc-1", 10, 1) == []
    assert gaps.stored("inc-1", 13, 1) == []
    assert gaps.pending("inc-1")
    (change,) = gaps.stored("inc-1", 11, 2)
    assert (change.gap, change.state, change.at_us) == (gap, "recovered", 2)
    assert not gaps.pending("inc-1")
    assert gaps.due(10 * US) == []


def test_gap_lost_after_timeout_or_counter_restart() -> None:
    """A gap not filled within timeout_s is lost; a restarted seq counter loses the device's gaps at once."""
    gaps = book(timeout_s=30.0)
    gaps.open(SeqGap("a", 5, 6, 0))
    gaps.open(SeqGap("b", 5, 6, 10 * US))
    gaps.stored("a", 5, 1)
    assert gaps.expire(29 * US) == []
    (lost,) = gaps.expire(30 * US)
    assert (lost.gap.device_id, lost.state) == ("a", "lost")
    assert "1 reading(s)" in lost.why
    (restarted,) = gaps.restarted("b", 31 * US)
    assert restarted.state == "lost"
    assert gaps.open_count() == 0


def test_session_loss_asks_for_everything_after_the_last_seq_until_heard_from() -> None:
    """After a lost session each device is asked for all after its last seq until a newer reading arrives."""
    gaps = book()
    gaps.session_lost({"a": 41, "b": 7}, 0)
    requests = {r.device_id: (r.from_seq, r.to_seq) for r in gaps.due(0)}
    assert requests == {"a": (42, None), "b": (8, None)}
    gaps.stored("a", 41, 1)  # an old reading: still waiting
    assert gaps.pending("a")
    gaps.stored("a", 42, 1)
    assert not gaps.pending("a")
    assert [r.device_id for r in gaps.due(10 * US)] == ["b"]


async def test_gap_states_stored_and_reloaded(backend: Backend, tmp_path: Path) -> None:
    """Gaps are stored open, then recovered or lost; open ones are read back with the seqs stored since."""
    config = write_config(
        tmp_path / "c.yaml",
        broker=RunningBroker("127.0.0.1", 1, "mosquitto"),
        prefix="p",
        devices=device_entries("incubator", 1),
        storage={"url": backend.location} if backend.postgres else {"path": str(backend.location)},
    )
    storage = open_storage(config.storage.location)
    await storage.open()
    try:
        await storage.register_devices(config.devices)
        recovered, lost, still = (
            SeqGap("inc-000", 2, 3, 10),
            SeqGap("inc-000", 6, 7, 11),
            SeqGap("inc-000", 9, 12, 12),
        )
        state = DeviceState(13, 13 * US, 13 * US)
        await storage.write_batch(Batch(gaps=[recovered, lost, still], devices={"inc-000": state}))
        await storage.write_batch(Batch(gap_updates=[(recovered, "recovered", 20), (lost, "lost", 21)]))
        opened = await storage.open_gaps()
        assert [g for g, _ in opened] == [still]
        rows = backend.query("SELECT first_missing, state, resolved_us FROM seq_gaps ORDER BY first_missing")
        assert [tuple(r) for r in rows] == [(2, "recovered", 20), (6, "lost", 21), (9, "open", None)]
    finally:
        await storage.close()


async def test_lost_gap_raises_acknowledgeable_integrity_alarm(
    broker: RunningBroker, prefix: str, tmp_path: Path
) -> None:
    """An unanswered gap is asked for max_attempts times, then lost: an alarm listed, notified, acked."""
    receiver = Receiver()
    await receiver.start()
    config = write_config(
        tmp_path / "c.yaml",
        broker=broker,
        prefix=prefix,
        devices=device_entries("incubator", 1),
        ingest={"gap_recovery_timeout_s": 2.0, "resend_retry_s": 0.3, "resend_max_attempts": 2},
        api={
            "users": {
                "olga": {"role": "operator", "token_sha256": hashlib.sha256(TOKEN.encode()).hexdigest()}
            }
        },
        identity=FAST_IDENTITY,
        notify={
            "webhooks": {"pager": {"url": f"{receiver.url}/pager"}},
            "escalation": [{"tiers": [{"after_s": 0, "notify": ["pager"]}]}],
        },
    )
    device = config.devices[0]
    base = f"{prefix}/{device.site}/{device.area}/{device.kind.value}/{device.id}"
    requests: list[dict[str, Any]] = []
    try:
        async with aiomqtt.Client(broker.host, broker.port) as listener, running_daemon(config) as running:
            await listener.subscribe(f"{base}/resend", qos=1)

            async def listen() -> None:
                async for message in listener.messages:
                    assert isinstance(message.payload, bytes)
                    requests.append(json.loads(message.payload))

            task = asyncio.create_task(listen())
            async with opened(str(config.storage.path), config) as (_, identity, _):
                await people(identity)
            for seq in (0, 1, 5):
                payload = json.dumps({"ts": 1.7e9 + seq, "seq": seq, "values": {"temp_c": 37.0}})
                await listener.publish(f"{base}/telemetry", payload, qos=1)
            db = config.storage.path
            lost_sql = "SELECT state FROM seq_gaps"
            await eventually(lambda: db_query(db, lost_sql) == [("lost",)], timeout_s=20, what="the gap lost")
            await asyncio.sleep(1.0)  # no request after the gap is given up
            task.cancel()
            assert [(r["from_seq"], r["to_seq"]) for r in requests] == [(2, 4), (2, 4)]
            assert running.sample("coldwatch_resend_requests_total") == 2
            assert running.sample("coldwatch_seq_gaps_resolved_total", {"state": "lost"}) == 1

            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with httpx.AsyncClient(base_url=running.base_url, headers=headers, timeout=10) as client:
                listed = (await client.get("/api/v1/alarms", params={"device": device.id})).json()
                (alarm,) = [a for a in listed if a["rule"] == "data_integrity"]
                assert (alarm["metric"], alarm["severity"]) == ("seq", "action")
                assert "seq 2..4 lost" in alarm["detail"]
                await eventually(
                    lambda: any(r.body["alarm"]["rule"] == "data_integrity" for r in receiver.received),
                    what="the data-integrity alarm notified",
                )
                acked = await client.post(
                    f"/api/v1/alarms/{alarm['id']}/ack",
                    json={
                        "user": "olga",
                        "password": OPERATOR_PW,
                        "meaning": "acknowledged, investigating",
                        "reason": "gap reviewed",
                    },
                    headers={"Authorization": ""},
                )
                assert acked.status_code == 200, acked.text
            actions = [a for (a,) in db_query(db, "SELECT action FROM audit_log ORDER BY seq")]
            assert {"seq_gap.detected", "seq_gap.lost", "alarm.acknowledged"} <= set(actions)
    finally:
        await receiver.stop()


async def test_broker_sigkill_loses_no_reading(prefix: str, tmp_path: Path) -> None:
    """Broker SIGKILLed mid-stream without a save: the lost session is seen and every reading is stored."""
    port = free_port()
    broker_dir = tmp_path / "broker"
    devices = [dict(d, interval_s=0.02) for d in device_entries("incubator", 3)]
    async with run_mosquitto(port, data_dir=broker_dir, extra=NO_AUTOSAVE) as broker:
        config = write_config(
            tmp_path / "c.yaml",
            broker=broker,
            prefix=prefix,
            devices=devices,
            # The collector comes back 1-2 s after the devices: what they publish meanwhile
            # has no subscriber on the restarted broker and is lost there for certain.
            mqtt={"reconnect": {"initial_s": 2.0, "max_s": 2.0}},
            ingest={"resend_retry_s": 1.0, "gap_recovery_timeout_s": 120.0},
        )
        devices_back_fast = config.mqtt.reconnect.model_copy(update={"initial_s": 0.2, "max_s": 0.5})
        sim_config = config.model_copy(
            update={"mqtt": config.mqtt.model_copy(update={"reconnect": devices_back_fast})}
        )
        stop_sim = asyncio.Event()
        async with running_daemon(config) as running:
            sim = asyncio.create_task(run_simulation(sim_config, stop=stop_sim))
            db = config.storage.path
            await eventually(lambda: distinct_messages(db) >= 300, what="readings flowing")
            assert broker.process is not None
            broker.process.send_signal(signal.SIGKILL)
            await asyncio.to_thread(broker.process.wait)
            await asyncio.sleep(0.5)
            async with run_mosquitto(port, data_dir=broker_dir, extra=NO_AUTOSAVE):
                await eventually(
                    lambda: running.sample("coldwatch_broker_session_lost_total") == 1,
                    timeout_s=30,
                    what="the lost session noticed",
                )
                await asyncio.sleep(4.0)  # devices publish on; gaps are found and asked for
                stop_sim.set()
                stats = await sim
                await eventually(
                    lambda: distinct_messages(db) == stats.total,
                    timeout_s=60,
                    what=f"all {stats.total} readings stored",
                )
                states = db_query(db, "SELECT state, count(*) FROM seq_gaps GROUP BY state")
                assert dict(states).get("recovered", 0) >= 1, "the broker lost acknowledged readings"
                assert set(dict(states)) == {"recovered"}
                assert sum(stats.resent.values()) > 0
                per_device = db_query(
                    db,
                    "SELECT d.device_id, count(DISTINCT r.seq), min(r.seq), max(r.seq) "
                    "FROM readings r JOIN devices d ON d.id = r.device GROUP BY d.device_id",
                )
                for device_id, count, low, high in per_device:
                    assert count == high - low + 1 == stats.published[device_id]
                alarms = db_query(db, "SELECT device_id, state FROM alarms WHERE rule = 'data_integrity'")
                assert sorted(a for a, _ in alarms) == sorted(d["id"] for d in devices)
                assert {s for _, s in alarms} == {"cleared_unacknowledged"}
                actions = {a for (a,) in db_query(db, "SELECT action FROM audit_log")}
                assert {"broker.session_lost", "seq_gap.detected", "seq_gap.recovered"} <= actions


async def test_gaps_recorded_before_the_upgrade_become_lost(tmp_path: Path) -> None:
    """Upgrading a database keeps its gaps, recorded as lost (they were never asked for), and none is open."""
    path = tmp_path / "old.db"
    mine = next(i for i, script in enumerate(MIGRATIONS) if "seq_gaps ADD COLUMN state" in script)
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for version, script in enumerate(MIGRATIONS[:mine], start=1):
            conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version={version};\nCOMMIT;")
        conn.execute("INSERT INTO devices(device_id, kind, site, area) VALUES ('d1', 'incubator', 's', 'a')")
        conn.execute(
            "INSERT INTO seq_gaps(device, first_missing, last_missing, detected_us) VALUES (1, 5, 9, 77)"
        )
    store = SqliteStorage(path)
    await store.open()
    try:
        assert await store.open_gaps() == []
    finally:
        await store.close()
    assert db_query(path, "SELECT first_missing, last_missing, state, resolved_us FROM seq_gaps") == [
        (5, 9, "lost", 77)
    ]


async def test_simulated_device_resends_requested_range_as_sent(
    broker: RunningBroker, prefix: str, tmp_path: Path
) -> None:
    """A simulated device answers a re-send request with the range's readings: same ts and seq, buffered."""
    devices = [dict(d, interval_s=0.05) for d in device_entries("incubator", 1)]
    config = write_config(tmp_path / "c.yaml", broker=broker, prefix=prefix, devices=devices)
    device = config.devices[0]
    base = f"{prefix}/{device.site}/{device.area}/{device.kind.value}/{device.id}"
    seen: list[dict[str, Any]] = []
    stop = asyncio.Event()
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.subscribe(f"{base}/telemetry", qos=1)
        sim = asyncio.create_task(run_simulation(config, stop=stop))

        async def until(check: Any) -> None:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                seen.append(json.loads(message.payload))
                if check():
                    return

        async with asyncio.timeout(20):
            await until(lambda: len(seen) >= 6)
            request = {"from_seq": 1, "to_seq": 3, "request_id": "t-1"}
            await client.publish(f"{base}/resend", json.dumps(request), qos=1)
            await until(lambda: sum(1 for m in seen if m.get("buffered")) >= 3)
        stop.set()
        stats = await sim
    originals = {m["seq"]: m for m in seen if not m.get("buffered")}
    again = [m for m in seen if m.get("buffered")]
    assert [m["seq"] for m in again] == [1, 2, 3]
    for message in again:
        assert message["ts"] == originals[message["seq"]]["ts"]
        assert message["values"] == originals[message["seq"]]["values"]
    assert stats.resent[device.id] == 3


async def test_open_gap_is_asked_for_again_after_a_restart_and_recovered(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend
) -> None:
    """A gap still open when the collector stops is asked for again by the next run and ends recovered."""
    config = write_config(
        tmp_path / "c.yaml",
        broker=broker,
        prefix=prefix,
        devices=device_entries("incubator", 1),
        storage={"url": backend.location} if backend.postgres else {"path": str(backend.location)},
        ingest={"resend_retry_s": 0.3, "resend_max_attempts": 50},
    )
    device = config.devices[0]
    base = f"{prefix}/{device.site}/{device.area}/{device.kind.value}/{device.id}"

    def payload(seq: int, **extra: Any) -> str:
        return json.dumps({"ts": 1.7e9 + seq, "seq": seq, "values": {"temp_c": 37.0}, **extra})

    def gap_states() -> list[tuple[Any, ...]]:
        return backend.query("SELECT state FROM seq_gaps")

    async with aiomqtt.Client(broker.host, broker.port) as device_link:
        async with running_daemon(config):
            for seq in (0, 1, 5):
                await device_link.publish(f"{base}/telemetry", payload(seq), qos=1)
            await eventually(lambda: gap_states() == [("open",)], what="the gap recorded open")
        await device_link.subscribe(f"{base}/resend", qos=1)
        async with running_daemon(config):
            async with asyncio.timeout(20):
                async for message in device_link.messages:
                    assert isinstance(message.payload, bytes)
                    request = json.loads(message.payload)
                    break
            assert (request["from_seq"], request["to_seq"]) == (2, 4)
            for seq in (2, 3, 4):
                await device_link.publish(f"{base}/telemetry", payload(seq, buffered=True), qos=1)
            await eventually(lambda: gap_states() == [("recovered",)], what="the gap recovered")
    actions = [a for (a,) in backend.query("SELECT action FROM audit_log ORDER BY seq")]
    assert actions.count("seq_gap.detected") == 1
    assert actions.count("seq_gap.recovered") == 1
    assert backend.query("SELECT count(*) FROM alarms WHERE rule = 'data_integrity'") == [(0,)]
