"""Gap recovery under abuse: bounded gaps and requests, fair turns, restarts and reused seq numbers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from prometheus_client import CollectorRegistry

from coldwatch.broker import RunningBroker, free_port, run_mosquitto
from coldwatch.metrics import Metrics
from coldwatch.payload import Telemetry
from coldwatch.recovering import Recovery
from coldwatch.recovery import GapBook
from coldwatch.rules.lifecycle import AlarmBook
from coldwatch.sequence import Observation, SeqEvent
from coldwatch.storage import open_storage
from coldwatch.storage.base import Batch, DeviceState, SeqGap
from simulators.fleet import Reading
from simulators.publisher import SimulationStats, _DeviceLink
from tests.conftest import (
    Backend,
    db_query,
    device_entries,
    distinct_messages,
    eventually,
    publish_all,
    reading,
    running_daemon,
    telemetry_topic,
    write_config,
)

US = 1_000_000


def book(**overrides: Any) -> GapBook:
    """A gap book with test-sized bounds."""
    settings: dict[str, Any] = {"timeout_s": 60.0, "retry_s": 5.0, "max_attempts": 3, "max_per_s": 10.0}
    settings.update(overrides)
    return GapBook(**settings)


def test_gap_fully_stored_before_a_restart_is_recovered_at_load() -> None:
    """A gap whose every missing seq was stored before a restart is reported recovered, never asked for."""
    gaps = book()
    gap = SeqGap("inc-1", 3, 5, 0)
    (change,) = gaps.load(gap, {3, 4, 5}, 7)
    assert (change.gap, change.state, change.at_us) == (gap, "recovered", 7)
    assert gaps.due(0) == []
    assert gaps.open_count() == 0


def test_open_gaps_per_device_are_bounded() -> None:
    """Beyond max_open gaps on one device the oldest is given up as lost; other devices keep theirs."""
    gaps = book(max_open=3)
    gaps.open(SeqGap("other", 1, 1, 0))
    lost = [c for i in range(10) for c in gaps.open(SeqGap("flood", 2 * i + 1, 2 * i + 1, i))]
    assert [c.gap.first_missing for c in lost] == [1, 3, 5, 7, 9, 11, 13]
    assert {c.state for c in lost} == {"lost"}
    assert gaps.open_count() == 4
    assert [e.gap.first_missing for e in gaps.gaps["flood"]] == [15, 17, 19]
    assert len(gaps.load(SeqGap("flood", 21, 21, 10), set(), 11)) == 1  # the bound holds after a restart


def test_requests_take_turns_between_devices() -> None:
    """A device with many open gaps cannot hold back another device's request: devices take turns."""
    gaps = book(max_per_s=2.0, max_attempts=1)
    for i in range(20):
        gaps.open(SeqGap("flood", 2 * i + 1, 2 * i + 1, 0))
    gaps.open(SeqGap("quiet", 10, 12, 0))
    first = gaps.due(0)
    assert len(first) == 2
    assert {r.device_id for r in first} == {"flood", "quiet"}
    later = [r.device_id for t in range(1, 30) for r in gaps.due(t * US)]
    assert later.count("flood") == 19
    assert "quiet" not in later


def test_request_not_published_keeps_its_attempt(tmp_path: Path) -> None:
    """A request that could not be published (no connection) uses no attempt and goes out once it can."""
    config = write_config(
        tmp_path / "c.yaml",
        broker=RunningBroker("127.0.0.1", 1, "mosquitto"),
        prefix="p",
        devices=device_entries("incubator", 1),
        ingest={"resend_max_attempts": 2, "resend_retry_s": 5.0},
    )
    connected = False
    now_s = 0
    published: list[tuple[int, bytes]] = []

    def publish(_topic: str, payload: bytes) -> bool:
        if connected:
            published.append((now_s, payload))
        return connected

    metrics = Metrics(CollectorRegistry(), config.devices)
    recovery = Recovery(config, AlarmBook(), metrics, {}, alarms=lambda _b, _e, _t: None, resend=publish)
    gap = SeqGap("inc-000", 2, 4, 0)
    recovery.reading(Batch(), "inc-000", 5, Observation(SeqEvent.GAP, gap), 0)
    for now_s in range(12):  # twelve seconds without a connection
        recovery.step(Batch(), now_s * US)
    connected = True
    for now_s in range(12, 30):
        recovery.step(Batch(), now_s * US)
    assert [(t, json.loads(p)["from_seq"]) for t, p in published] == [(12, 2), (17, 2)]
    assert metrics.registry.get_sample_value("coldwatch_resend_requests_total") == 2


async def test_open_gaps_ignore_readings_stored_before_detection(backend: Backend, tmp_path: Path) -> None:
    """A seq number reused after a counter restart does not fill a later gap: only later arrivals count."""
    config = write_config(
        tmp_path / "c.yaml",
        broker=RunningBroker("127.0.0.1", 1, "mosquitto"),
        prefix="p",
        devices=device_entries("incubator", 1),
        storage={"url": backend.location} if backend.postgres else {"path": str(backend.location)},
    )
    storage = open_storage(config.storage.location)
    await storage.open()
    device = "inc-000"

    def row(seq: int, ts_s: int) -> Telemetry:
        return Telemetry(device, seq, ts_s * US, False, (("temp_c", 37.0),))

    try:
        await storage.register_devices(config.devices)
        # The first numbering: seqs 0..9, received at 100..109 s.
        first = [(row(s, 100 + s), (100 + s) * US) for s in range(10)]
        await storage.write_batch(Batch(readings=first, devices={device: DeviceState(9, 109 * US, 109 * US)}))
        # The device restarted its numbering; 0..2 arrived, 3..5 went missing, 6 showed the gap at 300 s.
        second = [(row(s, 200 + s), (200 + s) * US) for s in (0, 1, 2, 6)]
        gap = SeqGap(device, 3, 5, 300 * US)
        await storage.write_batch(
            Batch(readings=second, gaps=[gap], devices={device: DeviceState(6, 206 * US, 300 * US)})
        )
        # Seq 4 of the new numbering re-sent and stored after the detection.
        resent = [(Telemetry(device, 4, 204 * US, True, (("temp_c", 37.0),)), 310 * US)]
        await storage.write_batch(Batch(readings=resent))
        assert await storage.open_gaps() == [(gap, {4})]
    finally:
        await storage.close()


def test_simulated_device_queues_each_reading_once_for_repeated_requests(tmp_path: Path) -> None:
    """Repeated or overlapping re-send requests never queue a reading twice (memory stays bounded)."""
    config = write_config(
        tmp_path / "c.yaml",
        broker=RunningBroker("127.0.0.1", 1, "mosquitto"),
        prefix="p",
        devices=device_entries("incubator", 1),
    )
    link = _DeviceLink(
        config.devices[0],
        prefix="p",
        broker=config.mqtt.broker,
        ca_file=None,
        mqtt_v5=True,
        backoff_s=(0.1, 0.1),
        stats=SimulationStats(),
    )
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for seq in range(50):
        ts = start + timedelta(seconds=seq)
        link._remember(Reading(config.devices[0], seq, ts, {"temp_c": 37.0}, buffered=False, due_s=seq))
    assert link.resend(0, None) == 50
    for _ in range(100):
        link.resend(0, None)
        link.resend(10, 20)
    assert len(link._backlog) == 50


async def test_abusive_devices_and_third_parties_cannot_flood_or_stall_recovery(
    broker: RunningBroker, prefix: str, tmp_path: Path
) -> None:
    """Huge seq jumps, a gap flood, garbage and spoofed requests: bounded gaps and requests, all stored."""
    config = write_config(
        tmp_path / "c.yaml",
        broker=broker,
        prefix=prefix,
        devices=device_entries("incubator", 2),
        ingest={"resend_max_per_s": 5.0, "resend_retry_s": 600.0, "resend_max_attempts": 1},
    )
    flood, quiet = config.devices
    base = {d.id: f"{prefix}/{d.site}/{d.area}/{d.kind.value}/{d.id}" for d in config.devices}
    requests: list[tuple[float, str, dict[str, Any]]] = []
    sent = 0
    async with (
        aiomqtt.Client(broker.host, broker.port, max_inflight_messages=200) as link,
        running_daemon(config) as running,
    ):
        await link.subscribe(f"{prefix}/+/+/+/+/resend", qos=1)

        async def listen() -> None:
            async for message in link.messages:
                assert isinstance(message.payload, bytes)
                try:
                    body = json.loads(message.payload)
                except ValueError:
                    continue
                if isinstance(body, dict) and "request_id" in body:  # the collector's, not ours
                    requests.append((time.monotonic(), str(message.topic).split("/")[-2], body))

        listener = asyncio.create_task(listen())
        # Garbage and spoofed requests on resend topics, from a third party.
        for payload in (b"not json", b'{"from_seq": -5}', b"[1, 2]", b"x" * 100_000, b'{"from_seq":0}'):
            await link.publish(f"{base[quiet.id]}/resend", payload, qos=1)
            await link.publish(f"{prefix}/resend", payload, qos=1)

        def telemetry(seq: int, ts: float) -> bytes:
            return json.dumps({"ts": ts, "seq": seq, "values": {"temp_c": 37.0}}).encode()

        start_ts = time.time() - 3600
        # A huge jump, then 300 more gaps, one per message.
        seqs = [0, 2**62, *range(2**62 + 2, 2**62 + 602, 2)]
        await asyncio.gather(
            *(
                link.publish(f"{base[flood.id]}/telemetry", telemetry(s, start_ts + i), qos=1)
                for i, s in enumerate(seqs)
            )
        )
        sent += len(seqs)
        for seq in (0, 1, 5):
            await link.publish(f"{base[quiet.id]}/telemetry", telemetry(seq, start_ts + seq), qos=1)
        sent += 3
        db = config.storage.path
        await eventually(lambda: distinct_messages(db) == sent, timeout_s=60, what="every reading stored")
        stored = time.monotonic()  # the quiet device's gap is known by now; 100 of the flood's are open
        await eventually(
            lambda: any(d == quiet.id for _, d, _ in requests),
            timeout_s=10,
            what="the quiet device's gap asked for despite the flood",
        )
        asked_quiet = next(t for t, d, _ in requests if d == quiet.id)
        assert asked_quiet - stored < 5.0  # one turn, not behind the flood's requests at 5 a second
        assert running.sample("coldwatch_seq_gaps_open") <= config.ingest.max_open_gaps_per_device + 1
        await asyncio.sleep(2.0)
        listener.cancel()
        assert not running.task.done()
        # The rate bound: a burst of max_per_s, then max_per_s a second.
        span = requests[-1][0] - requests[0][0]
        assert len(requests) <= 5 + 5 * span + 1
        alarms = db_query(
            db, "SELECT device_id, count(*) FROM alarms WHERE rule = 'data_integrity' GROUP BY 1"
        )
        assert dict(alarms).get(flood.id, 0) == 1
        assert db_query(db, "SELECT count(*) FROM quarantine") == [(0,)]


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_kept_session_is_not_reported_lost(prefix: str, tmp_path: Path, protocol: str) -> None:
    """A collector restart, or a broker stopped cleanly, keeps the session: no session loss, no alarm."""
    port = free_port()
    broker_dir = tmp_path / "broker"
    root = "user root\n" if os.geteuid() == 0 else ""  # the test's data directory stays writable
    async with run_mosquitto(port, data_dir=broker_dir, extra=root) as broker:
        config = write_config(
            tmp_path / "c.yaml",
            broker=broker,
            prefix=prefix,
            devices=device_entries("incubator", 1),
            mqtt={"reconnect": {"initial_s": 0.2, "max_s": 0.5}, "protocol": protocol},
        )
        topic = telemetry_topic(config, config.devices[0].id)
        db = config.storage.path
        async with running_daemon(config):
            await publish_all(broker, [(topic, reading(0, {"temp_c": 37.0}))], clients=1)
            await eventually(lambda: distinct_messages(db) == 1, what="the first reading stored")
        async with running_daemon(config) as running:
            await publish_all(broker, [(topic, reading(1, {"temp_c": 37.0}))], clients=1)
            await eventually(lambda: distinct_messages(db) == 2, what="a reading after the restart")
            assert broker.process is not None
            broker.process.send_signal(signal.SIGTERM)  # a clean stop saves the broker's state
            await asyncio.to_thread(broker.process.wait)
            async with run_mosquitto(port, data_dir=broker_dir, extra=root):
                await eventually(
                    lambda: running.sample("coldwatch_broker_connects_total") >= 2,
                    what="the reconnect to the restarted broker",
                )
                await publish_all(broker, [(topic, reading(2, {"temp_c": 37.0}))], clients=1)
                await eventually(
                    lambda: distinct_messages(db) == 3, what="a reading after the broker restart"
                )
                assert running.sample("coldwatch_broker_session_lost_total") == 0
                assert running.sample("coldwatch_resend_requests_total") == 0
    assert db_query(db, "SELECT count(*) FROM alarms WHERE rule = 'data_integrity'") == [(0,)]


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_lost_session_is_noticed_and_each_device_asked(
    prefix: str, tmp_path: Path, protocol: str
) -> None:
    """A broker back without the collector's session: counted, the device asked for all after its last seq."""
    port = free_port()
    async with run_mosquitto(port, data_dir=tmp_path / "first") as broker:
        config = write_config(
            tmp_path / "c.yaml",
            broker=broker,
            prefix=prefix,
            devices=device_entries("incubator", 1),
            mqtt={"reconnect": {"initial_s": 0.2, "max_s": 0.5}, "protocol": protocol},
        )
        device = config.devices[0]
        topic = telemetry_topic(config, device.id)
        db = config.storage.path
        async with running_daemon(config) as running:
            await publish_all(broker, [(topic, reading(7, {"temp_c": 37.0}))], clients=1)
            await eventually(lambda: distinct_messages(db) == 1, what="the first reading stored")
            assert broker.process is not None
            broker.process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(broker.process.wait)
            # Back with an empty state: the broker no longer knows the collector's session.
            async with (
                run_mosquitto(port, data_dir=tmp_path / "second") as fresh,
                aiomqtt.Client(fresh.host, fresh.port) as link,
            ):
                await link.subscribe(topic.removesuffix("/telemetry") + "/resend", qos=1)
                async with asyncio.timeout(30):
                    message = await anext(aiter(link.messages))
                assert isinstance(message.payload, bytes)
                request = json.loads(message.payload)
                assert (request["from_seq"], request["to_seq"]) == (8, None)
                assert running.sample("coldwatch_broker_session_lost_total") == 1
                await link.publish(topic, reading(8, {"temp_c": 37.0}), qos=1)
                await eventually(lambda: distinct_messages(db) == 2, what="the device heard from again")
                alarm_states = "SELECT state FROM alarms WHERE rule = 'data_integrity'"
                await eventually(
                    lambda: db_query(db, alarm_states) == [("cleared_unacknowledged",)],
                    what="the data-integrity alarm cleared",
                )
    actions = {a for (a,) in db_query(db, "SELECT action FROM audit_log")}
    assert "broker.session_lost" in actions


async def test_device_restarting_its_counter_over_and_over_raises_one_alarm(
    broker: RunningBroker, prefix: str, tmp_path: Path
) -> None:
    """Gaps lost again and again (a counter restarting each time) raise one alarm until it is acknowledged."""
    config = write_config(
        tmp_path / "c.yaml", broker=broker, prefix=prefix, devices=device_entries("incubator", 1)
    )
    topic = telemetry_topic(config, config.devices[0].id)
    start = time.time() - 3600
    # 0, 5 (a gap), 0 again with a newer time (a counter restart: the gap is lost), 5, 0, ...
    messages = [(topic, reading(5 * (i % 2), {"temp_c": 37.0}, ts=start + i)) for i in range(41)]
    db = config.storage.path
    async with running_daemon(config) as running:
        for message in messages:  # one by one, in order: each restart must follow its gap
            await publish_all(broker, [message], clients=1)
        await eventually(
            lambda: running.sample("coldwatch_seq_gaps_resolved_total", {"state": "lost"}) == 20,
            what="every gap lost",
        )
    rows = db_query(db, "SELECT state FROM alarms WHERE rule = 'data_integrity'")
    assert rows == [("cleared_unacknowledged",)]
    lost = db_query(db, "SELECT count(*) FROM seq_gaps WHERE state = 'lost'")
    assert lost == [(20,)]
