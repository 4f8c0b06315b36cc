"""The instrument pages in a real browser against a real daemon: register, install, sign a calibration."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
from playwright.async_api import Page, expect

from coldwatch.broker import RunningBroker
from coldwatch.config import Config
from tests.conftest import Backend, db_query, running_daemon, write_config
from tests.identity_helpers import FAST_IDENTITY, OPERATOR_PW, QA_PW, opened, people
from tests.test_console_browser import HIGH_ACTION, SHOTS, chromium, excursion, sign_in

PARIS = ZoneInfo("Europe/Paris")


def instruments_config(tmp_path: Path, broker: RunningBroker, prefix: str, backend: Backend) -> Config:
    """One incubator in Paris; due dates checked every 0.2 s."""
    return write_config(
        tmp_path / "c.yaml",
        broker=broker,
        prefix=prefix,
        devices=[{"id": "inc-1", "kind": "incubator", "site": "s1", "area": "lab"}],
        rules={"devices": {"inc-1": [HIGH_ACTION, {"type": "comm_loss", "timeout_s": 600}]}},
        identity=FAST_IDENTITY,
        site={"timezone": "Europe/Paris"},
        storage={"path": backend.location},
        calibration={"check_interval_s": 0.2},
    )


def local(days: float) -> str:
    """A datetime-local value in Paris time, ``days`` from now."""
    return (datetime.now(UTC) + timedelta(days=days)).astimezone(PARIS).strftime("%Y-%m-%dT%H:%M:%S")


async def fill_calibration(page: Page, due_days: float, password: str, *, passed: bool = True) -> None:
    """Fill the calibration form (first signing of the session: the user id is prefilled)."""
    await page.get_by_label("Calibrated on").fill(local(-0.5))
    await page.get_by_label("Next calibration due").fill(local(due_days))
    await page.get_by_label("Certificate reference").fill("CERT <b>42</b>")
    await page.get_by_label("As found").fill("+0.15 C at 37 C")
    await page.get_by_label("As left").fill("+0.02 C at 37 C")
    await page.get_by_label("Performed by").fill("Metro Lab")
    result = "passed: in calibration until the due date" if passed else "failed: out of calibration from"
    await page.get_by_label(result).check()
    await page.get_by_label("Reason").fill("annual calibration")
    await page.get_by_label("Your password").fill(password)
    await page.get_by_role("button", name="Sign: record calibration").click()


async def test_calibration_signed_in_the_console_and_shown_everywhere(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend
) -> None:
    """Register, install, a wrong password refused, then a signed calibration shown; the overview says due."""
    config = instruments_config(tmp_path, broker, prefix, backend)
    db = str(config.storage.location)
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with running_daemon(config) as running, chromium() as browser:
        base = running.base_url
        async with opened(db, config) as (_, identity, _):
            await people(identity)
        await excursion(broker, config, 0, 37.0)  # heard from: the overview's state is not "stale"
        page = await (await browser.new_context(viewport={"width": 1200, "height": 900})).new_page()
        await sign_in(page, base, "quinn", QA_PW)
        await page.get_by_role("link", name="Instruments").click()
        await expect(page.locator("#points li[data-point='inc-1']")).to_contain_text("no instrument recorded")
        await page.locator("#register-form summary").click()
        await page.get_by_label("Serial number").fill("SN-<7>")
        await page.get_by_label("Model").fill("PT100 probe")
        await page.get_by_label("Manufacturer").fill("Acme")
        await page.locator("#reg-reason").fill("new probe")
        await page.get_by_role("button", name="Register").click()
        await expect(page.locator("#done")).to_have_text("Instrument registered.")
        await page.locator("#install-form summary").click()
        await page.get_by_label("Instrument (not installed").select_option("SN-<7>")
        await page.locator("#stay-reason").fill("commissioning")
        await page.get_by_role("button", name="Record the change").click()
        await expect(page.locator("#done")).to_have_text("Instrument installed.")
        point = page.locator("#points li[data-point='inc-1']")
        await expect(point).to_contain_text("NEVER CALIBRATED: out of calibration")
        await point.get_by_role("link", name="SN-<7>").click()
        await expect(page).to_have_url(re.compile(r"/console/instruments/SN-%3C7%3E$"))

        await fill_calibration(page, 10, "wrong-password-1")
        await expect(page.locator("#error")).to_contain_text("Password not accepted")
        assert db_query(db, "SELECT count(*) FROM calibrations")[0][0] == 0
        await expect(page.get_by_label("Certificate reference")).to_have_value("CERT <b>42</b>")

        await fill_calibration(page, 10, QA_PW)
        await expect(page.locator("#done")).to_have_text("Calibration signed and recorded.")
        entry = page.locator("#calibrations li").first
        await expect(entry).to_contain_text("signed by Quinn Quality (quinn) on ")
        await expect(entry).to_contain_text("(Europe/Paris), meaning: responsibility")
        await expect(entry).to_contain_text("CertificateCERT <b>42</b>")  # escaped, shown as typed
        await page.screenshot(path=str(SHOTS / "instrument-desktop.png"), full_page=True)
        await page.get_by_role("link", name="← Instruments").click()
        await expect(point).to_contain_text("calibration due soon")
        await expect(point).to_contain_text("due in 10 days")
        await page.screenshot(path=str(SHOTS / "instruments-desktop.png"), full_page=True)
        await page.goto(f"{base}/console/alarms")
        alarm = page.locator("li.alarm", has_text="calibration")
        await expect(alarm).to_have_count(1, timeout=5000)
        await alarm.get_by_role("link").click()
        await expect(page.locator("h1")).to_contain_text("inc-1 calibration")
        await page.screenshot(path=str(SHOTS / "calibration-alarm-desktop.png"), full_page=True)
        await page.goto(f"{base}/console/overview")
        await expect(page.locator("li.device[data-device='inc-1'] .badge")).to_have_text("calibration due")
        # A failed calibration: the point is out of calibration, said in words (and in red).
        await page.goto(f"{base}/console/instruments/SN-%3C7%3E")
        await fill_calibration(page, 300, QA_PW, passed=False)
        await expect(page.locator("#done")).to_have_text("Calibration signed and recorded.")
        await page.goto(f"{base}/console/instruments")
        await expect(point).to_contain_text("OVERDUE: out of calibration")
        await expect(point).to_contain_text("the latest calibration FAILED")
        await expect(point).to_have_class(re.compile(r"st-action"))
        await page.screenshot(path=str(SHOTS / "instruments-overdue-desktop.png"), full_page=True)
        phone = await (await browser.new_context(viewport={"width": 360, "height": 740})).new_page()
        await sign_in(phone, base, "olga", OPERATOR_PW)
        await phone.goto(f"{base}/console/instruments")
        await phone.screenshot(path=str(SHOTS / "instruments-phone.png"), full_page=True)
        await phone.goto(f"{base}/console/instruments/SN-%3C7%3E")
        await phone.screenshot(path=str(SHOTS / "instrument-phone.png"), full_page=True)
    rows = db_query(db, "SELECT recorded_by, certificate, passed FROM calibrations ORDER BY id")
    assert [(r[0], r[1], bool(r[2])) for r in rows] == [
        ("quinn", "CERT <b>42</b>", True),
        ("quinn", "CERT <b>42</b>", False),
    ]


async def test_console_forms_check_role_and_csrf(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend
) -> None:
    """A viewer sees no form and a forged post is refused (403); a post without the CSRF token too."""
    config = instruments_config(tmp_path, broker, prefix, backend)
    async with running_daemon(config) as running:
        async with opened(str(config.storage.location), config) as (_, identity, _):
            await people(identity)
            admin = (await identity.sign_in("ada", "admin-secret-1", "test")).principal
            await identity.add_user(admin, "vera", "Vera Viewer", "viewer", "viewer-secret-1x", "auditor")
            await identity.change_password("vera", "viewer-secret-1x", "viewer-secret-1", "test")
        async with httpx.AsyncClient(base_url=running.base_url, timeout=30) as client:
            signed_in = await client.post(
                "/api/v1/session", json={"user": "vera", "password": "viewer-secret-1"}
            )
            csrf = signed_in.json()["csrf_token"]
            page = await client.get("/console/instruments")
            assert page.status_code == 200
            assert "Register an instrument" not in page.text
            form = {"csrf_token": csrf, "change": "register", "serial": "X", "model": "m",
                    "manufacturer": "a", "reason": "r"}  # fmt: skip
            forged = await client.post("/console/instruments", data=form)
            assert forged.status_code == 403, forged.text
            no_csrf = await client.post("/console/instruments", data={**form, "csrf_token": ""})
            assert no_csrf.status_code == 403
            missing = await client.get("/console/instruments/NO-SUCH")
            assert missing.status_code == 404
    assert db_query(str(config.storage.location), "SELECT count(*) FROM instruments")[0][0] == 0
