"""The HTTP API of people and machine access: sign-in and sessions, accounts, service tokens.

- ``POST /api/v1/session`` signs in (user id and password): the answer sets the session
  cookie (HttpOnly, SameSite=Strict, Secure under TLS) and gives the CSRF token that every
  later state-changing request of the session must send back (``X-CSRF-Token``).
- ``DELETE /api/v1/session`` signs out; ``GET /api/v1/session`` says who is signed in;
  ``POST /api/v1/session/password`` changes one's own password (ends a forced change).
- ``/api/v1/users`` and ``/api/v1/tokens``: administrators (a person's session) list,
  add, disable, enable, reset, re-role accounts, and create and revoke service tokens.
  Every change takes a reason and is in the audit trail. Answers never hold a password
  or a hash; a new service token's value is answered once, at its creation.
"""

# No "from __future__ import annotations": FastAPI must see the local dependency aliases.

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from coldwatch.api_input import ReasonText, UserId
from coldwatch.export import format_ts
from coldwatch.identity import Identity
from coldwatch.identity_model import Account, Principal
from coldwatch.roles import Permission
from coldwatch.sessions import csrf_token
from coldwatch.web_auth import WebAuth, client_address, refusals

__all__ = ["account_json", "people_router"]

Password = Annotated[str, Field(min_length=1, max_length=1024)]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")]
RoleText = Annotated[str, Field(pattern="^(viewer|operator|qa|admin)$")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SignInBody(_Body):
    """A sign-in."""

    user: UserId
    password: Password


class PasswordChangeBody(_Body):
    """A person's own password change."""

    current: Password
    new: Password


class NewUserBody(_Body):
    """A new account: its administrator-set password must be changed at first sign-in."""

    name: Name
    full_name: Annotated[str, Field(min_length=1, max_length=200)]
    role: RoleText
    password: Password
    reason: ReasonText


class ReasonOnly(_Body):
    """Why (mandatory for every change)."""

    reason: ReasonText


class ResetBody(_Body):
    """A new administrator-set password."""

    password: Password
    reason: ReasonText


class RoleBody(_Body):
    """Another role."""

    role: RoleText
    reason: ReasonText


class NewTokenBody(_Body):
    """A new service token, scoped to a role (it only ever reads)."""

    name: Name
    role: RoleText
    reason: ReasonText


def account_json(account: Account) -> dict[str, Any]:
    """An account as answered (never a password or a hash)."""
    return {
        "name": account.name,
        "full_name": account.full_name,
        "role": account.role,
        "source": account.source,
        "disabled": account.disabled,
        "must_change_password": account.must_change_password,
        "locked_until": format_ts(account.locked_until_us) if account.locked_until_us else None,
        "created_at": format_ts(account.created_us),
    }


def people_router(identity: Identity, auth: WebAuth) -> APIRouter:  # noqa: C901, PLR0915 - one closure per endpoint
    """The session, users and tokens routes (mounted under /api/v1)."""
    router = APIRouter()
    Anyone = Annotated[Principal, Depends(auth.principal)]  # noqa: N806 - a type alias
    UsersReader = Annotated[Principal, Depends(auth.require(Permission.USERS_READ))]  # noqa: N806
    Admin = Annotated[Principal, Depends(auth.require(Permission.USERS_MANAGE))]  # noqa: N806
    csrf = [Depends(auth.csrf)]

    @router.post("/session")
    async def sign_in(body: SignInBody, request: Request, response: Response) -> dict[str, Any]:
        """Sign in: sets the session cookie; answers the CSRF token and whether a password change is due."""
        with refusals():
            signed_in = await identity.sign_in(body.user, body.password, client_address(request))
        auth.start_session(request, response, signed_in)
        who = signed_in.principal
        return {
            "user": who.name,
            "full_name": who.full_name,
            "role": who.role,
            "must_change_password": who.must_change_password,
            "csrf_token": signed_in.csrf,
        }

    @router.get("/session")
    async def session(who: Anyone, request: Request) -> dict[str, Any]:
        """Who is signed in (or which service token is used), and the session's CSRF token."""
        cookie = request.cookies.get("coldwatch_session")
        return {
            "user": who.name,
            "full_name": who.full_name,
            "role": who.role,
            "kind": who.kind,
            "must_change_password": who.must_change_password,
            "csrf_token": csrf_token(cookie) if cookie and who.kind == "person" else None,
        }

    @router.delete("/session", dependencies=csrf)
    async def sign_out(request: Request, response: Response) -> dict[str, Any]:
        """Sign out: the session ends on the server and the cookie is cleared."""
        return {"ended": await auth.end_session(request, response)}

    @router.post("/session/password", dependencies=csrf)
    async def change_password(body: PasswordChangeBody, who: Anyone, request: Request) -> dict[str, Any]:
        """Change one's own password (the current one proves it); ends a forced change."""
        if who.kind != "person":
            raise HTTPException(status.HTTP_403_FORBIDDEN, "a service token has no password")
        with refusals():
            await identity.change_password(who.name, body.current, body.new, client_address(request))
        return {"changed": True}

    @router.get("/users")
    async def users(_: UsersReader) -> list[dict[str, Any]]:
        """Every account, disabled ones too."""
        return [account_json(a) for a in await identity.accounts()]

    @router.post("/users", dependencies=csrf)
    async def add_user(body: NewUserBody, who: Admin) -> dict[str, Any]:
        """Add an account (administrators)."""
        with refusals():
            account = await identity.add_user(
                who, body.name, body.full_name, body.role, body.password, body.reason
            )
        return account_json(account)

    @router.post("/users/{name}/disable", dependencies=csrf)
    async def disable(name: str, body: ReasonOnly, who: Admin) -> dict[str, Any]:
        """Disable an account (kept; its sessions end)."""
        with refusals():
            await identity.disable(who, name, body.reason)
        return {"name": name, "disabled": True}

    @router.post("/users/{name}/enable", dependencies=csrf)
    async def enable(name: str, body: ReasonOnly, who: Admin) -> dict[str, Any]:
        """Enable a disabled account."""
        with refusals():
            await identity.enable(who, name, body.reason)
        return {"name": name, "disabled": False}

    @router.post("/users/{name}/reset-password", dependencies=csrf)
    async def reset_password(name: str, body: ResetBody, who: Admin) -> dict[str, Any]:
        """Set a password someone must change at their next sign-in."""
        with refusals():
            await identity.reset_password(who, name, body.password, body.reason)
        return {"name": name, "must_change_password": True}

    @router.post("/users/{name}/role", dependencies=csrf)
    async def set_role(name: str, body: RoleBody, who: Admin) -> dict[str, Any]:
        """Give an account another role (never one's own)."""
        with refusals():
            await identity.set_role(who, name, body.role, body.reason)
        return {"name": name, "role": body.role}

    @router.get("/tokens")
    async def tokens(_: UsersReader) -> list[dict[str, Any]]:
        """Every service token, revoked ones too (never their values)."""
        return [
            {
                "name": t.name,
                "role": t.role,
                "created_at": format_ts(t.created_us),
                "created_by": t.created_by,
                "revoked_at": format_ts(t.revoked_us) if t.revoked_us else None,
                "revoked_by": t.revoked_by,
            }
            for t in await identity.tokens()
        ]

    @router.post("/tokens", dependencies=csrf)
    async def create_token(body: NewTokenBody, who: Admin) -> dict[str, Any]:
        """Create a service token; its value is in this answer only."""
        with refusals():
            token = await identity.create_token(who, body.name, body.role, body.reason)
        return {"name": body.name, "role": body.role, "token": token}

    @router.post("/tokens/{name}/revoke", dependencies=csrf)
    async def revoke_token(name: str, body: ReasonOnly, who: Admin) -> dict[str, Any]:
        """Revoke a service token."""
        with refusals():
            await identity.revoke_token(who, name, body.reason)
        return {"name": name, "revoked": True}

    return router
