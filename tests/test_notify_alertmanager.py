"""Notifications through a real Alertmanager process to a real webhook receiver.

Alertmanager (Debian package prometheus-alertmanager) is started on a free port with
clustering disabled, a temporary storage directory and a route to the test's receiver
with 1 s grouping. If it is not installed, these tests fail: they are never skipped.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from coldwatch.broker import free_port, stop_process
from coldwatch.notify.config import NotifyConfig
from coldwatch.notify.messages import ALERTNAME, alertmanager_resend
from coldwatch.notify.planner import Notifier
from coldwatch.rules.lifecycle import Alarm, AlarmState, Transition
from coldwatch.rules.model import Severity
from tests.test_notify import (
    DEVICES,
    Receiver,
    delivering,
    make_alarm,
    now_us,
    open_outbox,
    raised,
    store,
)

US = 1_000_000


@dataclass(frozen=True, slots=True)
class RunningAlertmanager:
    """An Alertmanager we started, and the receiver its route sends to."""

    url: str
    receiver: Receiver
    process: subprocess.Popen[bytes]
    log: Path


def alertmanager_binary() -> str:
    """The Alertmanager binary; fails the test when it is missing."""
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        pytest.fail("prometheus-alertmanager is not installed: apt-get install -y prometheus-alertmanager")
    return binary


async def poll(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 15.0) -> None:
    """Poll another process's HTTP API until ``check`` holds (nothing to await across processes)."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.fixture
async def alertmanager(tmp_path: Path) -> AsyncIterator[RunningAlertmanager]:
    """A real Alertmanager routing every alert to a real receiver, grouped by alarm identity."""
    binary = alertmanager_binary()
    async with Receiver() as receiver:
        config = {
            "route": {
                "receiver": "coldwatch-test",
                "group_by": ["alertname", "device", "metric", "rule", "severity"],
                "group_wait": "1s",
                "group_interval": "1s",
                "repeat_interval": "1h",
            },
            "receivers": [
                {
                    "name": "coldwatch-test",
                    "webhook_configs": [{"url": f"{receiver.url}/am", "send_resolved": True}],
                }
            ],
        }
        config_path = tmp_path / "alertmanager.yml"
        config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        port = free_port()
        log = tmp_path / "alertmanager.log"
        with log.open("ab") as log_file:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config_path}",
                    f"--storage.path={tmp_path / 'am-data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--cluster.listen-address=",
                    "--log.level=warn",
                ],
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            async with httpx.AsyncClient(timeout=2) as client:

                async def ready() -> bool:
                    if process.poll() is not None:
                        raise AssertionError(
                            f"alertmanager exited:\n{log.read_text(errors='replace')[-2000:]}"
                        )
                    try:
                        return (await client.get(f"{url}/-/ready")).status_code == 200
                    except httpx.TransportError:
                        return False

                await poll(ready, "alertmanager to be ready")
            yield RunningAlertmanager(url, receiver, process, log)
        finally:
            await asyncio.to_thread(stop_process, process)


async def am_alerts(url: str) -> list[dict[str, Any]]:
    """The alerts Alertmanager holds as active now (GET /api/v2/alerts)."""
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(f"{url}/api/v2/alerts")
        response.raise_for_status()
        alerts: list[dict[str, Any]] = response.json()
        return alerts


def notified(receiver: Receiver, status: str, severity: str) -> list[dict[str, Any]]:
    """Alerts Alertmanager's webhook delivered to the receiver with ``status`` and ``severity``."""
    return [
        alert
        for body in receiver.bodies("/am")
        for alert in body["alerts"]
        if alert["status"] == status and alert["labels"]["severity"] == severity
    ]


async def test_firing_then_resolved_through_alertmanager(
    alertmanager: RunningAlertmanager, tmp_path: Path
) -> None:
    """A raised alarm fires in Alertmanager with its labels and reaches the receiver; a clear resolves it."""
    config = NotifyConfig.model_validate(
        {"alertmanager": {"url": alertmanager.url, "resend_s": 60}, "retry_initial_s": 0.1, "retry_max_s": 1}
    )
    assert config.alertmanager is not None
    am_config = config.alertmanager
    path = tmp_path / "coldwatch.db"
    db = await open_outbox(path)
    notifier = Notifier(config, DEVICES)
    start = now_us()
    alarm = make_alarm(raised_ts_us=start - 5 * US, raised_received_us=start)
    firing: list[Alarm] = [alarm]
    await store(path, notifier.plan([raised(alarm)], firing, start))

    def resend(at_us: int) -> list[dict[str, Any]]:
        return alertmanager_resend(firing, DEVICES, at_us, am_config)

    receiver = alertmanager.receiver
    async with delivering(db, config, resend=resend) as deliverer:

        async def held() -> bool:
            return any(a["annotations"].get("alarm_id") == "7" for a in await am_alerts(alertmanager.url))

        await poll(held, "the alert in Alertmanager")
        (alert,) = await am_alerts(alertmanager.url)
        assert alert["labels"] == {
            "alertname": ALERTNAME,
            "device": "inc-01",
            "kind": "incubator",
            "site": "plant-1",
            "area": "culture-lab",
            "metric": "temp_c",
            "rule": "high",
            "severity": "alert",
        }
        assert alert["status"]["state"] == "active"
        assert alert["annotations"]["state"] == "active_unacknowledged"
        await receiver.wait_for(lambda: bool(notified(receiver, "firing", "alert")), timeout_s=15)
        assert deliverer.resends["ok"] == 1  # on start: Alertmanager may have lost its state

        cleared_at = now_us()
        cleared = replace(alarm, state=AlarmState.CLEARED_UNACK, cleared_ts_us=cleared_at)
        firing.clear()
        clear = Transition(cleared, "cleared", cleared_at, cleared_at, AlarmState.ACTIVE_UNACK)
        await store(path, notifier.plan([clear], [cleared], cleared_at))
        deliverer.kick()
        await receiver.wait_for(lambda: bool(notified(receiver, "resolved", "alert")), timeout_s=15)
        assert await am_alerts(alertmanager.url) == []
        assert deliverer.delivered["alertmanager"] == 2
    await db.close()
    (resolved,) = notified(receiver, "resolved", "alert")
    assert resolved["annotations"]["alarm_id"] == "7"
    assert resolved["labels"]["device"] == "inc-01"


async def test_severity_change_replaces_the_alert_in_alertmanager(
    alertmanager: RunningAlertmanager, tmp_path: Path
) -> None:
    """Alert to action: Alertmanager resolves the alert-severity alert and fires the action one."""
    config = NotifyConfig.model_validate({"alertmanager": {"url": alertmanager.url}, "retry_initial_s": 0.1})
    path = tmp_path / "coldwatch.db"
    db = await open_outbox(path)
    notifier = Notifier(config, DEVICES)
    start = now_us()
    alarm = make_alarm(raised_ts_us=start - 5 * US, raised_received_us=start)
    await store(path, notifier.plan([raised(alarm)], [alarm], start))
    receiver = alertmanager.receiver
    async with delivering(db, config) as deliverer:
        await receiver.wait_for(lambda: bool(notified(receiver, "firing", "alert")), timeout_s=15)
        changed_at = now_us()
        worse = replace(alarm, severity=Severity.ACTION, value=38.3, limit=38.0)
        change = Transition(worse, "severity_changed", changed_at, changed_at, AlarmState.ACTIVE_UNACK)
        await store(path, notifier.plan([change], [worse], changed_at))
        deliverer.kick()
        await receiver.wait_for(
            lambda: bool(notified(receiver, "resolved", "alert") and notified(receiver, "firing", "action")),
            timeout_s=15,
        )
    await db.close()
    (alert,) = await am_alerts(alertmanager.url)
    assert alert["labels"]["severity"] == "action"
    assert alert["annotations"]["value"] == "38.3"
