"""A restart takes each device's rule state from the snapshot stored with its readings."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from coldwatch.broker import RunningBroker
from coldwatch.config import Config, DeviceConfig
from coldwatch.rules.config import RulesConfig
from coldwatch.rules.device import DeviceRules
from coldwatch.rules.engine import Engine
from coldwatch.rules.model import US, EngineReading
from coldwatch.rules.snapshot import SNAPSHOT_EVERY_S, capture
from tests.conftest import (
    Backend,
    eventually,
    publish_all,
    reading,
    running_daemon,
    telemetry_topic,
    write_config,
)

NO_COMM_LOSS = [{"type": "comm_loss", "timeout_s": 1, "enabled": False}]
DEVICE = {"id": "cryo-1", "kind": "cryoshipper", "site": "s", "area": "lab"}


def shipper_run(base_s: float, count: int) -> list[tuple[float, dict[str, float | bool]]]:
    """A cryoshipper every 60 s: out of range (above -150 C) one reading in five, LN2 slowly falling."""
    return [
        (
            base_s + 60 * i,
            {
                "temp_c": -149.0 if i % 5 == 0 else -190.0,
                "temp_b_c": -189.5,
                "ln2_level_pct": 80.0 - 0.05 * i,
                "lid_open": i % 40 == 0,
                "tilt_deg": 2.0,
                "battery_pct": 90.0,
            },
        )
        for i in range(count)
    ]


def uninterrupted(config: Config, run: list[tuple[float, dict[str, float | bool]]]) -> Engine:
    """The pure engine after the same readings in one go."""
    device = DeviceConfig.model_validate(DEVICE)
    engine = Engine([device], RulesConfig.model_validate(config.rules.model_dump()), started_us=0)
    for i, (ts, values) in enumerate(run):
        engine.ingest(
            EngineReading("cryo-1", round(ts * US), {k: float(v) for k, v in values.items()}, seq=i)
        )
    return engine


def judged(device: DeviceRules) -> int:
    """Readings the device's rules judged since the restart began (its history's length).

    With the history in the database (the default) the device counts them; in memory,
    it holds them.
    """
    return len(device.history) if device.stored is None else device.stored.count


def stored_count(backend: Backend) -> int:
    """Readings stored."""
    return int(backend.query("SELECT count(DISTINCT seq) FROM readings")[0][0])


async def test_restart_takes_the_rule_state_from_the_snapshot_exactly(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend
) -> None:
    """After a restart the rules start from the stored snapshot and hold the state of an uninterrupted run."""
    config = write_config(
        tmp_path / "c.yaml",
        storage={"path": backend.location},
        broker=broker,
        prefix=prefix,
        devices=[DEVICE],
        rules={"profiles": {"cryoshipper": NO_COMM_LOSS}},
    )
    topic = telemetry_topic(config, "cryo-1")
    run = shipper_run(datetime.now(UTC).timestamp() - 4 * 3600, 150)
    messages = [(topic, reading(i, values, ts=ts)) for i, (ts, values) in enumerate(run)]
    async with running_daemon(config):
        await publish_all(broker, messages, clients=1)
        await eventually(lambda: stored_count(backend) == len(run), timeout_s=60, what="all stored")
    [(device_id, snap_ts_us, snap_seq)] = backend.query("SELECT device_id, ts_us, seq FROM rule_snapshots")
    assert device_id == "cryo-1"
    newest_us = round(run[-1][0] * US)
    assert newest_us - snap_ts_us <= SNAPSHOT_EVERY_S * US + 60 * US, "written as the readings went"
    expected = uninterrupted(config, run).devices["cryo-1"]
    async with running_daemon(config) as running:
        assert running.daemon.engine is not None
        device = running.daemon.engine.devices["cryo-1"]
        assert device.floor == (snap_ts_us, snap_seq), "started from the snapshot"
        assert judged(device) == len(run) - 1 - snap_seq, "judged again: only the readings after it"
        restored, reference = capture(device), capture(expected)
        assert restored is not None
        assert reference is not None
        # Window points and sums, latches with their pending runs, door: all as uninterrupted.
        assert (restored.ts_us, restored.seq, restored.state) == (
            reference.ts_us,
            reference.seq,
            reference.state,
        )


async def test_a_snapshot_of_changed_rules_is_ignored(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend
) -> None:
    """When the rules changed since a snapshot, the restart judges the stored readings again instead."""
    config = write_config(
        tmp_path / "c.yaml",
        storage={"path": backend.location},
        broker=broker,
        prefix=prefix,
        devices=[DEVICE],
        rules={"profiles": {"cryoshipper": NO_COMM_LOSS}},
    )
    topic = telemetry_topic(config, "cryo-1")
    run = shipper_run(datetime.now(UTC).timestamp() - 4 * 3600, 40)
    messages = [(topic, reading(i, values, ts=ts)) for i, (ts, values) in enumerate(run)]
    async with running_daemon(config):
        await publish_all(broker, messages, clients=1)
        await eventually(lambda: stored_count(backend) == len(run), timeout_s=60, what="all stored")
    assert backend.query("SELECT count(*) FROM rule_snapshots")[0][0] == 1
    changed = write_config(
        tmp_path / "c2.yaml",
        storage={"path": backend.location},
        broker=broker,
        prefix=prefix,
        devices=[DEVICE],
        rules={"profiles": {"cryoshipper": NO_COMM_LOSS}, "reorder_horizon_s": 1800},
    )
    async with running_daemon(changed) as running:
        assert running.daemon.engine is not None
        device = running.daemon.engine.devices["cryo-1"]
        assert device.floor is None, "not from the snapshot of other rules"
        assert judged(device) == len(run), "every stored reading of the window judged again"
