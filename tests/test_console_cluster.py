"""The console on a cluster member (PostgreSQL): any member serves it; its actions reach the partition."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import yaml
from playwright.async_api import expect

from coldwatch.broker import RunningBroker
from coldwatch.cluster import ClusterDaemon
from coldwatch.config import load_config
from coldwatch.pgserver import RunningPostgres
from tests.conftest import db_query, eventually, new_pg_database
from tests.identity_helpers import FAST_IDENTITY, OPERATOR_PW, opened, people
from tests.test_cluster import LEASE_S, PARTITIONS, owners
from tests.test_console_browser import chromium, sign_in
from tests.test_notify_e2e import HOT, incubator, incubator_rules, publish


async def test_a_cluster_member_serves_the_console_and_takes_its_signatures(
    broker: RunningBroker, prefix: str, tmp_path: Path, pg_server: RunningPostgres
) -> None:
    """On PostgreSQL, a member's console lists the alarm; its signed acknowledgement reaches the partition."""
    url = new_pg_database(pg_server)
    data: dict[str, Any] = {
        "mqtt": {"url": broker.url, "client_id": f"{prefix}-collector", "topic_prefix": prefix},
        "storage": {"url": url, "batch_max_delay_s": 0.02},
        "http": {"listen": "127.0.0.1:0"},
        "cluster": {"enabled": True, "name": "solo", "partitions": PARTITIONS, "lease_s": LEASE_S},
        "rules": incubator_rules("inc-a"),
        "devices": [incubator("inc-a")],
        "identity": FAST_IDENTITY,
    }
    path = tmp_path / "solo.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    config = load_config(path, environ={})
    member = ClusterDaemon(config)
    stop = asyncio.Event()
    running = asyncio.create_task(member.run(stop))
    try:
        await eventually(lambda: set(owners(url).values()) == {"solo"}, timeout_s=20, what="partitions held")
        await eventually(lambda: bool(member.workers), timeout_s=10, what="the device's collector")

        async def subscribed() -> bool:
            for worker in list(member.workers.values()):
                check = worker.daemon.readiness
                if check is None or not (await check())["broker_connected"]:
                    return False
            return True

        await eventually(subscribed, timeout_s=20, what="the partition's session subscribed")
        async with opened(url, config) as (_, identity, _):
            await people(identity)
        await publish(broker, config, "inc-a", 0, HOT)
        await eventually(lambda: bool(db_query(url, "SELECT id FROM alarms")), timeout_s=20, what="an alarm")
        base = f"http://127.0.0.1:{member.http_port}"
        async with chromium() as browser:
            page = await (await browser.new_context()).new_page()
            await sign_in(page, base, "olga", OPERATOR_PW)
            await expect(page).to_have_url(re.compile(r"/console/alarms$"))
            await page.locator("li.alarm a").click()
            form = page.locator("#sign-acknowledge")
            await form.get_by_label("Reason").fill("on it")
            await form.get_by_label("Your password").fill(OPERATOR_PW)
            await form.get_by_role("button", name="Sign: acknowledge").click()
            await expect(page.locator("#done")).to_contain_text("Acknowledgement signed")
            await expect(page.locator("#signatures")).to_contain_text("signed by Olga Operator (olga)")
    finally:
        stop.set()
        await asyncio.wait_for(running, 60)
    assert db_query(url, "SELECT state FROM alarms")[0][0] == "active_acknowledged"
