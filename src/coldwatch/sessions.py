"""Server-side sessions of people signed in, and the CSRF token bound to each.

A session is a row: its id is 256 random bits handed to the browser once (the cookie)
and stored only as its SHA-256. A session ends at sign-out, after ``identity.session_idle_s``
without a request, ``identity.session_absolute_s`` after sign-in, or when the account is
disabled. The CSRF token is an HMAC of a fixed label keyed with the session id
(a synchronizer token: only the holder of the session can know it, and the server
recomputes it from the cookie on every state-changing request).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import TYPE_CHECKING

from coldwatch.identity_model import Account, Principal
from coldwatch.storage.identity_store import Write

if TYPE_CHECKING:
    from coldwatch.identity import Identity, SignIn

__all__ = ["COOKIE_NAME", "CSRF_FIELD", "CSRF_HEADER", "Sessions", "cookie_attributes", "csrf_token"]

COOKIE_NAME = "coldwatch_session"
TOUCH_EVERY_S = 30.0  # the idle clock of a session is restarted at most this often
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"


def csrf_token(session_token: str) -> str:
    """The CSRF token of a session (the same for its whole life)."""
    return hmac.new(session_token.encode(), b"coldwatch-csrf-v1", hashlib.sha256).hexdigest()


def cookie_attributes(*, tls: bool, max_age_s: float) -> dict[str, object]:
    """Keyword arguments of ``Response.set_cookie`` for the session cookie."""
    return {
        "key": COOKIE_NAME,
        "httponly": True,
        "samesite": "strict",
        "secure": tls,
        "path": "/",
        "max_age": int(max_age_s),
    }


class Sessions:
    """Create, resolve (touching the idle time), and end sessions."""

    def __init__(self, identity: Identity) -> None:
        self._identity = identity

    async def create(self, account: Account, client: str) -> SignIn:
        """Open a session for an account whose password was just checked; audited as a sign-in."""
        from coldwatch.identity import SignIn, token_hash  # noqa: PLC0415 - a cycle at import time

        ident = self._identity
        token = secrets.token_urlsafe(32)
        digest = token_hash(token)
        now = ident.clock_us()
        await ident.store.apply(
            [
                Write(
                    "INSERT INTO sessions(id_hash, user_name, client, created_us, last_seen_us) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (digest, account.name, client, now, now),
                )
            ],
            [
                ident.draft(
                    account.name,
                    "user.signed_in",
                    account.name,
                    f"sign-in from {client}",
                    new="must change password" if account.must_change_password else None,
                    at_us=now,
                )
            ],
        )
        principal = Principal(
            account.name,
            account.full_name,
            account.role,
            "person",
            digest,
            must_change_password=account.must_change_password,
        )
        return SignIn(token, csrf_token(token), principal)

    async def resolve(self, token: str, *, touch: bool = True) -> Principal | None:
        """The person behind a live session token, touching its idle time; None (and ended) if expired.

        ``touch=False`` (a page's background polling) leaves the idle clock as it is: only a
        person's own requests keep a session alive.
        """
        from coldwatch.identity import token_hash  # noqa: PLC0415

        ident = self._identity
        digest = token_hash(token)
        rows = await ident.store.fetch(
            "SELECT s.user_name, s.created_us, s.last_seen_us, s.signed_us, u.full_name, u.role, u.disabled, "
            "u.must_change FROM sessions s JOIN users u ON u.name = s.user_name "
            "WHERE s.id_hash = ? AND s.ended_us IS NULL",
            digest,
        )
        if not rows:
            return None
        name, created, seen, signed, full_name, role, disabled, must_change = rows[0]
        now = ident.clock_us()
        cfg = ident.config
        why = None
        if bool(disabled):
            why = "account disabled"
        elif now - int(created) >= cfg.session_absolute_s * 1e6:
            why = "absolute timeout"
        elif now - int(seen) >= cfg.session_idle_s * 1e6:
            why = "idle timeout"
        if why is not None:
            await self._end(digest, str(name), why, now)
            return None
        if touch and now - int(seen) >= min(TOUCH_EVERY_S, cfg.session_idle_s / 10) * 1e6:
            # Not on every request (each touch is a write): a session may end up to this much
            # before its idle timeout, never after it.
            await ident.store.apply(
                [
                    Write(
                        "UPDATE sessions SET last_seen_us = ? WHERE id_hash = ? AND ended_us IS NULL",
                        (now, digest),
                    )
                ],
                [],
            )
        return Principal(
            str(name),
            str(full_name),
            str(role),
            "person",
            digest,
            signed_in_session=signed is not None,
            must_change_password=bool(must_change),
        )

    async def end(self, token: str, reason: str = "signed out") -> bool:
        """End a session (sign-out); False if it had ended already."""
        from coldwatch.identity import token_hash  # noqa: PLC0415

        digest = token_hash(token)
        rows = await self._identity.store.fetch(
            "SELECT user_name FROM sessions WHERE id_hash = ? AND ended_us IS NULL", digest
        )
        if not rows:
            return False
        await self._end(digest, str(rows[0][0]), reason, self._identity.clock_us())
        return True

    async def _end(self, digest: str, name: str, why: str, now: int) -> None:
        ident = self._identity
        action = "user.signed_out" if why == "signed out" else "session.ended"
        actor = name if why == "signed out" else "coldwatch"  # an expiry is the system's doing
        await ident.store.apply(
            [
                Write(
                    "UPDATE sessions SET ended_us = ?, end_reason = ? WHERE id_hash = ? AND ended_us IS NULL",
                    (now, why, digest),
                )
            ],
            [ident.draft(actor, action, name, why, object_type="user", at_us=now)],
        )

    async def mark_signed(self, digest: str) -> None:
        """Record that the session's user has signed once (later signings may use the password alone)."""
        await self._identity.store.apply(
            [
                Write(
                    "UPDATE sessions SET signed_us = ? WHERE id_hash = ? AND signed_us IS NULL",
                    (self._identity.clock_us(), digest),
                )
            ],
            [],
        )
