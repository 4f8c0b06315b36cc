"""The whole path with real parts: simulators -> Mosquitto -> daemon -> SQLite rows and /metrics."""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from coldwatch.broker import RunningBroker, free_port
from simulators import run_simulation
from tests.conftest import device_entries, eventually, http_get, running_daemon, write_config

KINDS = ("particle_counter", "incubator", "cryoshipper")


def parse_metrics(text: str, name: str) -> dict[str, float]:
    """Samples of one metric family from exposition text, keyed by their label string."""
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", re.MULTILINE)
    return {labels or "": float(value) for labels, value in pattern.findall(text)}


async def test_simulated_facility_reaches_sqlite_and_metrics(
    broker: RunningBroker, prefix: str, tmp_path: Path
) -> None:
    """Simulated devices of all three kinds end up as SQLite rows and as /metrics samples that agree."""
    devices = [e for kind in KINDS for e in device_entries(kind, 2)]
    for entry in devices:
        entry["interval_s"] = 5.0
    config = write_config(tmp_path / "c.yaml", broker=broker, prefix=prefix, devices=devices)
    async with running_daemon(config) as running:
        stats = await asyncio.wait_for(run_simulation(config, seed=3, speed=60.0, duration_s=3.0), 60)
        published = sum(stats.published.values())
        assert published >= 6 * 30, "3 wall seconds at 60x with a 5 s interval: about 36 readings per device"
        await eventually(
            lambda: sum(running.sample("coldwatch_readings_total", _labels(d)) for d in devices) >= published,
            what="every published reading committed",
        )
        # The retained "offline" is a message of its own: it may arrive after the readings.
        await eventually(
            lambda: all(running.sample("coldwatch_device_online", _labels(d)) == 0.0 for d in devices),
            what="every device's retained offline status",
        )
        status, body = await http_get(f"{running.base_url}/metrics")
        assert status == 200
        text = body.decode()
        ready_status, _ = await http_get(f"{running.base_url}/readyz")
        assert ready_status == 200
    readings = parse_metrics(text, "coldwatch_readings_total")
    online = parse_metrics(text, "coldwatch_device_online")
    last = parse_metrics(text, "coldwatch_last_value")
    with sqlite3.connect(config.storage.path) as conn:
        per_device = dict(
            conn.execute(
                "SELECT d.device_id, count(DISTINCT r.seq) FROM readings r "
                "JOIN devices d ON d.id = r.device GROUP BY 1"
            ).fetchall()
        )
    assert sum(per_device.values()) == published
    for entry in devices:
        key = next(k for k in readings if f'device="{entry["id"]}"' in k)
        assert readings[key] == per_device[entry["id"]] == stats.published[entry["id"]]
        # The simulators publish a retained "offline" when they stop cleanly.
        assert any(f'device="{entry["id"]}"' in k and v == 0.0 for k, v in online.items()), "retained status"
    assert any('metric="ln2_level_pct"' in k for k in last)
    assert any('metric="particles_0_5um_m3"' in k for k in last)
    assert any('metric="co2_pct"' in k for k in last)


def _labels(entry: dict[str, object]) -> dict[str, str]:
    return {"device": str(entry["id"]), "kind": str(entry["kind"]), "site": "site1", "area": "area1"}


@pytest.mark.parametrize("embedded", ["mosquitto", "amqtt"])
async def test_demo_without_a_broker_shows_all_kinds_growing(tmp_path: Path, embedded: str) -> None:
    """`coldwatch demo` with no broker starts its own; all three kinds grow on /metrics within a minute."""
    dead_port = free_port()
    env = {
        **os.environ,
        "COLDWATCH_MQTT_URL": f"mqtt://127.0.0.1:{dead_port}",  # nothing listens here
        "COLDWATCH_HTTP_LISTEN": f"127.0.0.1:{free_port()}",
        "COLDWATCH_MQTT__CLIENT_ID": f"demo-{embedded}",
    }
    broker_choice = "auto" if embedded == "mosquitto" else "amqtt"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coldwatch",
            "demo",
            "--data",
            str(tmp_path / "demo"),
            "--broker",
            broker_choice,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert process.stdout is not None
        lines: list[str] = []
        metrics_url = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while metrics_url is None and loop.time() < deadline:
            line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 30)
            if not line:
                break
            lines.append(line.decode(errors="replace"))
            found = re.search(r"metrics:\s+(http://\S+/metrics)", lines[-1])
            metrics_url = found.group(1) if found else None
        assert metrics_url, "".join(lines)
        assert f"embedded {embedded} broker" in "".join(lines)
        started = loop.time()
        first: dict[str, float] = {}

        async def growing() -> bool:
            status, body = await http_get(metrics_url)
            if status != 200:
                return False
            values = parse_metrics(body.decode(), "coldwatch_values_total")
            by_kind = {k: values.get(f'{{kind="{k}"}}', 0.0) for k in KINDS}
            if not first and all(v > 0 for v in by_kind.values()):
                first.update(by_kind)
                return False
            return bool(first) and all(by_kind[k] > first[k] for k in KINDS)

        await eventually(growing, timeout_s=60, interval_s=1.0, what="readings of all three kinds growing")
        assert loop.time() - started < 60
    finally:
        process.terminate()
        out, _ = await asyncio.to_thread(process.communicate, timeout=30)
    assert process.returncode == 0, out.decode(errors="replace")[-3000:]
