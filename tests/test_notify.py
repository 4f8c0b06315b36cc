"""Notifications: pure message, escalation and planning tests; delivery against a real HTTP receiver.

The shell tests run a real HTTP receiver (FastAPI served by uvicorn on a free port in the
test's event loop) and a real SQLite file; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Self

import aiosqlite
import orjson
import pytest
from fastapi import FastAPI, Request, Response
from pydantic import ValidationError

from coldwatch.broker import free_port
from coldwatch.catalogue import Kind
from coldwatch.config import DeviceConfig
from coldwatch.http import HttpServer
from coldwatch.notify import outbox
from coldwatch.notify.config import NotifyConfig
from coldwatch.notify.deliver import Deliverer, backoff_s
from coldwatch.notify.escalation import Due, EscalationAlarm, due, next_due_us
from coldwatch.notify.messages import (
    ALERTNAME,
    WEBHOOK_EVENTS,
    alertmanager_alert,
    alertmanager_alerts,
    alertmanager_resend,
    rfc3339,
    runbook_text,
    webhook_body,
)
from coldwatch.notify.model import ALERTMANAGER_TARGET, Channel, HistoryEntry, OutboxItem
from coldwatch.notify.planner import Episode, Notifier, episode_from_history, escalation_id
from coldwatch.rules.lifecycle import Alarm, AlarmState, Transition
from coldwatch.rules.model import AlarmKey, Severity
from coldwatch.storage import Batch, SqliteStorage

US = 1_000_000
T0 = 1_767_225_600 * US  # 2026-01-01T00:00:00Z
INC = DeviceConfig(id="inc-01", kind=Kind.INCUBATOR, site="plant-1", area="culture-lab")
LN2 = DeviceConfig(id="ln2-01", kind=Kind.CRYOSHIPPER, site="plant-2", area="ln2-store")
DEVICES = {d.id: d for d in (INC, LN2)}
KEY = AlarmKey("inc-01", "temp_c", "high")
CHAIN: dict[str, Any] = {
    "webhooks": {
        "oncall": {"url": "http://127.0.0.1:9/oncall"},
        "lead": {"url": "http://127.0.0.1:9/lead"},
        "qa": {"url": "http://127.0.0.1:9/qa"},
    },
    "escalation": [
        {
            "match": {"severity": "action"},
            "tiers": [{"after_s": 0, "notify": ["oncall", "qa"]}, {"after_s": 300, "notify": ["lead"]}],
            "repeat_s": 600,
        },
        {"tiers": [{"after_s": 0, "notify": ["oncall"]}, {"after_s": 900, "notify": ["lead"]}]},
    ],
}


def make_alarm(**changes: Any) -> Alarm:
    """An incubator high-temperature alarm raised (device time) 5 s before T0, received at T0."""
    base = Alarm(7, KEY, Severity.ALERT, AlarmState.ACTIVE_UNACK, T0 - 5 * US, T0, value=37.6, limit=37.5)
    return replace(base, **changes)


def chain(**changes: Any) -> NotifyConfig:
    """The test escalation chain, with changes."""
    return NotifyConfig.model_validate({**CHAIN, **changes})


def sent_of(items: Iterable[OutboxItem]) -> list[tuple[str, str]]:
    """(target, event) of each webhook item; ("alertmanager", "") for Alertmanager items."""
    return [(i.target, orjson.loads(i.body)["event"] if i.channel is Channel.WEBHOOK else "") for i in items]


# --- configuration ---------------------------------------------------------------------


def test_tiers_must_name_configured_webhooks() -> None:
    """A tier naming a webhook that is not configured is refused, with where it is."""
    bad = {**CHAIN, "escalation": [{"tiers": [{"after_s": 0, "notify": ["oncall", "pager"]}]}]}
    with pytest.raises(ValidationError, match=r"escalation\.0\.tiers\.0\.notify: unknown webhook 'pager'"):
        NotifyConfig.model_validate(bad)


def test_tiers_must_be_in_time_order_and_keys_known() -> None:
    """Tiers out of time order and unknown keys are refused."""
    late_first = [{"tiers": [{"after_s": 600, "notify": ["oncall"]}, {"after_s": 60, "notify": ["lead"]}]}]
    with pytest.raises(ValidationError, match="time order"):
        NotifyConfig.model_validate({**CHAIN, "escalation": late_first})
    with pytest.raises(ValidationError, match="Extra inputs"):
        NotifyConfig.model_validate({**CHAIN, "webhook": {}})
    with pytest.raises(ValidationError, match="http"):
        NotifyConfig.model_validate({"alertmanager": {"url": "ftp://am:9093"}})


def test_first_matching_policy_applies() -> None:
    """Policies are matched in order on severity and site."""
    config = chain()
    assert config.policy_for("action", "plant-1") is config.escalation[0]
    assert config.policy_for("alert", "plant-1") is config.escalation[1]
    site_only = chain(
        escalation=[{"match": {"site": "plant-2"}, "tiers": [{"after_s": 0, "notify": ["qa"]}]}]
    )
    assert site_only.policy_for("action", "plant-1") is None


# --- messages --------------------------------------------------------------------------


def test_rfc3339_is_utc_with_milliseconds() -> None:
    """Epoch microseconds print as RFC 3339 UTC."""
    assert rfc3339(T0 + 250_000) == "2026-01-01T00:00:00.250Z"


def test_alertmanager_alert_carries_identity_labels_and_annotations() -> None:
    """A firing alert: the documented labels, string annotations, startsAt, no endsAt."""
    alert = alertmanager_alert(make_alarm(), INC, runbook_base_url="https://wiki.plant/runbooks/")
    assert alert == {
        "labels": {
            "alertname": ALERTNAME,
            "device": "inc-01",
            "kind": "incubator",
            "site": "plant-1",
            "area": "culture-lab",
            "metric": "temp_c",
            "rule": "high",
            "severity": "alert",
        },
        "annotations": {
            "summary": "inc-01 temp_c high: alert excursion at plant-1/culture-lab (value 37.6, limit 37.5)",
            "value": "37.6",
            "limit": "37.5",
            "runbook": runbook_text("high"),
            "runbook_url": "https://wiki.plant/runbooks/high",
            "alarm_id": "7",
            "state": "active_unacknowledged",
            "late": "false",
        },
        "startsAt": "2025-12-31T23:59:55.000Z",
    }
    assert runbook_text("my-custom-rule") != runbook_text("high")


def test_alertmanager_resolves_on_clear_and_old_severity_on_change() -> None:
    """A clear resolves at the clearing time; a severity change resolves the old label set too."""
    cleared = make_alarm(state=AlarmState.CLEARED_UNACK, cleared_ts_us=T0 + 60 * US)
    (resolved,) = alertmanager_alerts(cleared, INC, now_us=T0 + 61 * US)
    assert resolved["endsAt"] == rfc3339(T0 + 60 * US)
    raised = make_alarm(severity=Severity.ACTION)
    old, new = alertmanager_alerts(raised, INC, now_us=T0 + 30 * US, previous_severity=Severity.ALERT)
    assert (old["labels"]["severity"], old["endsAt"]) == ("alert", rfc3339(T0 + 30 * US))
    assert new["labels"]["severity"] == "action"
    assert "endsAt" not in new


def test_alertmanager_times_never_follow_a_fast_device_clock() -> None:
    """A device clock ahead of ours moves neither the start nor the resolve into the future."""
    ahead = make_alarm(raised_ts_us=T0 + 120 * US, state=AlarmState.CLOSED, cleared_ts_us=T0 + 200 * US)
    (alert,) = alertmanager_alerts(ahead, INC, now_us=T0 + 10 * US)
    assert alert["startsAt"] == rfc3339(T0)
    assert alert["endsAt"] == rfc3339(T0 + 10 * US)


def test_resend_lists_firing_alarms_valid_for_four_intervals() -> None:
    """The re-send holds every active alarm (not cleared ones), ending 4 x resend_s from now."""
    config = NotifyConfig.model_validate({"alertmanager": {"url": "http://am:9093", "resend_s": 30}})
    assert config.alertmanager is not None
    firing = make_alarm()
    cleared = make_alarm(id=8, state=AlarmState.CLEARED_UNACK, cleared_ts_us=T0)
    acked = make_alarm(id=9, key=AlarmKey("ln2-01", "temp_c", "high"), state=AlarmState.ACTIVE_ACK)
    alerts = alertmanager_resend([acked, cleared, firing], DEVICES, T0, config.alertmanager)
    assert [a["annotations"]["alarm_id"] for a in alerts] == ["7", "9"]
    assert {a["endsAt"] for a in alerts} == {rfc3339(T0 + 120 * US)}


def test_webhook_body_has_the_documented_fields() -> None:
    """The webhook body has exactly the fields the module docstring documents."""
    body = webhook_body("escalated", make_alarm(), INC, notification_id="esc/7/0/1/0/lead", tier=1, repeat=0)
    assert set(body) == {"event", "alarm", "tier", "repeat", "notification_id"}  # + sent_at when sent
    assert set(body["alarm"]) == {
        "id", "device", "kind", "site", "area", "metric", "rule", "severity", "state",
        "raised_at", "cleared_at", "value", "limit", "late", "detail",
    }  # fmt: skip
    assert body["alarm"]["raised_at"] == "2025-12-31T23:59:55.000Z"
    assert body["alarm"]["cleared_at"] is None
    assert sorted(WEBHOOK_EVENTS) == [
        "cleared",
        "escalated",
        "raised",
        "repeat",
        "revoked",
        "severity_changed",
    ]
    with pytest.raises(ValueError, match="not a webhook event"):
        webhook_body("acknowledged", make_alarm(), INC, notification_id="x")


# --- escalation ------------------------------------------------------------------------


def esc(**changes: Any) -> EscalationAlarm:
    """An unacknowledged action alarm at plant-1 whose episode began at T0."""
    base = EscalationAlarm(7, Severity.ACTION, "plant-1", T0, acknowledged=False)
    return replace(base, **changes)


def test_tiers_fall_due_at_their_exact_times() -> None:
    """Tier i is due at since + after_s, not a microsecond earlier, and once."""
    policies = chain().escalation
    assert due(policies, esc(), set(), T0) == [Due(0, 0, T0, ("oncall", "qa"))]
    sent = {(0, 0)}
    assert next_due_us(policies, esc(), sent) == T0 + 300 * US
    assert due(policies, esc(), sent, T0 + 300 * US - 1) == []
    assert due(policies, esc(), sent, T0 + 300 * US) == [Due(1, 0, T0 + 300 * US, ("lead",))]
    # The alert policy: tier 1 after 15 minutes, no repeats.
    alert = esc(severity=Severity.ALERT)
    assert next_due_us(policies, alert, sent) == T0 + 900 * US
    assert due(policies, alert, {(0, 0), (1, 0)}, T0 + 10**6 * US) == []


def test_acknowledgement_clearing_and_shelving_stop_escalation() -> None:
    """Nothing is due once acknowledged, cleared or while shelved."""
    policies = chain().escalation
    later = T0 + 3600 * US
    for stopped in (esc(acknowledged=True), esc(active=False), esc(shelved=True)):
        assert due(policies, stopped, set(), later) == []
        assert next_due_us(policies, stopped, set()) is None
    assert due(policies, esc(site="plant-9", severity=Severity.ALERT), set(), later) != []


def test_highest_tier_repeats_until_acknowledged() -> None:
    """The highest tier reached repeats every repeat_s; missed repeats collapse into one."""
    policies = chain().escalation
    sent = {(0, 0), (1, 0)}
    tier1 = T0 + 300 * US
    assert next_due_us(policies, esc(), sent) == tier1 + 600 * US
    assert due(policies, esc(), sent, tier1 + 600 * US - 1) == []
    assert due(policies, esc(), sent, tier1 + 600 * US) == [Due(1, 1, tier1 + 600 * US, ("lead",))]
    sent.add((1, 1))
    assert next_due_us(policies, esc(), sent) == tier1 + 1200 * US
    # Down for an hour: one repeat now, not six.
    assert due(policies, esc(), sent, tier1 + 3601 * US) == [Due(1, 6, tier1 + 3600 * US, ("lead",))]
    assert due(policies, esc(acknowledged=True), sent, tier1 + 3601 * US) == []


def test_repeats_only_follow_a_tier_that_was_sent() -> None:
    """After a long outage every unsent tier is due at once, without a repeat on top."""
    policies = chain().escalation
    steps = due(policies, esc(), set(), T0 + 5000 * US)
    assert [(d.tier, d.repeat) for d in steps] == [(0, 0), (1, 0)]


# --- planning --------------------------------------------------------------------------


def raised(alarm: Alarm) -> Transition:
    """The transition that raised ``alarm``."""
    return Transition(alarm, "raised", alarm.raised_ts_us, alarm.raised_received_us, None)


def test_raise_enqueues_alertmanager_and_the_first_tier() -> None:
    """A raise: one Alertmanager update and tier 0 of the chain, with stable ids."""
    notifier = Notifier(chain(alertmanager={"url": "http://am:9093"}), DEVICES)
    alarm = make_alarm()
    items = notifier.plan([raised(alarm)], [alarm], T0)
    assert sent_of(items) == [(ALERTMANAGER_TARGET, ""), ("oncall", "raised")]
    am, hook = items
    assert am.notification_id == f"am/7/raised/{T0 - 5 * US}/{T0}/alert/active_unacknowledged"
    assert orjson.loads(am.body)[0]["labels"]["severity"] == "alert"
    assert hook.notification_id == escalation_id(7, T0, 0, 0, "oncall") == f"esc/7/{T0}/0/0/oncall"
    body = orjson.loads(hook.body)
    assert (body["event"], body["tier"], body["repeat"], body["notification_id"]) == (
        "raised", 0, 0, hook.notification_id,
    )  # fmt: skip
    # Planning again (the next tick) adds nothing.
    assert notifier.plan([], [alarm], T0 + US) == []


def test_escalation_over_ticks_until_acknowledged() -> None:
    """Ticks bring the next tier and repeats; an acknowledgement stops them."""
    notifier = Notifier(chain(), DEVICES)
    alarm = make_alarm(severity=Severity.ACTION)
    assert sent_of(notifier.plan([raised(alarm)], [alarm], T0)) == [("oncall", "raised"), ("qa", "raised")]
    assert notifier.plan([], [alarm], T0 + 299 * US) == []
    assert sent_of(notifier.plan([], [alarm], T0 + 300 * US)) == [("lead", "escalated")]
    assert sent_of(notifier.plan([], [alarm], T0 + 900 * US)) == [("lead", "repeat")]
    acked = replace(alarm, state=AlarmState.ACTIVE_ACK, acknowledged_by="olga")
    ack = Transition(
        acked, "acknowledged", T0 + 901 * US, T0 + 901 * US, AlarmState.ACTIVE_UNACK, "olga", "on it"
    )
    assert notifier.plan([ack], [acked], T0 + 901 * US) == []
    assert notifier.plan([], [acked], T0 + 9000 * US) == []


def test_severity_increase_starts_a_new_chain_and_resolves_the_old_alert() -> None:
    """Alert to action: the action chain starts now; Alertmanager resolves the alert-severity alert."""
    notifier = Notifier(chain(alertmanager={"url": "http://am:9093"}), DEVICES)
    alarm = make_alarm()
    assert sent_of(notifier.plan([raised(alarm)], [alarm], T0))[1:] == [("oncall", "raised")]
    acked = replace(alarm, state=AlarmState.ACTIVE_ACK, acknowledged_by="olga")
    ack = Transition(acked, "acknowledged", T0 + 10 * US, T0 + 10 * US, AlarmState.ACTIVE_UNACK)
    notifier.plan([ack], [acked], T0 + 10 * US)
    worse = replace(alarm, severity=Severity.ACTION, value=38.2, limit=38.0)
    change = Transition(worse, "severity_changed", T0 + 60 * US, T0 + 61 * US, AlarmState.ACTIVE_ACK)
    items = notifier.plan([change], [worse], T0 + 61 * US)
    # oncall hears it once (as the new chain's first tier), qa is in the action chain only.
    assert sent_of(items) == [
        (ALERTMANAGER_TARGET, ""),
        ("oncall", "severity_changed"),
        ("qa", "severity_changed"),
    ]
    assert items[1].notification_id == escalation_id(7, T0 + 61 * US, 0, 0, "oncall")
    old, new = orjson.loads(items[0].body)
    assert (old["labels"]["severity"], "endsAt" in old) == ("alert", True)
    assert (new["labels"]["severity"], "endsAt" in new) == ("action", False)
    # The new chain's tier 1 counts from the change, not from the raise.
    assert notifier.plan([], [worse], T0 + 361 * US - 1) == []
    assert sent_of(notifier.plan([], [worse], T0 + 361 * US)) == [("lead", "escalated")]


def test_changes_reach_everyone_already_notified_unless_shelved() -> None:
    """A clear goes to every webhook told about the alarm; nothing goes out while shelved."""
    notifier = Notifier(chain(), DEVICES)
    alarm = make_alarm()
    notifier.plan([raised(alarm)], [alarm], T0)
    notifier.plan([], [alarm], T0 + 900 * US)  # lead paged
    cleared = replace(alarm, state=AlarmState.CLEARED_UNACK, cleared_ts_us=T0 + 1000 * US)
    clear = Transition(cleared, "cleared", T0 + 1000 * US, T0 + 1001 * US, AlarmState.ACTIVE_UNACK)
    items = notifier.plan([clear], [cleared], T0 + 1001 * US)
    assert sent_of(items) == [("lead", "cleared"), ("oncall", "cleared")]
    assert orjson.loads(items[0].body)["tier"] is None
    assert notifier.plan([], [cleared], T0 + 5000 * US) == []  # cleared: no more paging

    shelved_notifier = Notifier(chain(), DEVICES)
    shelved_notifier.plan([raised(alarm)], [alarm], T0)
    shelved = replace(alarm, shelved_until_us=T0 + 3600 * US, shelved_by="olga")
    assert shelved_notifier.plan([], [shelved], T0 + 900 * US) == []
    gone = replace(shelved, state=AlarmState.CLEARED_UNACK, cleared_ts_us=T0 + 950 * US)
    clear = Transition(gone, "cleared", T0 + 950 * US, T0 + 950 * US, AlarmState.ACTIVE_UNACK)
    assert shelved_notifier.plan([clear], [gone], T0 + 950 * US) == []


def test_episode_is_rebuilt_from_stored_history() -> None:
    """The episode starts at the raise or at the last severity increase, by received time."""
    history = [
        HistoryEntry("raised", T0, Severity.ALERT),
        HistoryEntry("acknowledged", T0 + 5, Severity.ALERT),
        HistoryEntry("severity_changed", T0 + 10, Severity.ACTION),
        HistoryEntry("severity_changed", T0 + 20, Severity.ALERT),
        HistoryEntry("revoked", T0 + 25, Severity.ALERT),
    ]
    assert episode_from_history(history) == Episode(T0 + 10, Severity.ACTION, "severity_changed")
    assert episode_from_history(history[:2]) == Episode(T0, Severity.ALERT, "raised")
    again = [*history, HistoryEntry("severity_changed", T0 + 30, Severity.ACTION)]
    assert episode_from_history(again) == Episode(T0 + 30, Severity.ACTION, "severity_changed")


def test_backoff_doubles_with_jitter_up_to_the_maximum() -> None:
    """Retry n waits between half and all of min(max, initial * 2^(n-1))."""
    import random  # noqa: PLC0415 - only this test needs it

    rng = random.Random(1)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (7, 60.0), (10_000, 60.0)]:
        delays = [backoff_s(attempt, 1.0, 60.0, rng) for _ in range(200)]
        assert ceiling / 2 <= min(delays) <= max(delays) <= ceiling


# --- the shell: a real receiver, a real database ------------------------------------------


@dataclass(frozen=True, slots=True)
class Received:
    """One POST the receiver accepted."""

    path: str
    headers: dict[str, str]
    body: Any


class Receiver:
    """A real HTTP receiver (FastAPI on uvicorn, in this event loop) recording every POST.

    ``fail_first`` requests are answered 503; with ``gate`` set, requests wait for it;
    ``answer(path, body)``, if set, gives the status and headers of each answer: a
    non-2xx one is recorded in ``refused`` instead of ``received``.
    """

    def __init__(
        self,
        port: int = 0,
        *,
        fail_first: int = 0,
        answer: Callable[[str, Any], tuple[int, dict[str, str]]] | None = None,
    ) -> None:
        self.port = port
        self.fail_first = fail_first
        self.answer = answer
        self.received: list[Received] = []
        self.refused: list[Received] = []
        self.requests = 0
        self.gate: asyncio.Event | None = None
        self.arrived = asyncio.Event()
        self.changed = asyncio.Condition()
        self._server: HttpServer | None = None
        self._task: asyncio.Task[None] | None = None

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/{path:path}")
        async def receive(path: str, request: Request) -> Response:
            self.requests += 1
            self.arrived.set()
            if self.gate is not None:
                await self.gate.wait()
            if self.fail_first > 0:
                self.fail_first -= 1
                return Response(b"busy", status_code=503)
            body = orjson.loads(await request.body())
            status, headers = self.answer(f"/{path}", body) if self.answer else (200, {})
            ok = 200 <= status < 300
            (self.received if ok else self.refused).append(Received(f"/{path}", dict(request.headers), body))
            async with self.changed:
                self.changed.notify_all()
            return Response(b"" if ok else b"refused", status_code=status, headers=headers)

        return app

    @property
    def url(self) -> str:
        """Its base URL."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listen (on the port given, or a free one) and serve."""
        self._server = HttpServer(self._app(), "127.0.0.1", self.port)
        self.port = self._server.port
        self._task = asyncio.create_task(self._server.serve(), name="test-receiver")

    async def stop(self) -> None:
        """Stop serving; the port is free again."""
        assert self._server is not None
        assert self._task is not None
        self._server.stop()
        await asyncio.wait_for(self._task, 10)

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
        """Wait until ``predicate`` holds after some POST."""
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(predicate), timeout_s)

    def bodies(self, path: str) -> list[Any]:
        """Bodies received on ``path``."""
        return [r.body for r in self.received if r.path == path]

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def wait_delivery(deliverer: Deliverer, predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait until ``predicate`` holds after some attempt of ``deliverer``."""
    async with deliverer.changed:
        await asyncio.wait_for(deliverer.changed.wait_for(predicate), timeout_s)


async def open_outbox(path: Path) -> aiosqlite.Connection:
    """The deliverer's own connection, on a database made by the real migrations (outbox, audit)."""
    storage = SqliteStorage(path)
    await storage.open()
    await storage.close()
    return await outbox.connect(path)


async def store(path: Path, items: Iterable[OutboxItem]) -> int:
    """Enqueue ``items`` in a batch transaction of another connection (as the storage writer does)."""
    async with aiosqlite.connect(path, isolation_level=None) as writer:
        await writer.execute("PRAGMA busy_timeout=5000")
        await writer.execute("BEGIN IMMEDIATE")
        stored = await outbox.enqueue(writer, items)
        await writer.execute("COMMIT")
    return stored


def query(path: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Rows read through a separate plain sqlite3 connection."""
    with closing(sqlite3.connect(path)) as db:
        return list(db.execute(sql, params).fetchall())


@contextlib.asynccontextmanager
async def delivering(
    db: aiosqlite.Connection | outbox.OutboxStore, config: NotifyConfig, **kwargs: Any
) -> AsyncIterator[Deliverer]:
    """A deliverer running in this event loop until the block ends, then drained."""
    deliverer = Deliverer(db, config, **kwargs)
    task = asyncio.create_task(deliverer.run(), name="deliverer-under-test")
    try:
        yield deliverer
    finally:
        await deliverer.drain(10)
        await asyncio.wait_for(task, 10)


def now_us() -> int:
    """Wall-clock microseconds."""
    return time.time_ns() // 1000


def webhook_items(config: NotifyConfig, count: int, *, target: str = "oncall") -> list[OutboxItem]:
    """``count`` raise notifications for different alarms, all to ``target``."""
    notifier = Notifier(config, DEVICES)
    items: list[OutboxItem] = []
    at = now_us()
    for i in range(count):
        alarm = make_alarm(id=100 + i, raised_received_us=at, raised_ts_us=at)
        items += [item for item in notifier.plan([raised(alarm)], [alarm], at) if item.target == target]
    return items


def fast_retry(receiver_url: str, **extra: Any) -> NotifyConfig:
    """A chain to ``receiver_url`` with quick retries."""
    return NotifyConfig.model_validate(
        {
            "webhooks": {
                "oncall": {
                    "url": f"{receiver_url}/hooks/oncall",
                    "headers": {"Authorization": "Bearer s3cr3t"},
                }
            },
            "escalation": [{"tiers": [{"after_s": 0, "notify": ["oncall"]}]}],
            "retry_initial_s": 0.05,
            "retry_max_s": 0.4,
            **extra,
        }
    )


async def test_delivers_webhooks_and_alertmanager_updates(tmp_path: Path) -> None:
    """Rows are posted with their idempotency key and sent_at; every attempt is recorded."""
    path = tmp_path / "coldwatch.db"
    db = await open_outbox(path)
    async with Receiver() as receiver:
        config = fast_retry(receiver.url, alertmanager={"url": receiver.url})
        alarm = make_alarm(raised_received_us=now_us())
        items = Notifier(config, DEVICES).plan([raised(alarm)], [alarm], now_us())
        assert await store(path, items) == 2
        assert await store(path, items) == 0  # the same notifications again: stored once
        async with delivering(db, config) as deliverer:
            await wait_delivery(deliverer, lambda: sum(deliverer.delivered.values()) == 2)
        assert dict(deliverer.delivered) == {"alertmanager": 1, "webhook": 1}
    await db.close()
    (alerts,) = receiver.bodies("/api/v2/alerts")
    assert alerts[0]["labels"]["device"] == "inc-01"
    (hook,) = [r for r in receiver.received if r.path == "/hooks/oncall"]
    assert hook.headers["idempotency-key"] == hook.body["notification_id"] == items[1].notification_id
    assert hook.headers["authorization"] == "Bearer s3cr3t"
    assert hook.body["event"] == "raised"
    assert hook.body["sent_at"].endswith("Z")
    rows = query(
        path,
        "SELECT attempts, delivered_us IS NOT NULL, next_attempt_us, last_error FROM notification_outbox",
    )
    assert rows == [(1, 1, None, None), (1, 1, None, None)]
    assert query(path, "SELECT ok, status, error FROM notification_attempts") == [
        (1, 200, None),
        (1, 200, None),
    ]


async def test_receiver_down_then_back_is_retried_with_backoff_and_delivered_once(tmp_path: Path) -> None:
    """Refused connections back off exponentially per row, and each id arrives exactly once."""
    path = tmp_path / "coldwatch.db"
    db = await open_outbox(path)
    port = free_port()
    receiver = Receiver(port)
    config = fast_retry(receiver.url)
    items = webhook_items(config, 3)
    await store(path, items)
    async with delivering(db, config) as deliverer:
        await wait_delivery(
            deliverer, lambda: query(path, "SELECT attempts FROM notification_outbox WHERE id = 1") >= [(4,)]
        )
        async with receiver:
            await wait_delivery(deliverer, lambda: deliverer.delivered["webhook"] == 3)
            ids = [r.body["notification_id"] for r in receiver.received]
    await db.close()
    # Three alarms: each exactly once (no order between different alarms).
    assert sorted(ids) == sorted(i.notification_id for i in items)
    assert query(path, "SELECT count(*) FROM notification_outbox WHERE dead_lettered_us IS NOT NULL") == [
        (0,)
    ]
    attempts = query(
        path, "SELECT at_us, ok, status, error FROM notification_attempts WHERE outbox_id = 1 ORDER BY id"
    )
    failures = [a for a in attempts if not a[1]]
    assert len(failures) >= 4
    assert all(a[2] is None and "ConnectError" in a[3] for a in failures)
    assert attempts[-1][1:] == (1, 200, None)
    for n, (earlier, later) in enumerate(itertools.pairwise(attempts), start=1):
        ceiling_us = min(0.4, 0.05 * 2 ** (n - 1)) * US
        assert later[0] - earlier[0] >= ceiling_us / 2
    assert query(path, "SELECT count(*) FROM notification_outbox WHERE delivered_us IS NULL") == [(0,)]


async def test_http_errors_are_recorded_and_retried(tmp_path: Path) -> None:
    """A 503 is a failed attempt with its status; the retry delivers."""
    path = tmp_path / "coldwatch.db"
    db = await open_outbox(path)
    async with Receiver(fail_first=2) as receiver:
        config = fast_retry(receiver.url)
        await store(path, webhook_items(config, 1))
        async with delivering(db, config) as deliverer:
            await wait_delivery(deliverer, lambda: deliverer.delivered["webhook"] == 1)
    await db.close()
    assert query(path, "SELECT ok, status, error FROM notification_attempts ORDER BY id") == [
        (0, 503, "HTTP 503: busy"),
        (0, 503, "HTTP 503: busy"),
        (1, 200, None),
    ]
    assert len(receiver.received) == 1


async def test_restarted_deliverer_delivers_what_the_previous_one_left(tmp_path: Path) -> None:
    """A new deliverer on the same database carries on: persisted retry times and attempt counts."""
    path = tmp_path / "coldwatch.db"
    port = free_port()
    receiver = Receiver(port)
    config = fast_retry(receiver.url)
    items = webhook_items(config, 2)
    first_db = await open_outbox(path)
    await store(path, items)
    async with delivering(first_db, config) as first:
        await wait_delivery(first, lambda: first.failed["webhook"] >= 3)
    await first_db.close()
    before = query(
        path, "SELECT attempts, next_attempt_us, delivered_us FROM notification_outbox ORDER BY id"
    )
    assert sum(attempts for attempts, _, _ in before) >= 3
    assert all(
        attempts >= 1 and next_us is not None and delivered is None for attempts, next_us, delivered in before
    )
    second_db = await open_outbox(path)
    async with receiver, delivering(second_db, config) as second:
        await wait_delivery(second, lambda: second.delivered["webhook"] == 2)
    await second_db.close()
    assert sorted(r.body["notification_id"] for r in receiver.received) == sorted(
        i.notification_id for i in items
    )
    after = query(path, "SELECT attempts FROM notification_outbox ORDER BY id")
    assert after == [(attempts + 1,) for attempts, _, _ in before]


async def test_drain_finishes_in_flight_requests_and_starts_no_new_one(tmp_path: Path) -> None:
    """drain() waits for the request in flight; the rest stays queued, unattempted."""
    path = tmp_path / "coldwatch.db"
    db = await open_outbox(path)
    async with Receiver() as receiver:
        receiver.gate = asyncio.Event()
        config = fast_retry(receiver.url)
        await store(path, webhook_items(config, 3))
        deliverer = Deliverer(db, config)
        task = asyncio.create_task(deliverer.run())
        await asyncio.wait_for(receiver.arrived.wait(), 10)
        draining = asyncio.create_task(deliverer.drain(10))
        receiver.gate.set()
        assert await asyncio.wait_for(draining, 10)
        await asyncio.wait_for(task, 10)
    await db.close()
    assert receiver.requests == 1
    assert query(path, "SELECT attempts, delivered_us IS NOT NULL FROM notification_outbox ORDER BY id") == [
        (1, 1),
        (0, 0),
        (0, 0),
    ]


async def test_kick_wakes_an_idle_deliverer(tmp_path: Path) -> None:
    """With nothing scheduled the deliverer sleeps; a kick after enqueueing delivers at once."""
    path = tmp_path / "coldwatch.db"
    db = await open_outbox(path)
    async with Receiver() as receiver:
        config = fast_retry(receiver.url)
        async with delivering(db, config) as deliverer:
            await store(path, webhook_items(config, 1))
            deliverer.kick()
            await wait_delivery(deliverer, lambda: deliverer.delivered["webhook"] == 1, timeout_s=2)
            assert deliverer.pending in {0, 1}
    await db.close()


async def test_unknown_receiver_is_given_up_without_blocking(tmp_path: Path) -> None:
    """A row for a webhook no longer configured is recorded as given up; its lane goes on."""
    path = tmp_path / "coldwatch.db"
    db = await open_outbox(path)
    async with Receiver() as receiver:
        config = fast_retry(receiver.url)
        orphan = replace(webhook_items(config, 1)[0], notification_id="esc/1/1/0/0/pager", target="pager")
        await store(path, [orphan])
        async with delivering(db, config) as deliverer:
            await wait_delivery(deliverer, lambda: deliverer.delivered["webhook"] == 1)
    await db.close()
    assert query(
        path,
        "SELECT next_attempt_us, delivered_us, last_error FROM notification_outbox WHERE target = 'pager'",
    ) == [(None, None, "no webhook receiver 'pager' in the configuration: given up")]
    assert deliverer.dead_lettered["webhook"] == 1
    # Dead-lettered: the other configured webhook was told.
    (notice,) = receiver.bodies("/hooks/oncall")
    assert (notice["event"], notice["undelivered"]["receiver"]) == ("undeliverable", "pager")


async def test_planner_restored_from_storage_sends_nothing_twice(tmp_path: Path) -> None:
    """After a restart the planner carries on the stored episode: no duplicates, next tier on time."""
    path = tmp_path / "coldwatch.db"
    storage = SqliteStorage(path, synchronous="NORMAL")
    await storage.open()
    db = await open_outbox(path)
    config = chain()
    alarm = make_alarm()
    worse = replace(alarm, severity=Severity.ACTION)
    transitions = [
        raised(alarm),
        Transition(worse, "severity_changed", T0 + 50 * US, T0 + 60 * US, AlarmState.ACTIVE_UNACK),
    ]
    await storage.write_batch(Batch(transitions=transitions))
    before = Notifier(config, DEVICES)
    items = before.plan(transitions[:1], [alarm], T0) + before.plan(transitions[1:], [worse], T0 + 60 * US)
    await store(path, items)
    assert await outbox.escalations_sent(db, 7) == {(0, 0)}  # one tier-0 in each episode
    assert await outbox.escalations_sent(db, 7, T0 + 60 * US) == {(0, 0)}

    open_alarms, _ = await storage.open_alarms()
    after = Notifier(config, DEVICES)
    after.restore(await outbox.load_facts(db), open_alarms)
    assert after.plan([], open_alarms, T0 + 359 * US) == []
    assert sent_of(after.plan([], open_alarms, T0 + 360 * US)) == [("lead", "escalated")]
    # News of a clear reaches everyone told before the restart.
    cleared = replace(open_alarms[0], state=AlarmState.CLEARED_UNACK, cleared_ts_us=T0 + 400 * US)
    clear = Transition(cleared, "cleared", T0 + 400 * US, T0 + 400 * US, AlarmState.ACTIVE_UNACK)
    assert sent_of(after.plan([clear], [cleared], T0 + 400 * US)) == [
        ("lead", "cleared"),
        ("oncall", "cleared"),
        ("qa", "cleared"),
    ]
    await db.close()
    await storage.close()


def test_alarm_raised_and_cleared_in_one_batch_still_reaches_the_first_tier() -> None:
    """A backfill can raise and clear an alarm in one batch: tier 0 hears both, nobody more."""
    notifier = Notifier(chain(), DEVICES)
    alarm = make_alarm(late=True)
    cleared = replace(alarm, state=AlarmState.CLEARED_UNACK, cleared_ts_us=T0 - US)
    clear = Transition(cleared, "cleared", T0 - US, T0, AlarmState.ACTIVE_UNACK)
    items = notifier.plan([raised(alarm), clear], [cleared], T0)
    assert sent_of(items) == [("oncall", "raised"), ("oncall", "cleared")]
    assert orjson.loads(items[0].body)["alarm"]["late"] is True
    assert notifier.plan([], [cleared], T0 + 3600 * US) == []
