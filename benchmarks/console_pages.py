"""How long each console page's data takes with a large store, on SQLite and on PostgreSQL.

    python benchmarks/console_pages.py [--devices 10000] [--alarms 100000] [--days 30] [--json FILE]

Fills a database through the storage API: ``--devices`` devices over 10 sites and 100
areas, each with a newest reading; ``--alarms`` alarms (2 % open); one cryoshipper
reporting at 1 Hz for ``--days`` days (with an excursion, a backfilled stretch and a
communication loss), whose alarm has notifications and delivery attempts. Then times the
data of each page (median of ``--repeat`` runs after a warm-up): the overview, the first
page of the alarm list with each filter and a page deep in the list, the alarm detail with
its chart rendered to SVG, and the device detail over 24 hours and over the whole range,
chart included. The target is 200 ms per page, leaving room for the HTML (the first view of
a long range builds its minute rollup once: reported apart).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from coldwatch.catalogue import KINDS, Kind
from coldwatch.config import Config, DeviceConfig
from coldwatch.console.chart import render_svg
from coldwatch.console.model import AlarmCursor, AlarmFilter
from coldwatch.console.pages import ConsoleData, open_console_queries
from coldwatch.console.rollup import ROLLUP_FROM_SPAN_US
from coldwatch.notify.model import Channel, OutboxItem
from coldwatch.payload import Telemetry
from coldwatch.pgserver import start_postgres, stop_postgres
from coldwatch.rules.lifecycle import Alarm, AlarmState, Transition
from coldwatch.rules.model import AlarmKey, Severity
from coldwatch.storage import Batch, DeviceState, SeqGap, Storage, open_storage
from coldwatch.storage.postgres import PostgresStorage

US = 1_000_000
CHARTED = "ln2-charted"
SAMPLE = {
    "temp_c": -190.0,
    "co2_pct": 5.0,
    "rh_pct": 95.0,
    "door_open": 0.0,
    "temp_b_c": -189.0,
    "ln2_level_pct": 70.0,
    "lid_open": 0.0,
    "tilt_deg": 2.0,
    "battery_pct": 90.0,
    "particles_0_5um_m3": 1200.0,
    "particles_5_0um_m3": 3.0,
    "flow_lpm": 28.3,
    "sample_volume_l": 28.3,
}


def devices(count: int) -> list[DeviceConfig]:
    """``count`` devices over 10 sites and 100 areas, of every kind, and the 1 Hz cryoshipper."""
    out = [DeviceConfig(id=CHARTED, kind=Kind.CRYOSHIPPER, site="site-0", area="area-0")]
    kinds = list(Kind)
    for i in range(count - 1):
        kind = kinds[i % 3]
        out.append(
            DeviceConfig(
                id=f"dev-{i:05d}",
                kind=kind,
                site=f"site-{i % 10}",
                area=f"area-{i % 100}",
                grade="ABCD"[i % 4] if kind is Kind.PARTICLE_COUNTER else None,
            )
        )
    return out


async def fill(store: Storage, registry: list[DeviceConfig], alarms: int, days: float, end_us: int) -> int:
    """Write the load; returns the id of the charted device's alarm."""
    await store.register_devices(registry)
    newest = Batch()
    for i, d in enumerate(registry[1:]):
        last_us = end_us - (i % 600) * US
        values = tuple((name, SAMPLE[name]) for name in KINDS[d.kind])
        newest.readings.append((Telemetry(d.id, 1, last_us, False, values), last_us + US))
        newest.devices[d.id] = DeviceState(1, last_us, last_us + US, True)
    await store.write_batch(newest)
    # Alarms: 2 % open, one per (device, metric, rule) slot; ids are the order they were raised.
    rng = np.random.default_rng(1)
    start_us = end_us - int(days * 86_400 * US)
    chunk: list[Transition] = []
    for alarm_id in range(1, alarms + 1):
        d = registry[1 + alarm_id % (len(registry) - 1)]
        raised = start_us + int(rng.integers(0, int(days * 86_400))) * US
        is_open = alarm_id % 50 == 0
        state = (
            (AlarmState.ACTIVE_UNACK, AlarmState.ACTIVE_ACK, AlarmState.CLEARED_UNACK)[alarm_id % 3]
            if is_open
            else AlarmState.CLOSED
        )
        a = Alarm(
            alarm_id,
            AlarmKey(d.id, next(iter(KINDS[d.kind])), f"r{alarm_id}"),
            Severity.ACTION if alarm_id % 4 == 0 else Severity.ALERT,
            state,
            raised,
            raised + US,
            1.0,
            0.5,
            cleared_ts_us=None if state is AlarmState.ACTIVE_UNACK else raised + 600 * US,
        )
        chunk.append(Transition(a, "raised", raised, raised + US, None))
        if len(chunk) == 10_000:
            await store.write_batch(Batch(transitions=chunk))
            chunk = []
    if chunk:
        await store.write_batch(Batch(transitions=chunk))
    # The 1 Hz cryoshipper: an excursion in the last day, a backfilled hour, a 20-minute silence.
    n = int(days * 86_400)
    ts = start_us + np.arange(n, dtype=np.int64) * US
    temp = -190.0 + np.sin(np.arange(n) / 3600.0) + rng.normal(0, 0.2, n)
    peak = n - 6 * 3600
    temp[peak : peak + 1800] += np.linspace(0, 48, 1800)
    temp[peak + 1800 : peak + 3600] += np.linspace(48, 0, 1800)
    silent = range(n - 3 * 3600, n - 3 * 3600 + 1200)
    for lo in range(0, n, 50_000):
        batch = Batch()
        for i in range(lo, min(n, lo + 50_000)):
            if i in silent:
                continue
            buffered = n - 10 * 3600 <= i < n - 9 * 3600
            batch.readings.append(
                (
                    Telemetry(CHARTED, i + 1, int(ts[i]), buffered, (("temp_c", float(temp[i])),)),
                    int(ts[i]) + US,
                )
            )
        await store.write_batch(batch)
    alarm_id = alarms + 1
    first = Alarm(
        alarm_id,
        AlarmKey(CHARTED, "temp_c", "high"),
        Severity.ACTION,
        AlarmState.ACTIVE_UNACK,
        int(ts[peak + 1500]),
        int(ts[peak + 1500]) + US,
        -149.0,
        -150.0,
    )
    closed = Alarm(
        alarm_id,
        first.key,
        Severity.ACTION,
        AlarmState.CLOSED,
        first.raised_ts_us,
        first.raised_received_us,
        -149.0,
        -150.0,
        acknowledged_by="ann",
        cleared_ts_us=int(ts[peak + 2200]),
    )
    await store.write_batch(
        Batch(
            transitions=[
                Transition(first, "raised", first.raised_ts_us, first.raised_received_us, None),
                Transition(
                    closed,
                    "acknowledged",
                    first.raised_ts_us + 60 * US,
                    first.raised_ts_us + 60 * US,
                    AlarmState.ACTIVE_UNACK,
                    "ann",
                    "checking",
                ),
                Transition(
                    closed, "cleared", int(ts[peak + 2200]), int(ts[peak + 2200]), AlarmState.ACTIVE_ACK
                ),
            ],
            notifications=[
                OutboxItem(f"n-{alarm_id}-{c}", Channel.WEBHOOK, c, b"{}", alarm_id, first.raised_ts_us)
                for c in ("oncall", "qa")
            ],
            gaps=[SeqGap(CHARTED, silent[0] + 1, silent[-1] + 1, int(ts[silent[-1]]) + US)],
        )
    )
    return alarm_id


async def timed(repeat: int, fn: Callable[[], Awaitable[Any]]) -> float:
    """Median milliseconds of ``fn`` over ``repeat`` runs, after one warm-up."""
    await fn()
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        await fn()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs) * 1000


async def measure(location: str, args: argparse.Namespace) -> dict[str, Any]:
    """Fill a database at ``location`` and time every page's data."""
    registry = devices(args.devices)
    end_us = 1_764_547_200 * US + int(args.days * 86_400 * US)
    store = open_storage(location)
    await store.open()
    started = time.perf_counter()
    alarm_id = await fill(store, registry, args.alarms, args.days, end_us)
    fill_s = time.perf_counter() - started
    if isinstance(store, PostgresStorage):
        # What autovacuum does within a minute of a bulk load: without statistics the
        # planner scans instead of using the indexes.
        await store.pool.execute("ANALYZE")
    queries = await open_console_queries(store)
    data = ConsoleData(queries, Config(devices=registry), max_points=2000)
    pages: dict[str, float] = {}
    points: dict[str, int] = {}
    try:
        pages["overview, areas of every device with state counts"] = await timed(
            args.repeat, lambda: data.areas(end_us)
        )
        pages["overview, one area's devices with newest values"] = await timed(
            args.repeat, lambda: data.overview(end_us, site="site-3", area="area-43")
        )
        pages["overview, one site's devices with newest values"] = await timed(
            args.repeat, lambda: data.overview(end_us, site="site-3")
        )
        pages["overview, every device with newest values"] = await timed(
            args.repeat, lambda: data.overview(end_us)
        )
        filters = {
            "none": AlarmFilter(),
            "open": AlarmFilter(states=["open"]),
            "awaiting acknowledgement": AlarmFilter(states=["awaiting_acknowledgement"]),
            "closed": AlarmFilter(states=["closed"]),
            "severity action": AlarmFilter(severity="action"),
            "site": AlarmFilter(site="site-7"),
            "area": AlarmFilter(area="area-42"),
            "device": AlarmFilter(device_id=registry[5].id),
            "last 24 h": AlarmFilter(since_us=end_us - 86_400 * US, until_us=end_us),
        }
        for name, where in filters.items():
            pages[f"alarm list, first page, filter {name}"] = await timed(
                args.repeat, functools.partial(data.alarm_list, where, limit=50)
            )
        deep = AlarmCursor(True, end_us - int(args.days * 86_400 * US * 0.5), 2**40)
        pages["alarm list, a page half way down"] = await timed(
            args.repeat, lambda: data.alarm_list(AlarmFilter(), after=deep, limit=50)
        )

        async def alarm_page() -> None:
            detail = await data.alarm_detail(alarm_id, end_us)
            assert detail is not None
            points["alarm detail"] = len(detail.chart.series)
            render_svg(detail.chart)

        pages["alarm detail incl. chart SVG"] = await timed(args.repeat, alarm_page)
        for label, span_us in (("24 h", 86_400 * US), (f"{args.days:g} days", int(args.days * 86_400 * US))):

            async def device_page(span_us: int = span_us, label: str = label) -> None:
                detail = await data.device_detail(CHARTED, end_us - span_us, end_us, now_us=end_us)
                assert detail is not None
                points[f"device detail {label}"] = len(detail.chart.series)
                render_svg(detail.chart)

            if span_us >= ROLLUP_FROM_SPAN_US:
                started = time.perf_counter()
                await device_page()
                first_ms = (time.perf_counter() - started) * 1000
                pages[f"device detail {label}, first view (builds the minute rollup)"] = first_ms
            pages[f"device detail {label} of a 1 Hz device incl. chart SVG"] = await timed(
                args.repeat, device_page
            )
    finally:
        await queries.close()
        await store.close()
    return {
        "fill_s": round(fill_s, 1),
        "pages_ms": {k: round(v, 2) for k, v in pages.items()},
        "points": points,
    }


def matplotlib_svg_ms(points: int = 2000) -> float:
    """Milliseconds matplotlib takes for a comparable SVG chart (the alternative considered)."""
    import io  # noqa: PLC0415

    import matplotlib as mpl  # noqa: PLC0415

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    x = np.arange(points)
    y = np.sin(x / 50)
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        fig, ax = plt.subplots(figsize=(7.2, 3.6))
        ax.plot(x, y)
        ax.axhline(0.5, color="orange", linestyle="--")
        ax.axhline(0.8, color="red")
        ax.axvspan(100, 200, alpha=0.3)
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg")
        plt.close(fig)
        runs.append(time.perf_counter() - started)
    return statistics.median(runs) * 1000


def main() -> int:
    """Run on SQLite and PostgreSQL; print the figures."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--alarms", type=int, default=100_000)
    parser.add_argument(
        "--days", type=float, default=30.0, help="days of 1 Hz readings of the charted device"
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    result: dict[str, Any] = {"devices": args.devices, "alarms": args.alarms, "days": args.days}
    with tempfile.TemporaryDirectory() as tmp:
        result["sqlite"] = asyncio.run(measure(str(Path(tmp) / "console.db"), args))
    if not args.no_postgres:
        server = start_postgres(durable=True)
        try:
            result["postgresql"] = asyncio.run(measure(server.url(), args))
        finally:
            stop_postgres(server)
    result["matplotlib_svg_2000_points_ms"] = round(matplotlib_svg_ms(), 1)
    print(
        f"Console page data: {args.devices:,} devices, {args.alarms:,} alarms, "
        f"{args.days:g} days of a 1 Hz device (median of {args.repeat} runs)"
    )
    backends = [b for b in ("sqlite", "postgresql") if b in result]
    print(f"{'page':<64}" + "".join(f"{b:>12}" for b in backends))
    for page in result["sqlite"]["pages_ms"]:
        cells = "".join(f"{result[b]['pages_ms'][page]:>9.1f} ms" for b in backends)
        print(f"{page:<64}{cells}")
    for b in backends:
        slowest = max(v for k, v in result[b]["pages_ms"].items() if "first view" not in k)
        print(
            f"{b}: filled in {result[b]['fill_s']} s; slowest page {slowest:.1f} ms "
            f"({'within' if slowest < 200 else 'OVER'} the 200 ms target); points shipped {result[b]['points']}"
        )
    print(f"matplotlib, a comparable 2,000-point SVG: {result['matplotlib_svg_2000_points_ms']} ms")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
