"""The HTTP API against a running daemon: authentication, roles, actions and reads."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import time
from pathlib import Path

import httpx
import pytest

from coldwatch.broker import RunningBroker
from tests.conftest import (
    Backend,
    eventually,
    publish_all,
    raise_comm_loss,
    reading,
    running_daemon,
    silent_incubator_config,
    telemetry_topic,
    write_config,
)
from tests.identity_helpers import ADMIN_PW, FAST_IDENTITY, OPERATOR_PW, QA_PW, opened, people

OPERATOR_TOKEN = "op-" + "7" * 40
VIEWER_TOKEN = "view-" + "3" * 40
ADMIN_TOKEN = "adm-" + "5" * 40
ACK = "acknowledged, investigating"


@pytest.fixture
def api_users(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """Read-only service tokens in the file: one hashed, two from the environment."""
    monkeypatch.setenv("COLDWATCH_TOKEN_VERA_VIEWER", VIEWER_TOKEN)
    monkeypatch.setenv("COLDWATCH_TOKEN_ADA", ADMIN_TOKEN)
    return {
        "users": {
            "olga": {
                "role": "operator",
                "full_name": "Olga Operator",
                "token_sha256": hashlib.sha256(OPERATOR_TOKEN.encode()).hexdigest(),
            },
            "vera-viewer": {"role": "viewer"},
            "ada": {"role": "admin"},
        }
    }


async def test_roles_reasons_and_attribution(
    broker: RunningBroker, prefix: str, tmp_path: Path, api_users: dict[str, object], backend: Backend
) -> None:
    """401 for a bad token, 403 for a token acting or a role that may not, 422 with no reason, 200 signed."""
    config = silent_incubator_config(
        tmp_path / "c.yaml",
        broker=broker,
        prefix=prefix,
        api=api_users,
        database=backend.location,
        identity=FAST_IDENTITY,
    )
    async with running_daemon(config) as running:
        async with opened(backend.location, config) as (_, identity, _):
            await people(identity)
        await raise_comm_loss(broker, config, running)
        async with httpx.AsyncClient(base_url=running.base_url, timeout=10) as client:
            alarms = (await client.get("/api/v1/alarms", headers=_auth(VIEWER_TOKEN))).json()
            alarm_id = alarms[0]["id"]
            ack = f"/api/v1/alarms/{alarm_id}/ack"
            olga = {"user": "olga", "password": OPERATOR_PW, "meaning": ACK}
            assert (await client.get("/api/v1/alarms")).status_code == 401
            assert (
                await client.post(ack, json={**olga, "reason": "x"}, headers=_auth("wrong-token"))
            ).status_code == 401
            for token in (
                VIEWER_TOKEN,
                OPERATOR_TOKEN,
                ADMIN_TOKEN,
            ):  # a token never signs, whatever its role
                assert (
                    await client.post(ack, json={**olga, "reason": "seen"}, headers=_auth(token))
                ).status_code == 403
            assert (await client.post(ack, json=olga)).status_code == 422
            assert (await client.post(ack, json={**olga, "reason": "  "})).status_code == 422
            assert (await client.post(ack, json={"reason": "seen"})).status_code == 422
            by_qa = {"user": "quinn", "password": QA_PW, "meaning": ACK, "reason": "seen"}
            assert (await client.post(ack, json=by_qa)).status_code == 403
            by_admin = {"user": "ada", "password": ADMIN_PW, "meaning": ACK, "reason": "seen"}
            assert (await client.post(ack, json=by_admin)).status_code == 403
            done = await client.post(ack, json={**olga, "reason": "logger re-seated"})
            assert done.status_code == 200, done.text
            assert done.json()["by"] == "olga"
            assert done.json()["alarm"]["state"] == "active_acknowledged"
            again = await client.post(ack, json={**olga, "reason": "again"})
            assert again.status_code == 409
            missing = await client.post("/api/v1/alarms/99999/ack", json={**olga, "reason": "x"})
            assert missing.status_code == 404
            detail = (await client.get(f"/api/v1/alarms/{alarm_id}", headers=_auth(VIEWER_TOKEN))).json()
            acked = [h for h in detail["history"] if h["event"] == "acknowledged"]
            assert len(acked) == 1
            assert (acked[0]["actor"], acked[0]["reason"]) == ("olga", "logger re-seated")
            until = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() + 3600))
            shelving = {**olga, "meaning": "shelved, responsible for the suppression"}
            shelve = await client.post(
                f"/api/v1/alarms/{alarm_id}/shelve",
                json={**shelving, "reason": "maintenance", "until": until},
            )
            assert shelve.status_code == 200, shelve.text
            assert shelve.json()["alarm"]["shelved_by"] == "olga"
            no_until = await client.post(
                f"/api/v1/alarms/{alarm_id}/shelve", json={**shelving, "reason": "x"}
            )
            assert no_until.status_code == 422
            assert (await client.get("/openapi.json")).json()["info"]["title"] == "coldwatch"


async def test_reads_devices_and_readings(
    broker: RunningBroker, prefix: str, tmp_path: Path, api_users: dict[str, object], backend: Backend
) -> None:
    """Devices come with their newest reading; readings of one metric come back over a time range."""
    devices = [{"id": "inc-1", "kind": "incubator", "site": "s", "area": "lab"}]
    config = write_config(
        tmp_path / "c.yaml",
        broker=broker,
        prefix=prefix,
        devices=devices,
        api=api_users,
        storage={"path": backend.location},
    )
    base = time.time() - 600
    topic = telemetry_topic(config, "inc-1")
    async with running_daemon(config) as running:
        await publish_all(
            broker,
            [(topic, reading(i, {"temp_c": 37.0 + i / 10}, ts=base + 60 * i)) for i in range(5)],
            clients=1,
        )
        labels = {"device": "inc-1", "kind": "incubator", "site": "s", "area": "lab"}
        await eventually(lambda: running.sample("coldwatch_readings_total", labels) == 5, what="5 readings")
        async with httpx.AsyncClient(base_url=running.base_url, timeout=10) as client:
            response = await client.get("/api/v1/devices", headers=_auth(VIEWER_TOKEN))
            assert response.status_code == 200, response.text
            listed = response.json()
            assert listed[0]["id"] == "inc-1"
            assert listed[0]["last_values"] == {"temp_c": pytest.approx(37.4)}
            since = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(base + 60))
            rows = (
                await client.get(
                    "/api/v1/readings",
                    params={"device": "inc-1", "metric": "temp_c", "since": since},
                    headers=_auth(VIEWER_TOKEN),
                )
            ).json()
            assert [r["value"] for r in rows] == pytest.approx([37.1, 37.2, 37.3, 37.4])
            unknown = await client.get(
                "/api/v1/readings", params={"device": "nope", "metric": "temp_c"}, headers=_auth(VIEWER_TOKEN)
            )
            assert unknown.status_code == 404


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_console_acknowledgement_is_attributed(
    broker: RunningBroker, prefix: str, tmp_path: Path, api_users: dict[str, object], backend: Backend
) -> None:
    """`coldwatch alarms ack` signs through the daemon with the password asked for; no user id is refused."""
    config = silent_incubator_config(
        tmp_path / "c.yaml",
        broker=broker,
        prefix=prefix,
        api=api_users,
        database=backend.location,
        identity=FAST_IDENTITY,
    )
    async with running_daemon(config) as running:
        async with opened(backend.location, config) as (_, identity, _):
            await people(identity)
        await raise_comm_loss(broker, config, running)
        command = [
            sys.executable,
            "-m",
            "coldwatch",
            "alarms",
            "ack",
            "1",
            "--reason",
            "checked on site",
            "--meaning",
            ACK,
            "--password-stdin",
            "--config",
            str(tmp_path / "c.yaml"),
            "--url",
            running.base_url,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("COLDWATCH_")}
        refused = await _run(command, env, OPERATOR_PW)
        assert refused[0] == 1
        assert "--user" in refused[1]
        wrong = await _run([*command, "--user", "olga"], env, "not-the-password")
        assert wrong[0] == 1
        assert "401" in wrong[1]
        # A service token in the environment is not sent: the signature is the person's.
        accepted = await _run(
            [*command, "--user", "olga"], {**env, "COLDWATCH_API_TOKEN": OPERATOR_TOKEN}, OPERATOR_PW
        )
        assert accepted[0] == 0, accepted[1]
        assert "acknowledged by olga" in accepted[1]
        assert "signed by Olga Operator (olga)" in accepted[1]
        assert OPERATOR_PW not in accepted[1]
        async with httpx.AsyncClient(base_url=running.base_url, timeout=10) as client:
            alarm = (await client.get("/api/v1/alarms/1", headers=_auth(VIEWER_TOKEN))).json()
        assert alarm["acknowledged_by"] == "olga"


async def _run(command: list[str], env: dict[str, str], stdin: str = "") -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *command,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(stdin.encode() + b"\n"), 60)
    return int(process.returncode or 0), out.decode()
