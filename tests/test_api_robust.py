"""The HTTP API answers every malformed request with a 4xx and never a 500 (running daemon, real database)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from coldwatch.broker import RunningBroker
from coldwatch.config import Config
from tests.conftest import Backend, raise_comm_loss, running_daemon, silent_incubator_config
from tests.identity_helpers import FAST_IDENTITY, OPERATOR_PW, opened, people

OPERATOR_TOKEN = "op-" + "8" * 40
VIEWER_TOKEN = "view-" + "4" * 40
ADMIN_TOKEN = "adm-" + "6" * 40
TOKENS = {"operator": OPERATOR_TOKEN, "viewer": VIEWER_TOKEN, "admin": ADMIN_TOKEN}


def api_section() -> dict[str, object]:
    """An operator, a viewer and an admin, each with a hashed token."""
    return {
        "users": {
            name: {"role": role, "token_sha256": hashlib.sha256(token.encode()).hexdigest()}
            for name, role, token in (
                ("olga", "operator", OPERATOR_TOKEN),
                ("vera", "viewer", VIEWER_TOKEN),
                ("ada", "admin", ADMIN_TOKEN),
            )
        }
    }


def auth(role: str) -> dict[str, str]:
    """The bearer header of ``role``'s user."""
    return {"Authorization": f"Bearer {TOKENS[role]}"}


def config_for(tmp_path: Path, broker: RunningBroker, prefix: str, backend: Backend) -> Config:
    """One silent incubator (communication loss after 1 s) on ``backend``."""
    return silent_incubator_config(
        tmp_path / "c.yaml",
        broker=broker,
        prefix=prefix,
        api=api_section(),
        database=backend.location,
        identity=FAST_IDENTITY,
    )


async def with_people(backend: Backend, config: Config) -> None:
    """The accounts of tests.identity_helpers.people in the running collector's database."""
    async with opened(backend.location, config) as (_, identity, _):
        await people(identity)


def olga(meaning: str = "acknowledged, investigating", **body: object) -> dict[str, object]:
    """A request body signed by the operator olga."""
    return {"user": "olga", "password": OPERATOR_PW, "meaning": meaning, **body}


SIGNED_PREFIX = (
    '{"user": "olga", "password": "' + OPERATOR_PW + '", "meaning": "acknowledged, investigating", '
).encode()
SHELVING = "shelved, responsible for the suppression"


async def test_ids_beyond_int64_are_refused(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend
) -> None:
    """Alarm ids outside 1..2**63-1 in any route answer 422, the largest valid id a plain 404."""
    config = config_for(tmp_path, broker, prefix, backend)
    async with (
        running_daemon(config) as running,
        httpx.AsyncClient(base_url=running.base_url, timeout=10) as client,
    ):
        for bad in (2**63, 2**64 + 5, 10**30, 0, -1):
            got = await client.get(f"/api/v1/alarms/{bad}", headers=auth("viewer"))
            assert got.status_code == 422, (bad, got.status_code, got.text)
            for action in ("ack", "unshelve"):
                posted = await client.post(f"/api/v1/alarms/{bad}/{action}", json=olga(reason="x"))
                assert posted.status_code == 422, (bad, action, posted.text)
        largest = await client.get(f"/api/v1/alarms/{2**63 - 1}", headers=auth("viewer"))
        assert largest.status_code == 404, largest.text
        await with_people(backend, config)
        acted = await client.post(f"/api/v1/alarms/{2**63 - 1}/ack", json=olga(reason="x"))
        assert acted.status_code == 404, acted.text


async def test_unencodable_reason_is_refused_with_a_readable_422(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend
) -> None:
    """A reason with a lone surrogate or a NUL is refused with a 422 in valid JSON; nothing is recorded."""
    config = config_for(tmp_path, broker, prefix, backend)
    async with running_daemon(config) as running:
        await with_people(backend, config)
        await raise_comm_loss(broker, config, running)
        async with httpx.AsyncClient(base_url=running.base_url, timeout=10) as client:
            headers = {"Content-Type": "application/json"}
            for raw in (
                SIGNED_PREFIX + b'"reason": "ok \\ud800"}',
                SIGNED_PREFIX + b'"reason": "ok \\udfff x"}',
                SIGNED_PREFIX + b'"reason": "a\\u0000b"}',
            ):
                got = await client.post("/api/v1/alarms/1/ack", content=raw, headers=headers)
                assert got.status_code == 422, (raw, got.status_code, got.text)
                assert json.loads(got.content)["detail"]
            # The same text in a place that is not checked (an unknown field) is echoed, still encodable.
            extra = await client.post(
                "/api/v1/alarms/1/ack",
                content=SIGNED_PREFIX + b'"reason": "x", "\\ud800": "\\ud800"}',
                headers=headers,
            )
            assert extra.status_code == 422, extra.text
            assert json.loads(extra.content)["detail"]
            alarm = (await client.get("/api/v1/alarms/1", headers=auth("viewer"))).json()
            assert alarm["acknowledged_by"] is None


async def test_non_finite_numbers_in_a_body_are_refused_with_a_readable_422(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend
) -> None:
    """NaN and infinities (which Python's JSON reader accepts) anywhere in a body get a 422 in valid JSON."""
    config = config_for(tmp_path, broker, prefix, backend)
    async with running_daemon(config) as running:
        await raise_comm_loss(broker, config, running)
        async with httpx.AsyncClient(base_url=running.base_url, timeout=10) as client:
            headers = {**auth("operator"), "Content-Type": "application/json"}
            for path, raw in (
                ("ack", b'{"reason": NaN}'),
                ("ack", b'{"reason": 1e999}'),
                ("unshelve", b'{"reason": "x", "extra": -Infinity}'),
                ("shelve", b'{"reason": "hold", "until": Infinity}'),
                ("shelve", b'{"reason": "hold", "until": [NaN, 1e999]}'),
            ):
                got = await client.post(f"/api/v1/alarms/1/{path}", content=raw, headers=headers)
                assert got.status_code == 422, (raw, got.status_code, got.text)
                # Strict JSON (no NaN tokens), and the offending input is named.
                detail = json.loads(got.content, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
                assert detail["detail"], got.text
            alarm = (await client.get("/api/v1/alarms/1", headers=auth("viewer"))).json()
            assert alarm["acknowledged_by"] is None
            assert alarm["shelved_until"] is None


async def test_a_body_over_the_limit_is_refused_before_it_is_read(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend
) -> None:
    """A body over 64 KiB, declared or chunked, token or none, is a 413; the longest reason still acts."""
    config = config_for(tmp_path, broker, prefix, backend)
    async with running_daemon(config) as running:
        await raise_comm_loss(broker, config, running)
        async with httpx.AsyncClient(base_url=running.base_url, timeout=30) as client:
            big = b'{"reason": "' + b"a" * (1 << 20) + b'"}'

            async def chunked() -> AsyncIterator[bytes]:
                for start in range(0, len(big), 4096):
                    yield big[start : start + 4096]

            for token in ({}, auth("operator")):
                headers = {**token, "Content-Type": "application/json"}
                for content in (big, chunked()):
                    got = await client.post("/api/v1/alarms/1/ack", content=content, headers=headers)
                    assert got.status_code == 413, (headers, got.status_code, got.text[:200])
                    assert len(got.content) < 1000
                    assert "at most 65536 bytes" in got.json()["detail"], got.text
            # The longest reason a user may give, in its longest JSON form, is within the limit.
            longest = b'{"reason": "' + b"\\ud83d\\ude00" * 2000 + b'"}'
            acted = await client.post(
                "/api/v1/alarms/1/ack",
                content=longest,
                headers={**auth("operator"), "Content-Type": "application/json"},
            )
            assert acted.status_code == 200, acted.text[:200]


async def test_unrepresentable_or_too_long_shelves_are_refused_before_commit(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend
) -> None:
    """A shelve end in the past, after year 9999 in UTC or beyond api.shelve_max_s: 422, nothing shelved."""
    config = config_for(tmp_path, broker, prefix, backend)
    assert config.api.shelve_max_s == 30 * 86_400
    async with running_daemon(config) as running:
        await raise_comm_loss(broker, config, running)
        async with httpx.AsyncClient(base_url=running.base_url, timeout=10) as client:
            too_far = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() + 31 * 86_400))
            past = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() - 60))
            for until in (
                past,
                "9999-12-31T23:59:59-23:59",
                "0001-01-01T00:00:00+23:59",
                too_far,
                "2030-01-01T00:00:00",
            ):
                got = await client.post(
                    "/api/v1/alarms/1/shelve", json=olga(SHELVING, reason="hold", until=until)
                )
                assert got.status_code == 422, (until, got.status_code, got.text)
                if until == too_far:  # the limit in words a user reads: seconds and days
                    assert "at most 2592000 s (30 days" in got.json()["detail"], got.text
                listed = await client.get("/api/v1/alarms", headers=auth("viewer"))
                assert listed.status_code == 200, listed.text
                assert listed.json()[0]["shelved_until"] is None
            for query in ({"since": "9999-12-31T23:59:59-23:59"}, {"until": "0001-01-01T00:00:00+01:00"}):
                got = await client.get("/api/v1/alarms", params=query, headers=auth("viewer"))
                assert got.status_code == 422, (query, got.text)
            soon = time.strftime("%Y-%m-%dT%H:%M:%S+02:00", time.gmtime(time.time() + 2 * 3600 + 3600))
            await with_people(backend, config)
            done = await client.post(
                "/api/v1/alarms/1/shelve", json=olga(SHELVING, reason="hold", until=soon)
            )
            assert done.status_code == 200, done.text
            assert done.json()["alarm"]["shelved_until"].endswith("+00:00")


@pytest.mark.parametrize("stored_us", [253_402_387_139_000_000, 2**63 - 1, -(2**63)])
async def test_a_stored_out_of_range_time_never_breaks_reading(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend, stored_us: int
) -> None:
    """An alarm row already holding an out-of-range time lists and shows, marked, after a restart."""
    config = config_for(tmp_path, broker, prefix, backend)
    async with running_daemon(config) as running:
        await raise_comm_loss(broker, config, running)
    await _damage(backend, stored_us)
    async with (
        running_daemon(config) as running,
        httpx.AsyncClient(base_url=running.base_url, timeout=10) as client,
    ):
        listed = await client.get("/api/v1/alarms", headers=auth("viewer"))
        assert listed.status_code == 200, listed.text
        assert listed.json()[0]["shelved_until"] == f"out of range: {stored_us} us since 1970-01-01T00:00:00Z"
        one = await client.get("/api/v1/alarms/1", headers=auth("viewer"))
        assert one.status_code == 200, one.text
        assert one.json()["history"][0]["ts_at"].startswith("out of range")
        await with_people(backend, config)
        acted = await client.post(
            "/api/v1/alarms/1/unshelve", json=olga("unshelved, responsible", reason="fix")
        )
        assert acted.status_code == 200, acted.text
        assert acted.json()["alarm"]["shelved_until"] is None


async def test_a_stored_time_that_is_not_an_integer_never_breaks_reading(
    broker: RunningBroker, prefix: str, tmp_path: Path
) -> None:
    """A transition time SQLite kept as a REAL (it stores what it is given) shows, marked, in the history."""
    stored = 1_500_000_000_000_000.5
    backend = Backend("sqlite", str(tmp_path / "data" / "coldwatch.db"))
    config = config_for(tmp_path, broker, prefix, backend)
    async with running_daemon(config) as running:
        await raise_comm_loss(broker, config, running)
    with sqlite3.connect(backend.location) as db:
        db.execute("UPDATE alarm_transitions SET received_us = ? WHERE alarm_id = 1", (stored,))
    async with (
        running_daemon(config) as running,
        httpx.AsyncClient(base_url=running.base_url, timeout=10) as client,
    ):
        one = await client.get("/api/v1/alarms/1", headers=auth("viewer"))
        assert one.status_code == 200, one.text
        assert one.json()["history"][0]["received_at"] == f"not a time: {stored!r}"


async def _damage(backend: Backend, stored_us: int) -> None:
    """Write ``stored_us`` into alarm 1's shelve end and its first transition's time, as a bad row would."""
    statements = (
        "UPDATE alarms SET shelved_until_us = {p}, shelved_by = 'olga' WHERE id = 1",
        "UPDATE alarm_transitions SET ts_us = {p} WHERE id = (SELECT min(id) FROM alarm_transitions)",
    )
    if backend.postgres:
        conn = await asyncpg.connect(backend.location)
        try:
            for sql in statements:
                await conn.execute(sql.format(p="$1"), stored_us)
        finally:
            await conn.close()
        return
    with sqlite3.connect(backend.location) as db:
        for sql in statements:
            db.execute(sql.format(p="?"), (stored_us,))


async def test_an_until_at_the_epoch_is_a_bound_not_no_bound(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend
) -> None:
    """Readings ``until`` 1970-01-01T00:00:00Z are those before the epoch (none), not every reading."""
    config = config_for(tmp_path, broker, prefix, backend)
    async with running_daemon(config) as running:
        await raise_comm_loss(broker, config, running)
        async with httpx.AsyncClient(base_url=running.base_url, timeout=10) as client:
            query = {"device": "inc-1", "metric": "temp_c"}
            everything = await client.get("/api/v1/readings", params=query, headers=auth("viewer"))
            assert len(everything.json()) == 1, everything.text
            for until in ("1970-01-01T00:00:00Z", "1970-01-01T01:00:00+01:00"):
                got = await client.get(
                    "/api/v1/readings", params={**query, "until": until}, headers=auth("viewer")
                )
                assert got.status_code == 200, got.text
                assert got.json() == [], (until, got.text)
