"""Sign-in, sessions, CSRF, administration and service tokens over the daemon's real HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from fastapi import APIRouter, Depends
from prometheus_client import CollectorRegistry

from coldwatch.broker import RunningBroker
from coldwatch.config import Config
from coldwatch.http import HttpServer, build_app
from coldwatch.identity import Identity
from coldwatch.identity_config import IdentityConfig
from coldwatch.identity_model import Principal
from coldwatch.roles import Permission
from coldwatch.sessions import COOKIE_NAME
from coldwatch.storage import open_storage
from coldwatch.storage.identity_store import identity_store
from coldwatch.web_auth import WebAuth
from tests.conftest import Backend, running_daemon, silent_incubator_config
from tests.identity_helpers import ADMIN_PW, FAST_IDENTITY, OPERATOR_PW, QA_PW, opened, people


def config_with(
    tmp_path: Path, broker: RunningBroker, prefix: str, backend: Backend, **identity: Any
) -> Config:
    """One silent incubator, cheap hashing, and the identity settings given."""
    return silent_incubator_config(
        tmp_path / "c.yaml",
        broker=broker,
        prefix=prefix,
        api={},
        database=backend.location,
        identity={**FAST_IDENTITY, **identity},
    )


async def sign_in(client: httpx.AsyncClient, user: str, password: str) -> httpx.Response:
    """POST /api/v1/session."""
    return await client.post("/api/v1/session", json={"user": user, "password": password})


async def test_session_cookie_csrf_administration_and_sign_out(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend
) -> None:
    """The cookie is HttpOnly and SameSite=Strict; admin changes need the CSRF token; sign-out ends it."""
    config = config_with(tmp_path, broker, prefix, backend)
    async with running_daemon(config) as running:
        async with opened(backend.location, config) as (_, identity, _):
            await people(identity)
        async with httpx.AsyncClient(base_url=running.base_url, timeout=30) as client:
            assert (await sign_in(client, "ada", "wrong-password-1")).status_code == 401
            answer = await sign_in(client, "ada", ADMIN_PW)
            assert answer.status_code == 200, answer.text
            cookie = answer.headers["set-cookie"]
            assert f"{COOKIE_NAME}=" in cookie
            assert "HttpOnly" in cookie
            assert "SameSite=strict" in cookie or "samesite=strict" in cookie.lower()
            assert "Secure" not in cookie  # plain HTTP here
            # Under TLS (here: a TLS-terminating proxy on the same host says so) the cookie is Secure.
            behind_tls = await client.post(
                "/api/v1/session",
                json={"user": "quinn", "password": QA_PW},
                headers={"X-Forwarded-Proto": "https"},
            )
            assert behind_tls.status_code == 200, behind_tls.text
            assert "Secure" in behind_tls.headers["set-cookie"]
            client.cookies.clear()
            client.cookies.set(COOKIE_NAME, answer.cookies[COOKIE_NAME])
            csrf = answer.json()["csrf_token"]
            assert (await client.get("/api/v1/session")).json()["user"] == "ada"
            new_user = {
                "name": "vic",
                "full_name": "Vic Viewer",
                "role": "viewer",
                "password": "viewers-pass-1",
                "reason": "new colleague",
            }
            assert (await client.post("/api/v1/users", json=new_user)).status_code == 403
            wrong = await client.post("/api/v1/users", json=new_user, headers={"X-CSRF-Token": "0" * 64})
            assert wrong.status_code == 403
            made = await client.post("/api/v1/users", json=new_user, headers={"X-CSRF-Token": csrf})
            assert made.status_code == 200, made.text
            assert "password" not in made.text.replace("must_change_password", "")
            listed = (await client.get("/api/v1/users")).json()
            assert {u["name"] for u in listed} == {"ada", "olga", "quinn", "vic"}
            assert "$argon2" not in repr(listed)
            token = await client.post(
                "/api/v1/tokens",
                json={"name": "monitor", "role": "admin", "reason": "r"},
                headers={"X-CSRF-Token": csrf},
            )
            assert token.status_code == 200, token.text
            value = token.json()["token"]
            assert (await client.delete("/api/v1/session")).status_code == 403  # no CSRF token
            out = await client.delete("/api/v1/session", headers={"X-CSRF-Token": csrf})
            assert out.status_code == 200
            assert out.json() == {"ended": True}
        async with httpx.AsyncClient(base_url=running.base_url, timeout=30) as stale:
            stale.cookies.set(COOKIE_NAME, answer.cookies[COOKIE_NAME])
            assert (await stale.get("/api/v1/session")).status_code == 401
            again = await stale.post(
                "/api/v1/users", json={**new_user, "name": "vic2"}, headers={"X-CSRF-Token": csrf}
            )
            assert again.status_code == 401
        async with httpx.AsyncClient(
            base_url=running.base_url, timeout=30, headers={"Authorization": f"Bearer {value}"}
        ) as machine:
            assert (await machine.get("/api/v1/users")).status_code == 200  # an admin-scoped token reads
            refused = await machine.post("/api/v1/users", json={**new_user, "name": "vic3"})
            assert refused.status_code == 403  # and never changes anything
            assert (await machine.get("/api/v1/alarms")).status_code == 200
    actions = [r[0] for r in backend.query("SELECT action FROM audit_log ORDER BY seq")]
    for action in (
        "user.sign_in_failed",
        "user.signed_in",
        "user.created",
        "token.created",
        "user.signed_out",
    ):
        assert action in actions


async def test_forced_password_change_over_http(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend
) -> None:
    """An administrator-set password signs in only to change it; reads are refused until then."""
    config = config_with(tmp_path, broker, prefix, backend)
    async with running_daemon(config) as running:
        async with opened(backend.location, config) as (_, identity, _):
            await people(identity)
            admin = (await identity.sign_in("ada", ADMIN_PW, "t")).principal
            await identity.reset_password(admin, "olga", "temporary-pw-77", "forgotten")
        async with httpx.AsyncClient(base_url=running.base_url, timeout=30) as client:
            answer = await sign_in(client, "olga", "temporary-pw-77")
            assert answer.json()["must_change_password"] is True
            csrf = answer.json()["csrf_token"]
            assert (await client.get("/api/v1/alarms")).status_code == 403
            changed = await client.post(
                "/api/v1/session/password",
                json={"current": "temporary-pw-77", "new": "a-better-pw-88"},
                headers={"X-CSRF-Token": csrf},
            )
            assert changed.status_code == 200, changed.text
            assert (await client.get("/api/v1/alarms")).status_code == 200


async def test_passwords_are_never_echoed_in_answers(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend
) -> None:
    """A refused request holding a password (missing or malformed fields) does not echo it back."""
    config = config_with(tmp_path, broker, prefix, backend)
    secret = "echo-me-not-123"
    async with (
        running_daemon(config) as running,
        httpx.AsyncClient(base_url=running.base_url, timeout=30) as client,
    ):
        bodies: list[tuple[str, Any]] = [
            ("/api/v1/alarms/1/ack", {"user": "olga", "password": secret, "meaning": "m"}),
            (
                "/api/v1/alarms/1/ack",
                {"user": "olga", "password": secret, "meaning": "m", "reason": "r", "x": 1},
            ),
            (
                "/api/v1/alarms/1/ack",
                {"user": "olga", "password": secret * 100, "meaning": "m", "reason": "r"},
            ),
            ("/api/v1/session", {"user": "", "password": secret}),
            ("/api/v1/session", [{"password": secret}]),
        ]
        for url, body in bodies:
            answer = await client.post(url, json=body)
            assert answer.status_code == 422, answer.text
            assert secret not in answer.text


async def test_idle_session_expires_over_http(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend
) -> None:
    """A session left idle past identity.session_idle_s is refused and its end is audited."""
    config = config_with(tmp_path, broker, prefix, backend, session_idle_s=1)
    async with running_daemon(config) as running:
        async with opened(backend.location, config) as (_, identity, _):
            await people(identity)
        async with httpx.AsyncClient(base_url=running.base_url, timeout=30) as client:
            assert (await sign_in(client, "olga", OPERATOR_PW)).status_code == 200
            assert (await client.get("/api/v1/session")).status_code == 200
            await asyncio.sleep(1.5)  # no request meanwhile: the idle time runs out
            assert (await client.get("/api/v1/session")).status_code == 401
    ended = backend.query("SELECT reason FROM audit_log WHERE action = 'session.ended'")
    assert [r[0] for r in ended] == ["idle timeout"]


async def test_sign_in_rate_limit_over_http(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend
) -> None:
    """Past identity.sign_in_rate_max attempts from one address, sign-in answers 429 even when right."""
    config = config_with(tmp_path, broker, prefix, backend, sign_in_rate_max=3, sign_in_rate_window_s=300)
    async with running_daemon(config) as running:
        async with opened(backend.location, config) as (_, identity, _):
            await people(identity)
        async with httpx.AsyncClient(base_url=running.base_url, timeout=30) as client:
            codes = [
                (await sign_in(client, name, "wrong-password-1")).status_code for name in ("x1", "x2", "x3")
            ]
            assert codes == [401, 401, 401]
            assert (await sign_in(client, "olga", OPERATOR_PW)).status_code == 429


@contextlib.asynccontextmanager
async def form_server(location: str) -> AsyncIterator[tuple[str, Identity]]:
    """The daemon's HTTP server with one form POST route guarded by the CSRF dependency (as the console's)."""
    storage = open_storage(location)
    await storage.open()
    identity = Identity(identity_store(storage), IdentityConfig.model_validate(FAST_IDENTITY))
    auth = WebAuth(identity)
    router = APIRouter()

    reader = Depends(auth.require(Permission.READ))

    @router.post("/console/act", dependencies=[Depends(auth.csrf)])
    async def act(who: Principal = reader) -> dict[str, str]:
        return {"by": who.name}

    async def ready() -> dict[str, bool]:
        return {"ok": True}

    server = HttpServer(build_app(CollectorRegistry(), ready, router), "127.0.0.1", 0)
    task = asyncio.create_task(server.serve())
    try:
        yield f"http://127.0.0.1:{server.port}", identity
    finally:
        server.stop()
        await asyncio.wait_for(task, 10)
        await storage.close()


async def test_csrf_dependency_on_form_posts(backend: Backend) -> None:
    """A form POST with the session cookie is refused without the CSRF field or with a wrong one."""
    async with form_server(backend.location) as (url, identity):
        await people(identity)
        signed_in = await identity.sign_in("olga", OPERATOR_PW, "t")
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            client.cookies.set(COOKIE_NAME, signed_in.token)
            assert (await client.post("/console/act", data={"x": "1"})).status_code == 403
            assert (await client.post("/console/act", data={"csrf_token": "f" * 64})).status_code == 403
            done = await client.post("/console/act", data={"csrf_token": signed_in.csrf})
            assert done.status_code == 200, done.text
            assert done.json() == {"by": "olga"}
            other = await identity.sign_in("quinn", "qa-secret-0001", "t")
            # The token of another session does not fit this one.
            assert (await client.post("/console/act", data={"csrf_token": other.csrf})).status_code == 403
