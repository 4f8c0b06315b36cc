"""The reference a user would hand-write: aiomqtt, json, aiosqlite inserts in batches.

Kept in the benchmark as the baseline coldwatch is compared with. It subscribes with
QoS 1 on a persistent session, parses each message, and inserts its values in batches
of up to 1,000 messages (or every 50 ms). aiomqtt acknowledges on receipt: a crash loses
what was received but not committed (coldwatch acknowledges after commit).

    python benchmarks/baseline_collector.py HOST PORT PREFIX DB MESSAGES [SESSION_SUFFIX]
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import aiomqtt
import aiosqlite
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

BATCH = 1000
BATCH_DELAY_S = 0.05


def _session() -> Properties:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    return props


async def collect(
    host: str, port: int, prefix: str, db_path: str, messages: int, *, suffix: str = ""
) -> None:
    """Subscribe (creating the session) and store until ``messages`` are committed; ``0``: subscribe only."""
    async with aiosqlite.connect(db_path) as db:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute(
            "CREATE TABLE IF NOT EXISTS readings (device TEXT, metric TEXT, ts REAL, seq INTEGER, value REAL)"
        )
        async with aiomqtt.Client(
            host,
            port,
            identifier=f"{prefix}-baseline{suffix}",
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=_session(),
            max_queued_incoming_messages=0,
        ) as client:
            await client.subscribe(f"{prefix}/#", qos=1)
            if messages == 0:
                return
            rows: list[tuple[str, str, float, int, float]] = []
            stored = 0
            pending = 0
            flush_at = time.monotonic() + BATCH_DELAY_S
            first: float | None = None
            async for message in client.messages:
                if first is None:
                    first = time.perf_counter()
                body = json.loads(message.payload)
                device = str(message.topic).split("/")[-2]
                for metric, value in body["values"].items():
                    rows.append((device, metric, body["ts"], body["seq"], float(value)))
                pending += 1
                if pending >= BATCH or time.monotonic() >= flush_at or stored + pending >= messages:
                    await db.executemany("INSERT INTO readings VALUES (?, ?, ?, ?, ?)", rows)
                    await db.commit()
                    stored += pending
                    rows.clear()
                    pending = 0
                    flush_at = time.monotonic() + BATCH_DELAY_S
                if stored >= messages:
                    break
            assert first is not None
            print(json.dumps({"messages": stored, "seconds": time.perf_counter() - first}))


if __name__ == "__main__":
    host, port, prefix, db, count = sys.argv[1:6]
    asyncio.run(collect(host, int(port), prefix, db, int(count), suffix="".join(sys.argv[6:7])))
