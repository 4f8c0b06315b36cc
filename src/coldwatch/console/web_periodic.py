"""The console's periodic report page: choose the points and the period, generate, open the report.

- ``GET /console/periodic``: the form (site, area, devices, a day, week or month, or a
  range of dates; the site's time zone); any signed-in person sees it, operator and qa may
  generate.
- ``POST /console/periodic`` (CSRF): generate and store the report, then open its page
  (``/console/reports/{id}``), where QA signs it as reviewed.

Mounted by the daemon next to the report pages: ``PeriodicPages(console).router``.
"""

# No "from __future__ import annotations": FastAPI reads the endpoint signatures at run time.

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import RedirectResponse

from coldwatch.console.web import PREFIX, Console, _Form, _form
from coldwatch.console.web_more import PageError
from coldwatch.identity_model import IdentityError, Principal
from coldwatch.records.periodic import Scope, ScopeError, generate_periodic
from coldwatch.records.periods import requested_period
from coldwatch.roles import Permission

__all__ = ["PeriodicPages"]

_WHEN = ("day", "week", "month", "range")


class PeriodicPages:
    """The periodic report page of one console."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.ctx = console.ctx
        self.router = self._routes()

    def _routes(self) -> APIRouter:
        router = APIRouter(prefix=PREFIX, include_in_schema=False)
        console = self.console

        @router.get("/periodic")
        async def periodic_form(request: Request) -> Response:
            who = await console._who(request)  # noqa: SLF001 - the console's own session check
            if isinstance(who, Response):
                return who
            return self._page(request, who, _Form({}))

        @router.post("/periodic")
        async def periodic_generate(request: Request) -> Response:
            who = await console._who(request)  # noqa: SLF001
            if isinstance(who, Response):
                return who
            form = _Form({})
            try:
                await console._csrf(request)  # noqa: SLF001
                form = await _form(request)
                report_id = await self._generate(who, form)
            except PageError as exc:
                return self._page(request, who, form, code=exc.code, error=exc.message)
            return RedirectResponse(f"{PREFIX}/reports/{report_id}?done=generated", status.HTTP_303_SEE_OTHER)

        return router

    def _page(
        self, request: Request, who: Principal, form: _Form, *, code: int = 200, error: str | None = None
    ) -> Response:
        devices = self.ctx.config.devices
        sites = sorted({d.site for d in devices})
        areas = sorted({(d.site, d.area) for d in devices})
        return self.console.render(
            request,
            "periodic_form.html",
            who,
            code=code,
            title="Periodic report",
            sites=sites,
            areas=areas,
            form=form,
            error=error,
            may_generate=who.may(Permission.REPORT_GENERATE),
            when=form.get("when", "month"),
        )

    async def _generate(self, who: Principal, form: _Form) -> int:
        if not who.may(Permission.REPORT_GENERATE):
            raise PageError(status.HTTP_403_FORBIDDEN, f"role {who.role!r} may not generate reports")
        site = form.text("site", "The site", most=64)
        area = form.get("area").strip() or None
        names = tuple(n for n in form.get("devices").replace(",", " ").split() if n)
        when = form.get("when")
        if when not in _WHEN:
            raise PageError(status.HTTP_400_BAD_REQUEST, "choose a day, a week, a month or a range")
        now_us = self.ctx.clock_us()
        try:
            if when == "range":
                period = requested_period(
                    None, None, form.get("from"), form.get("to"), self.console.zone_name, now_us
                )
            else:
                period = requested_period(when, form.get("date"), None, None, self.console.zone_name, now_us)
            report = await generate_periodic(
                self.ctx.storage, self.ctx.config, Scope(site, area, names), period, who.name, now_us
            )
        except (ValueError, ScopeError) as exc:
            raise PageError(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
        except IdentityError as exc:
            raise PageError(exc.status, str(exc)) from exc
        if report.report_id is None:
            raise PageError(status.HTTP_500_INTERNAL_SERVER_ERROR, "the report was not stored")
        return report.report_id
