"""Starting a broker of our own: Mosquitto (tests, demo) or the embedded amqtt (demo).

Mosquitto is started from the recommended configuration in config/mosquitto.conf: its
global settings (persistence, queue limits that never drop a lagging collector's QoS 1
messages) are kept and its example listeners replaced by one loopback listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from coldwatch.errors import BrokerUnavailableError

__all__ = [
    "RunningBroker",
    "broker_reachable",
    "find_mosquitto",
    "free_port",
    "recommended_mosquitto_conf",
    "run_amqtt",
    "run_mosquitto",
    "start_mosquitto",
    "stop_process",
    "wait_listening",
    "write_mosquitto_conf",
]

LISTENERS_MARKER = "# --- listeners"


@dataclass(frozen=True, slots=True)
class RunningBroker:
    """A broker we started: where it listens and how to stop it."""

    host: str
    port: int
    kind: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Its mqtt:// URL."""
        return f"mqtt://{self.host}:{self.port}"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def find_mosquitto() -> str | None:
    """The mosquitto binary, also where Debian installs it outside a user's PATH."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


def recommended_mosquitto_conf() -> str:
    """The text of the shipped config/mosquitto.conf."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[2] / "config" / "mosquitto.conf",):
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8")
    return resources.files("coldwatch").joinpath("data/mosquitto.conf").read_text(encoding="utf-8")


def _global_settings(conf: str) -> str:
    head, _, _ = conf.partition(LISTENERS_MARKER)
    kept = [
        line
        for line in head.splitlines()
        if not line.strip().startswith(("persistence_location", "pid_file", "log_dest"))
    ]
    return "\n".join(kept)


async def broker_reachable(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """Whether something accepts TCP connections at host:port."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def write_mosquitto_conf(data_dir: Path, host: str, port: int, extra: str = "") -> Path:
    """Write a broker configuration: the recommended global settings, one loopback listener."""
    data_dir.mkdir(parents=True, exist_ok=True)
    conf = data_dir / "mosquitto.conf"
    conf.write_text(
        f"{_global_settings(recommended_mosquitto_conf())}\n"
        f"persistence_location {data_dir}/\n"
        "log_dest stderr\n"
        f"listener {port} {host}\n"
        "allow_anonymous true\n"
        f"{extra}\n",
        encoding="utf-8",
    )
    return conf


def start_mosquitto(data_dir: Path, host: str, port: int, extra: str = "") -> subprocess.Popen[bytes]:
    """Start Mosquitto in the background (its log goes to ``data_dir/mosquitto.log``)."""
    binary = find_mosquitto()
    if binary is None:
        raise BrokerUnavailableError(f"mqtt://{host}:{port}", "no mosquitto binary on PATH or in /usr/sbin")
    conf = write_mosquitto_conf(data_dir, host, port, extra)
    with (data_dir / "mosquitto.log").open("ab") as log_file:
        return subprocess.Popen(
            [binary, "-c", str(conf)], stdout=log_file, stderr=log_file, start_new_session=True
        )


def wait_listening(
    host: str, port: int, process: subprocess.Popen[bytes], data_dir: Path, timeout_s: float
) -> None:
    """Block until the broker accepts connections; raise with its log if it does not."""
    deadline = time.monotonic() + timeout_s
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((host, port)) == 0:
                return
        if process.poll() is not None or time.monotonic() > deadline:
            raise BrokerUnavailableError(
                f"mqtt://{host}:{port}", f"mosquitto did not start:\n{mosquitto_log(data_dir)[-2000:]}"
            )
        time.sleep(0.05)


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """Terminate a child process, killing it if it does not exit in time."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.asynccontextmanager
async def run_mosquitto(
    port: int | None = None,
    *,
    host: str = "127.0.0.1",
    data_dir: Path | None = None,
    extra: str = "",
    startup_timeout_s: float = 10.0,
) -> AsyncIterator[RunningBroker]:
    """Run Mosquitto with the recommended settings on ``host:port`` until the block ends."""
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="coldwatch-broker-")))
        port = port or free_port(host)
        process = start_mosquitto(data_dir, host, port, extra)
        try:
            await asyncio.to_thread(wait_listening, host, port, process, data_dir, startup_timeout_s)
            yield RunningBroker(host, port, "mosquitto", process)
        finally:
            await asyncio.to_thread(stop_process, process)


@contextlib.asynccontextmanager
async def run_amqtt(port: int | None = None, *, host: str = "127.0.0.1") -> AsyncIterator[RunningBroker]:
    """Run the embedded amqtt broker (MQTT 3.1.1 only) in this event loop."""
    try:
        from amqtt.broker import Broker  # noqa: PLC0415 - optional dependency
    except ImportError as exc:
        raise BrokerUnavailableError(
            f"mqtt://{host}:{port}", "amqtt is not installed (pip install 'coldwatch[embedded-broker]')"
        ) from exc
    port = port or free_port(host)
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
    )
    await broker.start()
    try:
        yield RunningBroker(host, port, "amqtt")
    finally:
        await broker.shutdown()


def mosquitto_log(data_dir: Path) -> str:
    """The log of a broker started with ``data_dir`` (for error messages)."""
    path = data_dir / "mosquitto.log"
    return path.read_text(errors="replace") if path.exists() else ""
