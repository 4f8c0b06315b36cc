"""Every HTTP route a collector serves besides metrics and health: the API and the console.

One place, so that a single collector and every cluster member serve the same routes.
"""

from __future__ import annotations

from fastapi import APIRouter

from coldwatch.api import ApiContext, build_router
from coldwatch.api_export import export_router
from coldwatch.api_instruments import instruments_router
from coldwatch.api_periodic import periodic_router
from coldwatch.api_reports import reports_router
from coldwatch.console.web import Console
from coldwatch.console.web_batches import BatchPages
from coldwatch.console.web_periodic import PeriodicPages
from coldwatch.console.web_reports import ReportPages

__all__ = ["all_routes"]


def all_routes(api_context: ApiContext, console: Console) -> APIRouter:
    """The API (alarms, reports, periodic reports, instruments, exports, batches) and the console's pages."""
    api = APIRouter()
    api.include_router(build_router(api_context))
    api.include_router(reports_router(api_context))
    api.include_router(periodic_router(api_context))
    api.include_router(instruments_router(api_context))
    api.include_router(export_router(api_context))
    api.include_router(console.router)
    api.include_router(ReportPages(console).router)
    api.include_router(BatchPages(console).router)
    api.include_router(PeriodicPages(console).router)
    return api
