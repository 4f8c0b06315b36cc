"""The report pages of the console in a real Chromium: generate from the alarm page, download, QA sign-off."""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path

import httpx
import pypdfium2 as pdfium
import pytest
from playwright.async_api import expect

from coldwatch.broker import RunningBroker
from coldwatch.cli import main
from coldwatch.config import Config
from tests.conftest import db_query, eventually, running_daemon
from tests.identity_helpers import ADMIN_PW, OPERATOR_PW, QA_PW, opened, people
from tests.test_console_browser import (
    ACK,
    SHOTS,
    audit_actions,
    chromium,
    console_config,
    excursion,
    sign_in,
    wait_committed,
)


async def staff_and_alarm(broker: RunningBroker, config: Config) -> None:
    """The site's people enrolled, and alarm 1 raised and committed (one reading in band, one above)."""
    db = str(config.storage.location)
    async with opened(db, config) as (_, identity, _):
        await people(identity)
    await excursion(broker, config, 0, 37.0)
    await excursion(broker, config, 1, 39.5)
    await wait_committed(db, 1)


async def test_excursion_report_from_the_alarm_page_and_qa_sign_off(
    broker: RunningBroker, prefix: str, tmp_path: Path
) -> None:
    """An operator generates and downloads the PDF from the alarm page; QA signs it (bad password audited)."""
    config = console_config(tmp_path, broker, prefix)
    db = str(config.storage.location)
    async with running_daemon(config) as running, chromium() as browser:
        base = running.base_url
        await staff_and_alarm(broker, config)

        viewer_ctx = await browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
        operator = await viewer_ctx.new_page()
        await sign_in(operator, base, "olga", OPERATOR_PW)
        await operator.goto(f"{base}/console/alarms/1")
        SHOTS.mkdir(parents=True, exist_ok=True)
        await operator.screenshot(path=str(SHOTS / "alarm-report-button-1280x800.png"))
        await operator.get_by_role("button", name="Excursion report").click()
        await expect(operator).to_have_url(re.compile(r"/console/reports/\d+\?done=generated$"))
        await expect(operator.locator("#done")).to_contain_text("Report generated")
        await expect(operator.locator("#review-state")).to_contain_text("awaiting QA review")
        await expect(operator.locator("table.figures")).to_contain_text("Mean kinetic temperature, MKT")
        # An excursion's before, during and after windows stay side by side: one column each.
        await expect(operator.locator("table.figures thead th").first).to_have_text("Figure")
        await operator.screenshot(path=str(SHOTS / "report-1280x800.png"), full_page=True)
        async with operator.expect_download() as info:
            await operator.locator("#download-pdf").click()
        download = await info.value
        saved = tmp_path / "downloaded.pdf"
        await download.save_as(saved)
        doc = pdfium.PdfDocument(saved.read_bytes())
        first = " ".join(doc[0].get_textpage().get_text_range().split())
        assert "Excursion report: alarm 1" in first
        assert f"page 1 of {len(doc)}" in first
        # An operator sees no sign-off form, and a post of one is refused.
        await expect(operator.locator("#sign-review")).to_have_count(0)
        token = await operator.locator("form.who input[type=hidden]").get_attribute("value")
        assert token
        refused = await operator.request.post(
            f"{base}/console/reports/1/review",
            form={"csrf_token": token, "meaning": "reviewed", "reason": "x", "password": OPERATOR_PW},
        )
        assert refused.status == 403
        # Generating needs the CSRF token, and a role that generates (an administrator does not).
        no_token = await operator.request.post(f"{base}/console/reports/excursion", form={"alarm_id": "1"})
        assert no_token.status == 403
        bad_id = await operator.request.post(
            f"{base}/console/reports/excursion", form={"csrf_token": token, "alarm_id": "x1"}
        )
        assert bad_id.status == 400
        admin = await (await browser.new_context()).new_page()
        await sign_in(admin, base, "ada", ADMIN_PW)
        admin_token = await admin.locator("form.who input[type=hidden]").get_attribute("value")
        assert admin_token
        await admin.goto(f"{base}/console/alarms/1")
        await expect(admin.get_by_role("button", name="Excursion report")).to_have_count(0)
        denied = await admin.request.post(
            f"{base}/console/reports/excursion", form={"csrf_token": admin_token, "alarm_id": "1"}
        )
        assert denied.status == 403

        qa = await (await browser.new_context(viewport={"width": 360, "height": 740})).new_page()
        await sign_in(qa, base, "quinn", QA_PW)
        await qa.goto(f"{base}/console/reports")
        await expect(qa.locator("#report-list li")).to_contain_text("awaiting QA review")
        await qa.locator("#report-list a").first.click()
        await qa.screenshot(path=str(SHOTS / "report-360x740.png"), full_page=True)
        form = qa.locator("#sign-review")
        await form.get_by_label("Reason").fill("read against DEV-1")
        await form.get_by_label("Your password").fill("not-her-password")
        await form.get_by_role("button", name="Sign as reviewed").click()
        await expect(qa.locator("#error")).to_contain_text("Password not accepted")
        assert [r[0] for r in audit_actions(db, "signature.failed")] == ["quinn"]
        form = qa.locator("#sign-review")
        await form.get_by_label("Reason").fill("read against DEV-1")
        await form.get_by_label("Your password").fill(QA_PW)
        await form.get_by_role("button", name="Sign as reviewed").click()
        await expect(qa.locator("#done")).to_contain_text("Review signed")
        signature = qa.locator("#signatures li")
        await expect(signature).to_contain_text("signed by Quinn Quality (quinn)")
        await expect(signature).to_contain_text("Europe/Paris")
        await expect(qa.locator("#sign-review")).to_have_count(0)
        await qa.screenshot(path=str(SHOTS / "report-reviewed-360x740.png"), full_page=True)
        await qa.goto(f"{base}/console/reports")
        await expect(qa.locator("#report-list li")).to_contain_text("reviewed")
        await expect(qa.locator("#report-list li")).not_to_contain_text("awaiting")
        await qa.screenshot(path=str(SHOTS / "reports-360x740.png"), full_page=True)
        for bad in ("abc", "0", "99999999999999999999", "1.exe", "1.pdf.pdf"):
            got = await qa.request.get(f"{base}/console/reports/{bad}")
            assert got.status == 404, (bad, got.status)
        assert (await qa.request.get(f"{base}/console/reports?kind=nope")).status == 400
    assert [r[1] for r in audit_actions(db, "report.generated")] == ["1"]
    assert [(r[0], r[1]) for r in audit_actions(db, "report.reviewed")] == [("quinn", "1")]


async def test_an_excursion_report_older_than_its_alarm_record_is_signed_only_knowingly(
    broker: RunningBroker, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Generated while the alarm was open, a report lists what came after; QA signs it only saying so."""
    config = console_config(tmp_path, broker, prefix)
    db = str(config.storage.location)
    async with running_daemon(config) as running, chromium() as browser:
        base = running.base_url
        await staff_and_alarm(broker, config)
        operator = await (await browser.new_context()).new_page()
        await sign_in(operator, base, "olga", OPERATOR_PW)
        await operator.goto(f"{base}/console/alarms/1")
        await operator.get_by_role("button", name="Excursion report").click()
        await expect(operator).to_have_url(re.compile(r"/console/reports/1\?done=generated$"))
        await expect(operator.locator("#predates")).to_have_count(0)  # nothing came after it yet
        # The alarm's record moves on after the report: back in band, the alarm clears.
        await excursion(broker, config, 2, 37.0)

        async def cleared() -> bool:
            return bool(db_query(db, "SELECT 1 FROM alarm_transitions WHERE event = 'cleared'"))

        await eventually(cleared, what="the alarm cleared")

        qa = await (await browser.new_context(viewport={"width": 360, "height": 740})).new_page()
        await sign_in(qa, base, "quinn", QA_PW)
        await qa.goto(f"{base}/console/reports/1")
        warning = qa.locator("#predates")
        await expect(warning).to_contain_text("generated before later changes")
        await expect(warning).to_contain_text("the alarm's history after it: cleared")
        await qa.screenshot(path=str(SHOTS / "report-predates-360x740.png"), full_page=True)
        # Neither the console nor the API takes the signature unless the signer says so.
        token = await qa.locator("form.who input[type=hidden]").get_attribute("value")
        assert token
        form: dict[str, str | float | bool] = {
            "csrf_token": token,
            "meaning": "reviewed",
            "reason": "x",
            "password": QA_PW,
        }
        refused = await qa.request.post(f"{base}/console/reports/1/review", form=form)
        assert refused.status == 409
        assert "Generate a new report" in await refused.text()
        signed = {"user": "quinn", "password": QA_PW, "meaning": "reviewed", "reason": "x"}
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            api = await client.post("/api/v1/reports/1/review", json=signed)
            assert api.status_code == 409, api.text
            assert "cleared" in api.json()["detail"]
            assert "as_generated" in api.json()["detail"]
        assert audit_actions(db, "report.reviewed") == []
        # A new report shows the whole record and has nothing to warn of.
        await warning.get_by_role("button", name="Generate a new excursion report").click()
        await expect(qa).to_have_url(re.compile(r"/console/reports/2\?done=generated$"))
        await expect(qa.locator("#predates")).to_have_count(0)
        await expect(qa.locator("#review-as-generated")).to_have_count(0)
        # Until the alarm is acknowledged after it; the command line then signs it only with
        # --as-generated.
        ack = {"user": "olga", "password": OPERATOR_PW, "meaning": ACK, "reason": "door left open"}
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            assert (await client.post("/api/v1/alarms/1/ack", json=ack)).status_code == 200
        await qa.reload()
        await expect(qa.locator("#predates")).to_contain_text("signatures on the alarm after it: acknowledge")
        argv = ["report", "review", "2", "--user", "quinn", "--meaning", "reviewed", "--reason", "r",
                "--password-stdin", "--config", str(tmp_path / "c.yaml"), "--url", base]  # fmt: skip
        monkeypatch.setattr("sys.stdin", io.StringIO(QA_PW + "\n"))
        assert await asyncio.to_thread(main, argv) != 0
        monkeypatch.setattr("sys.stdin", io.StringIO(QA_PW + "\n"))
        assert await asyncio.to_thread(main, [*argv, "--as-generated"]) == 0
        # The older one can still be signed as it is, saying so.
        await qa.goto(f"{base}/console/reports/1")
        sign = qa.locator("#sign-review")
        await sign.get_by_label("Reason").fill("signed as generated: the record after it is in report 2")
        await sign.get_by_label("Your password").fill(QA_PW)
        await sign.get_by_label("I sign this report as it was generated").check()
        await sign.get_by_role("button", name="Sign as reviewed").click()
        await expect(qa.locator("#done")).to_contain_text("Review signed")
        await expect(qa.locator("#predates")).to_have_count(0)
    assert [(r[0], r[1]) for r in audit_actions(db, "report.reviewed")] == [("quinn", "2"), ("quinn", "1")]
