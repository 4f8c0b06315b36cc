"""Calibration alarms raised by a running collector: due soon, cleared by a new calibration, never twice."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from coldwatch.broker import RunningBroker
from coldwatch.config import Config
from tests.conftest import (
    Backend,
    eventually,
    publish_all,
    reading,
    running_daemon,
    silent_incubator_config,
    telemetry_topic,
)
from tests.identity_helpers import FAST_IDENTITY, OPERATOR_PW, QA_PW
from tests.test_api_robust import api_section, auth, with_people

CHECK_S = 0.2


def calibration_config(tmp_path: Path, broker: RunningBroker, prefix: str, backend: Backend) -> Config:
    """One incubator; due dates checked every 0.2 s."""
    return silent_incubator_config(
        tmp_path / "c.yaml",
        broker=broker,
        prefix=prefix,
        api=api_section(),
        database=backend.location,
        identity=FAST_IDENTITY,
        calibration={"check_interval_s": CHECK_S, "alert_before_days": 30},
    )


def when(days: float) -> str:
    """RFC 3339 UTC, ``days`` from now."""
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


def calibration(due_days: float, reason: str, password: str = QA_PW, user: str = "quinn") -> dict[str, Any]:
    """A calibration performed an hour ago, due in ``due_days``, signed by ``user``."""
    return {
        "performed": when(-1 / 24),
        "due": when(due_days),
        "certificate": "CERT-2026-001",
        "as_found": "+0.10 C at 37 C",
        "as_left": "+0.01 C at 37 C",
        "performed_by": "Metro Lab",
        "passed": True,
        "user": user,
        "password": password,
        "meaning": "responsibility",
        "reason": reason,
    }


async def session(client: httpx.AsyncClient, user: str, password: str) -> dict[str, str]:
    """Sign in on the API; the CSRF header for the session's changes."""
    signed_in = await client.post("/api/v1/session", json={"user": user, "password": password})
    assert signed_in.status_code == 200, signed_in.text
    return {"X-CSRF-Token": signed_in.json()["csrf_token"]}


async def signed_post(base_url: str, path: str, body: dict[str, Any]) -> httpx.Response:
    """A signed request with every component and no session (as a script or the command line sends it)."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        return await client.post(path, json=body)


async def _two(exported: Any) -> bool:
    return len(await exported()) == 2


async def calibration_alarms(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    """Every calibration alarm, as the API lists them."""
    got = await client.get("/api/v1/alarms", headers=auth("viewer"))
    assert got.status_code == 200, got.text
    return [a for a in got.json() if a["rule"] == "calibration_due"]


async def test_due_calibration_raises_once_and_a_new_one_clears_it(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend
) -> None:
    """An alert appears in /api/v1/alarms, survives a restart unduplicated, clears on a new calibration."""
    config = calibration_config(tmp_path, broker, prefix, backend)
    async with running_daemon(config) as running:
        await with_people(backend, config)
        async with httpx.AsyncClient(base_url=running.base_url, timeout=30) as client:
            csrf = await session(client, "olga", OPERATOR_PW)
            made = await client.post(
                "/api/v1/instruments",
                json={"serial": "SN-1", "model": "PT100", "manufacturer": "Acme", "reason": "new probe"},
                headers=csrf,
            )
            assert made.status_code == 201, made.text
            signed = await signed_post(
                running.base_url, "/api/v1/instruments/SN-1/calibrations", calibration(10, "annual")
            )
            assert signed.status_code == 201, signed.text
            assert signed.json()["signatures"][0]["manifestation"].startswith(
                "signed by Quinn Quality (quinn)"
            )
            assert await calibration_alarms(client) == []  # not installed: no point is measured by it
            put = await client.post(
                "/api/v1/points/inc-1/install",
                json={"serial": "SN-1", "reason": "commissioning"},
                headers=csrf,
            )
            assert put.status_code == 200, put.text

            async def raised() -> bool:
                return len(await calibration_alarms(client)) == 1

            await eventually(raised, timeout_s=10, what="the calibration alert")
            [alarm] = await calibration_alarms(client)
            assert (alarm["device"], alarm["severity"], alarm["state"]) == (
                "inc-1",
                "alert",
                "active_unacknowledged",
            )
            due = signed.json()["due"].removesuffix(".000000+00:00").split(".")[0]
            assert alarm["detail"].startswith(f"instrument SN-1: calibration due {due}"), alarm["detail"]
            assert 9.9 <= alarm["value"] <= 10.0  # days left
            # Readings before the installation (no instrument: out of calibration) and after it.
            now_s = time.time()
            topic = telemetry_topic(config, "inc-1")
            await publish_all(
                broker,
                [(topic, reading(i, {"temp_c": 37.0}, ts=ts)) for i, ts in enumerate((now_s - 7200, now_s))],
                clients=1,
            )

            async def exported() -> list[dict[str, str]]:
                got = await client.get("/api/v1/readings.csv?device=inc-1", headers=auth("viewer"))
                return list(csv.DictReader(io.StringIO(got.text)))

            await eventually(lambda: _two(exported), timeout_s=10, what="two readings stored")
            installed = datetime.fromisoformat(put.json()["stay"]["from"])
            rows = await exported()
            assert [r["out_of_calibration"] for r in rows] == [
                "0" if datetime.fromisoformat(r["ts"]) >= installed else "1" for r in rows
            ]
            assert [r["out_of_calibration"] for r in rows] == ["1", "0"]
            page = await client.get(f"/console/alarms/{alarm['id']}")  # olga's session
            assert page.status_code == 200, page.text
            assert "calibration_due" in page.text
            assert "Sign: acknowledge" in page.text
            assert "<strong>raised</strong> (alert)" in page.text  # the history says each severity
            # About the instrument, not the readings: no readings chart, no excursion report.
            assert 'id="calibration-hint"' in page.text
            assert 'id="excursion-report"' not in page.text
            assert 'id="chart-h"' not in page.text
            overview = await client.get("/console/overview")
            assert overview.status_code == 200
            states = await client.get("/api/v1/calibration", headers=auth("viewer"))
            assert [(p["device"], p["instrument"], p["state"]) for p in states.json()] == [
                ("inc-1", "SN-1", "due_soon")
            ]
    # A restart restores the open alarm: the check at start-up and later ones raise nothing new.
    async with (
        running_daemon(config) as running,
        httpx.AsyncClient(base_url=running.base_url, timeout=30) as client,
    ):
        started = time.monotonic()
        await asyncio.sleep(5 * CHECK_S)  # several checks, each of which could have raised it again
        again = await calibration_alarms(client)
        assert [(a["id"], a["state"]) for a in again] == [(alarm["id"], "active_unacknowledged")]
        assert time.monotonic() - started >= 5 * CHECK_S
        renewed = await signed_post(
            running.base_url, "/api/v1/instruments/SN-1/calibrations", calibration(365, "renewed")
        )
        assert renewed.status_code == 201, renewed.text

        async def cleared() -> bool:
            found = await calibration_alarms(client)
            return [(a["id"], a["state"]) for a in found] == [(alarm["id"], "cleared_unacknowledged")]

        await eventually(cleared, timeout_s=10, what="the calibration alarm to clear")
        history = await client.get(f"/api/v1/alarms/{alarm['id']}", headers=auth("viewer"))
        assert [h["event"] for h in history.json()["history"]] == ["raised", "cleared"]
