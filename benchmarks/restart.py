"""Restart benchmark: how long a SIGKILLed collector is blind, against the history it holds.

    python benchmarks/restart.py [--devices 1000] [--hours 24] [--interval-s 10]
                                 [--kind cryoshipper] [--sweep] [--json FILE]

1. Fill a SQLite database with ``--devices`` devices of ``--kind`` (quiet readings every
   ``--interval-s`` for ``--hours``), as the collector stores them: the readings go
   through the storage's own batch API (``write_batch``, the collector's write path,
   with ``synchronous=OFF`` while filling), judged by the same rules engine in the same
   order, each batch carrying the device states and the rule snapshots the collector's
   writer would put in it. The history is quiet (no alarm): the fill checks it, so the
   database holds exactly what a collector would have stored.
2. Start ``coldwatch run`` on it, wait until ready, SIGKILL it.
3. Start it again and time: until ``/readyz`` answers ready (subscribed, judging,
   acknowledging: broker connected and the database writable) and, after publishing one
   new reading from every device, until all of them are stored.

With ``--sweep``, the same at a quarter and a half of the devices and of the hours, to
show how the restart grows with N and H (it should not grow with H). A benchmark, not a
test: it prints figures; the figures are noisy on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from coldwatch.broker import free_port, start_mosquitto, stop_process, wait_listening
from coldwatch.config import load_config
from coldwatch.payload import Telemetry
from coldwatch.rules.engine import Engine
from coldwatch.rules.model import US, EngineReading
from coldwatch.storage.base import Batch, DeviceState
from coldwatch.storage.sqlite import SqliteStorage

PREFIX = "rbench"
SITE, AREA = "bench", "floor1"
BATCH_READINGS = 20_000


def quiet_values(kind: str, rng: random.Random, hours: float) -> dict[str, float]:
    """One in-band reading of ``kind`` at ``hours`` into the history."""
    if kind == "cryoshipper":
        return {
            "temp_c": round(-190.0 + rng.gauss(0.0, 0.3), 2),
            "temp_b_c": round(-190.0 + rng.gauss(0.0, 0.3), 2),
            "ln2_level_pct": round(90.0 - 0.5 * hours + rng.gauss(0.0, 0.05), 2),
            "tilt_deg": 2.0,
            "lid_open": 0.0,
            "battery_pct": 90.0,
        }
    if kind == "particle_counter":
        return {"particles_0_5um_m3": round(1_000.0 + rng.gauss(0.0, 50.0)), "particles_5_0um_m3": 0.0}
    return {
        "temp_c": round(37.0 + rng.gauss(0.0, 0.05), 2),
        "co2_pct": round(5.0 + rng.gauss(0.0, 0.05), 2),
        "rh_pct": round(94.0 + rng.gauss(0.0, 0.3), 1),
        "door_open": 0.0,
    }


def device_ids(kind: str, count: int) -> list[str]:
    """The benchmark's device ids."""
    return [f"{kind[:4]}-{i:05d}" for i in range(count)]


def write_config(folder: Path, port: int, kind: str, devices: int) -> Path:
    """The collector's configuration for this run."""
    extra = {"grade": "B"} if kind == "particle_counter" else {}
    config = {
        "mqtt": {
            "url": f"mqtt://127.0.0.1:{port}",
            "client_id": f"{PREFIX}-{folder.name}",
            "topic_prefix": PREFIX,
        },
        "storage": {"path": str(folder / "coldwatch.db")},
        "http": {"listen": f"127.0.0.1:{free_port()}"},
        "devices": [
            {"id": d, "kind": kind, "site": SITE, "area": AREA, "interval_s": 10, **extra}
            for d in device_ids(kind, devices)
        ],
    }
    path = folder / "coldwatch.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


async def fill(config_path: Path, hours: float, interval_s: float, end_us: int) -> tuple[int, float]:
    """Store ``hours`` of readings of every device up to ``end_us``; (readings, seconds)."""
    config = load_config(config_path)
    storage = SqliteStorage(Path(config.storage.location), synchronous="OFF")
    await storage.open()
    began = time.perf_counter()
    await storage.register_devices(config.devices)
    rounds = round(hours * 3600 / interval_s)
    start_us = end_us - rounds * round(interval_s * US)
    engine = Engine(config.devices, config.rules, started_us=start_us)
    rng = random.Random(1)
    ids = [d.id for d in config.devices]
    kind = config.devices[0].kind.value
    per_batch = max(1, BATCH_READINGS // len(ids))
    stored = 0
    for first in range(0, rounds, per_batch):
        batch = Batch()
        for r in range(first, min(rounds, first + per_batch)):
            ts_us = start_us + r * round(interval_s * US)
            values = quiet_values(kind, rng, r * interval_s / 3600)
            for index, device_id in enumerate(ids):
                at_us = ts_us + index * 1_000
                received_us = at_us + 20_000
                events = engine.ingest(EngineReading(device_id, at_us, values, r, received_us=received_us))
                if events:
                    raise SystemExit(f"the quiet history raised {events[0]}: it would need its alarms stored")
                batch.readings.append(
                    (Telemetry(device_id, r, at_us, False, tuple(values.items())), received_us)
                )
                batch.devices[device_id] = DeviceState(r, at_us, received_us, True)
        batch.snapshots = engine.snapshots_due(ids)
        await storage.write_batch(batch)
        stored += len(batch.readings)
        if first % (per_batch * 50) == 0:
            print(f"  filled {stored:,} of {rounds * len(ids):,} readings", flush=True)
    await storage.close()
    return stored, time.perf_counter() - began


class Collector:
    """``coldwatch run`` as a child process."""

    def __init__(self, config_path: Path) -> None:
        data = yaml.safe_load(config_path.read_text())
        self.config_path = config_path
        self.ready_url = f"http://{data['http']['listen']}/readyz"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start; seconds until /readyz answers ready."""
        log = (self.config_path.parent / "daemon.log").open("ab")
        began = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "coldwatch", "run", "--config", str(self.config_path)],
            stdout=log,
            stderr=log,
        )
        while True:
            try:
                with urllib.request.urlopen(self.ready_url, timeout=5) as response:  # noqa: S310 - our own daemon
                    if json.loads(response.read())["ready"]:
                        return time.monotonic() - began
            except (urllib.error.URLError, OSError):
                pass
            if self.process.poll() is not None:
                raise SystemExit(f"the collector exited: see {self.config_path.parent / 'daemon.log'}")
            if time.monotonic() - began > 1800:
                raise SystemExit("the collector was not ready within 30 minutes")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, as a power cut would."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(60)

    def stop(self) -> None:
        """SIGTERM and wait."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(120)


def publish_one_each(port: int, kind: str, ids: list[str], ts_s: float, seq: int) -> None:
    """One new reading of every device, QoS 1, acknowledged by the broker."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{PREFIX}-pub-{seq}")
    client.connect("127.0.0.1", port)
    client.loop_start()
    rng = random.Random(seq)
    infos = []
    for device_id in ids:
        values: dict[str, float | bool] = dict(quiet_values(kind, rng, 0.0))
        for flag in ("lid_open", "door_open"):  # booleans on the wire
            if flag in values:
                values[flag] = bool(values[flag])
        body = {"ts": ts_s, "seq": seq, "values": values}
        topic = f"{PREFIX}/{SITE}/{AREA}/{kind}/{device_id}/telemetry"
        infos.append(client.publish(topic, json.dumps(body), qos=1))
    for info in infos:
        info.wait_for_publish(60)
    client.loop_stop()
    client.disconnect()


def stored_after(db: Path, ts_us: int) -> int:
    """Devices with a reading stored at or after ``ts_us`` (their state is committed with it)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return int(con.execute("SELECT count(*) FROM devices WHERE last_ts_us >= ?", (ts_us,)).fetchone()[0])
    finally:
        con.close()


def one_run(
    root: Path, port: int, *, kind: str, devices: int, hours: float, interval_s: float
) -> dict[str, Any]:
    """Fill, start, SIGKILL, restart: the figures of one (N, H)."""
    folder = root / f"{kind}-{devices}-{hours:g}h"
    folder.mkdir()
    config_path = write_config(folder, port, kind, devices)
    now_s = time.time()
    end_us = round((now_s - 60) * US)
    print(f"{devices} {kind}s x {hours:g} h every {interval_s:g} s: filling", flush=True)
    readings, fill_s = asyncio.run(fill(config_path, hours, interval_s, end_us))
    collector = Collector(config_path)
    try:
        first_ready_s = collector.start()
        collector.kill()
        ready_s = collector.start()
        began = time.monotonic()
        new_ts_s = time.time()
        ids = device_ids(kind, devices)
        publish_one_each(port, kind, ids, new_ts_s, round(hours * 3600 / interval_s))  # the next seq
        db = folder / "coldwatch.db"
        while stored_after(db, round(new_ts_s * US)) < devices:
            if time.monotonic() - began > 600:
                raise SystemExit("the new readings were not all stored within 10 minutes")
            time.sleep(0.05)
        all_stored_s = ready_s + (time.monotonic() - began)
        collector.stop()
    finally:
        if collector.process is not None and collector.process.poll() is None:
            collector.kill()
    size_mb = sum(p.stat().st_size for p in folder.glob("coldwatch.db*")) / 1e6
    result = {
        "kind": kind,
        "devices": devices,
        "hours": hours,
        "readings": readings,
        "fill_s": round(fill_s, 1),
        "db_mb": round(size_mb),
        "first_start_ready_s": round(first_ready_s, 2),
        "ready_after_sigkill_s": round(ready_s, 2),
        "every_device_stored_s": round(all_stored_s, 2),
    }
    print(
        f"  {readings:,} readings stored ({size_mb:,.0f} MB, filled in {fill_s:.0f} s); after SIGKILL: ready in "
        f"{ready_s:.2f} s, a new reading of every device stored {all_stored_s:.2f} s after the restart began",
        flush=True,
    )
    return result


def main() -> int:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--kind", choices=["cryoshipper", "incubator", "particle_counter"], default="cryoshipper"
    )
    parser.add_argument("--devices", type=int, default=1_000)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--interval-s", type=float, default=10.0)
    parser.add_argument("--sweep", action="store_true", help="also a quarter and a half of N and of H")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cases = [(args.devices, args.hours)]
    if args.sweep:
        cases = [
            (max(1, args.devices // 4), args.hours),
            (max(1, args.devices // 2), args.hours),
            (args.devices, args.hours / 4),
            (args.devices, args.hours / 2),
            (args.devices, args.hours),
        ]
    results = []
    with tempfile.TemporaryDirectory(prefix="coldwatch-restart-") as tmp:
        root = Path(tmp)
        port = free_port()
        broker = start_mosquitto(root / "mosquitto", "127.0.0.1", port)
        try:
            wait_listening("127.0.0.1", port, broker, root / "mosquitto", 10)
            results = [
                one_run(root, port, kind=args.kind, devices=n, hours=h, interval_s=args.interval_s)
                for n, h in cases
            ]
        finally:
            stop_process(broker)
    print(
        f"\n{'devices':>8}{'hours':>7}{'readings':>13}{'ready (s)':>11}{'all stored (s)':>16}  target: ready <= 5 s"
    )
    for r in results:
        print(
            f"{r['devices']:>8}{r['hours']:>7g}{r['readings']:>13,}{r['ready_after_sigkill_s']:>11.2f}"
            f"{r['every_device_stored_s']:>16.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps({"runs": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
