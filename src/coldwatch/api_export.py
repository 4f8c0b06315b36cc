"""``GET /api/v1/readings.csv``: the readings export of ``coldwatch export``, over HTTP.

The same CSV (``out_of_calibration`` included), streamed in pieces as it is read, on a
read-only connection of its own per request: a long export never holds the collector's
writer (SQLite) or its pool (PostgreSQL).
"""

# No "from __future__ import annotations": FastAPI must see the local dependency aliases.

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.responses import StreamingResponse

from coldwatch.api import ApiContext
from coldwatch.api_input import Text, UtcTime, to_us
from coldwatch.export import csv_chunks
from coldwatch.identity_model import Principal
from coldwatch.roles import Permission
from coldwatch.storage import open_existing

__all__ = ["export_router"]


def export_router(ctx: ApiContext) -> APIRouter:
    """The readings export route."""
    router = APIRouter(prefix="/api/v1")
    Viewer = Annotated[Principal, Depends(ctx.auth.require(Permission.READ))]  # noqa: N806 - a type alias

    @router.get("/readings.csv")
    async def readings_csv(
        _: Viewer, device: Text | None = None, since: UtcTime | None = None, until: UtcTime | None = None
    ) -> StreamingResponse:
        """Stored readings as CSV (one row per metric value), ordered by device, time and metric."""
        if device is not None and device not in ctx.config.device_map():
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no device {device!r}")
        storage = open_existing(ctx.config.storage.location)
        await storage.open()

        async def body() -> AsyncIterator[str]:
            try:
                async for chunk in csv_chunks(
                    storage,
                    device_id=device,
                    since_us=None if since is None else to_us(since),
                    until_us=None if until is None else to_us(until),
                ):
                    yield chunk
            finally:
                await storage.close()

        return StreamingResponse(
            body(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="coldwatch-readings.csv"'},
        )

    return router
