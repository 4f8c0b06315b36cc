"""The console in a real browser (Debian's Chromium driven by Playwright) against a real daemon.

A real Mosquitto broker, a real SQLite database, the daemon's real HTTP server. Chromium
is never downloaded: scripts/bootstrap.sh installs Debian's package, and these tests fail
(never skip) without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from playwright.async_api import Browser, Page, async_playwright, expect

from coldwatch.broker import RunningBroker
from coldwatch.config import Config
from tests.conftest import (
    Backend,
    db_query,
    publish_all,
    reading,
    running_daemon,
    telemetry_topic,
    write_config,
)
from tests.identity_helpers import ADMIN_PW, FAST_IDENTITY, OPERATOR_PW, QA_PW, opened, people
from tests.test_audit_trail_e2e import coldwatch

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
ACK = "acknowledged, investigating"
HIGH_ACTION: dict[str, Any] = {
    "type": "threshold",
    "metric": "temp_c",
    "direction": "high",
    "levels": {"alert": {"limit": 37.5}, "action": {"limit": 38.0}},
}
SHOTS = Path(__file__).parent.parent / "build" / "console-screenshots"


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless (fails loudly when it is not installed)."""
    assert Path(CHROMIUM).exists(), "Chromium is required: scripts/bootstrap.sh installs Debian's package"
    async with async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


def console_config(
    tmp_path: Path, broker: RunningBroker, prefix: str, backend: Backend | None = None, **identity: Any
) -> Config:
    """One incubator raising an action alarm above 38.0 (alert above 37.5); Paris site time."""
    storage = {"path": backend.location} if backend is not None else {}
    return write_config(
        tmp_path / "c.yaml",
        broker=broker,
        prefix=prefix,
        devices=[{"id": "inc-1", "kind": "incubator", "site": "s1", "area": "lab"}],
        rules={"devices": {"inc-1": [HIGH_ACTION, {"type": "comm_loss", "timeout_s": 600}]}},
        identity={**FAST_IDENTITY, **identity},
        site={"timezone": "Europe/Paris"},
        storage=storage,
    )


async def sign_in(page: Page, base: str, user: str, password: str) -> None:
    """Sign in through the sign-in page (the console sends there first)."""
    await page.goto(f"{base}/console/alarms")
    await expect(page).to_have_url(re.compile(r"/console/sign-in"))
    await page.get_by_label("User id").fill(user)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()


async def excursion(broker: RunningBroker, config: Config, seq: int, temp_c: float) -> None:
    """Publish one reading of inc-1 over MQTT."""
    await publish_all(
        broker, [(telemetry_topic(config, "inc-1"), reading(seq, {"temp_c": temp_c}))], clients=1
    )


async def committed_alarms(location: str) -> int:
    """Alarms committed to the database (read through a connection of the test's own)."""
    return int(db_query(location, "SELECT count(*) FROM alarms")[0][0])


async def wait_committed(location: str, count: int, timeout_s: float = 30.0) -> float:
    """Wait until ``count`` alarms are committed; the monotonic time it was seen."""
    deadline = time.monotonic() + timeout_s
    while await committed_alarms(location) < count:
        assert time.monotonic() < deadline, "the alarm was not committed"
        await asyncio.sleep(0.02)
    return time.monotonic()


def audit_actions(location: str, action: str) -> list[tuple[Any, ...]]:
    """Audit entries of one action: (actor, object_id, new_value, reason)."""
    rows = db_query(
        location, "SELECT action, actor, object_id, new_value, reason FROM audit_log ORDER BY seq"
    )
    return [tuple(r[1:]) for r in rows if r[0] == action]


async def test_story_excursion_acknowledged_reviewed_and_audited(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend
) -> None:
    """An excursion shows within 2 s; an operator signs its acknowledgement, QA reviews; audit verifies."""
    config = console_config(tmp_path, broker, prefix, backend)
    db = str(config.storage.location)
    async with running_daemon(config) as running, chromium() as browser:
        base = running.base_url
        async with opened(db, config) as (_, identity, _):
            await people(identity)
        await excursion(broker, config, 0, 37.0)
        operator = await (await browser.new_context(viewport={"width": 360, "height": 740})).new_page()
        await sign_in(operator, base, "olga", OPERATOR_PW)
        await expect(operator).to_have_url(re.compile(r"/console/alarms$"))
        await expect(operator.locator("#alarm-list")).to_have_text("No alarm matches.")

        await excursion(broker, config, 1, 39.5)
        seen_committed = await wait_committed(db, 1)
        await expect(operator.locator("li.alarm")).to_have_count(1, timeout=2000)
        assert time.monotonic() - seen_committed < 2.0
        SHOTS.mkdir(parents=True, exist_ok=True)
        await operator.screenshot(path=str(SHOTS / f"alarms-360x740-{backend.name}.png"), full_page=True)
        await operator.locator("li.alarm a").click()
        await expect(operator.get_by_role("heading", level=1)).to_contain_text("Alarm #1")
        await expect(operator.get_by_role("img", name=re.compile(r"inc-1 temp_c: alarm #1"))).to_have_count(1)

        # A wrong password is refused and audited; the right one signs.
        form = operator.locator("#sign-acknowledge")
        await form.get_by_label("Reason").fill("door seal checked")
        await form.get_by_label("Your password").fill("not-her-password")
        await form.get_by_role("button", name="Sign: acknowledge").click()
        await expect(operator.locator("#error")).to_contain_text("Password not accepted")
        assert [r[0] for r in audit_actions(db, "signature.failed")] == ["olga"]
        form = operator.locator("#sign-acknowledge")
        await form.get_by_label("Reason").fill("door seal checked")
        await form.get_by_label("Your password").fill(OPERATOR_PW)
        await form.get_by_role("button", name="Sign: acknowledge").click()
        await expect(operator.locator("#done")).to_contain_text("Acknowledgement signed")
        signature = operator.locator("#signatures li")
        await expect(signature).to_contain_text("signed by Olga Operator (olga)")
        await expect(signature).to_contain_text("UTC")
        await expect(signature).to_contain_text("Europe/Paris")
        await expect(signature).to_contain_text(ACK)
        await operator.screenshot(path=str(SHOTS / "alarm-360x740.png"), full_page=True)

        # The acknowledging user, given the qa role, still may not review it (four eyes).
        async with opened(db, config) as (_, identity, _):
            admin = (await identity.sign_in("ada", ADMIN_PW, "test")).principal
            await identity.set_role(admin, "olga", "qa", "covering QA this week")
        await operator.reload()
        review = operator.locator("#sign-review")
        await expect(review).to_contain_text("a second person must review it")
        await review.get_by_label("no impact").check()
        await review.get_by_label("Reason").fill("self review attempt")
        await review.get_by_label("Your password").fill(OPERATOR_PW)
        await review.get_by_role("button", name="Sign: review").click()
        await expect(operator.locator("#error")).to_contain_text("four eyes")

        # A second person with the qa role reviews and approves.
        qa = await (await browser.new_context(viewport={"width": 1280, "height": 800})).new_page()
        await sign_in(qa, base, "quinn", QA_PW)
        await qa.goto(f"{base}/console/alarms?state=awaiting_review")
        await qa.locator("li.alarm a").click()
        review = qa.locator("#sign-review")
        await review.get_by_label("no impact").check()
        await review.get_by_label("Root cause").fill("door left ajar during a transfer")
        await review.get_by_label("Meaning of your signature").select_option("approved")
        await review.get_by_label("Reason").fill("assessed with production")
        await review.get_by_label("Your user id").fill("quinn")
        await review.get_by_label("Your password").fill(QA_PW)
        await review.get_by_role("button", name="Sign: review").click()
        await expect(qa.locator("#done")).to_contain_text("Review signed")
        await expect(qa.locator("#review")).to_contain_text("signed by Quinn Quality (quinn)")
        await expect(qa.locator("#alarm-state")).to_contain_text("reviewed")
        await qa.screenshot(path=str(SHOTS / "alarm-1280x800.png"), full_page=True)
        await qa.set_viewport_size({"width": 360, "height": 740})
        await qa.screenshot(path=str(SHOTS / "alarm-reviewed-360x740.png"), full_page=True)

        # N wrong attempts lock the account: then even the right password is refused, with the same words.
        intruder = await (await browser.new_context()).new_page()
        for _ in range(3):
            await sign_in(intruder, base, "olga", "guess-guess-guess")
            await expect(intruder.locator("#sign-in-message")).to_contain_text("not accepted")
        await sign_in(intruder, base, "olga", OPERATOR_PW)
        await expect(intruder.locator("#sign-in-message")).to_contain_text("not accepted")
        assert [r[1] for r in audit_actions(db, "user.locked")] == ["olga"]

        # The console's audit page: chain and signature bindings verified, export with manifestations.
        await qa.goto(f"{base}/console/audit?action=signature.applied")
        await expect(qa.locator("#chain")).to_contain_text("audit trail intact")
        await expect(qa.locator("#bindings")).to_contain_text("2 signatures, each bound")
        export = await qa.request.get(f"{base}/console/audit/export.csv?action=signature")
        text = await export.text()
        assert "signed by Olga Operator (olga) on " in text
        assert "signed by Quinn Quality (quinn) on " in text
        assert "Europe/Paris" in text

        # Sign-out ends the session: the console asks to sign in again.
        await qa.get_by_role("button", name="Sign out").click()
        await expect(qa).to_have_url(re.compile(r"/console/sign-in"))
        await qa.goto(f"{base}/console/alarms")
        await expect(qa).to_have_url(re.compile(r"/console/sign-in"))
        assert [r[0] for r in audit_actions(db, "user.signed_out")] == ["quinn"]

    exported = coldwatch(tmp_path / "c.yaml", "audit", "export", "--format", "csv")
    assert exported.returncode == 0, exported.stderr
    assert "signed by Olga Operator (olga) on " in exported.stdout
    assert f"meaning: {ACK}" in exported.stdout
    assert "signed by Quinn Quality (quinn) on " in exported.stdout
    assert "meaning: approved" in exported.stdout
    verified = coldwatch(tmp_path / "c.yaml", "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


async def form_token(client: httpx.AsyncClient, url: str) -> str:
    """The CSRF token in the first form of a page."""
    page = await client.get(url)
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found is not None, page.text
    return found[1]


async def test_security_csrf_viewer_script_and_rate_limit(
    broker: RunningBroker, prefix: str, tmp_path: Path
) -> None:
    """CSRF refused, a viewer sees and posts no action, a <script> reason is inert, sign-in rate-limited."""
    config = console_config(tmp_path, broker, prefix, sign_in_rate_max=5)
    db = str(config.storage.location)
    async with running_daemon(config) as running, chromium() as browser:
        base = running.base_url
        async with opened(db, config) as (_, identity, _):
            await people(identity)
            admin = (await identity.sign_in("ada", ADMIN_PW, "test")).principal
            await identity.add_user(admin, "vic", "Vic Viewer", "viewer", "viewer-initial-1", "auditor")
        await excursion(broker, config, 0, 39.5)
        await wait_committed(db, 1)

        # A <script> in a reason is shown as text, never run.
        page = await (await browser.new_context()).new_page()
        await sign_in(page, base, "olga", OPERATOR_PW)
        await page.goto(f"{base}/console/alarms/1")
        form = page.locator("#sign-acknowledge")
        await form.get_by_label("Reason").fill(
            '<script>window.pwned = 1</script><img src=x onerror="window.pwned=2">'
        )
        await form.get_by_label("Your password").fill(OPERATOR_PW)
        await form.get_by_role("button", name="Sign: acknowledge").click()
        await expect(page.locator("#signatures")).to_contain_text("<script>window.pwned = 1</script>")
        assert await page.evaluate("window.pwned") is None

        # CSRF: a post with the session cookie but without (or with a wrong) token is refused.
        cookie = next(c for c in await page.context.cookies() if c["name"] == "coldwatch_session")
        async with httpx.AsyncClient(base_url=base, cookies={cookie["name"]: cookie["value"]}) as client:
            body = {
                "meaning": "shelved, responsible for the suppression",
                "reason": "r",
                "password": OPERATOR_PW,
            }
            refused = await client.post("/console/alarms/1/shelve", data={**body, "hours": "1"})
            assert refused.status_code == 403
            wrong = await client.post(
                "/console/alarms/1/shelve", data={**body, "hours": "1", "csrf_token": "x" * 64}
            )
            assert wrong.status_code == 403
            bad_form = await client.post(
                "/console/alarms/1/shelve",
                content=b"\xff\xfe%%%",
                headers={"content-type": "multipart/form-data"},
            )
            assert bad_form.status_code < 500
            # Malformed requests are answered, never with a 500.
            for path, code in (
                ("/console/alarms?after=not-a-cursor", 400),
                ("/console/alarms?state=exploded", 400),
                ("/console/alarms?since=yesterday", 400),
                ("/console/alarms?severity=%00", 400),
                ("/console/alarms/abc", 404),
                ("/console/alarms/99999999999999999999999", 404),
                ("/console/alarms/424242", 404),
                ("/console/devices/nope", 404),
                ("/console/devices/inc-1?range=forever", 400),
                ("/console/audit?since=%ff", 400),
                ("/console/static/../../etc/passwd", 404),
            ):
                answer = await client.get(path)
                assert answer.status_code == code, (path, answer.status_code)
        assert db_query(db, "SELECT state FROM alarms WHERE id = 1")[0][0] == "active_acknowledged"

        # A viewer (after the forced change of the administrator-set password) sees no action, posts none.
        viewer = await (await browser.new_context()).new_page()
        await sign_in(viewer, base, "vic", "viewer-initial-1")
        await expect(viewer).to_have_url(re.compile(r"/console/password$"))
        await viewer.get_by_label("Current password").fill("viewer-initial-1")
        await viewer.get_by_label("New password", exact=True).fill("viewer-own-pass-1")
        await viewer.get_by_label("New password again").fill("viewer-own-pass-1")
        await viewer.get_by_role("button", name="Change password").click()
        await expect(viewer).to_have_url(re.compile(r"/console/alarms"))
        await viewer.goto(f"{base}/console/alarms/1")
        await expect(viewer.get_by_role("heading", level=1)).to_contain_text("Alarm #1")
        assert await viewer.locator("section.actions").count() == 0
        token = await viewer.locator('input[name="csrf_token"]').first.input_value()
        posted = await viewer.request.post(
            f"{base}/console/alarms/1/shelve",
            form={
                "csrf_token": token,
                "hours": "1",
                "meaning": "x",
                "reason": "x",
                "password": "viewer-own-pass-1",
            },
        )
        assert posted.status == 403
        assert db_query(db, "SELECT state FROM alarms WHERE id = 1")[0][0] == "active_acknowledged"

        # Sign-in is rate-limited per user name (an unknown name too: nothing tells whether it exists).
        async with httpx.AsyncClient(base_url=base) as client:
            codes = []
            for _ in range(6):
                token = await form_token(client, "/console/sign-in")
                answer = await client.post(
                    "/console/sign-in", data={"csrf_token": token, "user": "nobody", "password": "p"}
                )
                codes.append(answer.status_code)
            # Five per window and address (the browser's sign-ins above came from it too).
            assert set(codes) == {401, 429}
            assert codes == sorted(codes)
            token = await form_token(client, "/console/sign-in")
            right = await client.post(
                "/console/sign-in", data={"csrf_token": token, "user": "quinn", "password": QA_PW}
            )
            assert right.status_code == 429
            assert "Too many sign-in attempts" in right.text
            token = await form_token(client, "/console/sign-in")
            forged = await client.post(
                "/console/sign-in", data={"csrf_token": "forged", "user": "olga", "password": OPERATOR_PW}
            )
            assert forged.status_code == 403


async def test_expired_session_is_refused(broker: RunningBroker, prefix: str, tmp_path: Path) -> None:
    """The page's live polling does not keep a session alive: after the idle timeout a post is refused."""
    config = console_config(tmp_path, broker, prefix, session_idle_s=2)
    async with running_daemon(config) as running, chromium() as browser:
        base = running.base_url
        async with opened(str(config.storage.location), config) as (_, identity, _):
            await people(identity)
        page = await (await browser.new_context()).new_page()
        await sign_in(page, base, "olga", OPERATOR_PW)
        await expect(page).to_have_url(re.compile(r"/console/alarms$"))
        token = await page.locator('input[name="csrf_token"]').first.input_value()
        await expect(page.locator("#live-status")).to_contain_text("Live")  # the page polls every second
        await asyncio.sleep(3)  # let the idle timeout pass while the page polls
        posted = await page.request.post(
            f"{base}/console/alarms/1/acknowledge",
            form={"csrf_token": token, "meaning": ACK, "reason": "late", "password": OPERATOR_PW},
            max_redirects=0,
        )
        assert posted.status == 303
        assert "/console/sign-in" in posted.headers["location"]
        await page.goto(f"{base}/console/alarms")
        await expect(page.locator("#sign-in-message")).to_contain_text("session ended")


async def test_overview_device_audit_and_users_pages(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend
) -> None:
    """The overview updates live; device, audit and users pages show their records; users is admin-only."""
    config = console_config(tmp_path, broker, prefix, backend)
    db = str(config.storage.location)
    async with running_daemon(config) as running, chromium() as browser:
        base = running.base_url
        async with opened(db, config) as (_, identity, _):
            await people(identity)
        await excursion(broker, config, 0, 37.0)
        page = await (await browser.new_context(viewport={"width": 360, "height": 740})).new_page()
        await sign_in(page, base, "olga", OPERATOR_PW)
        await page.goto(f"{base}/console/overview")
        device = page.locator('li.device[data-device="inc-1"]')
        await expect(device).to_contain_text("normal")
        await expect(device).to_contain_text("temp_c 37")
        await excursion(broker, config, 1, 39.5)
        await wait_committed(db, 1)
        await expect(device).to_contain_text("action", timeout=3000)
        await expect(device).to_contain_text("1 to acknowledge")
        await expect(page.locator("#areas")).to_contain_text("1 action")
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SHOTS / "overview-360x740.png"), full_page=True)

        await device.get_by_role("link", name="inc-1").click()
        await expect(page.get_by_role("heading", level=1)).to_contain_text("inc-1")
        await expect(page.locator("#rules-h + ul")).to_contain_text("temp_c action high 38")
        await page.get_by_label("Range", exact=True).select_option("1h")
        await page.get_by_role("button", name="Show").click()
        await expect(page).to_have_url(re.compile(r"range=1h"))
        await expect(page.get_by_role("img", name=re.compile(r"inc-1 temp_c"))).to_have_count(1)
        await page.screenshot(path=str(SHOTS / "device-360x740.png"), full_page=True)

        # Users: administrators only, on the page and on the server.
        assert (await page.goto(f"{base}/console/users")).status == 403  # type: ignore[union-attr]
        token = await page.locator('input[name="csrf_token"]').first.input_value()
        posted = await page.request.post(
            f"{base}/console/users/disable", form={"csrf_token": token, "name": "quinn", "reason": "x"}
        )
        assert posted.status == 403
        admin = await (await browser.new_context()).new_page()
        await sign_in(admin, base, "ada", ADMIN_PW)
        await admin.goto(f"{base}/console/users")
        # Their own account offers no change they would be refused: another administrator's job.
        await expect(admin.locator("li.user #own-account")).to_contain_text("another administrator")
        await expect(admin.get_by_text("Change ada", exact=True)).to_have_count(0)
        await expect(admin.get_by_text("Change quinn", exact=True)).to_have_count(1)
        add = admin.locator("form[action$='/users/add']")
        await add.get_by_label("User id").fill("nina")
        await add.get_by_label("Full name").fill("Nina <b>Night</b>")
        await add.get_by_label("Role").select_option("operator")
        await add.get_by_label("First password").fill("night-shift-01")
        await add.get_by_label("Reason").fill("joins the night shift")
        await add.get_by_role("button", name="Add user").click()
        await expect(admin.locator("#done")).to_contain_text("nina added")
        await expect(admin.locator("#accounts")).to_contain_text("Nina <b>Night</b>")
        assert "$argon2" not in await admin.content()  # no password hash in any page
        await admin.screenshot(path=str(SHOTS / "users-1280x800.png"), full_page=True)
        quinn = admin.locator("li.user").filter(has_text="Quinn Quality")
        await quinn.get_by_text("Change quinn").click()
        await quinn.get_by_label("Reason to disable").fill("left the company")
        await quinn.get_by_role("button", name="Disable quinn").click()
        await expect(admin.locator("#done")).to_contain_text("quinn disabled")
        assert db_query(db, "SELECT disabled FROM users WHERE name = 'quinn'")[0][0] == 1

        # The audit trail: its chain verified, filtered, exported with the entries shown.
        await admin.goto(f"{base}/console/audit?action=user.")
        await expect(admin.locator("#chain")).to_contain_text("audit trail intact")
        entries = admin.locator("#audit-entries")
        await expect(entries).to_contain_text("joins the night shift")
        await expect(entries).not_to_contain_text("alarm.raised")
        export = await admin.request.get(f"{base}/console/audit/export.csv?action=user.disabled")
        assert export.status == 200
        text = await export.text()
        assert "left the company" in text
        assert "joins the night shift" not in text


UNLABELLED = """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
    .filter(e => !e.labels || e.labels.length === 0).map(e => e.name || e.id)"""


async def test_keyboard_sign_in_focus_and_labels(broker: RunningBroker, prefix: str, tmp_path: Path) -> None:
    """Sign-in and signing work by keyboard alone, focus is visible, and every field has a label."""
    config = console_config(tmp_path, broker, prefix)
    db = str(config.storage.location)
    async with running_daemon(config) as running, chromium() as browser:
        base = running.base_url
        async with opened(db, config) as (_, identity, _):
            await people(identity)
        await excursion(broker, config, 0, 39.5)
        await wait_committed(db, 1)
        page = await (await browser.new_context(viewport={"width": 360, "height": 740})).new_page()
        await page.goto(f"{base}/console/sign-in")
        assert await page.evaluate(UNLABELLED) == []
        # The user id field has the focus on arrival; Tab, Enter do the rest.
        await page.keyboard.type("olga")
        await page.keyboard.press("Tab")
        await page.keyboard.type(OPERATOR_PW)
        await page.keyboard.press("Enter")
        await expect(page).to_have_url(re.compile(r"/console/alarms$"))
        # The first Tab reaches the skip link, shown with a visible focus ring.
        await page.keyboard.press("Tab")
        focused = await page.evaluate(
            "() => [document.activeElement.textContent, "
            "getComputedStyle(document.activeElement).outlineStyle]"
        )
        assert focused == ["Skip to content", "solid"]
        await page.goto(f"{base}/console/alarms/1")
        assert await page.evaluate(UNLABELLED) == []
        reason = page.locator("#sign-acknowledge").get_by_label("Reason")
        await reason.focus()
        await page.keyboard.type("seen at night")
        await page.keyboard.press("Tab")  # the user id (first signing of the session)
        await page.keyboard.press("Tab")  # the password
        await page.keyboard.type(OPERATOR_PW)
        await page.keyboard.press("Enter")
        await expect(page.locator("#done")).to_contain_text("Acknowledgement signed")
        await page.goto(f"{base}/console/audit")
        assert await page.evaluate(UNLABELLED) == []
        await page.goto(f"{base}/console/alarms")
        assert await page.evaluate(UNLABELLED) == []
