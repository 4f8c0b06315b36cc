"""Signed alarm actions and QA reviews through the daemon's HTTP API, on both backends.

Every test runs a real daemon (its real HTTP server) with a real broker and database.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from coldwatch.broker import RunningBroker
from coldwatch.config import Config
from tests.conftest import (
    COMM_LOSS_OPEN,
    Backend,
    eventually,
    publish_all,
    reading,
    running_daemon,
    telemetry_topic,
    write_config,
)
from tests.identity_helpers import ADMIN_PW, FAST_IDENTITY, OPERATOR_PW, QA_PW, opened, people

VIEWER_TOKEN = "view-" + "3" * 40
ACK = "acknowledged, investigating"


def two_silent_incubators(tmp_path: Path, broker: RunningBroker, prefix: str, backend: Backend) -> Config:
    """inc-1 and inc-2, each raising communication loss after 1 s of silence; Paris site time."""
    return write_config(
        tmp_path / "c.yaml",
        broker=broker,
        prefix=prefix,
        devices=[{"id": f"inc-{i}", "kind": "incubator", "site": "s", "area": "lab"} for i in (1, 2)],
        rules={"devices": {f"inc-{i}": [{"type": "comm_loss", "timeout_s": 1}] for i in (1, 2)}},
        api={"users": {"vera-viewer": {"role": "viewer"}}},
        storage={"path": backend.location},
        identity=FAST_IDENTITY,
        site={"timezone": "Europe/Paris"},
    )


async def two_alarms(broker: RunningBroker, config: Config, running: Any) -> None:
    """Publish one reading per incubator, then wait for both silences to raise alarms."""
    await publish_all(
        broker,
        [(telemetry_topic(config, f"inc-{i}"), reading(0, {"temp_c": 37.0})) for i in (1, 2)],
        clients=1,
    )
    for device in ("inc-1", "inc-2"):
        labels = {**COMM_LOSS_OPEN, "device": device}
        await eventually(
            lambda labels=labels: running.sample("coldwatch_alarms_open", labels) == 1, what=device
        )


def signed(user: str, password: str, meaning: str, reason: str, **extra: Any) -> dict[str, Any]:
    """A signed request's body."""
    return {"user": user, "password": password, "meaning": meaning, "reason": reason, **extra}


def viewer() -> dict[str, str]:
    """The read-only service token's header."""
    return {"Authorization": f"Bearer {VIEWER_TOKEN}"}


async def test_signed_actions_review_and_manifestations(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend, monkeypatch: Any
) -> None:
    """Ack and review are signed with every component; answers show name, UTC and site time, meaning."""
    monkeypatch.setenv("COLDWATCH_TOKEN_VERA_VIEWER", VIEWER_TOKEN)
    config = two_silent_incubators(tmp_path, broker, prefix, backend)
    async with running_daemon(config) as running:
        async with opened(backend.location, config) as (_, identity, _):
            await people(identity)
        await two_alarms(broker, config, running)
        async with httpx.AsyncClient(base_url=running.base_url, timeout=30) as client:
            waiting = (await client.get("/api/v1/alarms?awaiting=acknowledgement", headers=viewer())).json()
            alarm_id = min(a["id"] for a in waiting)
            assert len(waiting) == 2
            ack = f"/api/v1/alarms/{alarm_id}/ack"
            # A service token reads, and never signs, even with a person's components.
            refused = await client.post(ack, json=signed("olga", OPERATOR_PW, ACK, "x"), headers=viewer())
            assert refused.status_code == 403
            assert (await client.post(ack, json={"reason": "seen"})).status_code == 422
            wrong = await client.post(ack, json=signed("olga", "not-her-password", ACK, "seen"))
            assert wrong.status_code == 401
            odd = await client.post(ack, json=signed("olga", OPERATOR_PW, "looked at it", "seen"))
            assert odd.status_code == 422
            qa = await client.post(ack, json=signed("quinn", QA_PW, ACK, "seen"))
            assert qa.status_code == 403  # the qa role does not acknowledge
            done = await client.post(ack, json=signed("olga", OPERATOR_PW, ACK, "logger re-seated"))
            assert done.status_code == 200, done.text
            answer = done.json()
            assert answer["by"] == "olga"
            [signature] = answer["alarm"]["signatures"]
            assert signature["full_name"] == "Olga Operator"
            assert signature["meaning"] == ACK
            assert signature["signed_at_utc"].endswith("UTC")
            assert "(Europe/Paris)" in signature["signed_at_site"]
            assert "signed by Olga Operator (olga) on " in signature["manifestation"]
            assert answer["alarm"]["complete"] is False
            awaiting_review = (await client.get("/api/v1/alarms?awaiting=review", headers=viewer())).json()
            assert [a["id"] for a in awaiting_review] == [alarm_id]
            review = f"/api/v1/alarms/{alarm_id}/review"
            body = {
                "impact": "deviation_opened",
                "root_cause": "loose cable",
                "comment": "no product affected",
            }
            no_ref = await client.post(review, json=signed("quinn", QA_PW, "approved", "assessed", **body))
            assert no_ref.status_code == 422
            body["deviation_ref"] = "DEV-2026-041"
            by_operator = await client.post(review, json=signed("olga", OPERATOR_PW, "approved", "x", **body))
            assert by_operator.status_code == 403
            approved = await client.post(review, json=signed("quinn", QA_PW, "approved", "assessed", **body))
            assert approved.status_code == 200, approved.text
            shown = approved.json()["alarm"]
            assert shown["complete"] is True
            assert shown["review"]["deviation_ref"] == "DEV-2026-041"
            assert shown["review"]["signature"]["full_name"] == "Quinn Quality"
            assert shown["review"]["signature"]["meaning"] == "approved"
            again = await client.post(review, json=signed("quinn", QA_PW, "approved", "again", **body))
            assert again.status_code == 409
            detail = (await client.get(f"/api/v1/alarms/{alarm_id}", headers=viewer())).json()
            assert [s["action"] for s in detail["signatures"]] == ["acknowledge", "review"]
            assert (await client.get("/api/v1/alarms?awaiting=review", headers=viewer())).json() == []
            open_alarm = await client.post(
                f"/api/v1/alarms/{alarm_id + 1}/review", json=signed("quinn", QA_PW, "approved", "x", **body)
            )
            assert open_alarm.status_code == 409  # neither acknowledged nor closed
    failed = backend.query(
        "SELECT reason FROM audit_log WHERE action = 'signature.failed' AND actor = 'olga'"
    )
    assert len(failed) == 1
    assert "wrong password" in failed[0][0]


async def test_four_eyes_refuses_the_acknowledging_user(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend, monkeypatch: Any
) -> None:
    """Someone who acknowledged an alarm may not review it, even after being given the qa role."""
    monkeypatch.setenv("COLDWATCH_TOKEN_VERA_VIEWER", VIEWER_TOKEN)
    config = two_silent_incubators(tmp_path, broker, prefix, backend)
    async with running_daemon(config) as running:
        async with opened(backend.location, config) as (_, identity, _):
            await people(identity)
        await two_alarms(broker, config, running)
        async with httpx.AsyncClient(base_url=running.base_url, timeout=30) as client:
            alarm_id = min(a["id"] for a in (await client.get("/api/v1/alarms", headers=viewer())).json())
            done = await client.post(
                f"/api/v1/alarms/{alarm_id}/ack", json=signed("olga", OPERATOR_PW, ACK, "on it")
            )
            assert done.status_code == 200, done.text
            async with opened(backend.location, config) as (_, identity, _):
                admin = (await identity.sign_in("ada", ADMIN_PW, "t")).principal
                await identity.set_role(admin, "olga", "qa", "moved to QA")
            body = signed("olga", OPERATOR_PW, "approved", "my own ack", impact="no_impact")
            refused = await client.post(f"/api/v1/alarms/{alarm_id}/review", json=body)
            assert refused.status_code == 403
            assert "four eyes" in refused.json()["detail"]
    assert backend.query("SELECT count(*) FROM alarm_reviews")[0][0] == 0


async def test_shelve_and_unshelve_are_signed(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend, monkeypatch: Any
) -> None:
    """Shelve (with its end) and unshelve take the same components and store a signature each."""
    monkeypatch.setenv("COLDWATCH_TOKEN_VERA_VIEWER", VIEWER_TOKEN)
    config = two_silent_incubators(tmp_path, broker, prefix, backend)
    async with running_daemon(config) as running:
        async with opened(backend.location, config) as (_, identity, _):
            await people(identity)
        await two_alarms(broker, config, running)
        until = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() + 3600))
        async with httpx.AsyncClient(base_url=running.base_url, timeout=30) as client:
            shelve = await client.post(
                "/api/v1/alarms/1/shelve",
                json=signed(
                    "olga",
                    OPERATOR_PW,
                    "shelved, responsible for the suppression",
                    "maintenance",
                    until=until,
                ),
            )
            assert shelve.status_code == 200, shelve.text
            assert shelve.json()["alarm"]["shelved_by"] == "olga"
            unshelve = await client.post(
                "/api/v1/alarms/1/unshelve",
                json=signed("olga", OPERATOR_PW, "unshelved, responsible", "done"),
            )
            assert unshelve.status_code == 200, unshelve.text
    rows = backend.query("SELECT action, signer, meaning FROM signatures ORDER BY id")
    assert [(r[0], r[1]) for r in rows] == [("shelve", "olga"), ("unshelve", "olga")]


async def test_signature_copied_to_another_alarm_is_found(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend, monkeypatch: Any
) -> None:
    """The export shows each manifestation; verify passes, then names a signature copied to another alarm."""
    from tests.test_audit_trail_e2e import coldwatch  # noqa: PLC0415

    monkeypatch.setenv("COLDWATCH_TOKEN_VERA_VIEWER", VIEWER_TOKEN)
    config = two_silent_incubators(tmp_path, broker, prefix, backend)
    async with running_daemon(config) as running:
        async with opened(backend.location, config) as (_, identity, _):
            await people(identity)
        await two_alarms(broker, config, running)
        async with httpx.AsyncClient(base_url=running.base_url, timeout=30) as client:
            done = await client.post("/api/v1/alarms/1/ack", json=signed("olga", OPERATOR_PW, ACK, "on it"))
            assert done.status_code == 200, done.text
    exported = coldwatch(tmp_path / "c.yaml", "audit", "export", "--format", "json")
    assert exported.returncode == 0, exported.stderr
    entries = json.loads(exported.stdout)["entries"]
    [applied] = [e for e in entries if e["action"] == "signature.applied"]
    assert applied["object_id"] == "1"
    assert "signed by Olga Operator (olga) on " in applied["new_value"]
    assert f"meaning: {ACK}" in applied["new_value"]
    assert "(Europe/Paris)" in applied["new_value"]
    csv_export = coldwatch(tmp_path / "c.yaml", "audit", "export", "--format", "csv")
    assert "signed by Olga Operator (olga)" in csv_export.stdout
    intact = coldwatch(tmp_path / "c.yaml", "audit", "verify")
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert "electronic signatures: 1 bound" in intact.stdout
    copy = (
        "INSERT INTO signatures(object_type, object_id, action, signer, full_name, meaning, reason, "
        "signed_us, record_hash, content) SELECT object_type, '2', action, signer, full_name, meaning, "
        "reason, signed_us, record_hash, content FROM signatures WHERE object_id = '1'"
    )
    _execute(backend, copy)
    tampered = coldwatch(tmp_path / "c.yaml", "audit", "verify")
    assert tampered.returncode == 1
    assert "NOT bound" in tampered.stdout
    assert "alarm 2" in tampered.stdout
    assert "not this record" in tampered.stdout


def _execute(backend: Backend, sql: str) -> None:
    """Run one statement on the database behind the collector's back (a tamperer's edit)."""
    if backend.postgres:
        import asyncio  # noqa: PLC0415
        import concurrent.futures  # noqa: PLC0415

        import asyncpg  # noqa: PLC0415

        async def run() -> None:
            conn = await asyncpg.connect(backend.location)
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, run()).result(30)
        return
    import sqlite3  # noqa: PLC0415
    from contextlib import closing  # noqa: PLC0415

    with closing(sqlite3.connect(backend.location)) as conn, conn:
        conn.execute(sql)


async def test_command_line_review_and_alarm_list_manifestations(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend, monkeypatch: Any
) -> None:
    """`alarms review` signs with the password asked for; `alarms list` shows every manifestation."""
    from tests.test_api import _run  # noqa: PLC0415
    from tests.test_audit_trail_e2e import coldwatch  # noqa: PLC0415

    monkeypatch.setenv("COLDWATCH_TOKEN_VERA_VIEWER", VIEWER_TOKEN)
    config = two_silent_incubators(tmp_path, broker, prefix, backend)
    async with running_daemon(config) as running:
        async with opened(backend.location, config) as (_, identity, _):
            await people(identity)
        await two_alarms(broker, config, running)
        async with httpx.AsyncClient(base_url=running.base_url, timeout=30) as client:
            done = await client.post("/api/v1/alarms/1/ack", json=signed("olga", OPERATOR_PW, ACK, "on it"))
            assert done.status_code == 200, done.text
        waiting = coldwatch(tmp_path / "c.yaml", "alarms", "list", "--awaiting", "review", "--json")
        assert [json.loads(line)["id"] for line in waiting.stdout.splitlines()] == [1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("COLDWATCH_")}
        reviewed = await _run(
            [
                sys.executable,
                "-m",
                "coldwatch",
                "alarms",
                "review",
                "1",
                "--impact",
                "no_impact",
                "--root-cause",
                "door left open",
                "--user",
                "quinn",
                "--meaning",
                "reviewed",
                "--reason",
                "assessed with production",
                "--password-stdin",
                "--config",
                str(tmp_path / "c.yaml"),
                "--url",
                running.base_url,
            ],
            env,
            QA_PW,
        )
        assert reviewed[0] == 0, reviewed[1]
        assert "reviewed by quinn" in reviewed[1]
    listed = coldwatch(tmp_path / "c.yaml", "alarms", "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert any(
        "acknowledge: signed by Olga Operator (olga) on " in line
        and "UTC /" in line
        and "(Europe/Paris)" in line
        and f"meaning: {ACK}" in line
        for line in lines
    ), listed.stdout
    assert any(
        "review: signed by Quinn Quality (quinn)" in line and "meaning: reviewed" in line for line in lines
    )
    assert any("review: impact no_impact (complete)" in line for line in lines)
    as_json = [
        json.loads(line)
        for line in coldwatch(tmp_path / "c.yaml", "alarms", "list", "--json").stdout.splitlines()
    ]
    first = next(a for a in as_json if a["id"] == 1)
    assert [s["full_name"] for s in first["signatures"]] == ["Olga Operator", "Quinn Quality"]
    assert first["complete"] is True
    assert coldwatch(tmp_path / "c.yaml", "alarms", "list", "--awaiting", "review").stdout.count("inc-") == 0


async def test_an_alarm_that_escalates_after_its_review_says_so_on_its_page(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend
) -> None:
    """Reviewed while at alert, then raised to action: the alarm's page says the review does not cover it."""
    rule = {"type": "threshold", "metric": "temp_c", "direction": "high",
            "levels": {"alert": {"limit": 37.5}, "action": {"limit": 38.0}}}  # fmt: skip
    config = write_config(
        tmp_path / "c.yaml", broker=broker, prefix=prefix,
        devices=[{"id": "inc-1", "kind": "incubator", "site": "s", "area": "lab"}],
        rules={"devices": {"inc-1": [rule, {"type": "comm_loss", "timeout_s": 1, "enabled": False}]}},
        storage={"path": backend.location}, identity=FAST_IDENTITY,
    )  # fmt: skip
    topic = telemetry_topic(config, "inc-1")
    async with running_daemon(config) as running:
        async with opened(backend.location, config) as (_, identity, _):
            await people(identity)
        await publish_all(broker, [(topic, reading(0, {"temp_c": 37.7}))], clients=1)  # alert
        async with httpx.AsyncClient(base_url=running.base_url, timeout=30) as client:
            await eventually(lambda: len(backend.query("SELECT id FROM alarms")) == 1, what="the alert")
            [(alarm_id, severity)] = backend.query("SELECT id, severity FROM alarms")
            assert severity == "alert"
            ack = await client.post(
                f"/api/v1/alarms/{alarm_id}/ack", json=signed("olga", OPERATOR_PW, ACK, "on it")
            )
            assert ack.status_code == 200, ack.text
            body = {"impact": "no_impact", "root_cause": "door", "comment": "brief"}
            review = await client.post(
                f"/api/v1/alarms/{alarm_id}/review",
                json=signed("quinn", QA_PW, "approved", "assessed", **body),
            )
            assert review.status_code == 200, review.text
            signed_in = await client.post("/api/v1/session", json={"user": "olga", "password": OPERATOR_PW})
            assert signed_in.status_code == 200
            page = (await client.get(f"/console/alarms/{alarm_id}")).text
            assert 'id="review"' in page
            assert 'id="changed-after-review"' not in page
            await publish_all(broker, [(topic, reading(1, {"temp_c": 38.6}))], clients=1)  # action
            await eventually(
                lambda: backend.query("SELECT severity FROM alarms") == [("action",)], what="action"
            )
            page = (await client.get(f"/console/alarms/{alarm_id}")).text
    assert 'id="changed-after-review"' in page
    assert "severity changed (action)" in page
    assert "The review does not cover it" in page
