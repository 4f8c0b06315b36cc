"""MQTT over TLS: a real Mosquitto with a TLS listener, the collector trusting its CA."""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from coldwatch.broker import RunningBroker, free_port, start_mosquitto, stop_process, wait_listening
from tests.conftest import (
    check_backlog_drained_within_queue,
    device_entries,
    write_config,
)

HOST = "127.0.0.1"


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (ca, certificate, key)."""
    openssl = shutil.which("openssl")
    assert openssl is not None, "openssl is required by the TLS tests (apt-get install openssl)"
    ca_key, ca, key, csr, cert = (
        folder / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem")
    )
    ext = folder / "san.ext"
    ext.write_text(f"subjectAltName = IP:{HOST}\n", encoding="utf-8")
    for args in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2",
         "-subj", "/CN=coldwatch test CA"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={HOST}"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
         "-days", "2", "-extfile", ext],
    ):  # fmt: skip
        subprocess.run([openssl, *map(str, args)], check=True, capture_output=True, timeout=60)
    return ca, cert, key


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningBroker, Path]]:
    """Mosquitto listening with TLS only; yields it and the CA file that signed its certificate."""
    folder = tmp_path_factory.mktemp("mosquitto-tls")
    ca, cert, key = make_certificates(folder)
    port = free_port()
    # Run as root, Mosquitto would switch to its own account, which cannot read the test's
    # private folder: it keeps the account it was started with.
    keep_user = "user root\n" if os.geteuid() == 0 else ""
    process = start_mosquitto(folder, HOST, port, f"certfile {cert}\nkeyfile {key}\n{keep_user}")
    wait_listening(HOST, port, process, folder, 15)
    yield RunningBroker(HOST, port, "mosquitto", process), ca
    stop_process(process)


async def publish_tls(broker: RunningBroker, ca: Path, messages: list[tuple[str, bytes]]) -> None:
    context = ssl.create_default_context(cafile=str(ca))
    async with aiomqtt.Client(
        broker.host, broker.port, identifier=f"pub-{uuid.uuid4().hex[:8]}", tls_context=context, timeout=30
    ) as client:
        for start in range(0, len(messages), 200):
            await asyncio.gather(*(client.publish(t, p, qos=1) for t, p in messages[start : start + 200]))


async def test_a_backlog_over_tls_is_stored_whole_through_read_pauses(
    tls_broker: tuple[RunningBroker, Path], prefix: str, tmp_path: Path
) -> None:
    """Over TLS, a backlog larger than the ingest queue is stored whole, the reader pausing on the way."""
    broker, ca = tls_broker
    devices = device_entries("incubator", 10)
    config = write_config(
        tmp_path / "c.yaml",
        broker=broker,
        prefix=prefix,
        devices=devices,
        mqtt={"url": f"mqtts://{broker.host}:{broker.port}", "ca_file": str(ca), "receive_maximum": 100},
        ingest={"queue_max": 600},
    )
    await check_backlog_drained_within_queue(config, functools.partial(publish_tls, broker, ca))
