"""The report pages of the console in a real Chromium: generate from the alarm page, download, QA sign-off."""

from __future__ import annotations

import re
from pathlib import Path

import pypdfium2 as pdfium
from playwright.async_api import expect

from coldwatch.broker import RunningBroker
from tests.conftest import running_daemon
from tests.identity_helpers import ADMIN_PW, OPERATOR_PW, QA_PW, opened, people
from tests.test_console_browser import (
    SHOTS,
    audit_actions,
    chromium,
    console_config,
    excursion,
    sign_in,
    wait_committed,
)


async def test_excursion_report_from_the_alarm_page_and_qa_sign_off(
    broker: RunningBroker, prefix: str, tmp_path: Path
) -> None:
    """An operator generates and downloads the PDF from the alarm page; QA signs it (bad password audited)."""
    config = console_config(tmp_path, broker, prefix)
    db = str(config.storage.location)
    async with running_daemon(config) as running, chromium() as browser:
        base = running.base_url
        async with opened(db, config) as (_, identity, _):
            await people(identity)
        await excursion(broker, config, 0, 37.0)
        await excursion(broker, config, 1, 39.5)
        await wait_committed(db, 1)

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
