"""``coldwatch demo``: a sample facility on a fresh machine with nothing else running.

SQLite in a data folder, the simulators publishing SIMULATED readings, and a broker: the
configured one if it answers, else Mosquitto if installed, else the embedded amqtt.

For the console it adds three DEMO-ONLY accounts (an operator, a QA reviewer and an
administrator), created through the identity service so the audit trail records them,
with random passwords kept in the data folder and printed on the demo's terminal only;
and it scripts one excursion (:data:`EXCURSION`) so that an alarm is waiting for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass
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
from coldwatch.config import Config, DeviceConfig, load_config, parse_config
from coldwatch.daemon import Daemon
from coldwatch.demo_records import DUE_SOON_DEVICE, ensure_demo_instruments
from coldwatch.errors import ColdwatchError
from coldwatch.identity import BOOTSTRAP, Identity
from coldwatch.identity_model import Principal
from coldwatch.storage.identity_store import identity_store

__all__ = [
    "DEMO_USERS",
    "EXCURSION",
    "DemoUser",
    "Excursion",
    "bundled_demo_config",
    "demo_passwords",
    "ensure_demo_users",
    "excursion_device",
    "run_demo",
]

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def bundled_demo_config() -> Config:
    """The demo facility shipped with coldwatch (config/demo.yaml)."""
    source = Path(__file__).resolve().parents[2] / "config" / "demo.yaml"
    if source.is_file():
        return load_config(source)
    text = resources.files("coldwatch").joinpath("data/demo.yaml").read_text(encoding="utf-8")
    return parse_config(text, "demo.yaml (bundled)")


@dataclass(frozen=True, slots=True)
class DemoUser:
    """One of the demo's accounts."""

    name: str
    full_name: str
    role: str
    does: str  # what to try with it, printed next to it


DEMO_USERS = (
    DemoUser("olga", "Olga Operator (demo)", "operator", "acknowledge the alarm"),
    DemoUser("quinn", "Quinn QA (demo)", "qa", "review it once acknowledged"),
    DemoUser("ada", "Ada Admin (demo)", "admin", "manage users"),
)
PASSWORD_FILE = "DEMO-ONLY-passwords.txt"  # noqa: S105 - a file name
_DEMO_ACTOR = "coldwatch demo"
_REASON = "DEMO-ONLY account of coldwatch demo (its password is printed on the demo's terminal)"


@dataclass(frozen=True, slots=True)
class Excursion:
    """The demo's scripted excursion: a burst of particles in a grade A particle counter."""

    start_s: float  # after the simulators start (simulated seconds, = wall seconds in the demo)
    duration_s: float
    factor: float  # particle counts multiplied by this (about 5x the action limit at 100)
    story: str


EXCURSION = Excursion(
    start_s=30.0,
    duration_s=600.0,
    factor=100.0,
    story="a material transfer through the grade A filling zone (SIMULATED)",
)


def excursion_device(config: Config) -> DeviceConfig | None:
    """The device the scripted excursion happens on: the first grade A particle counter, if any."""
    return next((d for d in config.devices if d.kind.value == "particle_counter" and d.grade == "A"), None)


def demo_passwords(data_dir: Path) -> dict[str, str]:
    """The demo accounts' passwords: random per data folder, kept there (owner-only) for later runs."""
    path = data_dir / PASSWORD_FILE
    known: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            name, sep, password = line.partition(" ")
            if sep and not line.startswith("#"):
                known[name] = password
    missing = [u.name for u in DEMO_USERS if u.name not in known]
    if missing:
        for name in missing:
            known[name] = "demo-" + secrets.token_urlsafe(12)
        lines = [
            "# DEMO-ONLY passwords of the coldwatch demo's accounts in this data folder.",
            "# Never use these accounts, or this data folder, for real records.",
            *(f"{u.name} {known[u.name]}" for u in DEMO_USERS),
        ]
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write("\n".join(lines) + "\n")
    return known


async def ensure_demo_users(identity: Identity, passwords: dict[str, str]) -> list[str]:
    """Create the demo accounts that do not exist yet; return the names created.

    The first administrator is created by the bootstrap, the others by the demo acting as
    an administrator ("coldwatch demo" in the audit trail); each is audited
    (``user.created``), then its forced password change is waived
    (``user.password_change_waived``, by "coldwatch demo"): the password shown on the
    terminal is the one to sign in with. Existing accounts are left as they are.
    """
    created: list[str] = []
    admin = next(u for u in DEMO_USERS if u.role == "admin")
    existing = {a.name: a for a in await identity.accounts()}
    if admin.name not in existing:
        await identity.add_user(
            f"{BOOTSTRAP} ({_DEMO_ACTOR})",
            admin.name,
            admin.full_name,
            "admin",
            passwords[admin.name],
            _REASON,
        )
        await identity.waive_forced_change(_DEMO_ACTOR, admin.name, _REASON)
        created.append(admin.name)
    # The demo itself adds the others, under its own name in the audit trail (no one signed in).
    acting = Principal(_DEMO_ACTOR, _DEMO_ACTOR, "admin", "person")
    for user in DEMO_USERS:
        if user.name in existing or user.name in created:
            continue
        await identity.add_user(acting, user.name, user.full_name, user.role, passwords[user.name], _REASON)
        await identity.waive_forced_change(_DEMO_ACTOR, user.name, _REASON)
        created.append(user.name)
    return created


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


def _banner(  # noqa: PLR0917 - one printout of everything the demo set up
    config: Config,
    daemon: Daemon,
    broker_text: str,
    passwords: dict[str, str],
    created: list[str],
    problem: str | None,
) -> str:
    base = f"http://{config.http.host}:{daemon.http_port}"
    kinds = ", ".join(sorted({d.kind.value for d in config.devices}))
    rule = "=" * 78
    lines = [
        rule,
        "coldwatch demo is running (device readings are SIMULATED)",
        "",
        f"  CONSOLE:  {base}/console   <- open this in a browser and sign in",
        "",
        "  DEMO-ONLY accounts (passwords random for this data folder; never use them",
        "  for real records). No password change is asked at sign-in in the demo.",
    ]
    for user in DEMO_USERS:
        state = "new" if user.name in created else "exists"
        lines.append(
            f"    {user.role:<9} {user.name:<6} password {passwords[user.name]:<22} {user.does} ({state})"
        )
    if problem is not None:
        lines.append(f"  demo accounts: not all could be created: {problem}")
    lines.append("  (existing accounts keep any password changed since in the console)")
    if len(created) < len(DEMO_USERS):
        lines += [
            "",
            "  NOTE: this data folder was used before. The restart itself may raise alarms",
            "  (communication loss: devices reported offline while the demo was stopped; data",
            "  integrity: the broker lost the collector's session). They are true and clear",
            "  within seconds; for a clean start, run the demo with --data and a new folder.",
        ]
    elif broker_text.startswith("configured broker"):
        lines += [
            "",
            "  NOTE: the demo uses a broker that was already running. If an earlier demo used",
            "  it, the broker still holds those devices' last status (offline): the first",
            "  seconds may raise communication-loss alarms that clear as the simulators report.",
        ]
    device = excursion_device(config)
    if device is not None:
        lines += [
            "",
            f"  EXCURSION: {EXCURSION.story}: particle counts on {device.id}",
            (
                f"  ({device.site}/{device.area}) rise {EXCURSION.start_s:g} s after start for"
                f" {EXCURSION.duration_s / 60:g} min; an ACTION alarm follows within seconds."
            ),
            (
                f"  Sign in as {DEMO_USERS[0].name}, open Alarms, acknowledge it; then sign in as"
                f" {DEMO_USERS[1].name} to review it."
            ),
        ]
    if DUE_SOON_DEVICE in config.device_map():
        lines += [
            "",
            "  INSTRUMENTS: each point has a calibrated DEMO instrument (Instruments page); the",
            f"  one on {DUE_SOON_DEVICE} is due in 20 days, so a calibration-due ALERT is raised.",
        ]
    lines += [
        "",
        f"  broker:   {broker_text}",
        f"  metrics:  {base}/metrics",
        f"  health:   {base}/healthz  {base}/readyz",
        f"  database: {config.storage.path}",
        f"  devices:  {len(config.devices)} ({kinds})",
        (
            f"  export:   COLDWATCH_DB={config.storage.path} {Path(sys.executable).parent / 'coldwatch'} "
            f"export --config {config.source} --device {config.devices[0].id}"
        ),
        rule,
        "Press Ctrl-C to stop.",
    ]
    return "\n".join(lines)


async def run_demo(config_path: str | None, data_dir: Path, broker: str = "auto") -> int:
    """Run broker, simulators and collector until Ctrl-C / SIGTERM."""
    from simulators import build_models, run_simulation  # noqa: PLC0415
    from simulators.models import ParticleCounterModel  # noqa: PLC0415

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
    passwords = demo_passwords(data_dir)
    seed = 1
    models = build_models(config.devices, seed)
    device = excursion_device(config)
    if device is not None:
        model = models[device.id]
        assert isinstance(model, ParticleCounterModel)
        model.start_activity(EXCURSION.start_s, EXCURSION.duration_s, EXCURSION.factor)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        config, broker_text = await _choose_broker(config, broker, data_dir, stack)

        async def set_up(daemon: Daemon) -> None:
            assert daemon.storage is not None
            identity = Identity(identity_store(daemon.storage), config.identity)
            created: list[str] = []
            problem = None
            try:
                created = await ensure_demo_users(identity, passwords)
                operator = DEMO_USERS[0].name
                await ensure_demo_instruments(
                    identity_store(daemon.storage), identity, config, (operator, passwords[operator]),
                    time.time_ns() // 1000,
                )  # fmt: skip
            except ColdwatchError as exc:
                problem = str(exc)
            print(_banner(config, daemon, broker_text, passwords, created, problem), flush=True)

        async with asyncio.TaskGroup() as tasks:

            def ready(daemon: Daemon) -> None:
                # In the collector's context: the accounts' audit entries are sealed by its key.
                tasks.create_task(set_up(daemon), name="demo-accounts", context=contextvars.copy_context())

            daemon = Daemon(config, on_ready=ready)
            tasks.create_task(daemon.run(stop), name="collector")
            tasks.create_task(
                run_simulation(config, seed=seed, speed=1.0, stop=stop, models=models), name="simulators"
            )
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)
    print("coldwatch demo stopped", flush=True)
    return 0
