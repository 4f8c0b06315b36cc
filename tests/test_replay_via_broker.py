"""``coldwatch replay --via-broker`` with door and lid scenarios, and a run that cannot complete."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from coldwatch.broker import RunningBroker
from coldwatch.config import Config
from coldwatch.replay.broker import ReplayViaBrokerError, stored_alarms
from coldwatch.replay.scenario import LoadedScenario, load_scenario
from coldwatch.replay.timeline import build_streams, merged_arrivals
from coldwatch.rules.model import US
from simulators.fleet import encode_payload, telemetry_topic
from tests.conftest import running_daemon, write_config
from tests.test_replay_cli import ROOT, replay

SCENARIOS = ROOT / "simulators" / "scenarios"


def _daemon_config(
    tmp_path: Path, broker: RunningBroker, prefix: str, loaded: list[LoadedScenario]
) -> Config:
    """A daemon registering the scenarios' devices with the scenarios' rules."""
    devices = [d.model_dump(mode="json", exclude_defaults=True) for s in loaded for d in s.devices]
    rules: dict[str, Any] = {"devices": {}}
    for s in loaded:
        rules["devices"].update(s.rules.model_dump(mode="json", exclude_defaults=True).get("devices", {}))
    return write_config(
        tmp_path / "coldwatch.yaml", broker=broker, prefix=prefix, devices=devices, rules=rules
    )


@pytest.mark.parametrize(
    "name", ["incubator-door-held-open-alert-3min-action-10min", "cryoshipper-lid-held-open-alert-after-5min"]
)
async def test_door_and_lid_scenarios_pass_through_the_broker(
    tmp_path: Path, broker: RunningBroker, prefix: str, name: str
) -> None:
    """Door and lid readings are published as booleans: the daemon stores them, every expectation passes."""
    path = SCENARIOS / f"{name}.yaml"
    config = _daemon_config(tmp_path, broker, prefix, [load_scenario(path)])
    async with running_daemon(config):
        done = await asyncio.to_thread(
            replay, path, "--via-broker", "--config", tmp_path / "coldwatch.yaml", "--speed", "0",
            "--report", tmp_path / "broker",
        )  # fmt: skip
    written = tmp_path / "broker" / "report.json"
    assert written.exists(), done.stdout + done.stderr
    report = json.loads(written.read_text())
    statuses = {
        e["status"] for s in report["scenarios"] for e in s["expectations"] if "comm_loss" not in e["label"]
    }
    assert statuses == {"pass"}, done.stdout + done.stderr
    assert "rejected" not in done.stdout + done.stderr


async def test_a_run_with_rejected_readings_fails_naming_them(
    tmp_path: Path, broker: RunningBroker, prefix: str
) -> None:
    """Readings the daemon rejects end the wait at once, with each rejection reason and its count named."""
    loaded = load_scenario(SCENARIOS / "incubator-door-held-open-alert-3min-action-10min.yaml")
    config = _daemon_config(tmp_path, broker, prefix, [loaded])
    streams = build_streams(loaded.scenario)
    published_from_us = time.time_ns() // 1000
    shift_us = published_from_us - loaded.scenario.duration_us - US - loaded.scenario.start_us
    device = loaded.devices[0]
    async with running_daemon(config):
        async with aiomqtt.Client(broker.host, broker.port, identifier=f"{prefix}-old-replay") as client:
            for _, stream, index in merged_arrivals(streams):
                reading = stream.reading(index)
                ts = datetime.fromtimestamp((reading.ts_us + shift_us) / US, tz=UTC)
                # The door as 0.0/1.0, as an older replay sent it: the daemon rightly rejects those.
                payload = encode_payload(ts, reading.seq, dict(reading.values))
                await client.publish(telemetry_topic(device, config.mqtt.topic_prefix), payload, qos=1)
        started = time.monotonic()
        with pytest.raises(ReplayViaBrokerError) as failed:
            await stored_alarms(streams, config, shift_us, published_from_us)
        waited = time.monotonic() - started
    message = str(failed.value)
    sent = len(streams[device.id])
    assert f"the daemon rejected {sent} message(s): wrong_type x{sent}" in message, message
    assert "'door_open' must be true or false" in message, message
    assert waited < 60, f"waited {waited:.0f} s for readings that were all rejected"
