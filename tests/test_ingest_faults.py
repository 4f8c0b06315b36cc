"""Delivery guarantees: SIGKILL restarts, acknowledgement after commit, bad input."""

from __future__ import annotations

import asyncio
import functools
import json
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

from coldwatch.broker import RunningBroker, free_port
from coldwatch.config import Config
from coldwatch.payload import Reason
from tests.conftest import (
    DaemonProcess,
    check_backlog_drained_within_queue,
    device_entries,
    distinct_messages,
    eventually,
    http_get,
    publish_all,
    reading,
    running_daemon,
    telemetry_topic,
    write_config,
)

VALUES = {
    "particle_counter": {
        "particles_0_5um_m3": 1200.0,
        "particles_5_0um_m3": 0.0,
        "flow_lpm": 28.3,
        "sample_volume_l": 28.3,
    },
    "incubator": {"temp_c": 37.0, "co2_pct": 5.0, "rh_pct": 95.0, "door_open": False},
    "cryoshipper": {"temp_c": -190.0, "ln2_level_pct": 80.0, "tilt_deg": 1.0, "battery_pct": 99.0},
}


def fleet(n_each: int) -> list[dict[str, Any]]:
    """Devices of all three kinds."""
    return [e for kind in VALUES for e in device_entries(kind, n_each)]


async def publish_paced(broker: RunningBroker, messages: list[tuple[str, bytes]]) -> None:
    """Publish in steps of 500 a fifth of a second apart, so that the stream outlasts both kills.

    Published at once, the whole load reached the broker within a second or two and the
    collector stored it all before the second kill could come mid-stream.
    """
    for start in range(0, len(messages), 500):
        await publish_all(broker, messages[start : start + 500], clients=5, window=100)
        await asyncio.sleep(0.2)


async def test_sigkill_twice_loses_and_duplicates_nothing(
    broker: RunningBroker, prefix: str, tmp_path: Path
) -> None:
    """10,000 QoS 1 messages from 50 devices, the daemon SIGKILLed twice mid-stream: exactly 10,000 stored."""
    devices = fleet(17)[:50]
    config = write_config(
        tmp_path / "c.yaml",
        broker=broker,
        prefix=prefix,
        devices=devices,
        http_listen=f"127.0.0.1:{free_port()}",
    )
    db = Path(config.storage.path)
    per_device = 10_000 // len(devices)
    base_ts = time.time() - 3600
    messages = [
        (telemetry_topic(config, d["id"]), reading(seq, VALUES[d["kind"]], ts=base_ts + seq))
        for seq in range(per_device)
        for d in devices
    ]
    assert len(messages) == 10_000
    with DaemonProcess(tmp_path / "c.yaml", tmp_path / "daemon.log") as daemon:
        daemon.start()
        await eventually(lambda: _ready(config), timeout_s=30, what="daemon ready")
        publisher = asyncio.create_task(publish_paced(broker, messages))
        kills = 0
        for threshold in (1500, 5000):
            await eventually(
                lambda t=threshold: distinct_messages(db) >= t, timeout_s=120, what=f"{threshold} stored"
            )
            daemon.kill()
            kills += 1
            stored_at_kill = distinct_messages(db)
            assert stored_at_kill < 10_000, "the kill must come before everything is stored"
            daemon.start()
        await asyncio.wait_for(publisher, 180)
        await eventually(lambda: distinct_messages(db) >= 10_000, timeout_s=180, what="all 10,000 stored")
        # Whatever the broker still redelivers is recognised, never stored twice.
        await asyncio.sleep(1.0)
        assert daemon.terminate() == 0, daemon.log()[-3000:]
    assert kills == 2
    with sqlite3.connect(db) as conn:
        per_message_rows = conn.execute(
            "SELECT count(*), count(DISTINCT device || ':' || seq || ':' || ts_us) FROM readings"
        ).fetchone()
        seqs = conn.execute(
            "SELECT device, count(DISTINCT seq), min(seq), max(seq) FROM readings GROUP BY device"
        ).fetchall()
    assert distinct_messages(db) == 10_000
    assert per_message_rows[0] == 10_000 * 4, "every message's four values, each stored once"
    assert len(seqs) == 50
    assert all(row[1:] == (per_device, 0, per_device - 1) for row in seqs)


async def _ready(config: Config) -> bool:
    status, _ = await http_get(f"http://{config.http.listen}/readyz")
    return status == 200


async def test_acknowledged_only_after_commit(broker: RunningBroker, prefix: str, tmp_path: Path) -> None:
    """Messages received while the database refuses writes survive a SIGKILL: they were never acknowledged."""
    devices = device_entries("incubator", 4)
    config = write_config(
        tmp_path / "c.yaml",
        broker=broker,
        prefix=prefix,
        devices=devices,
        http_listen=f"127.0.0.1:{free_port()}",
        storage={"retry_max_s": 0.5},
    )
    db = Path(config.storage.path)
    port_file_config = tmp_path / "c.yaml"
    with DaemonProcess(port_file_config, tmp_path / "daemon.log") as daemon:
        daemon.start()
        await eventually(lambda: _ready(config), timeout_s=30, what="daemon ready")
        blocker = sqlite3.connect(db, isolation_level=None, timeout=30)
        blocker.execute("BEGIN EXCLUSIVE")  # every write of the daemon now fails and is retried
        try:
            messages = [
                (telemetry_topic(config, d["id"]), reading(seq, VALUES["incubator"]))
                for seq in range(50)
                for d in devices
            ]
            await publish_all(broker, messages, clients=2)
            await eventually(
                lambda: "batch write failed" in daemon.log(), timeout_s=30, what="a refused write"
            )
            daemon.kill()
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert distinct_messages(db) == 0
        daemon.start()
        await eventually(lambda: distinct_messages(db) == 200, timeout_s=60, what="200 stored after restart")
        assert daemon.terminate() == 0


def bad_messages(
    config: Config, good_device: str, n: int, rng: random.Random
) -> list[tuple[str, bytes, Reason]]:
    """``n`` malformed messages cycling through every rejection reason."""
    d = config.device_map()[good_device]
    p = config.mqtt.topic_prefix
    topic = telemetry_topic(config, good_device)
    now = time.time()
    good = {"temp_c": 37.0}
    makers: dict[Reason, tuple[str, bytes]] = {
        Reason.TOO_LARGE: (
            topic,
            json.dumps({"ts": now, "seq": 1, "values": good, "pad": "x" * 70_000}).encode(),
        ),
        Reason.INVALID_UTF8: (topic, b'{"ts": 1, "x": "\xff\xfe"}'),
        Reason.INVALID_JSON: (topic, b'{"ts": 1700000000, "seq": '),
        Reason.NON_FINITE: (topic, b'{"ts": 1700000000, "seq": 1, "values": {"temp_c": NaN}}'),
        Reason.NOT_AN_OBJECT: (topic, b"[1, 2, 3]"),
        Reason.BAD_TOPIC: (f"{p}/somewhere/telemetry", reading(1, good)),
        Reason.UNKNOWN_DEVICE: (f"{p}/{d.site}/{d.area}/incubator/ghost-7/telemetry", reading(1, good)),
        Reason.KIND_MISMATCH: (f"{p}/{d.site}/{d.area}/cryoshipper/{d.id}/telemetry", reading(1, good)),
        Reason.TOPIC_MISMATCH: (f"{p}/{d.site}/other-room/incubator/{d.id}/telemetry", reading(1, good)),
        Reason.UNKNOWN_FIELD: (topic, reading(1, good, firmware="1.2")),
        Reason.MISSING_TS: (topic, json.dumps({"seq": 1, "values": good}).encode()),
        Reason.INVALID_TS: (topic, json.dumps({"ts": "yesterday", "seq": 1, "values": good}).encode()),
        Reason.FUTURE_TS: (topic, reading(1, good, ts=now + 3600)),
        Reason.MISSING_FIELD: (topic, json.dumps({"ts": now, "values": good}).encode()),
        Reason.WRONG_TYPE: (topic, json.dumps({"ts": now, "seq": 1, "values": {"temp_c": "37.0"}}).encode()),
        Reason.UNKNOWN_METRIC: (topic, reading(1, {"ln2_level_pct": 50.0})),
        Reason.BAD_STATUS: (topic.replace("/telemetry", "/status"), b"maybe"),
        Reason.DUPLICATE_KEY: (topic, b'{"ts": %d, "seq": 1, "values": {"temp_c": 9, "temp_c": 3}}' % now),
        Reason.OUT_OF_RANGE: (topic, reading(1, {"rh_pct": 1e300})),
    }
    # internal_error: a fault of the collector itself (tests/test_poison.py injects one).
    assert set(makers) == set(Reason) - {Reason.INTERNAL_ERROR}, "every rejection reason is exercised"
    reasons = list(makers)
    rng.shuffle(reasons)
    return [(*makers[reasons[i % len(reasons)]], reasons[i % len(reasons)]) for i in range(n)]


async def test_malformed_messages_interleaved(broker: RunningBroker, prefix: str, tmp_path: Path) -> None:
    """1,000 bad messages of every kind among 1,000 good ones: good stored, bad counted and quarantined."""
    devices = device_entries("incubator", 10)
    config = write_config(tmp_path / "c.yaml", broker=broker, prefix=prefix, devices=devices)
    rng = random.Random(7)
    good = [
        (telemetry_topic(config, d["id"]), reading(seq, VALUES["incubator"]), None)
        for seq in range(100)
        for d in devices
    ]
    bad = bad_messages(config, devices[0]["id"], 1000, rng)
    mixed: list[tuple[str, bytes, Reason | None]] = []
    bad_iter = iter(bad)
    for item in good:  # strictly alternate so each device's good readings keep their order
        mixed.append(item)
        mixed.append(next(bad_iter))
    async with running_daemon(config) as running:
        await publish_all(broker, [(t, p) for t, p, _ in mixed], clients=1)
        await eventually(
            lambda: (
                running.sample(
                    "coldwatch_readings_total",
                    {"device": "inc-000", "kind": "incubator", "site": "site1", "area": "area1"},
                )
                >= 100
                and sum(
                    running.sample("coldwatch_messages_rejected_total", {"reason": r.value}) for r in Reason
                )
                >= 1000
            ),
            timeout_s=60,
            what="all messages processed",
        )
        status, _ = await http_get(f"{running.base_url}/healthz")
        assert status == 200
        assert not running.task.done(), "the daemon is still running"
        expected: dict[str, int] = {}
        for _, _, reason in bad:
            assert reason is not None
            expected[reason.value] = expected.get(reason.value, 0) + 1
        for reason in Reason:
            assert running.sample(
                "coldwatch_messages_rejected_total", {"reason": reason.value}
            ) == expected.get(reason.value, 0)
        assert (
            sum(
                running.sample(
                    "coldwatch_seq_missing_readings_total",
                    {"device": d["id"], "kind": "incubator", "site": "site1", "area": "area1"},
                )
                for d in devices
            )
            == 0
        )
    db = Path(config.storage.path)
    with sqlite3.connect(db) as conn:
        quarantined = dict(conn.execute("SELECT reason, count(*) FROM quarantine GROUP BY reason").fetchall())
        totals = dict(conn.execute("SELECT reason, total FROM rejection_totals").fetchall())
        raw = conn.execute("SELECT payload FROM quarantine WHERE reason = 'invalid_utf8' LIMIT 1").fetchone()[
            0
        ]
    assert distinct_messages(db) == 1000
    assert quarantined == expected
    assert totals == expected
    assert raw == b'{"ts": 1, "x": "\xff\xfe"}', "the raw bytes are kept for inspection"


async def test_seq_gaps_counted_and_recorded(broker: RunningBroker, prefix: str, tmp_path: Path) -> None:
    """Skipped sequence numbers are counted per device and recorded, also across a restart."""
    config = write_config(
        tmp_path / "c.yaml", broker=broker, prefix=prefix, devices=device_entries("cryoshipper", 1)
    )
    topic = telemetry_topic(config, "ln2-000")
    values = VALUES["cryoshipper"]
    labels = {"device": "ln2-000", "kind": "cryoshipper", "site": "site1", "area": "area1"}
    async with running_daemon(config) as running:
        await publish_all(broker, [(topic, reading(s, values, ts=1.7e9 + s)) for s in (0, 1, 2)], clients=1)
        await eventually(lambda: running.sample("coldwatch_readings_total", labels) == 3, what="3 readings")
    async with running_daemon(config) as running:  # restarted: continues from the committed state
        await publish_all(
            broker, [(topic, reading(s, values, ts=1.7e9 + s)) for s in (5, 6, 10, 2)], clients=1
        )
        await eventually(
            lambda: running.sample("coldwatch_readings_total", labels) == 3, what="3 new readings"
        )
        assert running.sample("coldwatch_seq_missing_readings_total", labels) == 2 + 3
        assert running.sample("coldwatch_duplicate_readings_total") == 1
    with sqlite3.connect(config.storage.path) as conn:
        gaps = conn.execute("SELECT first_missing, last_missing FROM seq_gaps ORDER BY id").fetchall()
    assert gaps == [(3, 4), (7, 9)]


async def test_a_backlog_waits_at_the_broker_not_in_memory(
    broker: RunningBroker, prefix: str, tmp_path: Path
) -> None:
    """A backlog ten times the ingest queue is drained whole; the collector holds at most its queue."""
    devices = device_entries("incubator", 20)
    config = write_config(
        tmp_path / "c.yaml",
        broker=broker,
        prefix=prefix,
        devices=devices,
        mqtt={"receive_maximum": 100},
        ingest={"queue_max": 600},
    )
    await check_backlog_drained_within_queue(config, functools.partial(publish_all, broker))
