"""The user model: accounts, principals, identity sources, and the errors of the identity layer. Pure.

An :class:`IdentitySource` says who someone is (their account) and whether a password
is theirs. The local database (:class:`coldwatch.identity.LocalIdentity`) is the first
source; a directory (LDAP/Active Directory, OpenID Connect) can be added later as
another, without changing roles, sessions, lockout, signatures or the audit trail, which
all work on :class:`Account` names. Account names are unique across sources and never
reused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from coldwatch.errors import ColdwatchError
from coldwatch.roles import Permission, role_allows

__all__ = [
    "AccessDeniedError",
    "Account",
    "BadCredentialsError",
    "IdentityError",
    "IdentitySource",
    "Principal",
    "RateLimitedError",
    "RefusedError",
    "SignerIdentity",
]


class IdentityError(ColdwatchError):
    """Base of the identity layer's refusals; ``status`` is the HTTP status that fits."""

    status = 400


class BadCredentialsError(IdentityError):
    """Unknown user, wrong password, disabled or locked account: one message for all (no hints)."""

    status = 401

    def __init__(self, detail: str = "user id or password not accepted") -> None:
        super().__init__(detail)


class AccessDeniedError(IdentityError):
    """Authenticated, but the role or the separation of duties does not allow it."""

    status = 403


class RefusedError(IdentityError):
    """A request that cannot be honoured as asked (bad policy, unknown name, name taken)."""

    status = 422


class RateLimitedError(IdentityError):
    """Too many sign-in attempts for this user name or from this address."""

    status = 429


@dataclass(frozen=True, slots=True)
class Account:
    """A person's account, as any identity source describes it (no password, no hash)."""

    name: str
    full_name: str
    role: str
    source: str = "local"
    disabled: bool = False
    must_change_password: bool = False
    locked_until_us: int | None = None
    failed_attempts: int = 0
    created_us: int = 0

    def locked(self, now_us: int) -> bool:
        """Locked out at ``now_us``."""
        return self.locked_until_us is not None and now_us < self.locked_until_us


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is behind a request: a person with a session, or a service token."""

    name: str
    full_name: str
    role: str
    kind: Literal["person", "service"]
    session_hash: str | None = None  # the person's session (hashed id), if any
    signed_in_session: bool = False  # has signed once in this session (11.200(a)(1)(i))
    must_change_password: bool = False

    def may(self, permission: Permission) -> bool:
        """Whether this principal may do ``permission`` now (nothing but reading before a forced change)."""
        if self.must_change_password:
            return False
        return role_allows(self.role, permission, service=self.kind == "service")


@dataclass(frozen=True, slots=True)
class SignerIdentity:
    """A person whose signature components were just verified."""

    name: str
    full_name: str
    role: str


class IdentitySource(Protocol):
    """Where accounts come from: the local database now, a directory later."""

    name: str

    async def account(self, name: str) -> Account | None:
        """The account called ``name``, or None."""

    async def password_matches(self, name: str, password: str) -> bool:
        """Whether ``password`` is ``name``'s (False for an unknown name; same cost either way)."""
