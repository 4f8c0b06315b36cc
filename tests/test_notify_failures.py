"""Failed notifications: outage or permanent rejection, per-alarm independence, dead letters.

Pure tests of the verdicts, Retry-After and the dead-letter notices; shell tests deliver
through a real HTTP receiver (FastAPI on uvicorn on a free port) from a real outbox in
SQLite and in PostgreSQL. Nothing is mocked.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from coldwatch.notify import outbox
from coldwatch.notify.config import NotifyConfig
from coldwatch.notify.failures import (
    UNDELIVERABLE_ALERTNAME,
    DeadLetter,
    Verdict,
    classify,
    dead_letter_notices,
    notice_webhooks,
    retry_after_s,
)
from coldwatch.notify.model import Channel, OutboxItem
from coldwatch.notify.planner import Notifier
from coldwatch.rules.lifecycle import AlarmState, Transition
from coldwatch.rules.model import AlarmKey
from coldwatch.storage import Batch, SqliteStorage
from coldwatch.storage.postgres import MIGRATIONS_PG, PostgresStorage
from coldwatch.storage.sqlite import MIGRATIONS
from tests.conftest import Backend
from tests.test_notify import DEVICES, T0, Receiver, delivering, make_alarm, now_us, raised, wait_delivery

US = 1_000_000
REJECTED_ALARM = 103  # "inc-03's alarm": the receiver rejects every notification about it


# --- pure: verdicts, Retry-After, notices ---------------------------------------------------


def test_answers_are_told_apart_as_delivered_outage_or_permanent_rejection() -> None:
    """2xx delivers; 4xx but 408/429 rejects permanently; 5xx, 408, 429, 3xx and no answer are outages."""
    assert [classify(s) for s in (200, 201, 202, 204)] == [Verdict.DELIVERED] * 4
    assert [classify(s) for s in (400, 401, 403, 404, 410, 413, 422)] == [Verdict.REJECTED] * 7
    assert [classify(s) for s in (None, 408, 429, 500, 502, 503, 504, 301, 307)] == [Verdict.OUTAGE] * 9


def test_retry_after_takes_seconds_or_an_http_date() -> None:
    """Retry-After in seconds or as an HTTP date gives the wait; garbage gives none."""
    now = 1_767_225_600 * US  # 2026-01-01T00:00:00Z
    assert retry_after_s("120", now) == 120.0
    assert retry_after_s(" 0 ", now) == 0.0
    assert retry_after_s("Thu, 01 Jan 2026 00:00:30 GMT", now) == 30.0
    assert retry_after_s("Wed, 31 Dec 2025 23:00:00 GMT", now) == 0.0  # already past
    assert retry_after_s(None, now) is None
    assert retry_after_s("soon", now) is None
    assert retry_after_s("-5", now) is None


POLICY_CONFIG: dict[str, Any] = {
    "alertmanager": {"url": "http://127.0.0.1:9"},
    "webhooks": {n: {"url": f"http://127.0.0.1:9/{n}"} for n in ("oncall", "lead", "qa", "plant2")},
    "escalation": [
        {
            "match": {"site": "plant-1"},
            "tiers": [{"after_s": 0, "notify": ["oncall"]}, {"after_s": 300, "notify": ["lead", "oncall"]}],
        },
        {"match": {"site": "plant-2"}, "tiers": [{"after_s": 0, "notify": ["plant2"]}]},
    ],
}


def failed_webhook_item(config: NotifyConfig, alarm_id: int = REJECTED_ALARM) -> OutboxItem:
    """The first-tier webhook notification of a plant-1 incubator alarm."""
    alarm = make_alarm(id=alarm_id)
    (item,) = [
        i for i in Notifier(config, DEVICES).plan([raised(alarm)], [alarm], T0) if i.target == "oncall"
    ]
    return item


def test_dead_letter_notices_go_to_the_alarm_policy_other_webhooks_and_alertmanager() -> None:
    """A dead letter is told to the policy's other webhooks and Alertmanager, never to the rejecter."""
    config = NotifyConfig.model_validate(POLICY_CONFIG)
    item = failed_webhook_item(config)
    dead = DeadLetter(
        item.notification_id, Channel.WEBHOOK, "oncall", item.body, 103, 3, 400, "HTTP 400: no", 5
    )
    notices = dead_letter_notices(config, dead)
    assert [(n.channel, n.target) for n in notices] == [
        (Channel.WEBHOOK, "lead"),
        (Channel.ALERTMANAGER, "alertmanager"),
    ]
    hook = orjson.loads(notices[0].body)
    assert hook["event"] == "undeliverable"
    assert hook["notification_id"] == notices[0].notification_id == f"dl/lead/{item.notification_id}"
    assert (hook["alarm"]["id"], hook["alarm"]["device"], hook["alarm"]["site"]) == (103, "inc-01", "plant-1")
    assert hook["undelivered"] == {
        "notification_id": item.notification_id,
        "channel": "webhook",
        "receiver": "oncall",
        "event": "raised",
        "attempts": 3,
        "status": 400,
        "error": "HTTP 400: no",
        "dead_lettered_at": "1970-01-01T00:00:00.000Z",
    }
    (alert,) = orjson.loads(notices[1].body)
    assert alert["labels"]["alertname"] == UNDELIVERABLE_ALERTNAME
    assert (alert["labels"]["receiver"], alert["labels"]["device"]) == ("oncall", "inc-01")
    assert "endsAt" not in alert
    # A notice that is itself dead-lettered causes no further notice.
    again = replace(dead, notification_id=notices[0].notification_id, target="lead", body=notices[0].body)
    assert dead_letter_notices(config, again) == []


def test_notices_fall_back_to_every_other_webhook() -> None:
    """With no other webhook in the alarm's policy (or no policy), every other webhook is told."""
    config = NotifyConfig.model_validate(POLICY_CONFIG)
    assert notice_webhooks(config, "plant2", "action", "plant-2") == ["lead", "oncall", "qa"]
    assert notice_webhooks(config, None, None, None) == ["lead", "oncall", "plant2", "qa"]
    assert notice_webhooks(config, "oncall", "alert", "plant-1") == ["lead"]


# --- the shell: both backends, a real receiver --------------------------------------------


@contextlib.asynccontextmanager
async def outbox_of(
    backend: Backend,
) -> AsyncIterator[tuple[SqliteStorage | PostgresStorage, outbox.OutboxStore]]:
    """The backend's storage (for batches) and the deliverer's outbox on a connection of its own."""
    store: outbox.OutboxStore
    if backend.postgres:
        pg = PostgresStorage(backend.location)
        await pg.open()
        storage: SqliteStorage | PostgresStorage = pg
        store = pg.outbox()
    else:
        storage = SqliteStorage(Path(backend.location))
        await storage.open()
        store = outbox.SqliteOutbox(await outbox.connect(backend.location), owned=True)
    try:
        yield storage, store
    finally:
        await store.close()
        await storage.close()


def plan_raises(config: NotifyConfig, alarm_ids: list[int]) -> list[OutboxItem]:
    """Alertmanager and first-tier items of a raise of each alarm (each on a rule of its own)."""
    notifier = Notifier(config, DEVICES)
    items: list[OutboxItem] = []
    for alarm_id in alarm_ids:
        at = now_us()
        alarm = make_alarm(
            id=alarm_id,
            key=AlarmKey("inc-01", "temp_c", f"high-{alarm_id}"),
            raised_received_us=at,
            raised_ts_us=at,
        )
        items += notifier.plan([raised(alarm)], [alarm], at)
    return items


def plan_raise_and_clear(config: NotifyConfig, alarm_id: int) -> list[OutboxItem]:
    """The items of a raise and then a clear of ``alarm_id`` (the clear is news for the first tier)."""
    notifier = Notifier(config, DEVICES)
    at = now_us()
    alarm = make_alarm(
        id=alarm_id,
        key=AlarmKey("inc-01", "temp_c", f"high-{alarm_id}"),
        raised_received_us=at,
        raised_ts_us=at,
    )
    cleared = replace(alarm, state=AlarmState.CLEARED_UNACK, cleared_ts_us=at + 1000)
    clear = Transition(cleared, "cleared", at + 1000, at + 1000, AlarmState.ACTIVE_UNACK)
    return notifier.plan([raised(alarm)], [alarm], at) + notifier.plan([clear], [cleared], at + 1000)


def rejecting(path: str, body: Any) -> tuple[int, dict[str, str]]:
    """oncall answers 400 to anything about the rejected alarm; everything else is taken."""
    if path == "/oncall" and isinstance(body, dict) and body.get("alarm", {}).get("id") == REJECTED_ALARM:
        return 400, {}
    return 200, {}


def undeliverable_alerts(receiver: Receiver) -> list[dict[str, Any]]:
    """The dead-letter alerts posted to the receiver's Alertmanager endpoint."""
    return [
        a
        for body in receiver.bodies("/api/v2/alerts")
        for a in body
        if a["labels"]["alertname"] == UNDELIVERABLE_ALERTNAME
    ]


def config_for(receiver: Receiver, **extra: Any) -> NotifyConfig:
    """oncall at tier 0, lead at tier 1 (5 min), Alertmanager: all on ``receiver``; quick retries."""
    return NotifyConfig.model_validate(
        {
            "alertmanager": {"url": receiver.url},
            "webhooks": {
                "oncall": {"url": f"{receiver.url}/oncall"},
                "lead": {"url": f"{receiver.url}/lead"},
            },
            "escalation": [
                {"tiers": [{"after_s": 0, "notify": ["oncall"]}, {"after_s": 300, "notify": ["lead"]}]}
            ],
            "retry_initial_s": 0.05,
            "retry_max_s": 0.2,
            **extra,
        }
    )


async def test_rejected_alarm_is_dead_lettered_without_holding_back_other_alarms(backend: Backend) -> None:
    """One alarm's notifications rejected with 400: the others go out at once; it is dead-lettered visibly."""
    async with Receiver(answer=rejecting) as receiver, outbox_of(backend) as (storage, store):
        # Retries of the rejected alarm at least 1.5 s apart: the others must not wait for one.
        config = config_for(receiver, dead_letter_after_rejections=2, retry_initial_s=3, retry_max_s=5)
        # The rejected alarm first (its raise and its clear); three others once it was rejected.
        await storage.write_batch(Batch(notifications=plan_raise_and_clear(config, REJECTED_ALARM)))
        async with delivering(store, config) as deliverer:
            await receiver.wait_for(lambda: bool(receiver.refused))
            enqueued_us = now_us()
            await storage.write_batch(Batch(notifications=plan_raises(config, [104, 105, 106])))
            deliverer.kick()
            await wait_delivery(deliverer, lambda: deliverer.dead_lettered["webhook"] == 2, timeout_s=30)
            await receiver.wait_for(lambda: len(receiver.bodies("/lead")) == 2, timeout_s=10)
            await receiver.wait_for(lambda: len(undeliverable_alerts(receiver)) == 2, timeout_s=10)
            summary = await store.pending_summary()
    oncall = [b["alarm"]["id"] for b in receiver.bodies("/oncall")]
    assert sorted(oncall) == [104, 105, 106]
    refused = [(r.body["alarm"]["id"], r.body["event"]) for r in receiver.refused]
    # Two rejections of the raise, then (only then: per-alarm order) two of the clear.
    assert refused == [(REJECTED_ALARM, "raised")] * 2 + [(REJECTED_ALARM, "cleared")] * 2

    rows = backend.query(
        "SELECT notification_id, alarm_id, delivered_us, dead_lettered_us, next_attempt_us, rejections "
        "FROM notification_outbox WHERE target = 'oncall' ORDER BY id"
    )
    dead = [r for r in rows if r[3] is not None]
    assert [(r[1], r[2], r[4], r[5]) for r in dead] == [(REJECTED_ALARM, None, None, 2)] * 2
    delivered = [r for r in rows if r[2] is not None]
    assert sorted(r[1] for r in delivered) == [104, 105, 106]
    # Independence: every other alarm was delivered at once, not at the rejected one's next retry.
    assert max(r[2] for r in delivered) - enqueued_us < 1 * US
    assert max(r[2] for r in delivered) < min(r[3] for r in dead)

    # Visible: counted, stored, audited, and told through the other channels.
    assert summary.dead_lettered == 2
    assert deliverer.dead_letters == 2
    audit = backend.query(
        "SELECT object_id, reason FROM audit_log WHERE action = 'notification.dead_lettered' ORDER BY seq"
    )
    assert [a[0] for a in audit] == [r[0] for r in dead]
    assert all("HTTP 400" in a[1] and "lead" in a[1] and "alertmanager" in a[1] for a in audit)
    notices = receiver.bodies("/lead")
    assert [n["undelivered"]["notification_id"] for n in notices] == [r[0] for r in dead]
    assert all(n["event"] == "undeliverable" and n["alarm"]["id"] == REJECTED_ALARM for n in notices)
    undeliverable = undeliverable_alerts(receiver)
    assert sorted(a["annotations"]["notification_id"] for a in undeliverable) == sorted(r[0] for r in dead)
    # Alertmanager itself took everything: the rejected alarm's firing and resolve, the others' firing.
    assert len(receiver.bodies("/api/v2/alerts")) == 2 + 3 + 2


async def test_outage_is_retried_past_the_rejection_limit_and_never_dead_lettered(backend: Backend) -> None:
    """5xx answers, more than the rejection limit, are retried until delivered; nothing is dead-lettered."""
    answered: list[int] = []

    def overloaded(path: str, body: Any) -> tuple[int, dict[str, str]]:
        answered.append(0)
        return (503 if len(answered) <= 10 else 200), {}

    async with Receiver(answer=overloaded) as receiver, outbox_of(backend) as (storage, store):
        config = config_for(receiver, dead_letter_after_rejections=1)
        items = [i for i in plan_raises(config, [104, 105]) if i.channel is Channel.WEBHOOK]
        await storage.write_batch(Batch(notifications=items))
        async with delivering(store, config) as deliverer:
            await wait_delivery(deliverer, lambda: deliverer.delivered["webhook"] == 2, timeout_s=20)
    assert len(receiver.refused) == 10
    assert sorted(b["alarm"]["id"] for b in receiver.bodies("/oncall")) == [104, 105]
    assert deliverer.dead_lettered == {}
    assert backend.query(
        "SELECT count(*), count(delivered_us), count(dead_lettered_us), sum(rejections), sum(attempts) "
        "FROM notification_outbox"
    ) == [(2, 2, 0, 0, 12)]


def sqlite_query(path: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Rows through a plain sqlite3 connection of their own."""
    with closing(sqlite3.connect(path)) as db:
        return list(db.execute(sql, params).fetchall())


async def test_retry_after_is_honoured_and_capped(tmp_path: Path) -> None:
    """A 429's Retry-After delays the retry past the short backoff; a long one is cut to retry_after_max_s."""
    answers = iter([(429, {"Retry-After": "1"}), (503, {"Retry-After": "3600"})])

    def limited(path: str, body: Any) -> tuple[int, dict[str, str]]:
        return next(answers, (200, {}))

    backend = Backend("sqlite", str(tmp_path / "coldwatch.db"))
    async with Receiver(answer=limited) as receiver, outbox_of(backend) as (storage, store):
        config = config_for(receiver, retry_after_max_s=2)
        items = [i for i in plan_raises(config, [104]) if i.channel is Channel.WEBHOOK]
        await storage.write_batch(Batch(notifications=items))
        async with delivering(store, config) as deliverer:
            await wait_delivery(deliverer, lambda: deliverer.delivered["webhook"] == 1, timeout_s=20)
    assert len(receiver.received) == 1
    at = [
        a
        for (a,) in sqlite_query(
            tmp_path / "coldwatch.db", "SELECT at_us FROM notification_attempts ORDER BY id"
        )
    ]
    assert len(at) == 3
    assert at[1] - at[0] >= 1 * US  # Retry-After: 1 beats a backoff of at most 0.2 s
    assert 2 * US <= at[2] - at[1] < 5 * US  # Retry-After: 3600 cut to 2 s


async def test_new_notification_gets_through_while_other_alarms_keep_failing(tmp_path: Path) -> None:
    """Two alarms answered 500 forever make the receiver look down; a new alarm is still sent at once."""
    poisoned = {201, 202}

    def crashing(path: str, body: Any) -> tuple[int, dict[str, str]]:
        return (500 if body["alarm"]["id"] in poisoned else 200), {}

    backend = Backend("sqlite", str(tmp_path / "coldwatch.db"))
    async with Receiver(answer=crashing) as receiver, outbox_of(backend) as (storage, store):
        # Slow retries: without the probe for new rows, a new alarm would wait up to 30 s.
        config = config_for(receiver, retry_initial_s=20, retry_max_s=30)
        hooks = [i for i in plan_raises(config, [201, 202]) if i.channel is Channel.WEBHOOK]
        await storage.write_batch(Batch(notifications=hooks))
        async with delivering(store, config) as deliverer:
            await wait_delivery(deliverer, lambda: deliverer.failed["webhook"] == 2)
            fresh = [i for i in plan_raises(config, [203]) if i.channel is Channel.WEBHOOK]
            await storage.write_batch(Batch(notifications=fresh))
            enqueued = time.monotonic()
            deliverer.kick()
            await wait_delivery(deliverer, lambda: deliverer.delivered["webhook"] == 1, timeout_s=10)
            took_s = time.monotonic() - enqueued
    assert took_s < 2
    assert [b["alarm"]["id"] for b in receiver.bodies("/oncall")] == [203]
    assert deliverer.dead_lettered == {}


OLD_ROWS = [  # (notification_id, channel, target, alarm_id, next_attempt_us, attempts, delivered_us)
    ("am/5/raised", "alertmanager", "alertmanager", 5, None, 1, 20),  # delivered
    ("esc/5/1/0/0/pager", "webhook", "pager", 5, None, 1, None),  # given up: receiver removed
    ("esc/5/1/0/0/oncall", "webhook", "oncall", 5, 30, 2, None),  # retrying
]
ALARM_5 = (
    "INSERT INTO alarms(id, device_id, metric, rule, severity, state, raised_ts_us, raised_received_us, "
    "late, detail) "
    "VALUES (5, 'inc-01', 'temp_c', 'high', 'alert', 'active_unacknowledged', 1, 1, {false}, '')"
)


def old_sqlite_outbox(path: Path) -> None:
    """A SQLite database of the schema before dead letters, with an alarm and three outbox rows."""
    before = MIGRATIONS.index(outbox.OUTBOX_DEAD_LETTER_SCHEMA)
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path)) as db:
        for version, script in enumerate(MIGRATIONS[:before], start=1):
            db.executescript(f"BEGIN;\n{script}\nPRAGMA user_version={version};\nCOMMIT;")
        db.execute(ALARM_5.format(false=0))
        db.executemany(
            "INSERT INTO notification_outbox(notification_id, channel, target, body, alarm_id, created_us, "
            "next_attempt_us, attempts, delivered_us) VALUES (?, ?, ?, x'5b5d', ?, 10, ?, ?, ?)",
            OLD_ROWS,
        )
        db.execute("INSERT INTO notification_attempts(outbox_id, at_us, ok) VALUES (2, 15, 0)")
        db.commit()


async def old_postgres_outbox(url: str) -> None:
    """A PostgreSQL database of the schema before dead letters, with an alarm and three outbox rows."""
    before = MIGRATIONS_PG.index(outbox.OUTBOX_DEAD_LETTER_SCHEMA_PG)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "CREATE TABLE schema_migrations "
            "(version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        await conn.execute("CREATE TABLE storage_info (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        for version, script in enumerate(MIGRATIONS_PG[:before], start=1):
            await conn.execute(script)
            if version == 1:
                await PostgresStorage(url, timescale=False)._create_readings(conn)
            await conn.execute("INSERT INTO schema_migrations(version) VALUES ($1)", version)
        await conn.execute(ALARM_5.format(false="false"))
        await conn.executemany(
            "INSERT INTO notification_outbox(notification_id, channel, target, body, alarm_id, created_us, "
            "next_attempt_us, attempts, delivered_us) VALUES ($1, $2, $3, '\\x5b5d', $4, 10, $5, $6, $7)",
            OLD_ROWS,
        )
        await conn.execute("INSERT INTO notification_attempts(outbox_id, at_us, ok) VALUES (2, 15, false)")
    finally:
        await conn.close()


async def test_existing_outbox_upgrades_with_order_keys_and_dead_letters(backend: Backend) -> None:
    """An outbox from before dead letters upgrades: order keys filled in, given-up rows dead-lettered."""
    if backend.postgres:
        await old_postgres_outbox(backend.location)
    else:
        old_sqlite_outbox(Path(backend.location))
    async with outbox_of(backend) as (_, store):
        assert (await store.pending_summary()).dead_lettered == 1
        heads = await store.lane_heads()
    assert backend.query(
        "SELECT notification_id, order_key, dead_lettered_us, rejections FROM notification_outbox ORDER BY id"
    ) == [
        ("am/5/raised", "alert/inc-01/temp_c/high", None, 0),
        ("esc/5/1/0/0/pager", "alarm/5", 15, 0),
        ("esc/5/1/0/0/oncall", "alarm/5", None, 0),
    ]
    assert [(h.lane, h.next_attempt_us, h.fresh) for h in heads] == [((Channel.WEBHOOK, "oncall"), 30, False)]
