"""The batch and shipment pages in a real browser (Debian's Chromium via Playwright) against a real daemon."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from playwright.async_api import expect

from coldwatch.broker import RunningBroker
from tests.batch_helpers import DEVICES, SIGN_MEANING
from tests.conftest import Backend, db_query, running_daemon, write_config
from tests.identity_helpers import FAST_IDENTITY, OPERATOR_PW, opened, people
from tests.test_console_browser import SHOTS, chromium, sign_in

COI = "=W0001 26  123  ß"  # two spaces kept: stored and shown exactly as typed


def local(at_s: float) -> str:
    """A datetime-local value in the site's time (Paris)."""
    return datetime.fromtimestamp(at_s, UTC).astimezone(ZoneInfo("Europe/Paris")).strftime("%Y-%m-%dT%H:%M")


async def test_register_amend_and_report_a_batch_in_the_console(
    broker: RunningBroker, prefix: str, tmp_path: Path
) -> None:
    """An operator registers a batch (signed), sees it with its signature, amends it, and opens its report."""
    backend = Backend("sqlite", str(tmp_path / "data" / "coldwatch.db"))
    config = write_config(
        tmp_path / "c.yaml", broker=broker, prefix=prefix, devices=DEVICES, identity=FAST_IDENTITY,
        site={"timezone": "Europe/Paris"}, storage={"path": backend.location},
    )  # fmt: skip
    now = time.time() // 60 * 60
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with running_daemon(config) as running, chromium() as browser:
        async with opened(backend.location, config) as (_, identity, _):
            await people(identity)
        base = running.base_url
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        await sign_in(page, base, "olga", OPERATOR_PW)
        await page.get_by_role("link", name="Batches").first.click()
        await expect(page).to_have_url(re.compile(r"/console/batches$"))
        await page.get_by_label("Lot id").fill("LOT-42")
        await page.get_by_label("Product").fill("CAR-T <b>x</b>")
        await page.get_by_label("Chain-of-identity id (stored exactly as typed)").fill(COI)
        await page.locator("#place0").select_option("area:s1/room-a")
        await page.locator("#from0").fill(local(now - 7200))
        await page.locator("#until0").fill(local(now - 3600))
        await page.locator("#place1").select_option("device:inc-1")
        await page.locator("#from1").fill(local(now - 3600))
        await page.locator("#until1").fill(local(now - 60))
        await page.screenshot(path=str(SHOTS / "batches-register.png"), full_page=True)
        await page.get_by_label("Reason").fill("batch started")
        await page.get_by_label("Your user id (first signature of this session)").fill("olga")
        await page.get_by_label("Your password (signs as Olga Operator)").fill(OPERATOR_PW)
        await page.get_by_role("button", name="Register and sign").click()
        await expect(page).to_have_url(re.compile(r"/console/batches/LOT-42\?done=registered"))
        await expect(page.locator("#coi")).to_have_text(COI)
        await expect(page.get_by_text("signed by Olga Operator")).to_be_visible()
        await expect(page.get_by_text(f"meaning: {SIGN_MEANING}")).to_be_visible()
        await expect(page.locator("h1")).to_have_text("Batch LOT-42")
        assert db_query(backend.location, "SELECT coi, product FROM batches") == [(COI, "CAR-T <b>x</b>")]
        # Amend: the stays come prefilled; drop the room, sign with the password alone.
        await page.locator("#place0").select_option("")
        await page.locator("#from0").fill("")
        await page.locator("#until0").fill("")
        await page.locator("#amend-reason").fill("the room was entered by mistake")
        await page.locator("#amend-password").fill(OPERATOR_PW)
        await page.get_by_role("button", name="Amend and sign").click()
        await expect(page.locator("#done")).to_contain_text("new version")
        await expect(page.locator("#version")).to_have_text("2")
        await expect(page.get_by_text("Version 1", exact=True)).to_be_visible()
        await page.screenshot(path=str(SHOTS / "batches-batch.png"), full_page=True)
        narrow = page
        await narrow.set_viewport_size({"width": 360, "height": 800})
        await narrow.screenshot(path=str(SHOTS / "batches-batch-360.png"), full_page=True)
        wide = await narrow.evaluate(
            "[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > 361)"
            ".map(e => e.tagName + '.' + e.className + '#' + e.id).slice(0, 8)"
        )
        assert await narrow.evaluate("document.documentElement.scrollWidth") <= 360, wide
        await page.set_viewport_size({"width": 1280, "height": 900})
        # A reversed stay is refused with its reason, not a 500.
        await page.locator("#from0").fill(local(now - 60))
        await page.locator("#until0").fill(local(now - 3600))
        await page.locator("#amend-reason").fill("x")
        await page.locator("#amend-password").fill(OPERATOR_PW)
        await page.get_by_role("button", name="Amend and sign").click()
        await expect(page.locator("#error")).to_contain_text("must end after it starts")
        await page.get_by_role("button", name="Batch report").click()
        await expect(page).to_have_url(re.compile(r"/console/reports/\d+\?done=generated"))
        await expect(page.locator("h1")).to_contain_text("batch, LOT-42")
        await page.screenshot(path=str(SHOTS / "batches-report.png"), full_page=True)


async def test_dispatch_receive_and_report_a_shipment_in_the_console(
    broker: RunningBroker, prefix: str, tmp_path: Path
) -> None:
    """An operator dispatches (signed), a second dispatch is refused, qa receives (signed) and reports."""
    from tests.identity_helpers import QA_PW  # noqa: PLC0415

    backend = Backend("sqlite", str(tmp_path / "data" / "coldwatch.db"))
    dewar = {"id": "ln2-store-1", "kind": "cryoshipper", "ships": False, "site": "s1", "area": "store"}
    config = write_config(
        tmp_path / "c.yaml", broker=broker, prefix=prefix, devices=[*DEVICES, dewar], identity=FAST_IDENTITY,
        site={"timezone": "Europe/Paris"}, storage={"path": backend.location},
    )  # fmt: skip
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with running_daemon(config) as running, chromium() as browser:
        async with opened(backend.location, config) as (_, identity, _):
            await people(identity)
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        await sign_in(page, running.base_url, "olga", OPERATOR_PW)
        await page.get_by_role("link", name="Shipments").first.click()
        # The static dewar is watched but never offered as a shipper.
        await expect(page.locator("#device option")).to_have_text(["ln2-1"])
        await page.get_by_label("Chain-of-identity id (stored exactly as typed)").fill(COI)
        await page.get_by_label("Origin").fill("Site 1")
        await page.get_by_label("Destination").fill("Hospital <9>")
        await page.get_by_label("Required hold time (hours)").fill("120")
        await page.get_by_label("Reason").fill("dispatched")
        await page.get_by_label("Your user id (first signature of this session)").fill("olga")
        await page.get_by_label("Your password (signs as Olga Operator)").fill(OPERATOR_PW)
        await page.get_by_role("button", name="Dispatch and sign").click()
        await expect(page).to_have_url(re.compile(r"/console/shipments/1\?done=dispatched"))
        await expect(page.locator("#state")).to_have_text("in transit")
        await expect(page.get_by_text("no forecast")).to_be_visible()
        await page.screenshot(path=str(SHOTS / "shipments-shipment.png"), full_page=True)
        await page.set_viewport_size({"width": 360, "height": 800})
        await page.screenshot(path=str(SHOTS / "shipments-shipment-360.png"), full_page=True)
        assert await page.evaluate("document.documentElement.scrollWidth") <= 360
        await page.set_viewport_size({"width": 1280, "height": 900})
        # A second dispatch on the same shipper is refused with the reason, and the form keeps its input.
        await page.goto(f"{running.base_url}/console/shipments")
        await page.get_by_label("Chain-of-identity id (stored exactly as typed)").fill("other")
        await page.get_by_label("Origin").fill("a")
        await page.get_by_label("Destination").fill("b")
        await page.get_by_label("Required hold time (hours)").fill("5")
        await page.get_by_label("Reason").fill("again")
        await page.get_by_label("Your password (signs as Olga Operator)").fill(OPERATOR_PW)
        await page.get_by_role("button", name="Dispatch and sign").click()
        await expect(page.locator("#error")).to_contain_text("open shipment")
        await page.screenshot(path=str(SHOTS / "shipments-list.png"), full_page=True)
        qa = await browser.new_page(viewport={"width": 1280, "height": 900})
        await sign_in(qa, running.base_url, "quinn", QA_PW)
        await qa.goto(f"{running.base_url}/console/shipments/1")
        meanings = await qa.locator("#receive-meaning option").all_inner_texts()
        await qa.get_by_label("Meaning of your signature").select_option(meanings[-1])
        await qa.get_by_label("Reason").fill("received, seal intact")
        await qa.get_by_label("Your user id (first signature of this session)").fill("quinn")
        # A wrong password is refused (401) and the page keeps the meaning and reason typed.
        await qa.get_by_label("Your password (signs as Quinn Quality)").fill("not " + QA_PW)
        async with qa.expect_response(lambda r: r.request.method == "POST") as refused:
            await qa.get_by_role("button", name="Receive and sign").click()
        assert (await refused.value).status == 401
        await expect(qa.locator("#error")).to_be_visible()
        await expect(qa.get_by_label("Reason")).to_have_value("received, seal intact")
        await expect(qa.get_by_label("Meaning of your signature")).to_have_value(meanings[-1])
        await qa.get_by_label("Your password (signs as Quinn Quality)").fill(QA_PW)
        await qa.get_by_role("button", name="Receive and sign").click()
        await expect(qa.locator("#state")).to_have_text("received")
        await expect(qa.locator("#signatures li")).to_have_count(2)
        await qa.get_by_role("button", name="Shipment report").click()
        await expect(qa).to_have_url(re.compile(r"/console/reports/\d+\?done=generated"))
        await expect(qa.locator("h1")).to_contain_text("shipment, 1")
    rows = db_query(backend.location, "SELECT state, destination, received_by FROM shipments")
    assert rows == [("received", "Hospital <9>", "quinn")]
