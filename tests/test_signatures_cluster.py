"""Signed acknowledgements and reviews on a cluster member (PostgreSQL, partitioned collectors)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import yaml

from coldwatch.broker import RunningBroker
from coldwatch.cluster import ClusterDaemon
from coldwatch.config import load_config
from coldwatch.pgserver import RunningPostgres
from tests.conftest import db_query, eventually, new_pg_database
from tests.identity_helpers import FAST_IDENTITY, OPERATOR_PW, QA_PW, opened, people
from tests.test_cluster import LEASE_S, PARTITIONS, owners
from tests.test_notify_e2e import HOT, incubator, incubator_rules, publish


async def test_a_cluster_member_takes_signed_actions_and_reviews(
    broker: RunningBroker, prefix: str, tmp_path: Path, pg_server: RunningPostgres
) -> None:
    """The ack goes through the partition's collector, signed; the review is written by the member."""
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
        await eventually(
            lambda: set(owners(url).values()) == {"solo"}, timeout_s=20, what="all partitions held"
        )
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
        alarm_id = int(db_query(url, "SELECT id FROM alarms")[0][0])
        base = f"http://127.0.0.1:{member.http_port}/api/v1/alarms/{alarm_id}"
        async with httpx.AsyncClient(timeout=30) as client:
            ack = await client.post(
                f"{base}/ack",
                json={
                    "user": "olga",
                    "password": OPERATOR_PW,
                    "meaning": "acknowledged, investigating",
                    "reason": "on it",
                },
            )
            assert ack.status_code == 200, ack.text
            assert ack.json()["alarm"]["signatures"][0]["full_name"] == "Olga Operator"
            review = await client.post(
                f"{base}/review",
                json={
                    "user": "quinn",
                    "password": QA_PW,
                    "meaning": "approved",
                    "reason": "assessed",
                    "impact": "under_investigation",
                },
            )
            assert review.status_code == 200, review.text
            assert review.json()["alarm"]["complete"] is True
    finally:
        stop.set()
        await asyncio.wait_for(running, 60)
    rows = db_query(url, "SELECT object_type, action, signer FROM signatures ORDER BY id")
    assert rows == [("alarm", "acknowledge", "olga"), ("alarm_review", "review", "quinn")]
