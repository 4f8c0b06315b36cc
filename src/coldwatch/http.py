"""The daemon's HTTP endpoint: /metrics, /healthz and /readyz, served in its event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import uvicorn
from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CollectorRegistry

from coldwatch import __version__
from coldwatch.api_input import BodyLimit, EncodableJSONResponse, install_error_handlers
from coldwatch.metrics import CONTENT_TYPE, render_chunks

__all__ = ["HttpServer", "build_app"]

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Awaitable[dict[str, bool]]]


async def _in_loop(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Chunks made in the event loop's thread (the state they read is the loop's), yielding between."""
    for chunk in chunks:
        yield chunk
        await asyncio.sleep(0)


def build_app(
    registry: CollectorRegistry, readiness: ReadinessCheck, api: APIRouter | None = None
) -> FastAPI:
    """The HTTP application: metrics for Prometheus, probes, and the API when given."""
    app = FastAPI(title="coldwatch", version=__version__, default_response_class=EncodableJSONResponse)
    install_error_handlers(app)
    app.add_middleware(BodyLimit)
    if api is not None:
        app.include_router(api)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return StreamingResponse(_in_loop(render_chunks(registry)), media_type=CONTENT_TYPE)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the event loop answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Readiness: connected to the broker and the database takes writes."""
        checks = await readiness()
        ready = all(checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    return app


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The daemon owns SIGINT/SIGTERM and shuts everything down in order.
        yield


class HttpServer:
    """Serves ``app`` on ``host:port`` (port 0 picks a free one, readable from ``port``)."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP given explicitly: asyncio sets TCP_NODELAY on accepted connections only
        # then; without it a keep-alive response waits 40 ms for the client's delayed ACK.
        self._socket = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self._socket.listen(128)
        self._socket.setblocking(False)
        self.host = host
        self.port: int = self._socket.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self._server = _Server(config)

    async def serve(self) -> None:
        """Serve until cancelled."""
        try:
            await self._server.serve(sockets=[self._socket])
        finally:
            self._socket.close()

    def stop(self) -> None:
        """Ask the server to finish its open requests and exit."""
        self._server.should_exit = True
