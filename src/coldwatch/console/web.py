"""The console's HTML pages, served by the daemon under ``/console``.

Server-rendered pages (Jinja2, autoescaped) on top of the console's data layer
(:class:`coldwatch.console.pages.ConsoleData`) and the identity primitives
(:class:`coldwatch.web_auth.WebAuth`, :mod:`coldwatch.sessions`): nothing here hashes a
password, opens a session or checks a signature itself.

- Every page needs a person's session (a service token reads the JSON API, not pages);
  without one, or after it ended, the browser is sent to the sign-in page. A person whose
  password was set by an administrator sees only the password change page.
- Every form carries the session's CSRF token (the sign-in form a pre-session token of its
  own, double-submitted in a cookie); a post without it is refused (403).
- Each action checks its role on the server: a viewer is shown no action and a post of one
  is refused (403) whatever the page showed.
- Assets (one stylesheet, one polling script) are files of this package: no CDN.
"""

# No "from __future__ import annotations": FastAPI reads the endpoint signatures at run time.

import contextlib
import hmac
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any, Final
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

import jinja2
from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.responses import HTMLResponse, RedirectResponse
from markupsafe import Markup
from starlette.datastructures import FormData

from coldwatch.alarm_values import value_unit
from coldwatch.api import ApiContext, SignedAction, _check_shelve_end
from coldwatch.console.chart import render_svg, unit_of
from coldwatch.console.model import (
    ALARM_STATE_FILTERS,
    AlarmCursor,
    AlarmFilter,
    FilterError,
    register_alarm_state_filter,
)
from coldwatch.console.pages import ConsoleData, open_console_queries
from coldwatch.console.web_instruments import CalibrationCache, instrument_pages
from coldwatch.console.web_more import MorePages, PageError
from coldwatch.identity_config import UTC_ZONES
from coldwatch.identity_model import IdentityError, Principal
from coldwatch.pipeline import UserAction
from coldwatch.review import IMPACTS
from coldwatch.roles import Permission
from coldwatch.rules.lifecycle import LifecycleError
from coldwatch.sessions import COOKIE_NAME, CSRF_FIELD, csrf_token
from coldwatch.signatures import manifestation_json
from coldwatch.storage.identity_store import WriteRefusedError
from coldwatch.web_auth import client_address

__all__ = ["AWAITING_REVIEW_SQL", "PREFIX", "Console"]

PREFIX: Final = "/console"
US: Final = 1_000_000
SIGN_IN_COOKIE: Final = "coldwatch_sign_in"  # the sign-in form's pre-session CSRF token
_STATIC: Final = {"console.css": "text/css", "console.js": "text/javascript"}
_SECURITY_HEADERS: Final = {
    # Everything comes from the daemon; the chart is inline SVG (its attributes, no script).
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}
# Acknowledged or closed, and no QA review yet (the same rule as coldwatch.review's list).
AWAITING_REVIEW_SQL: Final = (
    "(a.acknowledged_by IS NOT NULL OR a.state = 'closed') "
    "AND NOT EXISTS (SELECT 1 FROM alarm_reviews AS r WHERE r.alarm_id = a.id)"
)
register_alarm_state_filter("awaiting_review", AWAITING_REVIEW_SQL)
STATE_CHOICES: Final = (
    ("open", "Open (not closed)"),
    ("awaiting_acknowledgement", "Awaiting acknowledgement"),
    ("awaiting_review", "Awaiting review"),
    ("active_unacknowledged", "Active, unacknowledged"),
    ("active_acknowledged", "Active, acknowledged"),
    ("cleared_unacknowledged", "Cleared, unacknowledged"),
    ("shelved", "Shelved"),
    ("closed", "Closed"),
)
_DONE: Final = {
    "acknowledge": "Acknowledgement signed and recorded.",
    "shelve": "Shelve signed and recorded.",
    "unshelve": "Unshelve signed and recorded.",
    "review": "Review signed and recorded: the excursion is complete.",
}
_SHELVE_HOURS: Final = (1, 4, 8, 24, 72)
_MAX_TEXT: Final = 2000


@dataclass(frozen=True, slots=True)
class _Form:
    """A posted form's text fields (one value each)."""

    fields: Mapping[str, str]

    def get(self, name: str, default: str = "") -> str:
        return self.fields.get(name, default)

    def text(self, name: str, label: str, *, required: bool = True, most: int = _MAX_TEXT) -> str:
        value = self.fields.get(name, "").strip()
        if required and not value:
            raise PageError(status.HTTP_400_BAD_REQUEST, f"{label} is required")
        if len(value) > most:
            raise PageError(status.HTTP_400_BAD_REQUEST, f"{label} is too long (at most {most} characters)")
        return value


async def _form(request: Request) -> _Form:
    try:
        data: FormData = await request.form()
    except Exception as exc:  # a malformed body is the client's fault: never a 500
        raise PageError(status.HTTP_400_BAD_REQUEST, "malformed form") from exc
    return _Form({k: v for k, v in data.items() if isinstance(v, str)})


def _now_us() -> int:
    return time.time_ns() // 1000


def _parse_local(value: str, zone: ZoneInfo) -> int | None:
    """A ``datetime-local`` field (site time) as µs since the epoch; None when empty."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise PageError(status.HTTP_400_BAD_REQUEST, f"not a date and time: {value[:40]!r}") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return int(moment.timestamp() * US)


class Console(MorePages):
    """The console's routes for one daemon; :meth:`close` at shutdown."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        self.auth = ctx.auth
        self.zone_name = ctx.config.site.timezone
        self.zone = ZoneInfo(self.zone_name)
        self._data: ConsoleData | None = None
        self._env = jinja2.Environment(
            loader=jinja2.PackageLoader("coldwatch.console", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._env.filters["utc"] = self._fmt_utc
        self._env.filters["site"] = self._fmt_site
        self._env.filters["num"] = _fmt_num
        self._env.globals["utc_site"] = self.zone_name in UTC_ZONES  # site times would repeat the UTC ones
        self._env.globals["value_unit"] = lambda rule, metric: value_unit(rule, unit_of(metric))
        self._static = {
            name: (resources.files("coldwatch.console").joinpath("static", name).read_bytes(), kind)
            for name, kind in _STATIC.items()
        }
        self.calibration = CalibrationCache(ctx)  # the overview's "calibration due" state
        self.router = self._routes()
        self.router.include_router(instrument_pages(self))

    async def data(self) -> ConsoleData:
        """The page data, its queries opened on first use."""
        if self._data is None:
            queries = await open_console_queries(self.ctx.storage)
            sites = {d.site for d in self.ctx.config.devices}
            self._data = ConsoleData(
                queries,
                self.ctx.config,
                site_zones=dict.fromkeys(sites, self.zone),
                calibration_due=self.calibration.due,
            )
        await self.calibration.refresh(self.ctx.clock_us())
        return self._data

    async def close(self) -> None:
        """Close the console's own database connection, if opened."""
        if self._data is not None:
            await self._data.queries.close()
            self._data = None

    # ----- rendering --------------------------------------------------------------------
    def _fmt_utc(self, at_us: int | None) -> str:
        if at_us is None:
            return ""
        return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=at_us)).strftime(
            "%Y-%m-%d %H:%M:%S UTC"
        )

    def _fmt_site(self, at_us: int | None) -> str:
        if at_us is None:
            return ""
        moment = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=at_us)).astimezone(self.zone)
        return moment.strftime("%Y-%m-%d %H:%M:%S %Z")

    def render(
        self, request: Request, template: str, who: Principal | None, *, code: int = 200, **values: Any
    ) -> HTMLResponse:
        """A page, with who is signed in and the session's CSRF token."""
        cookie = request.cookies.get(COOKIE_NAME)
        page = self._env.get_template(template).render(
            who=who,
            csrf=csrf_token(cookie) if cookie and who is not None else "",
            csrf_field=CSRF_FIELD,
            prefix=PREFIX,
            path=request.url.path,
            zone=self.zone_name,
            notice=self.ctx.config.site.notice,
            **values,
        )
        return HTMLResponse(page, status_code=code, headers=_SECURITY_HEADERS)

    def _error(self, request: Request, who: Principal | None, code: int, message: str) -> HTMLResponse:
        return self.render(request, "error.html", who, code=code, title="Refused", message=message)

    # ----- who is asking ------------------------------------------------------------------
    async def _who(self, request: Request) -> Principal | Response:
        """The signed-in person, or a redirect to sign in (or to change the password)."""
        try:
            who = await self.auth.optional_principal(request)
        except HTTPException:
            who = None
            ended = True
        else:
            ended = False
        back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if who is None or who.kind != "person":
            query = urlencode({"next": back, **({"ended": "1"} if ended else {})})
            return RedirectResponse(f"{PREFIX}/sign-in?{query}", status.HTTP_303_SEE_OTHER)
        if who.must_change_password and request.url.path != f"{PREFIX}/password":
            return RedirectResponse(f"{PREFIX}/password", status.HTTP_303_SEE_OTHER)
        return who

    async def _csrf(self, request: Request) -> None:
        try:
            await self.auth.csrf(request)
        except HTTPException as exc:
            raise PageError(exc.status_code, str(exc.detail)) from exc

    # ----- routes ------------------------------------------------------------------------
    def _routes(self) -> APIRouter:  # noqa: C901, PLR0915 - one closure per page
        router = APIRouter(prefix=PREFIX, include_in_schema=False)

        @router.get("/static/{name}")
        async def static(name: str) -> Response:
            found = self._static.get(name)
            if found is None:
                raise HTTPException(status.HTTP_404_NOT_FOUND, "no such file")
            body, kind = found
            return Response(body, media_type=kind, headers={"Cache-Control": "max-age=300"})

        @router.get("")
        @router.get("/")
        async def home() -> Response:
            return RedirectResponse(f"{PREFIX}/alarms", status.HTTP_303_SEE_OTHER)

        @router.get("/sign-in")
        async def sign_in_page(request: Request, next: str = "", ended: str = "") -> Response:  # noqa: A002
            return self._sign_in_form(
                request, next, "Your session ended: sign in again." if ended else None, status.HTTP_200_OK
            )

        @router.post("/sign-in")
        async def sign_in(request: Request) -> Response:
            try:
                form = await _form(request)
            except PageError as exc:
                return self._sign_in_form(request, "", exc.message, exc.code)
            given = form.get("csrf_token")
            expected = request.cookies.get(SIGN_IN_COOKIE, "")
            if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
                return self._sign_in_form(
                    request, form.get("next"), "The form expired: try again.", status.HTTP_403_FORBIDDEN
                )
            user, password = form.get("user").strip()[:200], form.get("password")[:1024]
            if not user or not password:
                return self._sign_in_form(
                    request, form.get("next"), "Give your user id and password.", status.HTTP_400_BAD_REQUEST
                )
            try:
                signed_in = await self.ctx.identity.sign_in(user, password, client_address(request))
            except IdentityError as exc:
                # One message for an unknown user, a wrong password, a locked or disabled account.
                message = (
                    "Too many sign-in attempts: wait a minute and try again."
                    if exc.status == status.HTTP_429_TOO_MANY_REQUESTS
                    else "User id or password not accepted (or the account is locked or disabled)."
                )
                return self._sign_in_form(request, form.get("next"), message, exc.status, user=user)
            target = _safe_next(form.get("next"))
            if signed_in.principal.must_change_password:
                target = f"{PREFIX}/password"
            response = RedirectResponse(target, status.HTTP_303_SEE_OTHER)
            self.auth.start_session(request, response, signed_in)
            response.delete_cookie(SIGN_IN_COOKIE, path=PREFIX)
            return response

        @router.post("/sign-out")
        async def sign_out(request: Request) -> Response:
            try:
                await self._csrf(request)
            except PageError as exc:
                return self._error(request, None, exc.code, exc.message)
            response = RedirectResponse(f"{PREFIX}/sign-in", status.HTTP_303_SEE_OTHER)
            with contextlib.suppress(HTTPException):  # ended already: the cookie is cleared all the same
                await self.auth.end_session(request, response)
            return response

        @router.get("/password")
        async def password_page(request: Request) -> Response:
            who = await self._who(request)
            if isinstance(who, Response):
                return who
            return self.render(request, "password.html", who, title="Change password", error=None)

        @router.post("/password")
        async def change_password(request: Request) -> Response:
            who = await self._who(request)
            if isinstance(who, Response):
                return who
            try:
                await self._csrf(request)
                form = await _form(request)
                current, new = _new_password(form)
                try:
                    await self.ctx.identity.change_password(who.name, current, new, client_address(request))
                except IdentityError as exc:
                    raise PageError(exc.status, str(exc)) from exc
            except PageError as exc:
                return self.render(
                    request, "password.html", who, code=exc.code, title="Change password", error=exc.message
                )
            return RedirectResponse(f"{PREFIX}/alarms?done=password", status.HTTP_303_SEE_OTHER)

        @router.get("/alarms")
        async def alarms(request: Request) -> Response:
            who = await self._who(request)
            if isinstance(who, Response):
                return who
            try:
                return await self._alarm_list(request, who)
            except PageError as exc:
                return self._error(request, who, exc.code, exc.message)

        @router.get("/alarms/{alarm_id}")
        async def alarm(request: Request, alarm_id: str) -> Response:
            who = await self._who(request)
            if isinstance(who, Response):
                return who
            number = _alarm_id(alarm_id)
            if number is None:
                return self._error(request, who, status.HTTP_404_NOT_FOUND, "no such alarm")
            return await self._alarm_page(request, who, number)

        @router.post("/alarms/{alarm_id}/{action}")
        async def act(request: Request, alarm_id: str, action: str) -> Response:
            who = await self._who(request)
            if isinstance(who, Response):
                return who
            number = _alarm_id(alarm_id)
            if number is None or action not in {"acknowledge", "shelve", "unshelve", "review"}:
                return self._error(request, who, status.HTTP_404_NOT_FOUND, "no such alarm or action")
            form = _Form({})
            try:
                await self._csrf(request)
                form = await _form(request)
                await self._sign(request, who, number, action, form)  # type: ignore[arg-type]
            except PageError as exc:
                return await self._alarm_page(
                    request, who, number, code=exc.code, error=exc.message, action=action, form=form
                )
            return RedirectResponse(f"{PREFIX}/alarms/{number}?done={action}", status.HTTP_303_SEE_OTHER)

        @router.get("/overview")
        async def overview(request: Request) -> Response:
            who = await self._who(request)
            if isinstance(who, Response):
                return who
            return await self._overview(request, who)

        @router.get("/devices/{device_id}")
        async def device(request: Request, device_id: str) -> Response:
            who = await self._who(request)
            if isinstance(who, Response):
                return who
            try:
                return await self._device_page(request, who, device_id)
            except PageError as exc:
                return self._error(request, who, exc.code, exc.message)

        @router.get("/audit")
        async def audit(request: Request) -> Response:
            who = await self._who(request)
            if isinstance(who, Response):
                return who
            try:
                return await self._audit_page(request, who, export=False)
            except PageError as exc:
                return self._error(request, who, exc.code, exc.message)

        @router.get("/audit/export.csv")
        async def audit_export(request: Request) -> Response:
            who = await self._who(request)
            if isinstance(who, Response):
                return who
            try:
                return await self._audit_page(request, who, export=True)
            except PageError as exc:
                return self._error(request, who, exc.code, exc.message)

        @router.get("/users")
        async def users(request: Request) -> Response:
            who = await self._who(request)
            if isinstance(who, Response):
                return who
            if not who.may(Permission.USERS_MANAGE):
                return self._error(request, who, status.HTTP_403_FORBIDDEN, "administrators only")
            return await self._users_page(request, who)

        @router.post("/users/{change}")
        async def change_user(request: Request, change: str) -> Response:
            who = await self._who(request)
            if isinstance(who, Response):
                return who
            if not who.may(Permission.USERS_MANAGE):
                return self._error(request, who, status.HTTP_403_FORBIDDEN, "administrators only")
            try:
                await self._csrf(request)
                form = await _form(request)
                done = await self._user_change(who, change, form)
            except PageError as exc:
                return await self._users_page(request, who, code=exc.code, error=exc.message)
            return RedirectResponse(f"{PREFIX}/users?" + urlencode({"done": done}), status.HTTP_303_SEE_OTHER)

        return router

    # ----- sign-in ------------------------------------------------------------------------
    def _sign_in_form(
        self, request: Request, next_url: str, message: str | None, code: int, *, user: str = ""
    ) -> Response:
        token = secrets.token_urlsafe(32)
        response = self.render(
            request,
            "sign_in.html",
            None,
            code=code,
            title="Sign in",
            message=message,
            sign_in_csrf=token,
            next=_safe_next(next_url),
            user=user,
        )
        response.set_cookie(
            SIGN_IN_COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path=PREFIX,
            max_age=3600,
        )
        return response

    # ----- alarms ---------------------------------------------------------------------------
    async def _alarm_list(self, request: Request, who: Principal) -> Response:
        q = request.query_params
        states = [s for s in q.getlist("state") if s]
        unknown = [s for s in states if s not in ALARM_STATE_FILTERS]
        if unknown:
            raise PageError(status.HTTP_400_BAD_REQUEST, "unknown state filter")
        severity = q.get("severity") or None
        if severity not in {None, "alert", "action"}:
            raise PageError(status.HTTP_400_BAD_REQUEST, "severity is alert or action")
        where = AlarmFilter(
            states=states,
            severity=severity,
            site=(q.get("site") or None),
            area=(q.get("area") or None),
            device_id=(q.get("device") or None),
            since_us=_parse_local(q.get("since", ""), self.zone),
            until_us=_parse_local(q.get("until", ""), self.zone),
        )
        cursor = None
        if q.get("after"):
            try:
                cursor = AlarmCursor.parse(q["after"])
            except FilterError as exc:
                raise PageError(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
        data = await self.data()
        page = await data.alarm_list(where, after=cursor, limit=50)
        kept = [(k, v) for k, v in q.multi_items() if k not in {"after", "fragment", "done"} and v]
        next_url = (
            f"{PREFIX}/alarms?" + urlencode([*kept, ("after", page.next.token())]) if page.next else None
        )
        devices = self.ctx.config.devices
        values: dict[str, Any] = {
            "title": "Alarms",
            "rows": page.rows,
            "next_url": next_url,
            "first_url": f"{PREFIX}/alarms?" + urlencode(kept) if cursor is not None else None,
            "q": q,
            "states": states,
            "state_choices": STATE_CHOICES,
            "sites": sorted({d.site for d in devices}),
            "areas": sorted({d.area for d in devices}),
            "device_ids": sorted(d.id for d in devices),
            "live_url": f"{PREFIX}/alarms?"
            + urlencode([*kept, *([("after", q["after"])] if cursor else [])]),
        }
        template = "alarm_rows.html" if q.get("fragment") else "alarms.html"
        return self.render(request, template, who, **values)

    async def _alarm_page(
        self,
        request: Request,
        who: Principal,
        alarm_id: int,
        *,
        code: int = 200,
        error: str | None = None,
        action: str | None = None,
        form: _Form | None = None,
    ) -> Response:
        data = await self.data()
        detail = await data.alarm_detail(alarm_id, _now_us())
        if detail is None:
            return self._error(request, who, status.HTTP_404_NOT_FOUND, f"no alarm {alarm_id}")
        reviews = self.ctx.reviews
        signatures = (await reviews.signatures_of([alarm_id])).get(alarm_id, [])
        review = (await reviews.reviews_of([alarm_id])).get(alarm_id)
        shown = [manifestation_json(s, self.zone_name) for s in signatures]
        review_sig = next(
            (m for s, m in zip(signatures, shown, strict=True) if s.object_type == "alarm_review"), None
        )
        a = detail.alarm
        reviewable = review is None and (a.acknowledged_by is not None or a.closed)
        signers = {s.signer for s in signatures if s.object_type == "alarm"}
        actions = []
        if who.may(Permission.ACKNOWLEDGE) and a.state in {"active_unacknowledged", "cleared_unacknowledged"}:
            actions.append("acknowledge")
        if who.may(Permission.SHELVE) and not a.closed and a.state != "shelved":
            actions.append("shelve")
        if who.may(Permission.UNSHELVE) and a.state == "shelved":
            actions.append("unshelve")
        if who.may(Permission.REVIEW) and reviewable:
            actions.append("review")
        meanings = {act: self.ctx.config.identity.meanings(act) for act in actions}
        # Two drawings of one chart: the phone's keeps its text legible at 360 px (CSS picks one).
        chart = Markup(render_svg(detail.chart, element_id="alarm-chart"))  # noqa: S704 - our SVG, text escaped
        narrow = Markup(render_svg(detail.chart, width=360, height=300, element_id="alarm-chart-n"))  # noqa: S704
        return self.render(
            request,
            "alarm.html",
            who,
            code=code,
            title=f"Alarm #{a.id}",
            d=detail,
            a=a,
            chart=chart,
            chart_narrow=narrow,
            signatures=shown,
            review=review,
            review_sig=review_sig,
            reviewable=reviewable,
            own_signature=who.name in signers,
            actions=actions,
            meanings=meanings,
            impacts=IMPACTS,
            shelve_hours=_SHELVE_HOURS,
            error=error,
            failed_action=action,
            form=form or _Form({}),
            done=request.query_params.get("done"),
            done_text=_DONE.get(request.query_params.get("done", ""), "Recorded."),
            first_signing=not who.signed_in_session,
        )

    def _action_inputs(self, action: SignedAction, form: _Form) -> tuple[int | None, dict[str, Any]]:
        """What an action takes besides its signature: a shelve's end, a review's assessment."""
        ctx = self.ctx
        until_us = None
        if action == "shelve":
            hours = form.get("hours")
            if not hours.isdigit() or int(hours) not in _SHELVE_HOURS:
                raise PageError(status.HTTP_400_BAD_REQUEST, "choose how long to shelve")
            until_us = ctx.clock_us() + int(hours) * 3600 * US
            try:
                _check_shelve_end(until_us - ctx.clock_us(), ctx.config.api.shelve_max_s)
            except HTTPException as exc:
                raise PageError(exc.status_code, str(exc.detail)) from exc
        review_fields: dict[str, Any] = {}
        if action == "review":
            impact = form.get("impact")
            if impact not in IMPACTS:
                raise PageError(status.HTTP_400_BAD_REQUEST, "choose the impact")
            deviation = (
                form.text("deviation_ref", "The deviation reference", required=False, most=200) or None
            )
            if impact == "deviation_opened" and not deviation:
                raise PageError(status.HTTP_400_BAD_REQUEST, "give the deviation's reference")
            review_fields = {
                "impact": impact,
                "root_cause": form.text("root_cause", "The root cause", required=False),
                "comment": form.text("comment", "The comment", required=False, most=10_000),
                "deviation_ref": deviation,
            }
        return until_us, review_fields

    async def _sign(
        self, request: Request, who: Principal, alarm_id: int, action: SignedAction, form: _Form
    ) -> None:
        """Verify the signature of ``action`` (refused for a role without it) and apply the action."""
        ctx = self.ctx
        from coldwatch.api import SIGNING_PERMISSION  # noqa: PLC0415 - next to its one use

        if not who.may(SIGNING_PERMISSION[action]):
            raise PageError(status.HTTP_403_FORBIDDEN, f"role {who.role!r} may not {action} alarms")
        meaning = form.text("meaning", "The meaning", most=100)
        reason = form.text("reason", "A reason")
        password = form.get("password")[:1024]
        if not password:
            raise PageError(status.HTTP_400_BAD_REQUEST, "your password is required to sign")
        user = form.get("user").strip() or None
        until_us, review_fields = self._action_inputs(action, form)
        try:
            signed = await ctx.signature(
                action,
                user=user,
                password=password,
                meaning=meaning,
                reason=reason,
                client=client_address(request),
                session=who,
            )
            if action == "review":
                from coldwatch.identity_model import SignerIdentity  # noqa: PLC0415

                await ctx.reviews.record(
                    alarm_id,
                    SignerIdentity(signed.signer, signed.full_name, "qa"),
                    meaning=meaning,
                    reason=reason,
                    now_us=ctx.clock_us(),
                    **review_fields,
                )
            else:
                await ctx.submit(
                    UserAction(action, alarm_id, signed.signer, reason, until_us, signature=signed)
                )
        except IdentityError as exc:
            message = str(exc)
            if exc.status == status.HTTP_401_UNAUTHORIZED:
                message = (
                    "Password not accepted: the signature was refused (repeated failures lock the account)."
                )
            raise PageError(exc.status, message) from exc
        except LifecycleError as exc:
            raise PageError(status.HTTP_409_CONFLICT, str(exc)) from exc
        except WriteRefusedError as exc:
            raise PageError(status.HTTP_409_CONFLICT, str(exc)) from exc


def _new_password(form: _Form) -> tuple[str, str]:
    """The current and the new password of a change form (the new one typed twice)."""
    current, new = form.get("current")[:1024], form.get("new")[:1024]
    if not current or not new:
        raise PageError(status.HTTP_400_BAD_REQUEST, "give the current and the new password")
    if new != form.get("repeat"):
        raise PageError(status.HTTP_400_BAD_REQUEST, "the new password and its repetition differ")
    return current, new


def _fmt_num(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.6g}"


def _alarm_id(text: str) -> int | None:
    return int(text) if text.isdigit() and 0 < len(text) <= 19 and 0 < int(text) < 2**63 else None


def _safe_next(target: str) -> str:
    """Where to go after signing in: a console page only (no open redirect)."""
    if target.startswith(f"{PREFIX}/") and not target.startswith("//") and "\\" not in target:
        return quote(target, safe="/?=&%.-_~+")
    return f"{PREFIX}/alarms"
