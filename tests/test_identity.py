"""Accounts, passwords, lockout, sessions, service tokens and their audit entries, on both backends."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from coldwatch.identity_model import AccessDeniedError, BadCredentialsError, RateLimitedError, RefusedError
from coldwatch.roles import Permission
from coldwatch.storage.identity_store import IDENTITY_LOCK, WriteRefusedError, identity_store
from tests.conftest import Backend
from tests.identity_helpers import ADMIN_PW, OPERATOR_PW, QA_PW, opened, people


def _audit(backend: Backend) -> list[tuple[str, str, str, str | None, str | None, str]]:
    return [
        (str(r[0]), str(r[1]), str(r[2]), r[3], r[4], str(r[5]))
        for r in backend.query(
            "SELECT actor, action, object_id, old_value, new_value, reason FROM audit_log ORDER BY seq"
        )
    ]


async def test_passwords_are_argon2id_and_never_recorded(backend: Backend) -> None:
    """Stored hashes are Argon2id PHC strings; no password or hash appears in the audit trail."""
    async with opened(backend.location) as (storage, identity, _):
        await people(identity)
        hashes = [str(r[0]) for r in backend.query("SELECT password_hash FROM users")]
        history = [str(r[0]) for r in backend.query("SELECT password_hash FROM password_history")]
        assert len(hashes) == 3
        assert all(h.startswith("$argon2id$v=19$m=1024,t=1,p=1$") for h in hashes + history)
        trail = repr(_audit(backend))
        for secret in (ADMIN_PW, OPERATOR_PW, QA_PW, *hashes, *history):
            assert secret not in trail
        assert (await storage.verify_audit()).ok


async def test_password_policy(backend: Backend) -> None:
    """Too short, containing the user name, or one of the last N passwords: refused with the reason."""
    async with opened(backend.location) as (_, identity, _):
        await people(identity)
        with pytest.raises(RefusedError, match="at least 10"):
            await identity.change_password("olga", OPERATOR_PW, "short1", "test")
        with pytest.raises(RefusedError, match="user name"):
            await identity.change_password("olga", OPERATOR_PW, "xxOLGAxx-long-enough", "test")
        await identity.change_password("olga", OPERATOR_PW, "second-password-2", "test")
        with pytest.raises(RefusedError, match="last 3"):
            await identity.change_password("olga", "second-password-2", OPERATOR_PW, "test")
        await identity.change_password("olga", "second-password-2", "third-password-3", "test")
        await identity.change_password("olga", "third-password-3", "fourth-password-4", "test")
        # Three newer passwords later, the first one may come back (history 3).
        await identity.change_password("olga", "fourth-password-4", OPERATOR_PW + "x", "test")


async def test_forced_change_of_an_administrator_set_password(backend: Backend) -> None:
    """A new or reset account signs in only to change its password: it may do nothing else until then."""
    async with opened(backend.location) as (_, identity, _):
        await people(identity)
        admin = (await identity.sign_in("ada", ADMIN_PW, "test")).principal
        await identity.reset_password(admin, "olga", "temporary-pass-9", "forgotten")
        first = (await identity.sign_in("olga", "temporary-pass-9", "test")).principal
        assert first.must_change_password
        assert not first.may(Permission.READ)
        with pytest.raises(AccessDeniedError, match="must change"):
            await identity.verify_signer(
                action="acknowledge",
                permission=Permission.ACKNOWLEDGE,
                meaning="acknowledged, investigating",
                user="olga",
                password="temporary-pass-9",
                client="test",
            )
        await identity.change_password("olga", "temporary-pass-9", "her-own-pass-11", "test")
        later = (await identity.sign_in("olga", "her-own-pass-11", "test")).principal
        assert not later.must_change_password
        assert later.may(Permission.ACKNOWLEDGE)


async def test_lockout_after_wrong_passwords(backend: Backend) -> None:
    """N wrong passwords lock the account for the configured time, each failure and the lockout audited."""
    async with opened(backend.location) as (_, identity, clock):
        await people(identity)
        for _ in range(3):
            with pytest.raises(BadCredentialsError):
                await identity.sign_in("olga", "wrong-password-0", "10.0.0.7")
        with pytest.raises(BadCredentialsError):
            await identity.sign_in("olga", OPERATOR_PW, "10.0.0.7")  # the right one, but locked
        actions = [(a[1], a[2]) for a in _audit(backend) if a[2] == "olga"]
        assert actions.count(("user.sign_in_failed", "olga")) == 4
        assert actions.count(("user.locked", "olga")) == 1
        assert any("account locked" in a[5] for a in _audit(backend) if a[1] == "user.sign_in_failed")
        clock.advance(601)
        assert (await identity.sign_in("olga", OPERATOR_PW, "10.0.0.7")).principal.name == "olga"


async def test_lockout_after_failed_signings(backend: Backend) -> None:
    """Wrong passwords at signing count toward the same lockout and are audited as failed signings."""
    async with opened(backend.location) as (_, identity, _):
        await people(identity)

        async def sign(password: str) -> None:
            await identity.verify_signer(
                action="acknowledge",
                permission=Permission.ACKNOWLEDGE,
                meaning="acknowledged, investigating",
                user="olga",
                password=password,
                client="10.0.0.8",
            )

        for _ in range(3):
            with pytest.raises(BadCredentialsError):
                await sign("wrong-password-0")
        with pytest.raises(BadCredentialsError):
            await sign(OPERATOR_PW)
        with pytest.raises(BadCredentialsError):
            await identity.sign_in("olga", OPERATOR_PW, "10.0.0.8")
        trail = _audit(backend)
        assert sum(1 for a in trail if a[1] == "signature.failed" and a[2] == "olga") == 4
        assert any(a[1] == "user.locked" and a[2] == "olga" for a in trail)


async def test_signing_rules(backend: Backend) -> None:
    """Meanings come from the configured list; the signer's role must allow the action; tokens never sign."""
    async with opened(backend.location) as (_, identity, _):
        await people(identity)
        base: dict[str, Any] = {"action": "acknowledge", "permission": Permission.ACKNOWLEDGE, "client": "t"}
        with pytest.raises(RefusedError, match="meaning"):
            await identity.verify_signer(**base, meaning="looked at it", user="olga", password=OPERATOR_PW)
        with pytest.raises(AccessDeniedError, match="may not sign"):
            await identity.verify_signer(
                **base, meaning="acknowledged, investigating", user="quinn", password=QA_PW
            )
        signer = await identity.verify_signer(
            **base, meaning="acknowledged, investigating", user="olga", password=OPERATOR_PW
        )
        assert (signer.name, signer.full_name) == ("olga", "Olga Operator")
        # In a session: the first signing needs the user id; later ones the password alone.
        meaning = "acknowledged, investigating"
        token = (await identity.sign_in("olga", OPERATOR_PW, "t")).token
        session = await identity.sessions.resolve(token)
        assert session is not None
        assert not session.signed_in_session
        with pytest.raises(RefusedError, match="first signing"):
            await identity.verify_signer(
                **base, meaning=meaning, user=None, password=OPERATOR_PW, session=session
            )
        with pytest.raises(AccessDeniedError, match="session's user"):
            await identity.verify_signer(
                **base, meaning=meaning, user="quinn", password=QA_PW, session=session
            )
        await identity.verify_signer(
            **base, meaning=meaning, user="olga", password=OPERATOR_PW, session=session
        )
        later = await identity.sessions.resolve(token)
        assert later is not None
        assert later.signed_in_session
        again = await identity.verify_signer(
            **base, meaning=meaning, user=None, password=OPERATOR_PW, session=later
        )
        assert again.name == "olga"
        with pytest.raises(BadCredentialsError):  # the password alone is still checked
            await identity.verify_signer(
                **base, meaning=meaning, user=None, password="wrong-pass-00", session=later
            )
        fresh = await identity.sessions.resolve((await identity.sign_in("olga", OPERATOR_PW, "t")).token)
        assert fresh is not None
        assert not fresh.signed_in_session  # a new session starts over


async def test_sessions_expire_and_end(backend: Backend) -> None:
    """Idle and absolute timeouts end a session, sign-out ends it; ids are stored only hashed; all audited."""
    async with opened(backend.location, session_idle_s=900, session_absolute_s=3600) as (_, identity, clock):
        await people(identity)
        idle = (await identity.sign_in("olga", OPERATOR_PW, "t")).token
        assert idle not in repr(backend.query("SELECT * FROM sessions"))
        clock.advance(899)
        assert await identity.sessions.resolve(idle) is not None  # touched: idle time starts again
        clock.advance(899)
        assert await identity.sessions.resolve(idle) is not None
        clock.advance(901)
        assert await identity.sessions.resolve(idle) is None
        busy = (await identity.sign_in("olga", OPERATOR_PW, "t")).token
        for _ in range(6):
            clock.advance(599)
            assert await identity.sessions.resolve(busy) is not None
        clock.advance(6)
        assert await identity.sessions.resolve(busy) is None  # an hour after sign-in, however busy
        out = (await identity.sign_in("olga", OPERATOR_PW, "t")).token
        assert await identity.sessions.end(out)
        assert await identity.sessions.resolve(out) is None
        ended = [
            (a[1], a[5]) for a in _audit(backend) if a[2] == "olga" and a[1].startswith(("session", "user.s"))
        ]
        assert ("session.ended", "idle timeout") in ended
        assert ("session.ended", "absolute timeout") in ended
        assert ("user.signed_out", "signed out") in ended
        assert sum(1 for a in ended if a[0] == "user.signed_in") >= 3


async def test_sign_in_rate_limit(backend: Backend) -> None:
    """More sign-ins than allowed per user name, or per client address, are refused before any check."""
    async with opened(backend.location, sign_in_rate_max=3, sign_in_rate_window_s=60) as (_, identity, clock):
        await people(identity)  # ada signs in once there
        for _ in range(3):
            await identity.sign_in("olga", OPERATOR_PW, f"10.1.0.{_}")
        with pytest.raises(RateLimitedError):
            await identity.sign_in("olga", OPERATOR_PW, "10.1.0.9")
        for name, pw in (("quinn", QA_PW), ("ada", ADMIN_PW)):
            await identity.sign_in(name, pw, "10.2.0.1")
        await identity.sign_in("quinn", QA_PW, "10.2.0.1")
        with pytest.raises(RateLimitedError):
            await identity.sign_in("ada", ADMIN_PW, "10.2.0.1")  # same address, a fourth time
        clock.advance(61)
        await identity.sign_in("olga", OPERATOR_PW, "10.1.0.9")


async def test_account_administration_and_separation_of_duties(backend: Backend) -> None:
    """Admins manage others, never themselves; names are never reused; the last admin stays; all audited."""
    async with opened(backend.location) as (storage, identity, _):
        await people(identity)
        admin = (await identity.sign_in("ada", ADMIN_PW, "t")).principal
        with pytest.raises(AccessDeniedError, match="bootstrap is only for the first"):
            await identity.add_user("bootstrap (x)", "eve", "Eve", "admin", "eve-password-1", "again")
        with pytest.raises(AccessDeniedError, match="their own"):
            await identity.set_role(admin, "ada", "qa", "self")
        with pytest.raises(AccessDeniedError, match="their own"):
            await identity.disable(admin, "ada", "self")
        with pytest.raises(AccessDeniedError, match="their own"):
            await identity.reset_password(admin, "ada", "new-admin-pass-1", "self")
        operator = (await identity.sign_in("olga", OPERATOR_PW, "t")).principal
        with pytest.raises(AccessDeniedError, match="may not manage"):
            await identity.disable(operator, "quinn", "not mine to do")
        await identity.set_role(admin, "olga", "qa", "moved to QA")
        await identity.disable(admin, "olga", "left the company")
        with pytest.raises(BadCredentialsError):
            await identity.sign_in("olga", OPERATOR_PW, "t")
        with pytest.raises(RefusedError, match="account name"):
            await identity.add_user(admin, "two words", "Two Words", "viewer", "two-words-pass-1", "x")
        with pytest.raises(RefusedError, match="never reused"):
            await identity.add_user(admin, "olga", "Another Olga", "viewer", "other-olga-pass", "new hire")
        await identity.enable(admin, "olga", "came back")
        await identity.set_role(admin, "quinn", "admin", "second administrator")
        quinn = (await identity.sign_in("quinn", QA_PW, "t")).principal
        await identity.set_role(quinn, "ada", "viewer", "handing over")
        ada = (await identity.sign_in("ada", ADMIN_PW, "t")).principal
        with pytest.raises(AccessDeniedError):
            await identity.set_role(ada, "quinn", "viewer", "no longer admin myself")
        # Two administrators disabling each other at once: the guard in the transaction keeps one.
        await identity.set_role(quinn, "ada", "admin", "back again")
        ada = (await identity.sign_in("ada", ADMIN_PW, "t")).principal
        outcomes = await asyncio.gather(
            identity.disable(ada, "quinn", "x"), identity.disable(quinn, "ada", "y"), return_exceptions=True
        )
        # Refused by the check before the transaction, or by the guard inside it when both passed it.
        assert sum(isinstance(o, (WriteRefusedError, AccessDeniedError)) for o in outcomes) == 1, outcomes
        assert backend.query("SELECT count(*) FROM users WHERE role = 'admin' AND disabled = 0")[0][0] == 1
        trail = _audit(backend)
        changes = [
            (a[0], a[1], a[2], a[3], a[4], a[5])
            for a in trail
            if a[1].startswith("user.")
            and a[1] not in {"user.signed_in", "user.sign_in_failed", "user.password_changed"}
        ]
        assert ("ada", "user.role_changed", "olga", "operator", "qa", "moved to QA") in changes
        assert ("ada", "user.disabled", "olga", "enabled", "disabled", "left the company") in changes
        assert ("ada", "user.enabled", "olga", "disabled", "enabled", "came back") in changes
        assert ("quinn", "user.role_changed", "ada", "admin", "viewer", "handing over") in changes
        assert any(c[1] == "user.created" and c[2] == "ada" and c[0].startswith("bootstrap") for c in changes)
        assert len(backend.query("SELECT name FROM users")) == 3
        assert (await storage.verify_audit()).ok


async def test_service_tokens_read_only(backend: Backend) -> None:
    """A service token is stored hashed, reads only whatever its role, never signs, and revokes for good."""
    async with opened(backend.location) as (storage, identity, _):
        await people(identity)
        admin = (await identity.sign_in("ada", ADMIN_PW, "t")).principal
        token = await identity.service_tokens.create(admin, "grafana", "admin", "dashboards")
        assert token not in repr(backend.query("SELECT * FROM service_tokens"))
        service = await identity.service_tokens.bearer(token)
        assert service is not None
        assert (service.kind, service.role) == ("service", "admin")
        assert service.may(Permission.READ)
        assert service.may(Permission.USERS_READ)
        assert not service.may(Permission.USERS_MANAGE)
        with pytest.raises(AccessDeniedError, match="never sign"):
            await identity.verify_signer(
                action="acknowledge",
                permission=Permission.ACKNOWLEDGE,
                meaning="acknowledged, investigating",
                user=None,
                password="x",
                client="t",
                session=service,
            )
        with pytest.raises(AccessDeniedError):
            await identity.service_tokens.create(service, "other", "viewer", "a token making tokens")
        with pytest.raises(WriteRefusedError, match="never reused"):
            await identity.service_tokens.create(admin, "grafana", "viewer", "same name again")
        await identity.service_tokens.revoke(admin, "grafana", "dashboard retired")
        assert await identity.service_tokens.bearer(token) is None
        trail = _audit(backend)
        assert ("ada", "token.created", "grafana", None, "role admin", "dashboards") in trail
        assert ("ada", "token.revoked", "grafana", "active", "revoked", "dashboard retired") in trail
        assert token not in repr(trail)
        assert identity_store(storage) is not None


async def test_a_database_of_the_previous_schema_upgrades(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database made before accounts existed upgrades on open and then takes accounts, on both backends."""
    from coldwatch.storage import postgres, sqlite  # noqa: PLC0415
    from coldwatch.storage.identity_schema import IDENTITY_SCHEMA, IDENTITY_SCHEMA_PG  # noqa: PLC0415

    with monkeypatch.context() as older:  # a collector of the version before
        if backend.postgres:
            before = postgres.MIGRATIONS_PG[: postgres.MIGRATIONS_PG.index(IDENTITY_SCHEMA_PG)]
            older.setattr("coldwatch.storage.postgres.MIGRATIONS_PG", before)
        else:
            before = sqlite.MIGRATIONS[: sqlite.MIGRATIONS.index(IDENTITY_SCHEMA)]
            older.setattr("coldwatch.storage.sqlite.MIGRATIONS", before)
        async with opened(backend.location):
            pass
    catalogue = (
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'users'"
        if backend.postgres
        else "SELECT count(*) FROM sqlite_master WHERE name = 'users'"
    )
    assert backend.query(catalogue) == [(0,)]  # the older schema had no accounts
    async with opened(backend.location) as (storage, identity, _):
        await people(identity)
        assert [a.name for a in await identity.accounts()] == ["ada", "olga", "quinn"]
        assert (await storage.verify_audit()).ok


async def test_postgres_identity_changes_wait_for_one_another(pg_server: Any) -> None:
    """On PostgreSQL an identity change waits for the identity lock, so guards see every earlier change."""
    import asyncpg  # noqa: PLC0415

    from tests.conftest import new_pg_database  # noqa: PLC0415

    url = new_pg_database(pg_server)
    async with opened(url) as (_, identity, _):
        await people(identity)
        admin = (await identity.sign_in("ada", ADMIN_PW, "t")).principal
        holder = await asyncpg.connect(url)
        try:
            held = holder.transaction()
            await held.start()
            await holder.execute("SELECT pg_advisory_xact_lock($1)", IDENTITY_LOCK)
            change = asyncio.create_task(identity.disable(admin, "olga", "left"))
            done, _ = await asyncio.wait({change}, timeout=1.0)
            assert not done, "the change went ahead while another identity change held the lock"
            await held.rollback()
            await asyncio.wait_for(change, 10)
        finally:
            await holder.close()
        assert [a.disabled for a in await identity.accounts() if a.name == "olga"] == [True]


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ("set-role:qa", "ada may not change the role of their own account"),
        ("reset-password", "ada may not reset the password of their own account"),
        ("disable", "ada may not disable their own account"),
    ],
)
def test_an_administrator_s_refusal_on_their_own_account_reads_as_words(change: str, words: str) -> None:
    """The refusal names the change in words ("change the role of"), not as a command ("set-role")."""
    from coldwatch.roles import SeparationError, check_admin_change  # noqa: PLC0415

    with pytest.raises(SeparationError) as refused:
        check_admin_change("ada", "ada", change, target_is_admin=True, enabled_admins=2)
    assert str(refused.value) == f"{words}: another administrator must"
