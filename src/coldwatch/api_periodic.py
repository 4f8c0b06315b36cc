"""``POST /api/v1/reports/periodic``: generate a periodic environmental report (operator or qa).

The body names the points (``site``, optionally ``area`` and ``devices``) and the period:
``period`` (day, week or month) and ``date``, or ``from`` and ``to`` (dates, ``to``
excluded), in the site's time zone. The answer is the stored report, as ``GET
/api/v1/reports/{id}`` gives it; QA then signs it as reviewed there. Never a service token.
Mounted by the daemon next to the report routes: ``periodic_router(ctx)``.
"""

# No "from __future__ import annotations": FastAPI reads the endpoint signatures at run time.

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field

from coldwatch.api import ApiContext
from coldwatch.api_reports import report_json
from coldwatch.identity_model import Principal
from coldwatch.records.periodic import Scope, ScopeError, generate_periodic
from coldwatch.records.periods import requested_period
from coldwatch.records.store import ReportStore
from coldwatch.roles import Permission
from coldwatch.web_auth import refusals

__all__ = ["PeriodicBody", "periodic_router"]

_Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
_Day = Annotated[
    str, Field(pattern=r"^\d{4}-\d{2}(-\d{2})?$", description="YYYY-MM-DD (YYYY-MM for a month)")
]


class PeriodicBody(BaseModel):
    """What to report on and over which period."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    site: _Name
    area: _Name | None = None
    devices: list[_Name] = Field(default_factory=list, max_length=10_000)
    period: Literal["day", "week", "month"] | None = None
    date: _Day | None = None
    start: _Day | None = Field(None, alias="from")
    end: _Day | None = Field(None, alias="to")


def periodic_router(ctx: ApiContext) -> APIRouter:
    """The generate route of periodic reports."""
    router = APIRouter(prefix="/api/v1")
    reports = ReportStore(ctx.reviews.store, ctx.config.site.timezone)
    Generator = Annotated[Principal, Depends(ctx.auth.require(Permission.REPORT_GENERATE))]  # noqa: N806

    @router.post("/reports/periodic", status_code=status.HTTP_201_CREATED)
    async def periodic_report(body: PeriodicBody, who: Generator, request: Request) -> dict[str, Any]:
        """Generate and store the periodic report of a site, area or device set over a period."""
        await ctx.auth.csrf(request)
        now_us = ctx.clock_us()
        try:
            period = requested_period(
                body.period, body.date, body.start, body.end, ctx.config.site.timezone, now_us
            )
            scope = Scope(body.site, body.area, tuple(body.devices))
            with refusals():
                report = await generate_periodic(ctx.storage, ctx.config, scope, period, who.name, now_us)
        except (ValueError, ScopeError) as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
        found = None if report.report_id is None else await reports.get(report.report_id)
        if found is None:
            raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, "the report was not stored")
        return await report_json(reports, found)

    return router
