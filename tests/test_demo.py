"""``coldwatch demo`` as a new user meets it: a real demo process, a real Mosquitto, real SQLite.

The demo runs its bundled facility (config/demo.yaml) against the tests' broker (the
configured broker is used when it answers) and an HTTP port of its own.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from coldwatch.broker import RunningBroker
from coldwatch.demo import DEMO_USERS, EXCURSION, PASSWORD_FILE
from coldwatch.demo_records import DUE_SOON_DEVICE
from tests.conftest import db_query, eventually

ALARM_WITHIN_S = 120.0  # the promise: an alarm to acknowledge within the first two minutes
ACCOUNT_LINE = re.compile(r"^\s+(\w+)\s+(\w+)\s+password (\S+)\s.*\((new|exists)\)$", re.MULTILINE)


@contextmanager
def demo_process(
    data: Path, broker: RunningBroker, prefix: str, out: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """``coldwatch demo --data DATA``: its printout in ``out``, its log beside; stopped with Ctrl-C."""
    env = {
        **os.environ,
        "COLDWATCH_MQTT_URL": broker.url,
        "COLDWATCH_MQTT__TOPIC_PREFIX": prefix,
        "COLDWATCH_MQTT__CLIENT_ID": f"{prefix}-demo",
        "COLDWATCH_HTTP_LISTEN": "127.0.0.1:0",
    }
    env.pop("COLDWATCH_DB", None)
    with out.open("wb") as terminal, out.with_suffix(".log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "coldwatch", "demo", "--data", str(data)],
            stdout=terminal,
            stderr=log,
            env=env,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


async def banner(out: Path) -> str:
    """The demo's terminal output once it says it is running (users created, console listening)."""
    await eventually(
        lambda: "Press Ctrl-C to stop." in out.read_text(), timeout_s=60, what="the demo's banner"
    )
    return out.read_text()


async def sign_in(console: str, user: str, password: str) -> dict[str, object]:
    """POST /api/v1/session on the demo's HTTP server; the answer's body."""
    api = console.removesuffix("/console")
    async with httpx.AsyncClient(base_url=api, timeout=30) as client:
        answer = await client.post("/api/v1/session", json={"user": user, "password": password})
        assert answer.status_code == 200, (user, answer.text)
        body: dict[str, object] = answer.json()
        return body


async def test_demo_users_sign_in_an_alarm_follows_and_a_second_run_reuses_them(
    broker: RunningBroker, prefix: str, tmp_path: Path
) -> None:
    """Printed DEMO-ONLY accounts sign in as printed, an alarm comes within 2 min, a rerun reuses them."""
    data = tmp_path / "demo-data"
    out = tmp_path / "terminal.txt"
    started = time.monotonic()
    with demo_process(data, broker, prefix, out) as process:
        text = await banner(out)
        console = re.search(r"CONSOLE:\s+(http://127\.0\.0\.1:\d+/console)\s", text)
        assert console is not None, text
        assert "DEMO-ONLY" in text
        assert "SIMULATED" in text
        assert "used before" not in text
        assert "broker:   configured broker" in text  # the test's broker, given by COLDWATCH_MQTT_URL
        assert "the demo uses a broker that was already running" in text  # its retained statuses, explained
        accounts = {m[1]: (m[0], m[2], m[3]) for m in ACCOUNT_LINE.findall(text)}
        assert {u.name: (u.role, "new") for u in DEMO_USERS} == {
            name: (role, state) for name, (role, _, state) in accounts.items()
        }
        passwords = {name: password for name, (_, password, _) in accounts.items()}
        for user in DEMO_USERS:
            body = await sign_in(console[1], user.name, passwords[user.name])
            assert body["role"] == user.role
            assert body["must_change_password"] is False

        db = data / "coldwatch.db"
        await eventually(
            lambda: bool(db_query(db, "SELECT count(*) FROM alarms WHERE device_id = 'pc-fill-a1'")[0][0]),
            timeout_s=ALARM_WITHIN_S - (time.monotonic() - started),
            interval_s=0.5,
            what="the scripted excursion's alarm",
        )
        raised_after_s = time.monotonic() - started
        assert EXCURSION.start_s < raised_after_s < ALARM_WITHIN_S
        # Every point has a calibrated DEMO instrument; the LN2 store's is due soon and says so.
        devices = {r[0] for r in db_query(db, "SELECT device_id FROM devices")}
        installed = dict(
            db_query(db, "SELECT device_id, instrument_id FROM point_instruments WHERE until_us IS NULL")
        )
        assert devices <= set(installed), devices - set(installed)
        assert db_query(db, "SELECT count(*) FROM calibrations WHERE passed = 1")[0][0] == len(installed)
        await eventually(
            lambda: (
                db_query(db, "SELECT device_id, severity FROM alarms WHERE rule = 'calibration_due'")
                == [(DUE_SOON_DEVICE, "alert")]
            ),
            timeout_s=30,
            what="the demo's calibration-due alert",
        )
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
    assert "coldwatch demo stopped" in out.read_text()

    # Passwords stay on the terminal and in the owner-only file: never in the log or the audit trail.
    log = out.with_suffix(".log").read_text()
    audit = repr(db_query(db, "SELECT * FROM audit_log"))
    for password in passwords.values():
        assert password not in log
        assert password not in audit
    assert stat.S_IMODE((data / PASSWORD_FILE).stat().st_mode) == 0o600
    actions = [tuple(r) for r in db_query(db, "SELECT actor, action, object_id FROM audit_log")]
    for user in DEMO_USERS:
        assert any(a[1:] == ("user.created", user.name) for a in actions)
        assert ("coldwatch demo", "user.password_change_waived", user.name) in actions

    # A second run on the same data folder reuses the accounts and prints the same passwords.
    again = tmp_path / "terminal-2.txt"
    with demo_process(data, broker, prefix, again):
        text = await banner(again)
        second = {m[1]: (m[2], m[3]) for m in ACCOUNT_LINE.findall(text)}
        assert second == {name: (password, "exists") for name, password in passwords.items()}
        assert "this data folder was used before" in text
        console = re.search(r"CONSOLE:\s+(http://127\.0\.0\.1:\d+/console)\s", text)
        assert console is not None
        assert (await sign_in(console[1], "olga", passwords["olga"]))["role"] == "operator"
    created = [a for a in db_query(db, "SELECT action FROM audit_log") if a[0] == "user.created"]
    assert len(created) == len(DEMO_USERS)
    # ... and registers no instrument twice.
    registered = [a for a in db_query(db, "SELECT action FROM audit_log") if a[0] == "instrument.registered"]
    assert len(registered) == len(installed)
