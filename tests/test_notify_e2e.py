"""Notifications end to end: the real daemon, fed through the real broker, notifying real receivers.

Every test drives ``coldwatch`` (in this event loop, or as a subprocess it can restart)
with readings published to the session's Mosquitto, and checks what reached a real
HTTP receiver (FastAPI on uvicorn) and, for Alertmanager, a real ``prometheus-alertmanager``
process. Nothing is mocked; every wait has a timeout.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import sqlite3
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from prometheus_client.parser import text_string_to_metric_families

from coldwatch.broker import RunningBroker, free_port
from coldwatch.config import Config
from coldwatch.notify.messages import ALERTNAME
from tests.conftest import (
    DaemonProcess,
    eventually,
    http_get,
    publish_all,
    reading,
    running_daemon,
    telemetry_topic,
    write_config,
)
from tests.identity_helpers import OPERATOR_PW, opened, people
from tests.test_notify import Received, Receiver
from tests.test_notify_alertmanager import (
    RunningAlertmanager,
    am_alerts,
    notified,
    poll,
)
from tests.test_notify_alertmanager import (
    alertmanager as alertmanager,  # noqa: PLC0414 - a fixture, re-exported so pytest finds it here
)

US = 1_000_000
NO_COMM_LOSS: dict[str, Any] = {"type": "comm_loss", "timeout_s": 1, "enabled": False}
# Raises an action alarm at the first reading above 38.0 and clears it at the first at or below.
HIGH_ACTION: dict[str, Any] = {
    "type": "threshold",
    "metric": "temp_c",
    "direction": "high",
    "levels": {"action": {"limit": 38.0}},
}
OPERATOR_TOKEN = "op-" + "9" * 40
API_USERS: dict[str, Any] = {
    "users": {
        "olga": {"role": "operator", "token_sha256": hashlib.sha256(OPERATOR_TOKEN.encode()).hexdigest()}
    }
}
HOT, IN_BAND = 39.5, 37.0


def incubator(device_id: str) -> dict[str, Any]:
    """A registry entry for an incubator at site s1, area lab."""
    return {"id": device_id, "kind": "incubator", "site": "s1", "area": "lab"}


def incubator_rules(*device_ids: str) -> dict[str, Any]:
    """The ``rules`` section: every listed incubator raises at once above 38.0, no comm_loss noise."""
    return {"devices": {d: [HIGH_ACTION, NO_COMM_LOSS] for d in device_ids}}


async def publish(broker: RunningBroker, config: Config, device_id: str, seq: int, temp_c: float) -> None:
    """Publish one incubator reading, stamped now, and return once the broker has it."""
    await publish_all(
        broker, [(telemetry_topic(config, device_id), reading(seq, {"temp_c": temp_c}))], clients=1
    )


def rows(db: Path | str, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Rows read through a separate read-only connection (the daemon may be writing)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        try:
            return list(conn.execute(sql, params).fetchall())
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # the daemon has not migrated the file yet
                return []
            raise


def episode_since_us(notification_id: str) -> int:
    """The episode start (collector time, us) in an id ``esc/<alarm>/<since>/<tier>/<repeat>/<hook>``."""
    kind, _, since, *_ = notification_id.split("/")
    assert kind == "esc", notification_id
    return int(since)


def rfc3339_s(text: str) -> float:
    """Epoch seconds of an RFC 3339 time."""
    return datetime.fromisoformat(text).timestamp()


# --- 1. Alertmanager -------------------------------------------------------------------


async def test_daemon_alarm_fires_and_resolves_in_alertmanager(
    broker: RunningBroker, prefix: str, tmp_path: Path, alertmanager: RunningAlertmanager
) -> None:
    """An excursion fires in Alertmanager, labelled, and reaches its receiver; in-band readings resolve it."""
    resend_s = 1.0
    config = write_config(
        tmp_path / "c.yaml",
        broker=broker,
        prefix=prefix,
        devices=[incubator("inc-1")],
        rules=incubator_rules("inc-1"),
        notify={
            "alertmanager": {"url": alertmanager.url, "resend_s": resend_s},
            "retry_initial_s": 0.1,
            "retry_max_s": 1,
        },
    )
    receiver = alertmanager.receiver
    async with running_daemon(config) as running:
        await publish(broker, config, "inc-1", 0, HOT)

        async def firing() -> bool:
            return any(a["status"]["state"] == "active" for a in await am_alerts(alertmanager.url))

        await poll(firing, "the alarm firing in Alertmanager")
        (alert,) = await am_alerts(alertmanager.url)
        assert alert["labels"] == {
            "alertname": ALERTNAME,
            "device": "inc-1",
            "kind": "incubator",
            "site": "s1",
            "area": "lab",
            "metric": "temp_c",
            "rule": "high",
            "severity": "action",
        }
        assert alert["annotations"]["state"] == "active_unacknowledged"
        assert (alert["annotations"]["value"], alert["annotations"]["limit"]) == ("39.5", "38")
        await receiver.wait_for(lambda: bool(notified(receiver, "firing", "action")), timeout_s=15)
        (hook,) = notified(receiver, "firing", "action")
        assert hook["labels"] == alert["labels"]

        # The periodic re-send replaces Alertmanager's 5-minute resolve_timeout with 4 x resend_s.
        async def resent() -> bool:
            (held,) = await am_alerts(alertmanager.url)
            return rfc3339_s(held["endsAt"]) <= time.time() + 4 * resend_s + 1

        await poll(resent, "a re-send to shorten the alert's validity")

        await publish(broker, config, "inc-1", 1, IN_BAND)
        await receiver.wait_for(lambda: bool(notified(receiver, "resolved", "action")), timeout_s=15)
        assert await am_alerts(alertmanager.url) == []
        # It stays resolved: the next re-sends (every resend_s) must not make it fire again.
        fired = len(notified(receiver, "firing", "action"))
        with pytest.raises(TimeoutError):
            await receiver.wait_for(
                lambda: len(notified(receiver, "firing", "action")) > fired, timeout_s=3 * resend_s
            )
        assert await am_alerts(alertmanager.url) == []
        await eventually(
            lambda: (
                running.sample("coldwatch_notifications_delivered_total", {"channel": "alertmanager"}) == 2
            ),
            timeout_s=10,
            what="the raise and the clear recorded as delivered",
        )
    (resolved,) = notified(receiver, "resolved", "action")
    assert resolved["labels"] == alert["labels"]
    assert resolved["annotations"]["alarm_id"] == alert["annotations"]["alarm_id"]
    statuses = [a["status"] for body in receiver.bodies("/am") for a in body["alerts"]]
    assert statuses.index("firing") < statuses.index("resolved")
    db = config.storage.path
    assert rows(db, "SELECT count(*), count(delivered_us) FROM notification_outbox") == [(2, 2)]


# --- 2. A webhook receiver down for 30 s, the daemon restarted meanwhile -----------------

DOWNTIME_S = 30.0  # the acceptance criterion: a receiver down for 30 s loses nothing
RETRY_MAX_S = 2.0


def pending_metric(text: str) -> float | None:
    """``coldwatch_notifications_pending`` from a /metrics page."""
    for family in text_string_to_metric_families(text):
        if family.name == "coldwatch_notifications_pending":
            return float(family.samples[0].value)
    return None


@pytest.mark.slow
async def test_webhook_down_30_s_across_a_restart_gets_every_notification_once(
    broker: RunningBroker, prefix: str, tmp_path: Path
) -> None:
    """Notifications queued while a webhook is down 30 s, across a daemon restart, arrive exactly once."""
    http_port, hook_port = free_port(), free_port()
    receiver = Receiver(hook_port)  # not started: the receiver is down
    config_path = tmp_path / "c.yaml"
    config = write_config(
        config_path,
        broker=broker,
        prefix=prefix,
        devices=[incubator("inc-1"), incubator("inc-2")],
        http_listen=f"127.0.0.1:{http_port}",
        rules=incubator_rules("inc-1", "inc-2"),
        notify={
            "webhooks": {"pager": {"url": f"{receiver.url}/pager", "timeout_s": 2}},
            "escalation": [{"tiers": [{"after_s": 0, "notify": ["pager"]}]}],
            "retry_initial_s": 0.2,
            "retry_max_s": RETRY_MAX_S,
        },
    )
    db = config.storage.path
    base = f"http://127.0.0.1:{http_port}"

    async def ready() -> bool:
        return (await http_get(f"{base}/readyz", timeout_s=2))[0] == 200

    def outbox_count() -> int:
        return int(rows(db, "SELECT count(*) FROM notification_outbox")[0][0]) if Path(db).exists() else 0

    def failures() -> int:
        return int(rows(db, "SELECT count(*) FROM notification_attempts WHERE ok = 0")[0][0])

    with DaemonProcess(config_path, tmp_path / "daemon.log") as daemon:
        daemon.start()
        await eventually(ready, timeout_s=30, what="the daemon to be ready")
        await publish(broker, config, "inc-1", 0, HOT)  # raise A
        await eventually(lambda: outbox_count() == 1, timeout_s=10, what="the raise of A enqueued")
        ((down_since_us,),) = rows(db, "SELECT created_us FROM notification_outbox")
        await publish(broker, config, "inc-1", 1, IN_BAND)  # clear A
        await publish(broker, config, "inc-2", 0, HOT)  # raise B
        await eventually(lambda: outbox_count() == 3, timeout_s=10, what="A's clear and B's raise enqueued")
        await eventually(lambda: failures() >= 3, timeout_s=10, what="failed attempts before the restart")
        # Restart a third of the way into the outage, once backoff has reached retry_max_s.
        await asyncio.sleep(max(0.0, down_since_us / US + DOWNTIME_S / 3 - time.time()))
        stopping_us = time.time_ns() // 1000
        assert daemon.terminate() == 0, daemon.log()[-3000:]
        restarted_us = time.time_ns() // 1000
        daemon.start()
        await eventually(ready, timeout_s=30, what="the restarted daemon to be ready")
        # Clear B: news for the pager, which the restarted planner knows of from storage only.
        await publish(broker, config, "inc-2", 1, IN_BAND)
        await publish(broker, config, "inc-1", 2, HOT)  # raise C, superseding the unacknowledged A
        await eventually(lambda: outbox_count() == 5, timeout_s=10, what="B's clear and C's raise enqueued")

        async def all_pending() -> bool:
            status, page = await http_get(f"{base}/metrics", timeout_s=2)
            return status == 200 and pending_metric(page.decode()) == 5

        await eventually(all_pending, timeout_s=10, what="five notifications pending in the metrics")
        # The outage itself: nothing to wait for but time.
        await asyncio.sleep(max(0.0, down_since_us / US + DOWNTIME_S - time.time()))
        assert outbox_count() == 5
        assert rows(db, "SELECT count(*) FROM notification_outbox WHERE delivered_us IS NOT NULL") == [(0,)]

        async with receiver:
            back_us = time.time_ns() // 1000
            await receiver.wait_for(lambda: len(receiver.received) >= 5, timeout_s=15)
            await eventually(
                lambda: (
                    rows(db, "SELECT count(*) FROM notification_outbox WHERE delivered_us IS NULL") == [(0,)]
                ),
                timeout_s=10,
                what="every outbox row recorded as delivered",
            )

            async def none_pending() -> bool:
                status, page = await http_get(f"{base}/metrics", timeout_s=2)
                return status == 200 and pending_metric(page.decode()) == 0

            await eventually(none_pending, timeout_s=10, what="nothing pending in the metrics")
            assert daemon.terminate() == 0, daemon.log()[-3000:]

    outbox = rows(
        db,
        "SELECT id, notification_id, target, attempts, delivered_us, next_attempt_us "
        "FROM notification_outbox ORDER BY id",
    )
    ids = [r[1] for r in outbox]
    assert len(ids) == len(set(ids)) == 5
    assert all(r[2] == "pager" and r[4] is not None and r[5] is None for r in outbox)
    # Each exactly once, in outbox order per alarm, keyed by the Idempotency-Key header.
    keys = [r.headers["idempotency-key"] for r in receiver.received]
    assert keys == [r.body["notification_id"] for r in receiver.received]
    assert sorted(keys) == sorted(ids)
    alarm_of = {r.body["notification_id"]: r.body["alarm"]["id"] for r in receiver.received}
    for alarm_id in set(alarm_of.values()):
        assert [k for k in keys if alarm_of[k] == alarm_id] == [i for i in ids if alarm_of[i] == alarm_id]
    # An outage is retried, never given up: nothing was dead-lettered.
    assert rows(db, "SELECT count(*) FROM notification_outbox WHERE dead_lettered_us IS NOT NULL") == [(0,)]
    assert all(r.path == "/pager" for r in receiver.received)
    events = Counter((r.body["alarm"]["device"], r.body["event"]) for r in receiver.received)
    assert events == Counter(
        {("inc-1", "raised"): 2, ("inc-1", "cleared"): 1, ("inc-2", "raised"): 1, ("inc-2", "cleared"): 1}
    )
    raised = [r.body for r in receiver.received if r.body["event"] == "raised"]
    assert all((b["tier"], b["repeat"]) == (0, 0) for b in raised)
    assert len({b["alarm"]["id"] for b in raised}) == 3  # A, B and C are three alarms
    assert all(rfc3339_s(r.body["sent_at"]) >= back_us / US - 0.001 for r in receiver.received)

    attempts = rows(db, "SELECT outbox_id, at_us, ok, status, error FROM notification_attempts ORDER BY id")
    by_row: dict[int, list[tuple[Any, ...]]] = {}
    for attempt in attempts:
        by_row.setdefault(int(attempt[0]), []).append(attempt)
    for outbox_id, _, _, count, delivered_us, _ in outbox:
        tried = by_row[outbox_id]
        assert len(tried) == count, outbox_id
        assert [a[2] for a in tried].count(1) == 1, f"row {outbox_id} delivered more than once"
        assert tried[-1][2:4] == (1, 200)
        assert tried[-1][1] == delivered_us
        assert delivered_us >= back_us
    head = by_row[outbox[0][0]]
    failed = [a for a in head if not a[2]]
    # The lane's head was retried all along, by both daemon processes, with backoff capped at 2 s.
    assert len(failed) >= 10
    assert all(a[3] is None and "ConnectError" in a[4] for a in failed)
    assert any(a[1] < stopping_us for a in failed)
    assert any(a[1] > restarted_us for a in failed)
    assert failed[0][1] - down_since_us < 2 * US
    slack_us = US // 2
    for earlier, later in itertools.pairwise(head):
        if not earlier[1] < stopping_us < later[1]:  # the restart itself is not a retry delay
            assert later[1] - earlier[1] <= RETRY_MAX_S * US + slack_us
    assert back_us - down_since_us >= DOWNTIME_S * US
    assert head[-1][1] - back_us <= RETRY_MAX_S * US + slack_us  # delivered at the next retry


# --- 3. Escalation and acknowledgement ---------------------------------------------------

TIER2_AFTER_S = 3.0
TIER2_BOUND_S = 2.5  # rule timers tick every second; the rest is delivery on localhost


class StampingReceiver(Receiver):
    """A :class:`Receiver` that also notes when each notification id first arrived (wall clock)."""

    def __init__(self, port: int = 0, **options: Any) -> None:
        super().__init__(port, **options)
        self.arrived_at: dict[str, float] = {}

    def _app(self) -> FastAPI:
        app = super()._app()

        @app.middleware("http")
        async def stamp(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
            key = request.headers.get("idempotency-key")
            if key is not None:
                self.arrived_at.setdefault(key, time.time())
            return await call_next(request)

        return app

    def on(self, path: str, alarm_id: int | None = None) -> list[Received]:
        """What arrived on ``path`` (about ``alarm_id``, if given)."""
        return [
            r
            for r in self.received
            if r.path == path and (alarm_id is None or r.body["alarm"]["id"] == alarm_id)
        ]


async def test_unacknowledged_alarm_escalates_on_time_and_acknowledged_one_never(
    broker: RunningBroker, prefix: str, tmp_path: Path
) -> None:
    """Tier 2 hears of an unacknowledged alarm 3 s after its raise, never of one acknowledged before."""
    async with StampingReceiver() as receiver:
        config = write_config(
            tmp_path / "c.yaml",
            broker=broker,
            prefix=prefix,
            devices=[incubator("inc-1"), incubator("inc-2")],
            rules=incubator_rules("inc-1", "inc-2"),
            api=API_USERS,
            notify={
                "webhooks": {
                    "tier1": {"url": f"{receiver.url}/tier1"},
                    "tier2": {"url": f"{receiver.url}/tier2"},
                },
                "escalation": [
                    {
                        "tiers": [
                            {"after_s": 0, "notify": ["tier1"]},
                            {"after_s": TIER2_AFTER_S, "notify": ["tier2"]},
                        ]
                    }
                ],
                "retry_initial_s": 0.1,
                "retry_max_s": 0.5,
            },
        )
        async with running_daemon(config) as running:
            async with opened(str(config.storage.path), config) as (_, identity, _):
                await people(identity)  # olga signs the acknowledgement
            await publish(broker, config, "inc-1", 0, HOT)
            await publish(broker, config, "inc-2", 0, HOT)

            def first_tier(device: str) -> list[Received]:
                return [r for r in receiver.on("/tier1") if r.body["alarm"]["device"] == device]

            await receiver.wait_for(lambda: bool(first_tier("inc-1") and first_tier("inc-2")), timeout_s=10)
            (ignored,) = first_tier("inc-1")
            (acked,) = first_tier("inc-2")
            for first in (ignored, acked):
                assert (first.body["event"], first.body["tier"], first.body["repeat"]) == ("raised", 0, 0)
            ignored_since_us = episode_since_us(ignored.body["notification_id"])
            ignored_since = ignored_since_us / US
            acked_since = episode_since_us(acked.body["notification_id"]) / US
            acked_id = acked.body["alarm"]["id"]

            async with httpx.AsyncClient(base_url=running.base_url, timeout=10) as client:
                response = await client.post(
                    f"/api/v1/alarms/{acked_id}/ack",
                    json={
                        "user": "olga",
                        "password": OPERATOR_PW,
                        "meaning": "acknowledged, investigating",
                        "reason": "door gasket checked, product safe",
                    },
                )
            assert response.status_code == 200, response.text
            assert response.json()["alarm"]["state"] == "active_acknowledged"
            assert time.time() < acked_since + TIER2_AFTER_S, (
                "acknowledged too late for this test to mean anything"
            )

            ignored_id = ignored.body["alarm"]["id"]
            await receiver.wait_for(
                lambda: bool(receiver.on("/tier2", ignored_id)),
                timeout_s=ignored_since + TIER2_AFTER_S + TIER2_BOUND_S + 2 - time.time(),
            )
            (escalated,) = receiver.on("/tier2", ignored_id)
            nid = escalated.body["notification_id"]
            arrived = receiver.arrived_at[nid]
            assert ignored_since + TIER2_AFTER_S <= arrived <= ignored_since + TIER2_AFTER_S + TIER2_BOUND_S
            assert rfc3339_s(escalated.body["sent_at"]) >= ignored_since + TIER2_AFTER_S - 0.001
            assert escalated.headers["idempotency-key"] == nid
            assert nid == f"esc/{ignored_id}/{ignored_since_us}/1/0/tier2"
            assert (escalated.body["event"], escalated.body["tier"], escalated.body["repeat"]) == (
                "escalated",
                1,
                0,
            )
            assert escalated.body["alarm"]["state"] == "active_unacknowledged"

            # The acknowledged alarm: wait past its tier-2 time plus a margin; nothing may arrive.
            with pytest.raises(TimeoutError):
                await receiver.wait_for(
                    lambda: bool(receiver.on("/tier2", acked_id)),
                    timeout_s=max(0.0, acked_since + TIER2_AFTER_S + TIER2_BOUND_S - time.time()),
                )
            assert time.time() > acked_since + TIER2_AFTER_S + TIER2_BOUND_S
        # Stopped: the daemon's last ticks are in too.
        assert receiver.on("/tier2", acked_id) == []
        assert len(receiver.on("/tier2")) == 1
        assert len(receiver.on("/tier1", acked_id)) == len(receiver.on("/tier1", ignored_id)) == 1
    assert rows(
        config.storage.path,
        "SELECT count(*) FROM notification_outbox WHERE alarm_id = ? AND target = 'tier2'",
        acked_id,
    ) == [(0,)]


# --- 4. One receiver rejects one alarm's notifications forever ---------------------------

REPEAT_S = 3.0


async def test_receiver_rejecting_one_alarm_forever_silences_nothing_else(
    broker: RunningBroker, prefix: str, tmp_path: Path, alertmanager: RunningAlertmanager
) -> None:
    """A pager rejecting inc-03 forever gets inc-04's tiers and repeats on time; inc-03 is dead-lettered."""

    def reject_inc_03(path: str, body: Any) -> tuple[int, dict[str, str]]:
        if path == "/pager" and body["alarm"]["device"] == "inc-03":
            return 400, {}
        return 200, {}

    async with StampingReceiver(answer=reject_inc_03) as receiver:
        config = write_config(
            tmp_path / "c.yaml",
            broker=broker,
            prefix=prefix,
            devices=[incubator("inc-03"), incubator("inc-04")],
            rules=incubator_rules("inc-03", "inc-04"),
            notify={
                "alertmanager": {"url": alertmanager.url, "resend_s": 5},
                "webhooks": {
                    "pager": {"url": f"{receiver.url}/pager"},
                    "lead": {"url": f"{receiver.url}/lead"},
                },
                "escalation": [
                    {
                        "tiers": [
                            {"after_s": 0, "notify": ["pager"]},
                            {"after_s": TIER2_AFTER_S, "notify": ["pager", "lead"]},
                        ],
                        "repeat_s": REPEAT_S,
                    }
                ],
                # Retries of a rejected row 4-8 s apart: longer than the bound of any tier below,
                # so nothing of inc-04 can arrive on time by riding on an inc-03 retry.
                "retry_initial_s": 8,
                "retry_max_s": 8,
                "dead_letter_after_rejections": 3,
            },
        )
        async with running_daemon(config) as running:
            await publish(broker, config, "inc-03", 0, HOT)

            def refused_inc_03() -> bool:
                return any(r.body["alarm"]["device"] == "inc-03" for r in receiver.refused)

            await receiver.wait_for(refused_inc_03, timeout_s=10)
            await publish(broker, config, "inc-04", 0, HOT)

            def pager_inc_04(tier: int, repeat: int) -> list[Received]:
                return [
                    r
                    for r in receiver.on("/pager")
                    if r.body["alarm"]["device"] == "inc-04"
                    and (r.body["tier"], r.body["repeat"]) == (tier, repeat)
                ]

            await receiver.wait_for(lambda: bool(pager_inc_04(0, 0)), timeout_s=10)
            (first,) = pager_inc_04(0, 0)
            since = episode_since_us(first.body["notification_id"]) / US
            # The first tier, the next tier and the first repeat, each within the bound of its time.
            for tier, repeat, due_s in ((0, 0, 0.0), (1, 0, TIER2_AFTER_S), (1, 1, TIER2_AFTER_S + REPEAT_S)):
                await receiver.wait_for(
                    lambda t=tier, r=repeat: bool(pager_inc_04(t, r)),  # type: ignore[misc]
                    timeout_s=max(0.1, since + due_s + TIER2_BOUND_S + 2 - time.time()),
                )
                (got,) = pager_inc_04(tier, repeat)
                arrived = receiver.arrived_at[got.body["notification_id"]]
                assert since + due_s - 0.001 <= arrived <= since + due_s + TIER2_BOUND_S, (tier, repeat)
            # Meanwhile the pager kept rejecting inc-03, and goes on doing so.
            assert refused_inc_03()

            # The dead letter is visible: metric, outbox state, audit trail, the other channels.
            await eventually(
                lambda: (
                    running.sample("coldwatch_notifications_dead_lettered_total", {"channel": "webhook"}) >= 1
                ),
                timeout_s=40,
                what="an inc-03 notification dead-lettered",
            )
            await eventually(
                lambda: running.sample("coldwatch_notifications_dead_letters") >= 1,
                timeout_s=10,
                what="the dead-letter gauge",
            )

            def notices() -> list[Received]:
                return [r for r in receiver.on("/lead") if r.body["event"] == "undeliverable"]

            await receiver.wait_for(lambda: bool(notices()), timeout_s=10)

            async def undeliverable_in_alertmanager() -> bool:
                return any(
                    a["labels"]["alertname"] == "ColdwatchNotificationUndeliverable"
                    for a in await am_alerts(alertmanager.url)
                )

            await poll(undeliverable_in_alertmanager, "the dead letter reported in Alertmanager")
    db = config.storage.path
    dead = rows(
        db,
        "SELECT notification_id, rejections, next_attempt_us, delivered_us FROM notification_outbox "
        "WHERE dead_lettered_us IS NOT NULL ORDER BY id",
    )
    assert dead
    inc_03 = receiver.refused[0].body["alarm"]["id"]
    assert all(nid.endswith("/pager") and nid.split("/")[1] == str(inc_03) for nid, *_ in dead)
    assert all(
        (rejections, next_us, delivered) == (3, None, None) for _, rejections, next_us, delivered in dead
    )
    audited = rows(db, "SELECT object_id FROM audit_log WHERE action = 'notification.dead_lettered'")
    assert {a for (a,) in audited} == {nid for nid, *_ in dead}
    (notice, *_) = notices()
    assert notice.body["alarm"]["device"] == "inc-03"
    assert notice.body["undelivered"]["receiver"] == "pager"
    assert notice.body["undelivered"]["status"] == 400
    # Nothing about inc-04 was ever refused, failed or dead-lettered.
    assert all(r.body["alarm"]["device"] == "inc-03" for r in receiver.refused)
