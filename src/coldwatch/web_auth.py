"""FastAPI dependencies of the people's side: who is asking, what they may do, and CSRF.

For the JSON API and the console alike:

- :meth:`WebAuth.principal`: the person behind the session cookie, or the service behind
  a bearer token (401 otherwise). A session is touched on each request (idle timeout).
- :meth:`WebAuth.require`: a dependency factory refusing (403) a principal without a permission.
- :meth:`WebAuth.csrf`: on every state-changing request carrying the session cookie, the
  synchronizer token must come back in the ``X-CSRF-Token`` header or the ``csrf_token``
  form field (403 otherwise). Bearer requests carry no ambient credential and need none.
- :meth:`WebAuth.start_session` / :meth:`WebAuth.end_session`: the cookie, HttpOnly,
  SameSite=Strict, Secure when the request came over TLS.
"""

# No "from __future__ import annotations": FastAPI reads the dependency signatures at run time.

import contextlib
import hmac
from collections.abc import Awaitable, Callable, Iterator

from fastapi import HTTPException, Request, Response, status

from coldwatch.identity import Identity, SignIn
from coldwatch.identity_model import IdentityError, Principal
from coldwatch.roles import Permission
from coldwatch.sessions import COOKIE_NAME, CSRF_FIELD, CSRF_HEADER, cookie_attributes, csrf_token
from coldwatch.storage.identity_store import WriteRefusedError

__all__ = ["POLL_HEADER", "WebAuth", "client_address", "refusals"]

POLL_HEADER = "X-Coldwatch-Poll"  # sent by the console's live updates (coldwatch/console/static)
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def client_address(request: Request) -> str:
    """The client's address as the socket shows it (forwarding headers are not trusted)."""
    return request.client.host if request.client is not None else "unknown"


@contextlib.contextmanager
def refusals() -> Iterator[None]:
    """Turn the identity layer's refusals into HTTP answers with their status (never a 500)."""
    try:
        yield
    except IdentityError as exc:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        raise HTTPException(exc.status, str(exc), headers=headers) from exc
    except WriteRefusedError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc


class WebAuth:
    """The dependencies, bound to one :class:`Identity`."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity

    async def optional_principal(self, request: Request) -> Principal | None:
        """The principal of a request, or None if it carries no credential; 401 for a bad or expired one."""
        cached = request.scope.get("coldwatch.principal")
        if isinstance(cached, Principal):
            return cached
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        principal: Principal | None = None
        if header:
            if scheme.lower() != "bearer" or not token.strip():
                raise _unauthorized("a valid bearer token is required")
            principal = await self.identity.service_tokens.bearer(token.strip())
            if principal is None:
                raise _unauthorized("a valid bearer token is required")
        else:
            cookie = request.cookies.get(COOKIE_NAME)
            if cookie:
                # A console page's background polling does not keep the session alive.
                polled = request.headers.get(POLL_HEADER) is not None
                principal = await self.identity.sessions.resolve(cookie, touch=not polled)
                if principal is None:
                    raise _unauthorized("the session has ended: sign in again")
        if principal is not None:
            request.scope["coldwatch.principal"] = principal
        return principal

    async def signing_principal(self, request: Request) -> Principal | None:
        """For a signed request: the session's person, or None; 401 for a bad credential, 403 for a token.

        A signature is authenticated by its own components; a service token never signs.
        """
        found = await self.optional_principal(request)
        if found is not None and found.kind == "service":
            raise HTTPException(status.HTTP_403_FORBIDDEN, "a service token may read and may never sign")
        return found

    async def principal(self, request: Request) -> Principal:
        """The principal of a request (401 without one)."""
        found = await self.optional_principal(request)
        if found is None:
            raise _unauthorized("sign in, or give a valid bearer token")
        return found

    def require(self, permission: Permission) -> Callable[[Request], Awaitable[Principal]]:
        """A dependency: the principal, if it may do ``permission`` (403 otherwise)."""

        async def dependency(request: Request) -> Principal:
            principal = await self.principal(request)
            if not principal.may(permission):
                why = (
                    "change the administrator-set password first"
                    if principal.must_change_password
                    else f"{principal.kind} {principal.name!r} with role {principal.role!r} may not do this"
                )
                raise HTTPException(status.HTTP_403_FORBIDDEN, why)
            return principal

        return dependency

    async def csrf(self, request: Request) -> None:
        """Refuse (403) a state-changing request with the session cookie but without its CSRF token."""
        if request.method in _SAFE_METHODS or request.headers.get("authorization"):
            return
        cookie = request.cookies.get(COOKIE_NAME)
        if not cookie:
            return
        given = request.headers.get(CSRF_HEADER)
        if given is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")
        ):
            try:
                form = await request.form()
            except HTTPException:
                raise
            except Exception as exc:  # a malformed body is the client's fault: never a 500
                raise HTTPException(status.HTTP_400_BAD_REQUEST, "malformed form body") from exc
            field = form.get(CSRF_FIELD)
            given = field if isinstance(field, str) else None
        if not given or not hmac.compare_digest(given.encode(), csrf_token(cookie).encode()):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or wrong CSRF token")

    def start_session(self, request: Request, response: Response, signed_in: SignIn) -> None:
        """Set the session cookie of a fresh sign-in on ``response``."""
        attributes = cookie_attributes(
            tls=request.url.scheme == "https", max_age_s=self.identity.config.session_absolute_s
        )
        response.set_cookie(value=signed_in.token, **attributes)  # type: ignore[arg-type]

    async def end_session(self, request: Request, response: Response) -> bool:
        """Sign out: end the cookie's session and clear the cookie; False if there was none."""
        cookie = request.cookies.get(COOKIE_NAME)
        response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="strict")
        if not cookie:
            return False
        with refusals():
            return await self.identity.sessions.end(cookie)


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"})
