"""Passwords: Argon2id hashes (argon2-cffi) and the site's password policy.

The policy checks are pure; hashing and verifying are CPU-bound by design (tens of
milliseconds, tens of MiB), so callers in the event loop run them in a worker thread.
A password or a hash is never logged, exported or answered.
"""

from __future__ import annotations

from collections.abc import Iterable

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from coldwatch.identity_config import PasswordPolicy

__all__ = ["Passwords"]


class Passwords:
    """Hashes and checks passwords under one policy."""

    def __init__(self, policy: PasswordPolicy) -> None:
        self.policy = policy
        self._hasher = argon2.PasswordHasher(
            time_cost=policy.time_cost,
            memory_cost=policy.memory_kib,
            parallelism=policy.parallelism,
            type=argon2.Type.ID,
        )

    def hash(self, password: str) -> str:
        """An Argon2id hash of ``password`` (PHC string with its own salt and parameters)."""
        return self._hasher.hash(password)

    def matches(self, stored_hash: str | None, password: str) -> bool:
        """Whether ``password`` is the one ``stored_hash`` was made from (False for no hash)."""
        if not stored_hash:
            # Spend the same effort, so that a missing account is not told apart by timing.
            self._hasher.hash(password)
            return False
        try:
            return self._hasher.verify(stored_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def problems(self, password: str, user_name: str, previous_hashes: Iterable[str]) -> list[str]:
        """Why ``password`` may not be set for ``user_name`` (empty: it may)."""
        out = []
        if len(password) < self.policy.min_length:
            out.append(f"a password needs at least {self.policy.min_length} characters")
        if user_name.casefold() in password.casefold():
            out.append("a password may not contain the user name")
        if password.strip() != password or not password.strip():
            out.append("a password may not begin or end with white space")
        recent = list(previous_hashes)[: self.policy.history]
        if any(self.matches(h, password) for h in recent):
            out.append(f"a password may not be one of the last {self.policy.history} used")
        return out
