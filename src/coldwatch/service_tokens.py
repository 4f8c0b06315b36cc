"""Service tokens: machine access that reads and never signs.

An administrator creates a token with a name (unique, never reused) and a role, and
revokes it; the token's value is shown once and stored only as its SHA-256. Whatever its
role, a token grants reading only (coldwatch.roles). Tokens defined in the configuration
(``api.users``) keep working the same way.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from coldwatch.auth import Authenticator
from coldwatch.identity_model import NAME_PATTERN, AccessDeniedError, Principal, RefusedError
from coldwatch.roles import ROLE_NAMES
from coldwatch.storage.identity_store import Write

if TYPE_CHECKING:
    from coldwatch.identity import Identity


__all__ = ["ServiceTokens", "TokenInfo", "token_hash"]


def token_hash(token: str) -> str:
    """How a session id or a service token is stored: its SHA-256 (it has 256 random bits)."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A service token as listed (never its value or hash)."""

    name: str
    role: str
    created_us: int
    created_by: str
    revoked_us: int | None
    revoked_by: str | None


class ServiceTokens:
    """Create, revoke, list and resolve service tokens."""

    def __init__(self, identity: Identity, config_tokens: Authenticator | None = None) -> None:
        self._identity = identity
        self._config_tokens = config_tokens

    async def create(self, actor: Principal | str, name: str, role: str, reason: str) -> str:
        """A new service token scoped to ``role`` (it only ever reads); its value is shown once."""
        who = await self._identity.check_admin(actor)
        if isinstance(actor, str):
            raise AccessDeniedError("service tokens are created by an administrator")
        if not NAME_PATTERN.fullmatch(name):
            raise RefusedError(f"a token name is 1 to 64 letters, digits and . _ @ - (got {name!r})")
        if role not in ROLE_NAMES:
            raise RefusedError(f"unknown role {role!r} (one of {', '.join(ROLE_NAMES)})")
        token = "cwt_" + secrets.token_urlsafe(32)
        await self._identity.store.apply(
            [
                Write(
                    "INSERT INTO service_tokens(name, role, token_hash, created_us, created_by) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (name, role, token_hash(token), self._identity.clock_us(), who),
                    expect=1,
                    refusal=f"the token name {name!r} is taken (names are never reused)",
                )
            ],
            [
                self._identity.draft(
                    who, "token.created", name, reason, new=f"role {role}", object_type="service_token"
                )
            ],
        )
        return token

    async def revoke(self, actor: Principal | str, name: str, reason: str) -> None:
        """Revoke a service token for good."""
        who = await self._identity.check_admin(actor)
        await self._identity.store.apply(
            [
                Write(
                    "UPDATE service_tokens SET revoked_us = ?, revoked_by = ? "
                    "WHERE name = ? AND revoked_us IS NULL",
                    (self._identity.clock_us(), who, name),
                    expect=1,
                    refusal=f"no active service token {name!r}",
                )
            ],
            [
                self._identity.draft(
                    who,
                    "token.revoked",
                    name,
                    reason,
                    old="active",
                    new="revoked",
                    object_type="service_token",
                )
            ],
        )

    async def listing(self) -> list[TokenInfo]:
        """Every service token, revoked ones too (never their values)."""
        rows = await self._identity.store.fetch(
            "SELECT name, role, created_us, created_by, revoked_us, revoked_by "
            "FROM service_tokens ORDER BY name"
        )
        return [
            TokenInfo(
                str(n), str(r), int(c), str(b), None if v is None else int(v), None if w is None else str(w)
            )
            for n, r, c, b, v, w in rows
        ]

    async def bearer(self, token: str) -> Principal | None:
        """The service behind a bearer token: a database token, else one defined in the configuration."""
        rows = await self._identity.store.fetch(
            "SELECT name, role FROM service_tokens WHERE token_hash = ? AND revoked_us IS NULL",
            token_hash(token),
        )
        if rows:
            name, role = str(rows[0][0]), str(rows[0][1])
            return Principal(name, name, role, "service")
        user = self._config_tokens.user(token) if self._config_tokens is not None else None
        if user is not None:
            return Principal(user.name, user.full_name, user.role, "service")
        return None
