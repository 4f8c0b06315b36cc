"""The console's instrument pages: points and their instruments, an instrument's calibrations, the forms.

- ``/console/instruments``: every monitoring point with its instrument and calibration state
  (the due date in UTC and site time; overdue says so in words, not by colour alone), every
  instrument, and, for ``operator`` and ``qa``, the forms to register an instrument and to
  install or swap one on a point (a reason is required).
- ``/console/instruments/{serial}``: the instrument's stays on points and its calibration
  records with their signatures' manifestations, and the signed form to record a calibration
  (or a correction of one): the password (and, at the first signing of a session, the user
  id), the meaning and the reason.

Mounted by :class:`coldwatch.console.web.Console` with one line; :class:`CalibrationCache`
feeds the overview's "calibration due" state.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final
from urllib.parse import quote

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import RedirectResponse

from coldwatch.api_instruments import calibration_json, instruments_of, point_views
from coldwatch.console.web_more import PageError
from coldwatch.identity_model import IdentityError, Principal, SignerIdentity
from coldwatch.records.calibration import DAY_US, PointCalibration
from coldwatch.roles import Permission
from coldwatch.storage.identity_store import WriteRefusedError, identity_store
from coldwatch.web_auth import client_address

if TYPE_CHECKING:
    from coldwatch.api import ApiContext
    from coldwatch.console.web import Console, _Form

__all__ = ["STATE_TEXT", "CalibrationCache", "instrument_pages"]

US: Final = 1_000_000
# What each state says in words (the page colours it too, never only).
STATE_TEXT: Final = {
    "in_calibration": "in calibration",
    "due_soon": "calibration due soon",
    "overdue": "OVERDUE: out of calibration",
    "never_calibrated": "NEVER CALIBRATED: out of calibration",
    "no_instrument": "no instrument recorded",
}
# The overview's card class of each state (the shared stylesheet's colours).
STATE_CLASS: Final = {
    "in_calibration": "st-normal",
    "due_soon": "st-alert",
    "overdue": "st-action",
    "never_calibrated": "st-action",
    "no_instrument": "st-offline",
}
_DUE_STATES: Final = frozenset({"due_soon", "overdue", "never_calibrated"})
_DONE: Final = {
    "registered": "Instrument registered.",
    "installed": "Instrument installed.",
    "swapped": "Instrument swapped: the old one's stay ended as the new one's started.",
    "removed": "Instrument removed from the point.",
    "calibrated": "Calibration signed and recorded.",
}


class CalibrationCache:
    """Each point's calibration state, re-read at most every ``max_age_s`` (the overview's hook)."""

    def __init__(self, ctx: ApiContext, max_age_s: float = 10.0) -> None:
        self.ctx = ctx
        self.max_age_s = max_age_s
        self._read_at: float | None = None
        self._states: dict[str, PointCalibration] = {}

    async def refresh(self, now_us: int) -> None:
        """Read the states again if the last read is older than ``max_age_s`` (or was invalidated)."""
        if self._read_at is not None and time.monotonic() - self._read_at < self.max_age_s:
            return
        views = await point_views(identity_store(self.ctx.storage), self.ctx.config, now_us)
        self._states = {v.device_id: v.calibration for v in views}
        self._read_at = time.monotonic()

    def invalidate(self) -> None:
        """Read again at the next refresh (a calibration or an instrument changed)."""
        self._read_at = None

    def due(self, device_id: str, now_us: int) -> bool:
        """Whether the point's calibration is due soon, overdue or missing (its instrument's)."""
        found = self._states.get(device_id)
        if found is None:
            return False
        if found.state == "in_calibration" and found.due_us is not None:
            # Read up to max_age_s ago: the alert window may have opened since.
            return now_us >= found.due_us - round(self.ctx.config.calibration.alert_before_days * DAY_US)
        return found.state in _DUE_STATES


def _days(point: PointCalibration, now_us: int) -> str:
    """How far the due date is, in words ("due in 10 days", "3 days overdue")."""
    if point.due_us is None:
        return ""
    days = (point.due_us - now_us) / DAY_US
    whole = round(abs(days))
    span = "less than a day" if abs(days) < 1 else f"{whole} day{'' if whole == 1 else 's'}"
    return f"due in {span}" if days >= 0 else f"{span} overdue"


class _Pages:
    """The instrument pages of one console."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.ctx = console.ctx

    def now_us(self) -> int:
        return self.ctx.clock_us()

    async def listing(
        self, request: Request, who: Principal, *, code: int = 200, error: str | None = None
    ) -> Response:
        ctx, now = self.ctx, self.now_us()
        views = await point_views(identity_store(ctx.storage), ctx.config, now)
        records = instruments_of(ctx)
        current = {s.instrument_id: s.device_id for s in await records.stays() if s.until_us is None}
        instruments = [(i, current.get(i.id)) for i in await records.instruments()]
        return self.console.render(
            request,
            "instruments.html",
            who,
            code=code,
            title="Instruments",
            points=views,
            instruments=instruments,
            free=[i for i, point in instruments if point is None],
            state_text=STATE_TEXT,
            state_class=STATE_CLASS,
            days=lambda p: _days(p, now),
            may_manage=who.may(Permission.INSTRUMENTS_MANAGE),
            error=error,
            done=_DONE.get(request.query_params.get("done", "")),
            alert_days=ctx.config.calibration.alert_before_days,
        )

    async def detail(
        self, request: Request, who: Principal, serial: str, *, code: int = 200, error: str | None = None,
        form: _Form | None = None,
    ) -> Response:  # fmt: skip
        from coldwatch.console.web import _Form  # noqa: PLC0415 - web imports this module

        ctx = self.ctx
        records = instruments_of(ctx)
        found = await records.instrument(serial)
        if found is None:
            raise PageError(status.HTTP_404_NOT_FOUND, f"no instrument with serial {serial!r}")
        calibrations = await records.calibrations(found.id)
        signatures = await records.signatures_of(calibrations)
        later = {c.supersedes: c.id for c in calibrations if c.supersedes is not None}
        zone = ctx.config.site.timezone
        shown = [
            (c, calibration_json(c, signatures.get(c.id, []), zone, later.get(c.id))) for c in calibrations
        ]
        return self.console.render(
            request,
            "instrument.html",
            who,
            code=code,
            title=f"Instrument {found.serial}",
            i=found,
            stays=await records.stays(instrument_id=found.id),
            calibrations=list(reversed(shown)),
            correctable=[c for c in calibrations if c.id not in later],
            may_calibrate=who.may(Permission.CALIBRATE),
            meanings=ctx.config.identity.meanings("calibrate"),
            first_signing=not who.signed_in_session,
            error=error,
            form=form or _Form({}),
            done=_DONE.get(request.query_params.get("done", "")),
        )

    async def change(self, who: Principal, form: _Form) -> str:
        from coldwatch.console.web import _parse_local  # noqa: PLC0415 - web imports this module

        if not who.may(Permission.INSTRUMENTS_MANAGE):
            raise PageError(status.HTTP_403_FORBIDDEN, f"role {who.role!r} may not change instruments")
        records = instruments_of(self.ctx)
        what = form.get("change")
        reason = form.text("reason", "A reason")
        if what == "register":
            await records.register(
                who,
                serial=form.text("serial", "The serial number", most=100),
                model=form.text("model", "The model", most=200),
                manufacturer=form.text("manufacturer", "The manufacturer", most=200),
                reason=reason,
                now_us=self.now_us(),
            )
            return "registered"
        device = form.text("device", "The monitoring point", most=200)
        at = _parse_local(form.get("at"), self.console.zone)
        if what == "remove":
            await records.remove(who, device, reason=reason, now_us=self.now_us(), at_us=at)
            return "removed"
        if what not in {"install", "swap"}:
            raise PageError(status.HTTP_400_BAD_REQUEST, "choose install, swap or remove")
        act = records.install if what == "install" else records.swap
        serial = form.text("serial", "The instrument", most=100)
        await act(who, device, serial, reason=reason, now_us=self.now_us(), at_us=at)
        return "installed" if what == "install" else "swapped"

    def _record(self, form: _Form) -> dict[str, object]:
        """The calibration's fields from the form (times in site time)."""
        from coldwatch.console.web import _parse_local  # noqa: PLC0415 - web imports this module

        performed = _parse_local(form.get("performed"), self.console.zone)
        due = _parse_local(form.get("due"), self.console.zone)
        if performed is None or due is None:
            raise PageError(status.HTTP_400_BAD_REQUEST, "give when it was calibrated and when it is due")
        if form.get("passed") not in {"yes", "no"}:
            raise PageError(status.HTTP_400_BAD_REQUEST, "say whether it passed")
        supersedes = form.get("supersedes")
        if supersedes and not (supersedes.isdigit() and len(supersedes) < 19):
            raise PageError(status.HTTP_400_BAD_REQUEST, "choose the record to correct")
        return {
            "performed_us": performed,
            "due_us": due,
            "passed": form.get("passed") == "yes",
            "supersedes": int(supersedes) if supersedes else None,
            "certificate": form.text("certificate", "The certificate reference", most=200),
            "as_found": form.text("as_found", "As found"),
            "as_left": form.text("as_left", "As left"),
            "performed_by": form.text("performed_by", "Performed by", most=200),
        }

    async def calibrate(self, request: Request, who: Principal, serial: str, form: _Form) -> None:
        if not who.may(Permission.CALIBRATE):
            raise PageError(status.HTTP_403_FORBIDDEN, f"role {who.role!r} may not record calibrations")
        meaning = form.text("meaning", "The meaning", most=100)
        reason = form.text("reason", "A reason")
        password = form.get("password")[:1024]
        if not password:
            raise PageError(status.HTTP_400_BAD_REQUEST, "your password is required to sign")
        fields = self._record(form)
        signed = await self.ctx.identity.verify_signer(
            action="calibrate",
            permission=Permission.CALIBRATE,
            meaning=meaning,
            user=form.get("user").strip() or None,
            password=password,
            client=client_address(request),
            session=who,
        )
        await instruments_of(self.ctx).calibrate(
            SignerIdentity(signed.name, signed.full_name, signed.role),
            serial,
            meaning=meaning,
            reason=reason,
            now_us=self.now_us(),
            **fields,  # type: ignore[arg-type]
        )

    # ----- the routes' bodies ---------------------------------------------------------------
    async def page_list(self, request: Request) -> Response:
        who = await self.console._who(request)  # noqa: SLF001 - the console's own helper
        if isinstance(who, Response):
            return who
        return await self.listing(request, who)

    async def post_change(self, request: Request) -> Response:
        from coldwatch.console.web import PREFIX, _form  # noqa: PLC0415 - web imports this module

        who = await self.console._who(request)  # noqa: SLF001
        if isinstance(who, Response):
            return who
        try:
            await self.console._csrf(request)  # noqa: SLF001
            done = await self.change(who, await _form(request))
        except (IdentityError, WriteRefusedError) as exc:
            code = exc.status if isinstance(exc, IdentityError) else status.HTTP_409_CONFLICT
            return await self.listing(request, who, code=code, error=str(exc))
        except PageError as exc:
            return await self.listing(request, who, code=exc.code, error=exc.message)
        self.console.calibration.invalidate()
        return RedirectResponse(f"{PREFIX}/instruments?done={done}", status.HTTP_303_SEE_OTHER)

    async def page_detail(self, request: Request, serial: str) -> Response:
        who = await self.console._who(request)  # noqa: SLF001
        if isinstance(who, Response):
            return who
        try:
            return await self.detail(request, who, serial)
        except PageError as exc:
            return self.console._error(request, who, exc.code, exc.message)  # noqa: SLF001

    async def post_calibrate(self, request: Request, serial: str) -> Response:
        from coldwatch.console.web import PREFIX, _Form, _form  # noqa: PLC0415 - web imports this module

        who = await self.console._who(request)  # noqa: SLF001
        if isinstance(who, Response):
            return who
        form = _Form({})
        try:
            await self.console._csrf(request)  # noqa: SLF001
            form = await _form(request)
            await self.calibrate(request, who, serial, form)
        except (IdentityError, PageError, WriteRefusedError) as exc:
            return await self.refused(request, who, serial, exc, form)
        self.console.calibration.invalidate()
        target = f"{PREFIX}/instruments/{quote(serial, safe='')}?done=calibrated"
        return RedirectResponse(target, status.HTTP_303_SEE_OTHER)

    async def refused(
        self, request: Request, who: Principal, serial: str, exc: Exception, form: _Form
    ) -> Response:
        """The instrument page again with why the calibration was refused (or the error page)."""
        if isinstance(exc, IdentityError):
            code, message = exc.status, str(exc)
            if code == status.HTTP_401_UNAUTHORIZED:
                message = (
                    "Password not accepted: the signature was refused (repeated failures lock the account)."
                )
        elif isinstance(exc, PageError):
            code, message = exc.code, exc.message
        else:
            code, message = status.HTTP_409_CONFLICT, str(exc)
        try:
            return await self.detail(request, who, serial, code=code, error=message, form=form)
        except PageError as missing:
            return self.console._error(request, who, missing.code, missing.message)  # noqa: SLF001


def instrument_pages(console: Console) -> APIRouter:
    """The routes of the instrument pages, for the console to mount."""
    # Mounted into the console's router, which adds the /console prefix.
    router = APIRouter(prefix="/instruments", include_in_schema=False)
    pages = _Pages(console)

    @router.get("")
    async def instruments_page(request: Request) -> Response:
        return await pages.page_list(request)

    @router.post("")
    async def instruments_change(request: Request) -> Response:
        return await pages.post_change(request)

    @router.get("/{serial}")
    async def instrument_page(request: Request, serial: str) -> Response:
        return await pages.page_detail(request, serial)

    @router.post("/{serial}/calibrate")
    async def instrument_calibrate(request: Request, serial: str) -> Response:
        return await pages.post_calibrate(request, serial)

    return router
