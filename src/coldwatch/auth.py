"""Bearer-token users and roles for the HTTP API. Pure: no I/O besides the given environment."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from coldwatch.config import ApiConfig

__all__ = ["ROLES", "Authenticator", "User", "token_env_name"]

# What each role may do, cumulatively.
ROLES: Final = {"viewer": 0, "operator": 1, "admin": 2}


@dataclass(frozen=True, slots=True)
class User:
    """Who is behind a token."""

    name: str
    role: str
    full_name: str

    def may(self, role: str) -> bool:
        """Whether this user's role includes ``role``."""
        return ROLES[self.role] >= ROLES[role]


def token_env_name(user: str) -> str:
    """The environment variable that may hold ``user``'s token."""
    return "COLDWATCH_TOKEN_" + user.upper().replace("-", "_").replace(".", "_")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Authenticator:
    """Maps bearer tokens to users; tokens are only ever held hashed."""

    def __init__(self, config: ApiConfig, environ: Mapping[str, str]) -> None:
        self._by_digest: dict[str, User] = {}
        self.without_token: list[str] = []  # configured users who cannot log in
        for name, user in config.users.items():
            digests = [user.token_sha256] if user.token_sha256 else []
            plain = environ.get(token_env_name(name))
            if plain:
                digests.append(_digest(plain))
            if not digests:
                self.without_token.append(name)
            for digest in digests:
                self._by_digest[digest] = User(name, user.role, user.full_name or name)

    def user(self, token: str | None) -> User | None:
        """The user a token belongs to, or None."""
        if not token:
            return None
        digest = _digest(token)
        for known, user in self._by_digest.items():
            if hmac.compare_digest(known, digest):
                return user
        return None
