"""How long each console page takes as a person gets it: an HTTP GET, signed in, on SQLite and PostgreSQL.

    python benchmarks/console_http.py [--devices 10000] [--alarms 100000] [--days 30] [--repeat 15]

Fills a database with the load of ``benchmarks/console_pages.py`` (``--devices`` devices,
``--alarms`` alarms, each audited, and a 1 Hz cryoshipper over ``--days`` days), ending now,
and an administrator. Then serves the console from the daemon's own HTTP server
(uvicorn, the FastAPI app of ``coldwatch.http.build_app`` with the console's routes) in a
separate process on a free port, signs in over HTTP and times a GET of each page with the
session cookie: the first view (opens the console's queries, builds a chart's minute
rollup) and the median and 95th percentile of ``--repeat`` warm views. Beside each page,
the median of its data layer alone (the ``ConsoleData`` call, chart SVG included), timed
in this process after the HTTP runs. The target is 200 ms per page (median, warm).

The figures are wall-clock times on whatever machine runs it: the load average before and
after each backend is printed, and the p95 shows the spread.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import multiprocessing
import os
import re
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx

import coldwatch.console.web  # noqa: F401 - registers the "awaiting review" filter, as the daemon does
from coldwatch.audit import AuditDraft
from coldwatch.config import Config
from coldwatch.console.chart import render_svg
from coldwatch.console.model import AlarmFilter
from coldwatch.console.pages import ConsoleData, open_console_queries
from coldwatch.console.web_more import AUDIT_SHOWN, audit_where, newest_audit
from coldwatch.pgserver import start_postgres, stop_postgres
from coldwatch.review import signature_problems
from coldwatch.storage import Storage, open_storage
from coldwatch.storage.identity_store import identity_store
from coldwatch.storage.postgres import PostgresStorage

sys.path.insert(0, str(Path(__file__).parent))
from console_pages import CHARTED, devices, fill

US = 1_000_000
ADMIN, PASSWORD = "ada", "benchmark-admin-password-1"
TARGET_MS = 200.0


def config_for(location: str, count: int) -> Config:
    """The served configuration: the filled devices, storage at ``location``."""
    del location  # the storage is opened by the caller
    return Config(devices=devices(count))


async def load(location: str, args: argparse.Namespace, end_us: int) -> dict[str, Any]:
    """Fill the database and add an administrator; returns the ids the pages need."""
    config = config_for(location, args.devices)
    store = open_storage(location)
    await store.open()
    try:
        started = time.perf_counter()
        alarm_id = await fill(store, list(config.devices), args.alarms, args.days, end_us)
        from coldwatch.identity import Identity  # noqa: PLC0415

        identity = Identity(identity_store(store), config.identity)
        await identity.add_user(
            "bootstrap (benchmark)", ADMIN, "Ada Admin", "admin", PASSWORD + "x", "first administrator"
        )
        await identity.change_password(ADMIN, PASSWORD + "x", PASSWORD, "benchmark")
        await audit_trail(store, args.audit, end_us)
        fill_s = time.perf_counter() - started
        if isinstance(store, PostgresStorage):
            # What autovacuum does within a minute of a bulk load.
            await store.pool.execute("ANALYZE")
        audit_entries = sum([1 async for _ in store.audit_entries()])
    finally:
        await store.close()
    return {"alarm_id": alarm_id, "fill_s": round(fill_s, 1), "audit_entries": audit_entries}


async def audit_trail(store: Storage, count: int, end_us: int) -> None:
    """``count`` audit entries over the last 30 days: acknowledgements, reviews, configuration changes."""
    actions = ("alarm.acknowledged", "alarm.shelved", "alarm.reviewed", "config.loaded", "user.signed_in")
    step_us = 30 * 86_400 * US // max(count, 1)
    for lo in range(0, count, 5000):
        await store.record_audit(
            [
                AuditDraft(
                    end_us - (count - i) * step_us,
                    f"user-{i % 40}",
                    actions[i % len(actions)],
                    "device",
                    f"dev-{i % 9999:05d}",
                    None,
                    f"alarm {i} state",
                    "checked the device on site",
                )
                for i in range(lo, min(count, lo + 5000))
            ]
        )


def serve(location: str, count: int, pipe: Connection) -> None:
    """Child process: serve the console on a free port until the parent says stop."""

    async def run() -> None:
        from prometheus_client import CollectorRegistry  # noqa: PLC0415

        from coldwatch.api import ApiContext  # noqa: PLC0415
        from coldwatch.auth import Authenticator  # noqa: PLC0415
        from coldwatch.console.web import Console  # noqa: PLC0415
        from coldwatch.http import HttpServer, build_app  # noqa: PLC0415

        config = config_for(location, count)
        storage = open_storage(location)
        await storage.open()

        async def no_actions(_: object) -> Any:
            raise RuntimeError("the benchmark only reads")

        ctx = ApiContext(config, storage, no_actions, {}, Authenticator(config.api, os.environ))
        console = Console(ctx)
        from fastapi import APIRouter  # noqa: PLC0415

        router = APIRouter()
        router.include_router(console.router)

        async def ready() -> dict[str, bool]:
            return {"console": True}

        http = HttpServer(build_app(CollectorRegistry(), ready, router), "127.0.0.1", 0)
        server = asyncio.create_task(http.serve())
        pipe.send(http.port)
        await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
        http.stop()
        await server
        await console.close()
        await storage.close()

    asyncio.run(run())


def sign_in(client: httpx.Client) -> None:
    """Sign in through the form, as a browser does."""
    page = client.get("/console/sign-in")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None, page.text
    done = client.post(
        "/console/sign-in",
        data={"csrf_token": token.group(1), "user": ADMIN, "password": PASSWORD, "next": ""},
    )
    assert done.status_code == 303, done.text
    assert client.get("/console/overview").status_code == 200


def pages(alarm_id: int) -> dict[str, str]:
    """Each console page measured, by name."""
    return {
        "sign-in": "/console/sign-in",
        "overview (areas and state counts; no area chosen)": "/console/overview",
        "overview, one site": "/console/overview?site=site-3",
        "overview, one area": "/console/overview?site=site-3&area=area-43",
        "overview, live update of one area": "/console/overview?site=site-3&area=area-43&fragment=1",
        "alarms, first page": "/console/alarms",
        "alarms, filter open": "/console/alarms?state=open",
        "alarms, filter awaiting acknowledgement": "/console/alarms?state=awaiting_acknowledgement",
        "alarms, filter awaiting review": "/console/alarms?state=awaiting_review",
        "alarms, filter severity action": "/console/alarms?severity=action",
        "alarms, filter site": "/console/alarms?site=site-7",
        "alarms, filter device": "/console/alarms?device=dev-00004",
        "alarm detail with chart": f"/console/alarms/{alarm_id}",
        "device detail 24 h of a 1 Hz device": f"/console/devices/{CHARTED}?range=24h",
        "device detail 30 days of a 1 Hz device": f"/console/devices/{CHARTED}?range=30d",
        "audit trail": "/console/audit",
        "audit trail, user filter": "/console/audit?user=user-7",
        "users": "/console/users",
    }


def http_figures(port: int, alarm_id: int, repeat: int) -> dict[str, dict[str, float]]:
    """First view, median and p95 (ms) of a GET of each page."""
    out: dict[str, dict[str, float]] = {}
    # As browsers do: without TCP_NODELAY a reused connection waits for the server's delayed
    # ACK (40 ms on Linux) before each request's last segment.
    transport = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120, transport=transport) as client:
        sign_in(client)
        for name, url in pages(alarm_id).items():
            runs = []
            for _ in range(repeat + 1):
                started = time.perf_counter()
                got = client.get(url, headers={"Accept": "text/html"})
                runs.append((time.perf_counter() - started) * 1000)
                assert got.status_code == 200, (url, got.status_code, got.text[:500])
            warm = sorted(runs[1:])
            out[name] = {
                "first_ms": round(runs[0], 1),
                "median_ms": round(statistics.median(warm), 1),
                "p95_ms": round(warm[min(len(warm) - 1, round(0.95 * (len(warm) - 1)))], 1),
                "bytes": len(got.content),
            }
    return out


async def data_figures(
    location: str, args: argparse.Namespace, end_us: int, alarm_id: int
) -> dict[str, float]:
    """Median ms of each page's data layer alone (the same calls the pages make)."""
    config = config_for(location, args.devices)
    store = open_storage(location)
    await store.open()
    queries = await open_console_queries(store)
    data = ConsoleData(queries, config)
    out: dict[str, float] = {}

    async def timed(fn: Callable[[], Awaitable[Any]]) -> float:
        await fn()
        runs = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            await fn()
            runs.append(time.perf_counter() - started)
        return round(statistics.median(runs) * 1000, 1)

    async def overview(site: str | None = None, area: str | None = None) -> None:
        await data.areas(end_us)
        if site is not None or area is not None:  # as the page: no devices until one is chosen
            await data.overview(end_us, site=site, area=area)

    async def alarm() -> None:
        detail = await data.alarm_detail(alarm_id, end_us)
        assert detail is not None
        render_svg(detail.chart)

    async def device(span_s: int) -> None:
        detail = await data.device_detail(CHARTED, end_us - span_s * US, end_us, now_us=end_us)
        assert detail is not None
        render_svg(detail.chart)
        render_svg(detail.chart, width=360, height=300)

    async def audit() -> None:
        await newest_audit(store, lambda _: True, AUDIT_SHOWN, audit_where("", "", "", None, None))

    async def audit_check() -> None:
        everything = [e async for e in store.audit_entries()]
        await store.verify_audit()
        await signature_problems(identity_store(store), everything)

    try:
        out["overview (areas and state counts; no area chosen)"] = await timed(overview)
        out["overview, one site"] = await timed(functools.partial(overview, site="site-3"))
        out["overview, one area"] = await timed(functools.partial(overview, site="site-3", area="area-43"))
        for name, where in {
            "alarms, first page": AlarmFilter(),
            "alarms, filter open": AlarmFilter(states=["open"]),
            "alarms, filter awaiting acknowledgement": AlarmFilter(states=["awaiting_acknowledgement"]),
            "alarms, filter awaiting review": AlarmFilter(states=["awaiting_review"]),
            "alarms, filter severity action": AlarmFilter(severity="action"),
            "alarms, filter site": AlarmFilter(site="site-7"),
            "alarms, filter device": AlarmFilter(device_id="dev-00004"),
        }.items():
            out[name] = await timed(functools.partial(data.alarm_list, where, limit=50))
        out["alarm detail with chart"] = await timed(alarm)
        out["device detail 24 h of a 1 Hz device"] = await timed(functools.partial(device, 86_400))
        out["device detail 30 days of a 1 Hz device"] = await timed(functools.partial(device, 30 * 86_400))
        out["audit trail"] = await timed(audit)
        out["audit trail, user filter"] = await timed(
            functools.partial(
                newest_audit, store, lambda _: True, AUDIT_SHOWN, audit_where("user-7", "", "", None, None)
            )
        )
        out["audit trail, whole-trail verification (first view, new entry)"] = await timed(audit_check)
    finally:
        await queries.close()
        await store.close()
    return out


def measure(location: str, args: argparse.Namespace) -> dict[str, Any]:
    """Fill, serve, time every page over HTTP, then its data layer."""
    end_us = time.time_ns() // 1000
    loaded = asyncio.run(load(location, args, end_us))
    load_before = os.getloadavg()
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    server = context.Process(target=serve, args=(location, args.devices, theirs), daemon=True)
    server.start()
    try:
        if not ours.poll(120):
            raise RuntimeError("the console server did not start")
        port = ours.recv()
        http = http_figures(port, loaded["alarm_id"], args.repeat)
    finally:
        ours.send("stop")
        server.join(30)
        if server.is_alive():
            server.terminate()
            server.join()
    data = asyncio.run(data_figures(location, args, end_us, loaded["alarm_id"]))
    return {
        **loaded,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "http": http,
        "data_ms": data,
    }


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
    parser.add_argument("--audit", type=int, default=100_000, help="audit entries besides the load's own")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    result: dict[str, Any] = {
        "devices": args.devices,
        "alarms": args.alarms,
        "days": args.days,
        "cpus": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        result["sqlite"] = measure(str(Path(tmp) / "console.db"), args)
    if not args.no_postgres:
        pg = start_postgres(durable=True)
        try:
            result["postgresql"] = measure(pg.url(), args)
        finally:
            stop_postgres(pg)
    backends = [b for b in ("sqlite", "postgresql") if b in result]
    print(
        f"Console pages over HTTP, signed in: {args.devices:,} devices, {args.alarms:,} alarms, "
        f"{args.days:g} days of a 1 Hz device; {os.cpu_count()} CPUs (ms: first view, median and p95 "
        f"of {args.repeat} warm views, data layer alone)"
    )
    print(f"{'page':<66}" + "".join(f"{b + ' first/median/p95/data':>34}" for b in backends))
    for page in [*result["sqlite"]["http"], *(p for p in result["sqlite"]["data_ms"] if "verification" in p)]:
        cells = ""
        for b in backends:
            h, d = result[b]["http"].get(page), result[b]["data_ms"].get(page)
            data = f"{d:.0f}" if d is not None else "-"
            if h is None:
                cells += f"{'-':>10} {'-':>7} {'-':>7} {data:>7}"
            else:
                cells += f"{h['first_ms']:>10.0f} {h['median_ms']:>7.0f} {h['p95_ms']:>7.0f} {data:>7}"
        print(f"{page:<66}{cells}")
    for b in backends:
        r = result[b]
        slow = {p: h["median_ms"] for p, h in r["http"].items() if h["median_ms"] >= TARGET_MS}
        verdict = "every page within" if not slow else f"OVER on {', '.join(slow)}:"
        print(
            f"{b}: filled in {r['fill_s']} s ({r['audit_entries']:,} audit entries); "
            f"load average {r['load_before'][0]:.1f} before, {r['load_after'][0]:.1f} after; "
            f"{verdict} the {TARGET_MS:.0f} ms target (median)"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
