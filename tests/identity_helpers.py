"""Helpers of the identity tests: cheap Argon2id settings, a settable clock, an open store."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from coldwatch.audit_keys import current_signer, find_signer
from coldwatch.config import Config
from coldwatch.identity import Identity
from coldwatch.identity_config import IdentityConfig
from coldwatch.storage import open_storage
from coldwatch.storage.base import Storage
from coldwatch.storage.identity_store import identity_store

# Argon2id at its cheapest allowed cost: tests hash many passwords (production: 64 MiB, 3 passes).
FAST_IDENTITY: dict[str, Any] = {
    "passwords": {"time_cost": 1, "memory_kib": 1024, "parallelism": 1, "min_length": 10, "history": 3},
    "lockout_attempts": 3,
    "lockout_s": 600,
}
ADMIN_PW = "admin-secret-1"
OPERATOR_PW = "operator-secret-1"
QA_PW = "qa-secret-0001"


class Clock:
    """A clock the test moves (UTC microseconds)."""

    def __init__(self, now_us: int = 1_800_000_000_000_000) -> None:
        self.now_us = now_us

    def __call__(self) -> int:
        return self.now_us

    def advance(self, seconds: float) -> None:
        """Move forward."""
        self.now_us += int(seconds * 1e6)


@contextlib.asynccontextmanager
async def opened(
    location: str, signed_as: Config | None = None, **overrides: Any
) -> AsyncIterator[tuple[Storage, Identity, Clock]]:
    """A migrated database at ``location`` with an Identity on it and a settable clock.

    ``signed_as``: a collector's configuration whose audit key seals the entries appended
    here (as the collector and the command line do), so that ``audit verify`` passes.
    """
    storage = open_storage(location)
    await storage.open()
    clock = Clock() if signed_as is None else Clock(time.time_ns() // 1000)
    sealing = current_signer.set(find_signer(signed_as) if signed_as is not None else None)
    try:
        config = IdentityConfig.model_validate({**FAST_IDENTITY, **overrides})
        yield storage, Identity(identity_store(storage), config, clock_us=clock), clock
    finally:
        current_signer.reset(sealing)
        await storage.close()


async def people(identity: Identity) -> None:
    """A first administrator (bootstrap), an operator and a qa user, each with their own password set."""
    await identity.add_user(
        "bootstrap (test)", "ada", "Ada Admin", "admin", ADMIN_PW + "x", "first administrator"
    )
    await identity.change_password("ada", ADMIN_PW + "x", ADMIN_PW, "test")
    admin = (await identity.sign_in("ada", ADMIN_PW, "test")).principal
    for name, full, role, password in (
        ("olga", "Olga Operator", "operator", OPERATOR_PW),
        ("quinn", "Quinn Quality", "qa", QA_PW),
    ):
        await identity.add_user(admin, name, full, role, password + "x", "new colleague")
        await identity.change_password(name, password + "x", password, "test")
