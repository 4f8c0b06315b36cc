"""Console pages on a large estate: areas first on the overview; the audit page reads what it shows."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator

import httpx
from prometheus_client import CollectorRegistry

from coldwatch.api import ApiContext
from coldwatch.audit import AuditDraft
from coldwatch.auth import Authenticator
from coldwatch.catalogue import Kind
from coldwatch.config import Config, DeviceConfig
from coldwatch.console.web import Console
from coldwatch.console.web_more import AUDIT_SHOWN, OVERVIEW_MAX_DEVICES
from coldwatch.http import HttpServer, build_app
from coldwatch.identity import Identity
from coldwatch.identity_config import IdentityConfig
from coldwatch.storage import open_storage
from coldwatch.storage.identity_store import identity_store
from tests.conftest import Backend
from tests.identity_helpers import FAST_IDENTITY

PASSWORD = "large-estate-admin-1"


def estate(count: int) -> Config:
    """``count`` incubators over 2 sites and 10 areas."""
    return Config(
        devices=[
            DeviceConfig(id=f"inc-{i:04d}", kind=Kind.INCUBATOR, site=f"site-{i % 2}", area=f"area-{i % 10}")
            for i in range(count)
        ],
        identity=IdentityConfig.model_validate(FAST_IDENTITY),
    )


@contextlib.asynccontextmanager
async def console(backend: Backend, config: Config, audit_entries: int) -> AsyncIterator[httpx.AsyncClient]:
    """The console on a real HTTP server over ``backend``, with an administrator signed in."""
    storage = open_storage(backend.location)
    await storage.open()
    await storage.register_devices(list(config.devices))  # as the daemon does at start
    identity = Identity(identity_store(storage), IdentityConfig.model_validate(FAST_IDENTITY))
    await identity.add_user("bootstrap (test)", "ada", "Ada Admin", "admin", PASSWORD + "x", "first admin")
    await identity.change_password("ada", PASSWORD + "x", PASSWORD, "test")
    for lo in range(0, audit_entries, 1000):
        await storage.record_audit(
            [
                AuditDraft(1_800_000_000_000_000 + i, f"user-{i % 5}", "alarm.acknowledged", "device",
                           f"inc-{i % 20:04d}", None, f"entry {i}", "checked")
                for i in range(lo, min(audit_entries, lo + 1000))
            ]
        )  # fmt: skip

    async def no_actions(_: object) -> object:
        raise AssertionError("these tests only read")

    ctx = ApiContext(config, storage, no_actions, {}, Authenticator(config.api, os.environ))  # type: ignore[arg-type]
    pages = Console(ctx)

    async def ready() -> dict[str, bool]:
        return {"ok": True}

    server = HttpServer(build_app(CollectorRegistry(), ready, pages.router), "127.0.0.1", 0)
    task = asyncio.create_task(server.serve())
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=60) as client:
            form = await client.get("/console/sign-in")
            token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
            assert token is not None
            signed = await client.post(
                "/console/sign-in", data={"csrf_token": token[1], "user": "ada", "password": PASSWORD}
            )
            assert signed.status_code == 303
            yield client
    finally:
        server.stop()
        await asyncio.wait_for(task, 10)
        await pages.close()
        await storage.close()


async def test_large_overview_shows_areas_first_then_one_area(backend: Backend) -> None:
    """Beyond the device limit the overview lists every area with counts, no device; an area lists its own."""
    count = OVERVIEW_MAX_DEVICES + 20
    async with console(backend, estate(count), 0) as client:
        everything = await client.get("/console/overview")
        assert everything.status_code == 200
        assert everything.text.count('class="area ') == 10
        assert 'data-device="' not in everything.text
        assert f"{count} more devices: choose an area" in everything.text
        live = await client.get("/console/overview?fragment=1")
        assert live.text.count('class="area ') == 10
        one = await client.get("/console/overview?site=site-1&area=area-3")
        shown = set(re.findall(r'data-device="([^"]+)"', one.text))
        assert shown == {f"inc-{i:04d}" for i in range(count) if i % 10 == 3}
        assert "choose an area" not in one.text


async def test_audit_page_pages_the_trail_and_rechecks_only_when_it_grows(backend: Backend) -> None:
    """The audit page shows the newest entries in keyset pages; a new entry starts an unblocking re-check."""
    async with console(backend, estate(3), 2500) as client:
        page = await client.get("/console/audit?user=user-3")
        assert page.status_code == 200
        shown = [int(n) for n in re.findall(r"entry (\d+)", page.text)]
        expected = [i for i in reversed(range(2500)) if i % 5 == 3][:AUDIT_SHOWN]
        assert shown == expected  # 300 of 500 matches, spread over three keyset pages of the trail
        assert "audit trail intact" in page.text
        checked = re.search(r'id="checked">\(whole trail checked ([^;]+);', page.text)
        assert checked is not None
        await asyncio.sleep(1.1)  # the check's time is shown to the second
        again = await client.get("/console/audit")
        assert f"whole trail checked {checked[1]};" in again.text  # unchanged trail: not re-verified
        # Signing in again appends an entry: the next view checks the whole trail again.
        form = await client.get("/console/sign-in")
        signed = await client.post(
            "/console/sign-in", data={"csrf_token": _csrf(form.text), "user": "ada", "password": PASSWORD}
        )
        assert signed.status_code == 303
        # That view is not held up: it shows the last check, marked, while a new one runs.
        stale = await client.get("/console/audit")
        assert f"whole trail checked {checked[1]};" in stale.text
        assert "a new check is running" in stale.text
        async with asyncio.timeout(30):
            while True:
                newer = await client.get("/console/audit")
                if f"whole trail checked {checked[1]};" not in newer.text:
                    break
                await asyncio.sleep(0.2)
        assert "audit trail intact" in newer.text
        assert "a new check is running" not in newer.text


def _csrf(html: str) -> str:
    token = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert token is not None
    return token[1]
