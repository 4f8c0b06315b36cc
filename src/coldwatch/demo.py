"""``coldwatch demo``: a sample facility on a fresh machine with nothing else running.

SQLite in a data folder, the simulators publishing SIMULATED readings, and a broker: the
configured one if it answers, else Mosquitto if installed, else the embedded amqtt.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from importlib import resources
from pathlib import Path

from coldwatch.broker import (
    RunningBroker,
    broker_reachable,
    find_mosquitto,
    free_port,
    run_amqtt,
    run_mosquitto,
)
from coldwatch.config import Config, load_config, parse_config
from coldwatch.daemon import Daemon

__all__ = ["bundled_demo_config", "run_demo"]

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def bundled_demo_config() -> Config:
    """The demo facility shipped with coldwatch (config/demo.yaml)."""
    source = Path(__file__).resolve().parents[2] / "config" / "demo.yaml"
    if source.is_file():
        return load_config(source)
    text = resources.files("coldwatch").joinpath("data/demo.yaml").read_text(encoding="utf-8")
    return parse_config(text, "demo.yaml (bundled)")


def _port_free(host: str, port: int) -> bool:
    import socket  # noqa: PLC0415

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


async def _choose_broker(
    config: Config, choice: str, data_dir: Path, stack: contextlib.AsyncExitStack
) -> tuple[Config, str]:
    broker = config.mqtt.broker
    if choice == "auto" and await broker_reachable(broker.host, broker.port):
        return config, f"configured broker {config.mqtt.url}"
    host = broker.host if broker.host in LOOPBACK else "127.0.0.1"
    port = broker.port if _port_free(host, broker.port) else free_port(host)
    running: RunningBroker
    if choice == "mosquitto" or (choice == "auto" and find_mosquitto()):
        running = await stack.enter_async_context(
            run_mosquitto(port, host=host, data_dir=data_dir / "broker")
        )
        mqtt = config.mqtt.model_copy(update={"url": running.url})
    else:
        running = await stack.enter_async_context(run_amqtt(port, host=host))
        # amqtt speaks MQTT 3.1.1 only: persistent session through clean_session=False.
        mqtt = config.mqtt.model_copy(update={"url": running.url, "protocol": "3.1.1"})
    return config.model_copy(update={"mqtt": mqtt}), f"embedded {running.kind} broker {running.url}"


async def run_demo(config_path: str | None, data_dir: Path, broker: str = "auto") -> int:
    """Run broker, simulators and collector until Ctrl-C / SIGTERM."""
    from simulators import run_simulation  # noqa: PLC0415

    config = load_config(config_path) if config_path else bundled_demo_config()
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if "COLDWATCH_DB" not in os.environ and "COLDWATCH_STORAGE__PATH" not in os.environ:
        config = config.model_copy(
            update={"storage": config.storage.model_copy(update={"path": data_dir / "coldwatch.db"})}
        )
    http = config.http
    if not _port_free(http.host, http.port):
        http = http.model_copy(update={"listen": f"{http.host}:0"})
        config = config.model_copy(update={"http": http})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        config, broker_text = await _choose_broker(config, broker, data_dir, stack)

        kinds = ", ".join(sorted({d.kind.value for d in config.devices}))

        def ready(daemon: Daemon) -> None:
            base = f"http://{config.http.host}:{daemon.http_port}"
            print(
                "coldwatch demo is running (device readings are SIMULATED)\n"
                f"  broker:   {broker_text}\n"
                f"  console:  {base}/console\n"
                f"  metrics:  {base}/metrics\n"
                f"  health:   {base}/healthz  {base}/readyz\n"
                f"  database: {config.storage.path}\n"
                f"  devices:  {len(config.devices)} ({kinds})\n"
                f"  export:   COLDWATCH_DB={config.storage.path} {Path(sys.executable).parent / 'coldwatch'} "
                "export --config "
                f"{config.source} --device {config.devices[0].id}\n"
                "Press Ctrl-C to stop.",
                flush=True,
            )

        daemon = Daemon(config, on_ready=ready)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(daemon.run(stop), name="collector")
            tasks.create_task(run_simulation(config, seed=1, speed=1.0, stop=stop), name="simulators")
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)
    print("coldwatch demo stopped", flush=True)
    return 0
