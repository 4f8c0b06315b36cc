"""The instruments API: roles (sessions, signatures, tokens); malformed requests get a 4xx, never 500."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from coldwatch.broker import RunningBroker
from tests.conftest import Backend, running_daemon
from tests.identity_helpers import ADMIN_PW, OPERATOR_PW, QA_PW
from tests.test_api_robust import auth, with_people
from tests.test_calibration_alarms import calibration, calibration_config, session, signed_post, when


async def _manager(client: httpx.AsyncClient) -> dict[str, str]:
    return await session(client, "olga", OPERATOR_PW)


async def test_roles_decide_who_registers_and_who_signs(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend
) -> None:
    """Viewers and tokens read; operator and qa sessions change; admin neither changes nor signs."""
    config = calibration_config(tmp_path, broker, prefix, backend)
    body = {"serial": "SN-1", "model": "m", "manufacturer": "a", "reason": "r"}
    async with running_daemon(config) as running:
        await with_people(backend, config)
        base = running.base_url
        async with httpx.AsyncClient(base_url=base, timeout=30) as anon:
            assert (await anon.get("/api/v1/instruments")).status_code == 401
            assert (await anon.post("/api/v1/instruments", json=body)).status_code == 401
            for role in ("viewer", "operator", "admin"):  # service tokens: read only, whatever their role
                assert (await anon.get("/api/v1/instruments", headers=auth(role))).status_code == 200
                refused = await anon.post("/api/v1/instruments", json=body, headers=auth(role))
                assert refused.status_code == 403, (role, refused.text)
        async with httpx.AsyncClient(base_url=base, timeout=30) as admin:
            csrf = await session(admin, "ada", ADMIN_PW)
            assert (await admin.post("/api/v1/instruments", json=body, headers=csrf)).status_code == 403
        async with httpx.AsyncClient(base_url=base, timeout=30) as qa:
            csrf = await session(qa, "quinn", QA_PW)
            assert (await qa.post("/api/v1/instruments", json=body)).status_code == 403  # no CSRF token
            made = await qa.post("/api/v1/instruments", json=body, headers=csrf)
            assert made.status_code == 201, made.text
            again = await qa.post("/api/v1/instruments", json=body, headers=csrf)
            assert again.status_code == 409, again.text
        path = "/api/v1/instruments/SN-1/calibrations"
        admin_signs = await signed_post(base, path, calibration(100, "r", ADMIN_PW, "ada"))
        assert admin_signs.status_code == 403, admin_signs.text
        wrong = await signed_post(base, path, calibration(100, "r", "not-my-password", "olga"))
        assert wrong.status_code == 401, wrong.text
        async with httpx.AsyncClient(base_url=base, timeout=30) as token:
            as_token = await token.post(path, json=calibration(100, "r"), headers=auth("operator"))
            assert as_token.status_code == 403, as_token.text
        ok = await signed_post(base, path, calibration(100, "r", OPERATOR_PW, "olga"))
        assert ok.status_code == 201, ok.text
        shown = ok.json()
        assert shown["recorded_by"] == "olga"
        assert shown["signatures"][0]["meaning"] == "responsibility"
        async with httpx.AsyncClient(base_url=base, timeout=30) as reader:
            got = await reader.get("/api/v1/instruments/SN-1", headers=auth("viewer"))
            assert [c["id"] for c in got.json()["calibrations"]] == [shown["id"]]
            assert (await reader.get("/api/v1/readings.csv")).status_code == 401
            exported = await reader.get("/api/v1/readings.csv?device=inc-1", headers=auth("viewer"))
            assert exported.status_code == 200, exported.text
            assert exported.text.splitlines()[0].endswith(",buffered,out_of_calibration")
            for query in ("device=nope", "since=yesterday"):
                bad = await reader.get(f"/api/v1/readings.csv?{query}", headers=auth("viewer"))
                assert bad.status_code in {404, 422}, (query, bad.text)


BAD_BODIES: list[tuple[str, str, Any]] = [
    ("/api/v1/instruments", "json", {"serial": "SN-2", "model": "m", "manufacturer": "a"}),  # no reason
    ("/api/v1/instruments", "json", {"serial": " ", "model": "m", "manufacturer": "a", "reason": "r"}),
    ("/api/v1/instruments", "json", {"serial": "a\x00b", "model": "m", "manufacturer": "a", "reason": "r"}),
    (
        "/api/v1/instruments",
        "json",
        {"serial": "x", "model": "m", "manufacturer": "a", "reason": "r", "extra": 1},
    ),
    ("/api/v1/instruments", "raw", b"{not json"),
    ("/api/v1/instruments", "json", ["a", "list"]),
    ("/api/v1/points/inc-1/install", "json", {"serial": "SN-1", "reason": "r", "at": "2026-01-01T00:00:00"}),
    ("/api/v1/points/inc-1/install", "json", {"serial": "NO-SUCH", "reason": "r"}),
    ("/api/v1/points/no-such/install", "json", {"serial": "SN-1", "reason": "r"}),
    ("/api/v1/points/inc-1/swap", "json", {"serial": "SN-1", "reason": "r"}),  # nothing installed to swap
    ("/api/v1/points/inc-1/remove", "json", {"reason": "r"}),
    (
        "/api/v1/points/inc-1/install",
        "json",
        {"serial": "SN-1", "reason": "r", "at": "9999-12-31T23:59:59+00:00"},
    ),
    ("/api/v1/points/inc-1/fly", "json", {"reason": "r"}),
]


def _calibration(**changes: Any) -> dict[str, Any]:
    return {**calibration(100, "r", OPERATOR_PW, "olga"), **changes}


BAD_SIGNED: list[tuple[str, Any]] = [
    ("SN-1", _calibration(due=when(-1))),  # due before performed
    ("SN-1", _calibration(performed=when(2))),  # in the future
    ("SN-1", _calibration(performed="2026-01-01T00:00:00")),  # no offset
    ("SN-1", _calibration(passed="maybe")),
    ("SN-1", _calibration(supersedes=2**64)),
    ("SN-1", _calibration(supersedes=999)),  # no such record
    ("SN-1", _calibration(certificate="c\x00d")),
    ("SN-1", _calibration(meaning="whatever")),
    ("SN-1", _calibration(as_found="x" * 2001)),
    ("NO-SUCH", _calibration()),
    ("SN%00", _calibration()),
    ("x" * 101, _calibration()),
]


async def test_malformed_requests_get_a_readable_4xx(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend
) -> None:
    """Every malformed or impossible request is refused with a 4xx and a message; none is a 500."""
    config = calibration_config(tmp_path, broker, prefix, backend)
    async with running_daemon(config) as running:
        await with_people(backend, config)
        async with httpx.AsyncClient(base_url=running.base_url, timeout=30) as client:
            csrf = await _manager(client)
            made = await client.post(
                "/api/v1/instruments",
                json={"serial": "SN-1", "model": "m", "manufacturer": "a", "reason": "r"},
                headers=csrf,
            )
            assert made.status_code == 201
            for path, kind, body in BAD_BODIES:
                if kind == "raw":
                    got = await client.post(
                        path, content=body, headers={**csrf, "Content-Type": "application/json"}
                    )
                else:
                    got = await client.post(path, json=body, headers=csrf)
                assert 400 <= got.status_code < 500, (path, body, got.status_code, got.text)
                assert got.json()["detail"], got.text
            for query in ("since=yesterday", "since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z"):
                got = await client.get(f"/api/v1/calibration?{query}", headers=auth("viewer"))
                assert got.status_code == 422, (query, got.text)
            for serial in ("NO-SUCH", "SN%00", "x" * 101):
                got = await client.get(f"/api/v1/instruments/{serial}", headers=auth("viewer"))
                assert 400 <= got.status_code < 500, (serial, got.text)
        for serial, body in BAD_SIGNED:
            got = await signed_post(running.base_url, f"/api/v1/instruments/{serial}/calibrations", body)
            assert 400 <= got.status_code < 500, (serial, body, got.status_code, got.text)
    assert backend.query("SELECT count(*) FROM calibrations")[0][0] == 0
