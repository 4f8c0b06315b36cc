"""How long the monthly periodic report of a site takes, on SQLite and on PostgreSQL.

    python benchmarks/periodic_report.py [--devices 100] [--days 30] [--interval-s 10]
        [--backend sqlite|postgresql|both] [--dsn postgresql://...] [--json FILE]

Fills a database with ``--devices`` devices (half incubators, half cryoshippers, in 10
areas of one site) reporting ``temp_c`` every ``--interval-s`` for ``--days`` days: 100
devices at 10 s for 30 days are 25.9 million readings (one value each). Readings go
straight into the storage tables in bulk (executemany on SQLite, COPY on PostgreSQL), not
through MQTT; each device has a warm excursion, a silence, alarms and seq gaps. Then times
the whole periodic report of the site over the period (figures, calibration, charts,
PDF, stored with its audit entry) and, as a baseline in the same run, a plain
``SELECT count(*), sum(value)`` over the same readings. The target is 30 s.
PostgreSQL: a private server is started unless ``--dsn`` names a database (emptied first:
give a scratch one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np

from coldwatch.catalogue import Kind
from coldwatch.config import Config, DeviceConfig
from coldwatch.identity_config import SiteConfig
from coldwatch.payload import Telemetry
from coldwatch.pgserver import start_postgres, stop_postgres
from coldwatch.records.periodic import Scope, generate_periodic
from coldwatch.records.periods import Period
from coldwatch.rules.lifecycle import Alarm, AlarmState, Transition
from coldwatch.rules.model import AlarmKey, Severity
from coldwatch.storage import Batch, SeqGap, Storage, open_storage
from coldwatch.storage.postgres import WEEK_US

US = 1_000_000
START = datetime(2026, 11, 1, tzinfo=UTC)
TARGET_S = 30.0


def devices(count: int, interval_s: float) -> list[DeviceConfig]:
    """Half incubators, half cryoshippers, over 10 areas of site ``bench``."""
    return [
        DeviceConfig(
            id=f"dev-{i:03d}",
            kind=Kind.INCUBATOR if i % 2 == 0 else Kind.CRYOSHIPPER,
            site="bench",
            area=f"area-{i % 10}",
            interval_s=interval_s,
        )
        for i in range(count)
    ]


def series(i: int, n: int, start_us: int, step_us: int) -> tuple[np.ndarray, np.ndarray]:
    """One device's times and temperatures: noise around its setpoint, an excursion, a 2-hour silence."""
    rng = np.random.default_rng(i)
    ts = start_us + np.arange(n, dtype=np.int64) * step_us
    base = 37.0 if i % 2 == 0 else -190.0
    values = base + rng.normal(0, 0.15 if i % 2 == 0 else 0.8, n)
    hot = int(rng.integers(0, n - 400))
    values[hot : hot + 360] += 1.4 if i % 2 == 0 else 45.0
    keep = np.ones(n, dtype=bool)
    quiet = int(rng.integers(0, n - 800))
    keep[quiet : quiet + 720] = False
    return ts[keep], values[keep]


def sqlite_fill(path: Path, ids: dict[str, int], metric: int, n: int, start_us: int, step_us: int) -> None:  # noqa: PLR0917
    """Bulk insert into ``reading_rows``, one transaction a device."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    sql = "INSERT INTO reading_rows VALUES (?, ?, ?, ?, ?, 1000000, 0)"
    for i, rowid in enumerate(ids.values()):
        ts, values = series(i, n, start_us, step_us)
        conn.execute("BEGIN")
        conn.executemany(sql, zip([rowid] * ts.size, [metric] * ts.size, ts.tolist(), range(1, ts.size + 1),
                                  values.tolist(), strict=True))  # fmt: skip
        conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


async def pg_fill(url: str, ids: dict[str, int], metric: int, n: int, start_us: int, step_us: int) -> None:  # noqa: PLR0917
    """COPY into ``readings``, its weekly partitions created first."""
    conn = await asyncpg.connect(url)
    try:
        end_us = start_us + n * step_us
        for week in range(start_us // WEEK_US, end_us // WEEK_US + 1):
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS readings_w{week} PARTITION OF readings "
                f"FOR VALUES FROM ({week * WEEK_US}) TO ({(week + 1) * WEEK_US})"
            )
        for i, rowid in enumerate(ids.values()):
            ts, values = series(i, n, start_us, step_us)
            records = zip([rowid] * ts.size, [metric] * ts.size, ts.tolist(), range(1, ts.size + 1),
                          values.tolist(), (ts + US).tolist(), [False] * ts.size, strict=True)  # fmt: skip
            await conn.copy_records_to_table("readings", records=records)
        await conn.execute("VACUUM ANALYZE readings")
    finally:
        await conn.close()


async def events(store: Storage, registry: list[DeviceConfig], start_us: int, end_us: int) -> None:
    """Alarms (a comm loss among them) and seq gaps for every device."""
    transitions, gaps = [], []
    alarm_id = 1
    for i, d in enumerate(registry):
        for k in range(5):
            raised = start_us + (k * 6 + i % 5) * 86_400 * US
            rule = "comm_loss" if k == 4 else "high"
            a = Alarm(alarm_id, AlarmKey(d.id, "temp_c" if k < 4 else "device", rule),
                      Severity.ACTION if k % 2 else Severity.ALERT, AlarmState.CLOSED, raised, raised,
                      cleared_ts_us=min(end_us, raised + 1800 * US))  # fmt: skip
            transitions.append(Transition(a, "raised", raised, raised, None))
            alarm_id += 1
        gaps.append(SeqGap(d.id, 1000 + i, 1009 + i, start_us + 3600 * US))
    await store.write_batch(Batch(transitions=transitions, gaps=gaps))


async def baseline_s(location: str, start_us: int, end_us: int) -> tuple[float, int]:
    """A plain scan of the same readings: count and sum."""
    began = time.perf_counter()
    table = "readings" if location.startswith("postgres") else "reading_rows"
    sql = f"SELECT count(*), sum(value) FROM {table} WHERE ts_us >= {start_us} AND ts_us < {end_us}"  # noqa: S608
    row = (await _rows(location, sql))[0]
    return time.perf_counter() - began, int(row[0])


async def measure(location: str, args: argparse.Namespace) -> dict[str, Any]:
    """Fill, then time the report and the baseline."""
    registry = devices(args.devices, args.interval_s)
    config = Config(site=SiteConfig(timezone="UTC"), devices=registry)
    start_us = int(START.timestamp()) * US
    end_us = start_us + int(args.days * 86_400) * US
    step_us = int(args.interval_s * US)
    n = (end_us - start_us) // step_us
    store = open_storage(location)
    await store.open()
    try:
        await store.register_devices(registry)
        # A reading written through the storage API creates the devices' and metrics' rows.
        await store.write_batch(Batch(readings=[(Telemetry(registry[0].id, 0, start_us - US, False,
                                                           (("temp_c", 0.0),)), start_us)]))  # fmt: skip
        began = time.perf_counter()
        pg = location.startswith("postgres")
        ids = {
            r[0]: int(r[1])
            for r in await _rows(location, "SELECT device_id, id FROM devices ORDER BY device_id")
        }
        metric = int((await _rows(location, "SELECT id FROM metrics WHERE name = 'temp_c'"))[0][0])
        if pg:
            await pg_fill(location, ids, metric, n, start_us, step_us)
        else:
            await asyncio.to_thread(sqlite_fill, Path(location), ids, metric, n, start_us, step_us)
        await events(store, registry, start_us, end_us)
        fill_s = time.perf_counter() - began
        base_s, readings = await baseline_s(location, start_us, end_us)
        label = (START + timedelta(days=args.days)).strftime("%Y-%m-%d")
        period = Period(start_us, end_us, f"{START:%Y-%m-%d}..{label}")
        began = time.perf_counter()
        report = await generate_periodic(store, config, Scope("bench"), period, "bench", end_us + US)
        report_s = time.perf_counter() - began
    finally:
        await store.close()
    return {
        "readings": readings,
        "fill_s": round(fill_s, 1),
        "report_s": round(report_s, 2),
        "phases_s": {k: round(v, 2) for k, v in report.timings_s.items()},
        "baseline_s": round(base_s, 2),
        "ratio_to_baseline": round(report_s / base_s, 1) if base_s > 0 else None,
        "pdf_bytes": len(report.pdf),
        "points": len(report.data["points"]),
    }


async def _rows(location: str, sql: str) -> list[tuple[Any, ...]]:
    if location.startswith("postgres"):
        pg = await asyncpg.connect(location)
        try:
            return [tuple(r) for r in await pg.fetch(sql)]
        finally:
            await pg.close()
    with sqlite3.connect(location) as conn:
        return [tuple(r) for r in conn.execute(sql)]


def main() -> int:
    """Run on the backends asked for; print the figures."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--interval-s", type=float, default=10.0)
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--dsn", help="a scratch PostgreSQL database (default: a private server)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result: dict[str, Any] = {"devices": args.devices, "days": args.days, "interval_s": args.interval_s}
    if args.backend in {"sqlite", "both"}:
        with tempfile.TemporaryDirectory() as tmp:
            result["sqlite"] = asyncio.run(measure(str(Path(tmp) / "periodic.db"), args))
    if args.backend in {"postgresql", "both"}:
        if args.dsn:
            result["postgresql"] = asyncio.run(measure(args.dsn, args))
        else:
            server = start_postgres(durable=True)
            try:
                result["postgresql"] = asyncio.run(measure(server.url(), args))
            finally:
                stop_postgres(server)
    print(f"Periodic report: {args.devices} devices every {args.interval_s:g} s for {args.days:g} days")
    for backend in ("sqlite", "postgresql"):
        if backend not in result:
            continue
        r = result[backend]
        phases = ", ".join(f"{k} {v} s" for k, v in r["phases_s"].items())
        verdict = "within" if r["report_s"] < TARGET_S else "OVER"
        print(
            f"{backend}: {r['readings']:,} readings (filled in {r['fill_s']} s); report {r['report_s']} s "
            f"({phases}); baseline count+sum scan {r['baseline_s']} s; ratio to baseline {r['ratio_to_baseline']}; "
            f"{r['points']} points, PDF {r['pdf_bytes']:,} bytes; {verdict} the {TARGET_S:g} s target"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
