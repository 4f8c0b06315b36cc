"""The daemon's HTTP server answers on a kept-alive connection without waiting for a delayed ACK."""

from __future__ import annotations

import asyncio
import socket
import statistics
import time

import httpx
from prometheus_client import CollectorRegistry

from coldwatch.http import HttpServer, build_app

DELAYED_ACK_S = 0.040  # Linux's delayed ACK: what a response without TCP_NODELAY waits for


async def _ready() -> dict[str, bool]:
    return {"test": True}


async def test_kept_alive_requests_do_not_wait_for_delayed_ack() -> None:
    """Requests on one kept-alive connection (as browsers send pages) are answered well under 40 ms."""
    server = HttpServer(build_app(CollectorRegistry(), _ready), "127.0.0.1", 0)
    serving = asyncio.create_task(server.serve())
    transport = httpx.AsyncHTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{server.port}", transport=transport
        ) as client:
            times = []
            for _ in range(15):
                started = time.perf_counter()
                answer = await client.get("/readyz")
                times.append(time.perf_counter() - started)
                assert answer.status_code == 200
        # The first request opens the connection; the others reuse it.
        assert statistics.median(times[1:]) < DELAYED_ACK_S * 0.75, times
    finally:
        server.stop()
        await asyncio.wait_for(serving, 10)
