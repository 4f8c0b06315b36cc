"""Ingest benchmark: coldwatch against the broker's ceiling and a hand-written baseline.

    python benchmarks/ingest.py [--messages 200000] [--devices 1000] [--json FILE]
                                [--kind incubator|cryoshipper|particle_counter|mixed|all]
                                [--collector-only RUNS]

``--collector-only RUNS`` measures only coldwatch draining the load, RUNS times per kind
(to compare settings given in the environment, run after run). ``--kind`` chooses the
devices of the load (incubators by default; ``mixed``: the three
kinds in turn; ``all``: each kind and the mixed site, one after another in the same run,
each against the baseline draining the same load, with its own alarm latency).

One run, on this machine, with its own Mosquitto (the shipped configuration: nothing is
dropped). The same load (QoS 1, four values per message, several publisher processes)
is queued on the broker for each consumer's persistent session while it is stopped, and
each then drains it, so all three are measured on the same messages at the rate they can
take them, not the rate the publishers manage:

- ceiling: ``mosquitto_sub -q 1`` (C) receiving the load;
- baseline: ``benchmarks/baseline_collector.py``, aiomqtt + json + aiosqlite batches;
- coldwatch: ``coldwatch run``, the full pipeline (validation, rules, storage with
  fsync, metrics, acknowledgement after commit), counted in its database afterwards;
  on SQLite, and again on PostgreSQL (a private server started by the benchmark with
  fsync and synchronous commit on, batches by COPY).

Then, with coldwatch live: latency at a fixed 2,000 messages/s with excursions mixed
in (publish to stored, publish to alarm raised, from the collector's histograms), peak
resident memory with 10,000 registered devices all reporting, and bytes on disk per
stored reading. Prints a table and writes JSON. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import (
    AREA,
    KINDS,
    LIMITS,
    SITE,
    LoadSpec,
    device_ids,
    device_kind,
    publish_load,
    values_per_message,
)

from coldwatch.broker import free_port, start_mosquitto, stop_process, wait_listening
from coldwatch.pgserver import RunningPostgres, start_postgres, stop_postgres

PREFIX = "bench"
MQTT_EXTRA: dict[str, Any] = {}
TARGETS = {
    "vs_baseline": 2.0,
    "vs_ceiling": 0.6,
    "alarm_p99_ms": 50.0,
    "peak_rss_mb": 200.0,
    "bytes_per_reading": 40.0,
}


class Bench:
    """The run's broker and scratch folder."""

    def __init__(self, root: Path, *, postgres: bool = True) -> None:
        self.root = root
        self.host = "127.0.0.1"
        self.port = free_port()
        self.broker = start_mosquitto(root / "mosquitto", self.host, self.port)
        wait_listening(self.host, self.port, self.broker, root / "mosquitto", 10)
        # Durable, as in production: a commit waits for its WAL flush.
        self.postgres: RunningPostgres | None = start_postgres(durable=True) if postgres else None

    def close(self) -> None:
        stop_process(self.broker)
        if self.postgres is not None:
            stop_postgres(self.postgres)

    def new_database(self, name: str) -> str:
        """A new database on the benchmark's PostgreSQL; its URL."""
        assert self.postgres is not None
        pg_fetch(self.postgres.url(), f"CREATE DATABASE {name}")
        return self.postgres.url(name)

    kind = "incubator"  # of the devices loaded and configured next

    def load(self, messages: int, devices: int, **kw: Any) -> float:
        return publish_load(LoadSpec(self.host, self.port, PREFIX, devices, messages, kind=self.kind, **kw))


def ceiling(bench: Bench, messages: int, devices: int) -> dict[str, float]:
    """mosquitto_sub -q 1 on a persistent session draining the queued load."""
    binary = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"
    base = [binary, "-h", bench.host, "-p", str(bench.port), "-q", "1", "-c", "-i", f"{PREFIX}-sub",
            "-V", "mqttv5", "-x", "3600", "-t", f"{PREFIX}/#"]  # fmt: skip
    subprocess.run([*base, "-W", "1"], capture_output=True, check=False)  # create the session
    publish_s = bench.load(messages, devices)
    began = time.perf_counter()
    subprocess.run([*base, "-C", str(messages)], stdout=subprocess.DEVNULL, check=True, timeout=600)
    seconds = time.perf_counter() - began
    return {"messages": messages, "seconds": seconds, "per_s": messages / seconds, "publish_s": publish_s}


def baseline(bench: Bench, messages: int, devices: int) -> dict[str, float]:
    """The hand-written aiomqtt + aiosqlite collector draining the queued load."""
    db = bench.root / f"baseline-{bench.kind}.db"
    script = Path(__file__).resolve().parent / "baseline_collector.py"
    args = [sys.executable, str(script), bench.host, str(bench.port), PREFIX, str(db)]
    session = f"-{bench.kind}"  # a session of its own for each kind's load
    subprocess.run([*args, "0", session], check=True, timeout=60)
    bench.load(messages, devices)
    done = subprocess.run(
        [*args, str(messages), session], check=True, timeout=1800, capture_output=True, text=True
    )
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    stored = (
        sqlite3.connect(db).execute("SELECT count(DISTINCT device || '/' || seq) FROM readings").fetchone()[0]
    )
    return {
        "messages": stored,
        "seconds": figures["seconds"],
        "per_s": figures["messages"] / figures["seconds"],
    }


def pg_fetch(url: str, sql: str) -> list[Any]:
    """Rows of ``sql`` on the PostgreSQL database at ``url``."""

    async def run() -> list[Any]:
        conn = await asyncpg.connect(url)
        try:
            return list(await conn.fetch(sql))
        finally:
            await conn.close()

    return asyncio.run(run())


def write_config(bench: Bench, folder: Path, devices: int, database: str | None = None, **rules: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    mqtt: dict[str, Any] = {
        "url": f"mqtt://{bench.host}:{bench.port}",
        "client_id": f"{PREFIX}-{folder.name}",
        "topic_prefix": PREFIX,
        **MQTT_EXTRA,
    }
    config = {
        "mqtt": mqtt,
        "storage": {"path": database or str(folder / "coldwatch.db")},
        "http": {"listen": f"127.0.0.1:{free_port()}"},
        "devices": [
            {"id": d, "kind": device_kind(d), "site": SITE, "area": AREA,
             **({"grade": "B"} if device_kind(d) == "particle_counter" else {})}
            for d in device_ids(devices, bench.kind)
        ],
        **({"rules": rules} if rules else {}),
    }  # fmt: skip
    path = folder / "coldwatch.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class Daemon:
    """``coldwatch run`` as a child process."""

    def __init__(self, config: Path) -> None:
        self.config = config
        data = yaml.safe_load(config.read_text())
        self.location = str(data["storage"]["path"])
        self.postgres = self.location.startswith("postgresql://")
        self.db = Path(self.location)
        self.metrics_url = f"http://{data['http']['listen']}/metrics"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.config.parent / "daemon.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "coldwatch", "run", "--config", str(self.config)], stdout=log, stderr=log
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                self.scrape()
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(120)

    def scrape(self) -> dict[str, float]:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:  # noqa: S310 - our own daemon
            text = response.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def values(self) -> int:
        """Stored value rows (cheap enough to poll: scraping /metrics would load the collector)."""
        if self.postgres:
            try:
                return int(pg_fetch(self.location, "SELECT count(*) FROM readings")[0][0])
            except asyncpg.UndefinedTableError:
                return 0
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)
        try:
            return int(con.execute("SELECT count(*) FROM readings").fetchone()[0])
        finally:
            con.close()

    def stored(self) -> int:
        """Distinct readings (messages) stored, counted in the database."""
        if self.postgres:
            sql = "SELECT count(*) FROM (SELECT DISTINCT device, ts_us, seq FROM readings) AS r"
            return int(pg_fetch(self.location, sql)[0][0])
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            return int(
                con.execute(
                    "SELECT count(*) FROM (SELECT DISTINCT device, ts_us, seq FROM readings)"
                ).fetchone()[0]
            )
        finally:
            con.close()

    def size_bytes(self) -> int:
        """Bytes on disk of the stored readings (SQLite: the files; PostgreSQL: the readings partitions)."""
        if self.postgres:
            sql = (
                "SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0) FROM pg_inherits "
                "WHERE inhparent = 'readings'::regclass"
            )
            return int(pg_fetch(self.location, sql)[0][0])
        return sum(p.stat().st_size for p in self.db.parent.glob("coldwatch.db*"))

    def peak_rss_mb(self) -> float:
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024


def readings_total(metrics: dict[str, float]) -> float:
    return sum(v for k, v in metrics.items() if k.startswith("coldwatch_readings_total"))


def collector(
    bench: Bench, messages: int, devices: int, folder: str = "throughput", database: str | None = None
) -> dict[str, float]:
    """Coldwatch draining the queued load; zero loss checked in its database."""
    daemon = Daemon(write_config(bench, bench.root / folder, devices, database))
    daemon.start()  # creates the persistent session and its subscription
    daemon.stop()
    bench.load(messages, devices)
    daemon.start()
    began = time.perf_counter()
    first: float | None = None
    counted = 0.0
    per_message = values_per_message(bench.kind, devices, messages)
    while counted < messages * per_message:
        counted = daemon.values()
        now = time.perf_counter()
        if first is None and counted > 0:
            first, first_count = now, counted
        if now - began > 1800:
            break
        time.sleep(0.25)
    last = time.perf_counter()
    # The whole load waited at the broker: memory here shows whether flow control held it there.
    peak_mb = daemon.peak_rss_mb()
    daemon.stop()
    stored = daemon.stored()
    assert first is not None
    size = daemon.size_bytes()
    return {
        "messages": stored,
        "lost": messages - stored,
        "seconds": last - first,
        # Sustained: from the first stored reading seen to the last; a load drained before the
        # first look is timed from the start of the process (start-up included: a lower bound).
        "per_s": (counted - first_count) / per_message / (last - first)
        if counted > first_count
        else messages / (first - began),
        "peak_rss_mb_draining": peak_mb,
        "bytes_per_reading": size / stored,
        "bytes_per_value": size / (stored * per_message),
    }


def quantile(metrics: dict[str, float], name: str, q: float) -> float | None:
    """A quantile of a histogram, interpolated within its bucket (as Prometheus does)."""
    buckets = sorted(
        (float(k.split('le="')[1].split('"')[0]), v)
        for k, v in metrics.items()
        if k.startswith(f"{name}_bucket{{")
    )
    total = buckets[-1][1] if buckets else 0.0
    if not total:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / max(count - lower_count, 1e-9)
        lower_bound, lower_count = bound, count
    return None


def latency(bench: Bench, devices: int, rate: float, seconds: float) -> dict[str, Any]:
    """Live at a fixed offered rate, excursions mixed in: delays from the collector's histograms."""
    profiles = {
        kind: [
            {
                "type": "threshold",
                "metric": metric,
                "direction": "high",
                "levels": {"alert": {"limit": limit}},
            }
        ]
        for kind, (metric, limit) in LIMITS.items()
    }
    daemon = Daemon(write_config(bench, bench.root / f"latency-{bench.kind}", devices, profiles=profiles))
    daemon.start()
    try:
        messages = int(rate * seconds)
        bench.load(messages, devices, rate_per_s=rate, excursion_every=20)
        time.sleep(1.0)
        metrics = daemon.scrape()
    finally:
        daemon.stop()

    def ms(name: str, q: float) -> float | None:
        value = quantile(metrics, name, q)
        return None if value is None else value * 1000

    return {
        "offered_per_s": rate,
        "messages": messages,
        "stored_p50_ms": ms("coldwatch_ingest_delay_seconds", 0.5),
        "stored_p99_ms": ms("coldwatch_ingest_delay_seconds", 0.99),
        "alarm_p50_ms": ms("coldwatch_alarm_delay_seconds", 0.5),
        "alarm_p99_ms": ms("coldwatch_alarm_delay_seconds", 0.99),
        "alarms_timed": metrics.get("coldwatch_alarm_delay_seconds_count", 0.0),
    }


def memory(bench: Bench, devices: int, per_device: int) -> dict[str, float]:
    """Peak resident memory of the collector with ``devices`` registered, all reporting."""
    daemon = Daemon(write_config(bench, bench.root / f"memory-{per_device}", devices))
    daemon.start()
    try:
        bench.load(devices * per_device, devices)
        deadline = time.monotonic() + 600
        while daemon.values() < devices * per_device * 4 and time.monotonic() < deadline:
            time.sleep(0.5)
        daemon.scrape()  # a scrape too: the exposition of every device's series costs memory
        peak = daemon.peak_rss_mb()
    finally:
        daemon.stop()
    return {"devices": devices, "messages": devices * per_device, "peak_rss_mb": peak}


def measure_kinds(bench: Bench, kinds: list[str], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Each kind's load: the baseline and coldwatch draining it, and coldwatch's latency."""
    per_kind: dict[str, dict[str, Any]] = {}
    for kind in kinds:  # each against the baseline draining the same load, in this run
        bench.kind = kind
        kind_base = baseline(bench, args.messages, args.devices)
        kind_ours = collector(bench, args.messages, args.devices, folder=f"throughput-{kind}")
        kind_lat = latency(bench, args.devices, args.rate, args.latency_s)
        per_kind[kind] = {
            "baseline": kind_base,
            "coldwatch": kind_ours,
            "ratio_to_baseline": kind_ours["per_s"] / kind_base["per_s"],
            "latency": kind_lat,
        }
    return per_kind


def collector_only(bench: Bench, kinds: list[str], args: argparse.Namespace) -> int:
    """Coldwatch alone draining each kind's load, ``--collector-only`` times; nonzero if any was lost."""
    lost = 0
    try:
        for kind in kinds:
            bench.kind = kind
            for run in range(args.collector_only):
                got = collector(bench, args.messages, args.devices, folder=f"only-{kind}-{run}")
                lost += int(got["lost"])
                print(f"{kind:<18}{got['per_s']:>10,.0f} msg/s   lost {got['lost']}", flush=True)
    finally:
        bench.close()
        shutil.rmtree(bench.root, ignore_errors=True)
    return 0 if lost == 0 else 1


def main() -> int:
    """Run every measurement and print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=2000.0, help="offered rate of the latency run")
    parser.add_argument("--latency-s", type=float, default=20.0)
    parser.add_argument("--memory-devices", type=int, default=10_000)
    parser.add_argument(
        "--memory-readings",
        type=int,
        default=30,
        help="readings per device of the second memory run (rule history held for late data)",
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL run")
    parser.add_argument("--kind", choices=[*KINDS, "mixed", "all"], default="incubator")
    parser.add_argument(
        "--collector-only",
        type=int,
        metavar="RUNS",
        help="only coldwatch draining the load, RUNS times per kind (settings compared in turn, "
        "e.g. COLDWATCH_STORAGE__BATCH_MAX in the environment of one run and not the other)",
    )
    args = parser.parse_args()
    kinds = [*KINDS, "mixed"] if args.kind == "all" else [args.kind]
    root = Path(tempfile.mkdtemp(prefix="coldwatch-bench-"))
    bench = Bench(root, postgres=not args.no_postgres and not args.collector_only)
    if args.collector_only:
        return collector_only(bench, kinds, args)
    try:
        bench.kind = kinds[0]
        ceil = ceiling(bench, args.messages, args.devices)
        per_kind = measure_kinds(bench, kinds, args)
        bench.kind = kinds[0]
        base, ours = per_kind[kinds[0]]["baseline"], per_kind[kinds[0]]["coldwatch"]
        MQTT_EXTRA["protocol"] = "3.1.1"
        try:
            ours_311 = collector(bench, args.messages, args.devices, folder="throughput-311")
        finally:
            MQTT_EXTRA.clear()
        ours_pg = (
            collector(
                bench,
                args.messages,
                args.devices,
                folder="throughput-pg",
                database=bench.new_database("bench_pg"),
            )
            if bench.postgres is not None
            else None
        )
        lat = per_kind[kinds[0]]["latency"]
        mem = memory(bench, args.memory_devices, 3)
        mem_held = memory(bench, args.memory_devices, args.memory_readings)
    finally:
        bench.close()
        shutil.rmtree(root, ignore_errors=True)
    result = {
        "benchmark": "ingest",
        "load": {
            "messages": args.messages,
            "devices": args.devices,
            "kind": kinds[0],
            "values_per_message": values_per_message(kinds[0], args.devices),
            "qos": 1,
        },
        "kinds": per_kind,
        "ceiling_mosquitto_sub": ceil,
        "baseline_aiomqtt_aiosqlite": base,
        "coldwatch": ours,
        "coldwatch_mqtt_3_1_1": ours_311,
        "coldwatch_postgresql": ours_pg,
        "ratio_to_baseline": ours["per_s"] / base["per_s"],
        "ratio_to_ceiling": ours["per_s"] / ceil["per_s"],
        "latency": lat,
        "memory": mem,
        # More readings per device: more rule history held for late data (benchmarks/engine_rate.py
        # --memory measures it alone), and a longer backlog drained (the ingest queue fills).
        "memory_history_held": mem_held,
        "targets": TARGETS,
    }
    rows = [
        ("ceiling: mosquitto_sub -q 1", f"{ceil['per_s']:,.0f} msg/s", ""),
        ("baseline: aiomqtt + aiosqlite", f"{base['per_s']:,.0f} msg/s", ""),
        (
            "coldwatch: full pipeline",
            f"{ours['per_s']:,.0f} msg/s",
            f"lost {ours['lost']}; peak RSS {ours['peak_rss_mb_draining']:.0f} MB draining the backlog",
        ),
        ("coldwatch, mqtt.protocol 3.1.1", f"{ours_311['per_s']:,.0f} msg/s", f"lost {ours_311['lost']}"),
        *([("coldwatch on PostgreSQL", f"{ours_pg['per_s']:,.0f} msg/s",
            (f"lost {ours_pg['lost']}; {ours_pg['per_s'] / ours['per_s']:.2f}x SQLite; "
             f"{ours_pg['bytes_per_reading']:.0f} bytes/reading"))] if ours_pg else []),
        ("  ratio to baseline", f"{result['ratio_to_baseline']:.2f}x", f"target >= {TARGETS['vs_baseline']}x"),
        ("  ratio to ceiling", f"{result['ratio_to_ceiling']:.2f}x", f"target >= {TARGETS['vs_ceiling']}x"),
        (f"publish -> stored at {args.rate:,.0f}/s", f"p50 {lat['stored_p50_ms']} ms", f"p99 {lat['stored_p99_ms']} ms"),
        (f"publish -> alarm at {args.rate:,.0f}/s", f"p50 {lat['alarm_p50_ms']} ms",
         f"p99 {lat['alarm_p99_ms']} ms (target <= {TARGETS['alarm_p99_ms']:g})"),
        (f"peak RSS, {mem['devices']:,} devices", f"{mem['peak_rss_mb']:.0f} MB", f"target <= {TARGETS['peak_rss_mb']:g}"),
        (f"  {args.memory_readings} readings each", f"{mem_held['peak_rss_mb']:.0f} MB",
         "rule history held for late data; a longer backlog drained"),
        ("bytes on disk per reading", f"{ours['bytes_per_reading']:.1f}",
         f"{ours['bytes_per_value']:.1f} per value; target <= {TARGETS['bytes_per_reading']:g}"),
    ]  # fmt: skip
    for name, value, note in rows:
        print(f"{name:<36}{value:>20}   {note}")
    if len(kinds) > 1:
        print(
            f"\n{'device kind':<18}{'baseline msg/s':>16}{'coldwatch msg/s':>17}{'ratio':>8}{'alarm p99 ms':>14}"
        )
        for kind, row in per_kind.items():
            p99 = row["latency"]["alarm_p99_ms"]
            print(
                f"{kind:<18}{row['baseline']['per_s']:>16,.0f}{row['coldwatch']['per_s']:>17,.0f}"
                f"{row['ratio_to_baseline']:>7.2f}x{'' if p99 is None else f'{p99:.1f}':>14}"
            )
        slowest = min(per_kind, key=lambda k: per_kind[k]["ratio_to_baseline"])
        print(
            f"slowest kind: {slowest}, {per_kind[slowest]['ratio_to_baseline']:.2f}x the baseline (target >= 3x)"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    lost = sum(row["coldwatch"]["lost"] for row in per_kind.values())
    lost += ours_311["lost"] + (ours_pg["lost"] if ours_pg else 0)
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
