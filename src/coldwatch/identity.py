"""People's accounts and machine access: the service the API, the CLI and the console call.

- Accounts live in the database (:class:`LocalIdentity`, the first :class:`IdentitySource`);
  administrators add, disable, enable, reset and re-role them; names are never reused.
- Sign-in checks the password (Argon2id), counts failures, locks the account after
  ``identity.lockout_attempts`` for ``identity.lockout_s``, and is rate-limited per user
  name and per client address.
- Sessions live server-side (:mod:`coldwatch.sessions`); service tokens are hashed,
  scoped to a role, and only ever read.
- Signing (:meth:`Identity.verify_signer`) checks the signature's components by the rule
  of 21 CFR 11.200(a); a failed signing counts toward lockout.

Every change, sign-in, failure, lockout, sign-out and failed signing is in the audit
trail. No password or hash is ever logged, audited or answered.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from coldwatch.audit import AuditDraft
from coldwatch.auth import Authenticator
from coldwatch.identity_config import IdentityConfig
from coldwatch.identity_model import (
    NAME_PATTERN,
    AccessDeniedError,
    Account,
    BadCredentialsError,
    IdentitySource,
    Principal,
    RateLimitedError,
    RefusedError,
    SignerIdentity,
)
from coldwatch.passwords import Passwords
from coldwatch.roles import ROLE_NAMES, Permission, SeparationError, check_admin_change
from coldwatch.service_tokens import ServiceTokens, token_hash
from coldwatch.storage.identity_store import IdentityStore, Write

__all__ = ["BOOTSTRAP", "Identity", "LocalIdentity", "RateLimiter", "SignIn", "token_hash"]

BOOTSTRAP = "bootstrap"  # the pseudo-administrator that may create the first administrator only
_ACCOUNT = (
    "SELECT name, full_name, role, source, disabled, must_change, locked_until_us, failed_attempts, "
    "created_us FROM users"
)


def _account(row: tuple[object, ...]) -> Account:
    name, full_name, role, source, disabled, must_change, locked, failed, created = row
    return Account(
        str(name),
        str(full_name),
        str(role),
        str(source),
        bool(disabled),
        bool(must_change),
        None if locked is None else int(str(locked)),
        int(str(failed)),
        int(str(created)),
    )


class LocalIdentity:
    """Accounts and password hashes in the collector's own database."""

    name = "local"

    def __init__(self, store: IdentityStore, passwords: Passwords) -> None:
        self._store = store
        self._passwords = passwords

    async def account(self, name: str) -> Account | None:
        """The account called ``name``, or None."""
        rows = await self._store.fetch(_ACCOUNT + " WHERE name = ?", name)
        return _account(rows[0]) if rows else None

    async def password_matches(self, name: str, password: str) -> bool:
        """Whether ``password`` is ``name``'s, checked in a worker thread (Argon2id is slow on purpose)."""
        rows = await self._store.fetch("SELECT password_hash FROM users WHERE name = ?", name)
        stored = str(rows[0][0]) if rows and rows[0][0] is not None else None
        return await asyncio.to_thread(self._passwords.matches, stored, password)


class RateLimiter:
    """At most ``limit`` events per key within ``window_s`` (a sliding window).

    Pure: callers pass the time.
    """

    def __init__(self, limit: int, window_s: float, max_keys: int = 100_000) -> None:
        self._limit = limit
        self._window_us = int(window_s * 1e6)
        self._max_keys = max_keys
        self._events: dict[str, deque[int]] = {}

    def allow(self, key: str, now_us: int) -> bool:
        """Record an attempt for ``key`` at ``now_us``; False if it is one too many."""
        events = self._events.setdefault(key, deque())
        while events and events[0] <= now_us - self._window_us:
            events.popleft()
        if len(events) >= self._limit:
            return False
        events.append(now_us)
        if len(self._events) > self._max_keys:
            # Bounded memory under a spray of names: forget the quietest keys.
            for stale in [k for k, v in self._events.items() if not v or v[-1] <= now_us - self._window_us]:
                del self._events[stale]
        return True


@dataclass(frozen=True, slots=True)
class SignIn:
    """A successful sign-in: the session's opaque token (for the cookie) and its CSRF token."""

    token: str
    csrf: str
    principal: Principal


class Identity:
    """Accounts, sign-in, service tokens and signers: one instance per collector (or per CLI command)."""

    def __init__(
        self,
        store: IdentityStore,
        config: IdentityConfig,
        *,
        config_tokens: Authenticator | None = None,
        source: IdentitySource | None = None,
        clock_us: Callable[[], int] = lambda: time.time_ns() // 1000,
    ) -> None:
        self.store = store
        self.config = config
        self.passwords = Passwords(config.passwords)
        # Who people are and whether a password is theirs: the local database unless another
        # source (a directory) is given. Roles, lockout, sessions and signatures stay here.
        self.source: IdentitySource = source if source is not None else LocalIdentity(store, self.passwords)
        self.clock_us = clock_us
        self._by_user = RateLimiter(config.sign_in_rate_max, config.sign_in_rate_window_s)
        self._by_client = RateLimiter(config.sign_in_rate_max, config.sign_in_rate_window_s)
        # Imported here: sessions need the account lookups above.
        from coldwatch.sessions import Sessions  # noqa: PLC0415

        self.sessions = Sessions(self)
        self.service_tokens = ServiceTokens(self, config_tokens)

    # ----- audit helper -------------------------------------------------------------
    def draft(
        self,
        actor: str,
        action: str,
        object_id: str,
        reason: str,
        *,
        old: str | None = None,
        new: str | None = None,
        object_type: str = "user",
        at_us: int | None = None,
    ) -> AuditDraft:
        """An audit entry of the identity layer."""
        return AuditDraft(
            at_us=self.clock_us() if at_us is None else at_us,
            actor=actor,
            action=action,
            object_type=object_type,
            object_id=object_id,
            old_value=old,
            new_value=new,
            reason=reason,
        )

    # ----- accounts -----------------------------------------------------------------
    async def accounts(self) -> list[Account]:
        """Every account, enabled and disabled, by name."""
        return [_account(r) for r in await self.store.fetch(_ACCOUNT + " ORDER BY name")]

    async def _enabled_admins(self) -> int:
        rows = await self.store.fetch("SELECT count(*) FROM users WHERE role = 'admin' AND disabled = 0")
        return int(rows[0][0])

    async def check_admin(self, actor: Principal | str) -> str:
        """The acting administrator's name; the bootstrap actor only while no administrator is enabled."""
        if isinstance(actor, str):
            if actor.startswith(BOOTSTRAP) and await self._enabled_admins() == 0:
                return actor
            raise AccessDeniedError(
                "an administrator's account is needed (the bootstrap is only for the first)"
            )
        if actor.kind != "person" or not actor.may(Permission.USERS_MANAGE):
            raise AccessDeniedError(f"{actor.name} may not manage accounts (administrators only)")
        return actor.name

    def _new_password_hash(self, name: str, password: str, history: list[str]) -> str:
        problems = self.passwords.problems(password, name, history)
        if problems:
            raise RefusedError("; ".join(problems))
        return self.passwords.hash(password)

    async def _history(self, name: str) -> list[str]:
        rows = await self.store.fetch(
            "SELECT password_hash FROM password_history WHERE user_name = ? ORDER BY set_us DESC LIMIT ?",
            name,
            max(self.config.passwords.history, 1),
        )
        return [str(r[0]) for r in rows]

    async def add_user(  # noqa: PLR0917 - each is a required, distinct fact of the account
        self, actor: Principal | str, name: str, full_name: str, role: str, password: str, reason: str
    ) -> Account:
        """Create an account; its administrator-set password must be changed at first sign-in."""
        who = await self.check_admin(actor)
        if not NAME_PATTERN.fullmatch(name):
            raise RefusedError(f"an account name is 1 to 64 letters, digits and . _ @ - (got {name!r})")
        if role not in ROLE_NAMES:
            raise RefusedError(f"unknown role {role!r} (one of {', '.join(ROLE_NAMES)})")
        if isinstance(actor, str) and role != "admin":
            raise AccessDeniedError("the bootstrap creates the first administrator only")
        if not full_name.strip():
            raise RefusedError("a full name is required: it is printed on every signature")
        if await self.source.account(name) is not None:
            raise RefusedError(
                f"the name {name!r} is taken (names are never reused, disabled accounts are kept)"
            )
        digest = await asyncio.to_thread(self._new_password_hash, name, password, [])
        now = self.clock_us()
        await self.store.apply(
            [
                Write(
                    "INSERT INTO users(name, full_name, role, password_hash, must_change, created_us) "
                    "VALUES (?, ?, ?, ?, 1, ?) ON CONFLICT DO NOTHING",
                    (name, full_name, role, digest, now),
                    expect=1,
                    refusal=f"the name {name!r} is taken (names are never reused)",
                ),
                Write("INSERT INTO password_history VALUES (?, ?, ?)", (name, digest, now)),
            ],
            [
                self.draft(
                    who, "user.created", name, reason, new=f"role {role}; full name {full_name}", at_us=now
                )
            ],
        )
        account = await self.source.account(name)
        assert account is not None
        return account

    async def _change(self, actor: Principal | str, name: str, change: str) -> tuple[str, Account]:
        who = await self.check_admin(actor)
        target = await self.source.account(name)
        if target is None:
            raise RefusedError(f"no account {name!r}")
        try:
            check_admin_change(
                who,
                name,
                change,
                target_is_admin=target.role == "admin" and not target.disabled,
                enabled_admins=await self._enabled_admins(),
            )
        except SeparationError as exc:
            raise AccessDeniedError(str(exc)) from exc
        return who, target

    _KEEP_ADMIN = (
        " AND (role <> 'admin' OR (SELECT count(*) FROM users WHERE role = 'admin' AND disabled = 0) > 1)"
    )

    async def disable(self, actor: Principal | str, name: str, reason: str) -> None:
        """Disable an account (kept, never deleted); its sessions end."""
        who, _ = await self._change(actor, name, "disable")
        now = self.clock_us()
        await self.store.apply(
            [
                Write(
                    "UPDATE users SET disabled = 1 WHERE name = ? AND disabled = 0" + self._KEEP_ADMIN,  # noqa: S608 - constants
                    (name,),
                    expect=1,
                    refusal=f"{name} is disabled already, or is the last enabled administrator",
                ),
                Write(
                    "UPDATE sessions SET ended_us = ?, end_reason = 'account disabled' "
                    "WHERE user_name = ? AND ended_us IS NULL",
                    (now, name),
                ),
            ],
            [self.draft(who, "user.disabled", name, reason, old="enabled", new="disabled", at_us=now)],
        )

    async def enable(self, actor: Principal | str, name: str, reason: str) -> None:
        """Enable a disabled account again (its failed attempts and lockout cleared)."""
        who, _ = await self._change(actor, name, "enable")
        await self.store.apply(
            [
                Write(
                    "UPDATE users SET disabled = 0, failed_attempts = 0, locked_until_us = NULL "
                    "WHERE name = ? AND disabled = 1",
                    (name,),
                    expect=1,
                    refusal=f"{name} is enabled already",
                )
            ],
            [self.draft(who, "user.enabled", name, reason, old="disabled", new="enabled")],
        )

    async def set_role(self, actor: Principal | str, name: str, role: str, reason: str) -> None:
        """Give an account another role (never one's own)."""
        if role not in ROLE_NAMES:
            raise RefusedError(f"unknown role {role!r} (one of {', '.join(ROLE_NAMES)})")
        who, target = await self._change(actor, name, f"set-role:{role}")
        guard = self._KEEP_ADMIN if role != "admin" else ""
        await self.store.apply(
            [
                Write(
                    "UPDATE users SET role = ? WHERE name = ? AND role = ?" + guard,  # noqa: S608 - constants
                    (role, name, target.role),
                    expect=1,
                    refusal=f"{name}'s role changed meanwhile, or {name} is the last enabled administrator",
                )
            ],
            [self.draft(who, "user.role_changed", name, reason, old=target.role, new=role)],
        )

    async def reset_password(self, actor: Principal | str, name: str, password: str, reason: str) -> None:
        """Set a password for someone else: they must change it at their next sign-in; lockout cleared."""
        who, _ = await self._change(actor, name, "reset-password")
        await self._set_password(who, name, password, reason, must_change=True, action="user.password_reset")

    async def waive_forced_change(self, actor_label: str, name: str, reason: str) -> None:
        """Clear ``name``'s forced password change, audited under ``actor_label``.

        In-process only (no API, console or CLI route reaches it): the demo's accounts,
        whose passwords are printed on the demo's terminal, sign in without a change.
        """
        await self.store.apply(
            [
                Write(
                    "UPDATE users SET must_change = 0 WHERE name = ? AND must_change = 1",
                    (name,),
                    expect=1,
                    refusal=f"{name} has no forced password change",
                )
            ],
            [
                self.draft(
                    actor_label,
                    "user.password_change_waived",
                    name,
                    reason,
                    old="must change at next sign-in",
                    new="no change required",
                )
            ],
        )

    async def change_password(self, name: str, current: str, new: str, client: str) -> None:
        """A person changes their own password, proving the current one (ends a forced change)."""
        await self.check_password(name, current, client, purpose="password change")
        await self._set_password(
            name,
            name,
            new,
            "changed by the account's owner",
            must_change=False,
            action="user.password_changed",
        )

    async def _set_password(
        self, who: str, name: str, password: str, reason: str, *, must_change: bool, action: str
    ) -> None:
        history = await self._history(name)
        digest = await asyncio.to_thread(self._new_password_hash, name, password, history)
        now = self.clock_us()
        await self.store.apply(
            [
                Write(
                    "UPDATE users SET password_hash = ?, must_change = ?, failed_attempts = 0, "
                    "locked_until_us = NULL WHERE name = ?",
                    (digest, int(must_change), name),
                    expect=1,
                    refusal=f"no account {name!r}",
                ),
                Write("INSERT INTO password_history VALUES (?, ?, ?)", (name, digest, now)),
            ],
            [
                self.draft(
                    who,
                    action,
                    name,
                    reason,
                    new="must change at next sign-in" if must_change else "changed",
                    at_us=now,
                )
            ],
        )

    # ----- passwords, lockout -----------------------------------------------------------
    async def check_password(self, name: str, password: str, client: str, *, purpose: str) -> Account:
        """The account if ``password`` is ``name``'s and it may sign in.

        Otherwise the failure is audited, counted toward lockout (a wrong password of a
        known account) and refused with one message for every cause.
        """
        if not name.strip():
            raise BadCredentialsError
        now = self.clock_us()
        account = await self.source.account(name)
        matches = await self.source.password_matches(name, password)
        if account is None or account.source != self.source.name:
            # Unknown names are audited too (someone tried), under the name given.
            await self.store.apply([], [self._failure(name, purpose, client, "unknown user", now)])
            raise BadCredentialsError
        if account.disabled or account.locked(now):
            state = "disabled" if account.disabled else "locked"
            await self.store.apply([], [self._failure(name, purpose, client, f"account {state}", now)])
            raise BadCredentialsError
        if not matches:
            await self._count_failure(account, purpose, client, now)
            raise BadCredentialsError
        if account.failed_attempts:
            await self.store.apply(
                [Write("UPDATE users SET failed_attempts = 0 WHERE name = ?", (name,))], []
            )
        return account

    def _failure(self, name: str, purpose: str, client: str, why: str, now: int) -> AuditDraft:
        action = "signature.failed" if purpose.startswith("signing") else "user.sign_in_failed"
        return self.draft(name, action, name, f"{purpose} from {client} refused: {why}", at_us=now)

    async def _count_failure(self, account: Account, purpose: str, client: str, now: int) -> None:
        limit = self.config.lockout_attempts
        until = now + int(self.config.lockout_s * 1e6)
        drafts = [self._failure(account.name, purpose, client, "wrong password", now)]
        if account.failed_attempts + 1 >= limit:
            drafts.append(
                self.draft(
                    "coldwatch",
                    "user.locked",
                    account.name,
                    f"{limit} failed attempts in a row (sign-in or signing)",
                    new=f"locked for {self.config.lockout_s:g} s",
                    at_us=now,
                )
            )
        await self.store.apply(
            [
                Write(
                    "UPDATE users SET failed_attempts = CASE WHEN failed_attempts + 1 >= ? THEN 0 "
                    "ELSE failed_attempts + 1 END, locked_until_us = CASE WHEN failed_attempts + 1 >= ? "
                    "THEN ? ELSE locked_until_us END WHERE name = ?",
                    (limit, limit, until, account.name),
                )
            ],
            drafts,
        )

    # ----- sign-in ------------------------------------------------------------------
    async def sign_in(self, name: str, password: str, client: str) -> SignIn:
        """Check a person's password and open a session (rate-limited per name and per address)."""
        now = self.clock_us()
        if not (self._by_user.allow(f"user:{name}", now) & self._by_client.allow(f"addr:{client}", now)):
            raise RateLimitedError("too many sign-in attempts: wait and try again")
        account = await self.check_password(name, password, client, purpose="sign-in")
        return await self.sessions.create(account, client)

    # ----- signing --------------------------------------------------------------------
    async def verify_signer(
        self,
        *,
        action: str,
        permission: Permission,
        meaning: str,
        user: str | None,
        password: str,
        client: str,
        session: Principal | None = None,
    ) -> SignerIdentity:
        """Check a signature's components (21 CFR 11.200(a)); a wrong password counts toward lockout.

        Outside a session (the JSON API, the CLI) both the user id and the password are
        required. In a person's session (the console) the first signing needs both and
        must name the session's user; later signings in the same session may give the
        password alone. A service token never signs.
        """
        if session is not None and session.kind == "service":
            raise AccessDeniedError("a service token may read and may never sign")
        allowed = self.config.meanings(action)
        if meaning not in allowed:
            raise RefusedError(f"meaning must be one of: {'; '.join(allowed)}")
        if session is not None:
            if user is None and not session.signed_in_session:
                raise RefusedError("the first signing in a session needs the user id and the password")
            if user is not None and user != session.name:
                raise AccessDeniedError("a signature in a session is the session's user's")
            user = session.name
        if not user:
            raise RefusedError("a signature needs the user id and the password")
        account = await self.check_password(user, password, client, purpose=f"signing ({action})")
        if account.must_change_password:
            raise AccessDeniedError(f"{user} must change the administrator-set password before signing")
        if not Principal(account.name, account.full_name, account.role, "person").may(permission):
            raise AccessDeniedError(f"role {account.role!r} may not sign this ({permission.value})")
        if session is not None and session.session_hash is not None:
            await self.sessions.mark_signed(session.session_hash)
        return SignerIdentity(account.name, account.full_name, account.role)
