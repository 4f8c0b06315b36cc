"""A lost broker connection is logged as one clean warning line, never as an asyncio traceback."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from coldwatch.broker import RunningBroker
from coldwatch.mqtt import Delivery, MqttSource
from tests.conftest import device_entries, eventually, write_config


async def test_connection_lost_right_after_an_acknowledgement_logs_no_traceback(
    broker: RunningBroker, prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An acknowledgement queued in the loop turn in which the connection drops: no traceback logged."""
    caplog.set_level(logging.INFO)
    config = write_config(
        tmp_path / "c.yaml",
        broker=broker,
        prefix=prefix,
        devices=device_entries("incubator", 1),
        mqtt={"reconnect": {"initial_s": 0.1, "max_s": 0.3}},
    )
    changes: list[bool] = []
    source = MqttSource(config.mqtt, [f"{prefix}/#"], on_connection_change=changes.append)
    running = asyncio.create_task(source.run(lambda _: None))
    try:
        for round_ in range(3):
            await asyncio.wait_for(source.connected.wait(), 30)
            client = source._client
            assert client is not None
            now_us = time.time_ns() // 1000
            # The writer acknowledges a committed message (a PUBACK asks for the socket's
            # writability) and, before the loop turns, the broker connection is lost.
            source.ack([Delivery("t", b"{}", 1, 7, False, source._connection, now_us)])
            client._client._loop_rc_handle(paho.MQTT_ERR_CONN_LOST)
            await eventually(lambda n=round_: changes.count(False) > n, what="the disconnect seen")
            await asyncio.sleep(0.2)  # let what the lost connection left scheduled run
        await asyncio.wait_for(source.connected.wait(), 30)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    noisy = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info is not None]
    assert not noisy, [f"{r.name} {r.levelname} {r.getMessage()}" for r in noisy]
    lost = [r for r in caplog.records if r.name == "coldwatch.mqtt" and r.levelno == logging.WARNING]
    assert len(lost) >= 3
    assert all("\n" not in r.getMessage() for r in lost)
