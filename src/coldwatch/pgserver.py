"""A private PostgreSQL server for tests and benchmarks: its own cluster, on a free port.

The tests never rely on a PostgreSQL that happens to run on the machine: they start
their own, so that they pass on a fresh machine too, and fail loudly (never skip) when
the server binaries are missing. PostgreSQL refuses to run as root, so when started by
root the cluster belongs to the ``postgres`` account that Debian's package creates.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from coldwatch.broker import free_port, stop_process
from coldwatch.errors import StorageError

__all__ = ["RunningPostgres", "find_pg_bindir", "running_postgres", "start_postgres", "stop_postgres"]


@dataclass(frozen=True, slots=True)
class RunningPostgres:
    """A started server: its connection URL (database ``postgres``), data folder and process."""

    host: str
    port: int
    data_dir: Path
    process: subprocess.Popen[bytes]

    def url(self, database: str = "postgres") -> str:
        """``postgresql://`` URL of ``database`` on this server (user postgres, trust auth)."""
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    def log(self) -> str:
        """The server's log so far."""
        path = self.data_dir / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""


def find_pg_bindir() -> Path:
    """The folder holding ``initdb`` and ``postgres``: Debian's newest, else the PATH."""
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if debian:
        return Path(debian[-1]).parent
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise StorageError(
        "PostgreSQL server binaries (initdb, postgres) not found: install Debian's postgresql package"
    )


def _owner() -> tuple[int | None, int | None]:
    """Uid and gid to run the server as: ``postgres`` when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None, None
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError as exc:
        raise StorageError("running as root and there is no 'postgres' account to run PostgreSQL as") from exc
    return entry.pw_uid, entry.pw_gid


def start_postgres(
    *, host: str = "127.0.0.1", port: int | None = None, durable: bool = False, timeout_s: float = 60.0
) -> RunningPostgres:
    """Initialise a cluster in a new temporary folder and start it; wait until it accepts connections.

    ``durable=False`` turns fsync off (tests); benchmarks pass ``durable=True`` so that a
    commit costs what it costs in production.
    """
    bindir = find_pg_bindir()
    uid, gid = _owner()
    # Not under pytest's temporary folders: those are private to root, the server runs as postgres.
    data_dir = Path(tempfile.mkdtemp(prefix="coldwatch-pg-"))
    if uid is not None and gid is not None:
        os.chown(data_dir, uid, gid)
    cluster = data_dir / "cluster"
    init = subprocess.run(
        [
            str(bindir / "initdb"),
            "-D",
            str(cluster),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        capture_output=True,
        check=False,
        user=uid,
        group=gid,
        cwd=data_dir,
    )
    if init.returncode != 0:
        raise StorageError(f"initdb failed: {init.stderr.decode(errors='replace')[-2000:]}")
    port = port or free_port(host)
    settings = {
        "listen_addresses": host,
        "port": str(port),
        "unix_socket_directories": str(data_dir),
        "max_connections": "200",
        "fsync": "on" if durable else "off",
        "synchronous_commit": "on" if durable else "off",
        "full_page_writes": "on" if durable else "off",
    }
    args = [str(bindir / "postgres"), "-D", str(cluster)]
    for key, value in settings.items():
        args += ["-c", f"{key}={value}"]
    log_path = data_dir / "postgres.log"
    with log_path.open("ab") as log_file:
        if uid is not None:
            os.chown(log_path, uid, gid or 0)
        process = subprocess.Popen(
            args, stdout=log_file, stderr=log_file, start_new_session=True, user=uid, group=gid, cwd=data_dir
        )
    server = RunningPostgres(host, port, data_dir, process)
    deadline = time.monotonic() + timeout_s
    while not _accepts(bindir, host, port):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process(process)
            raise StorageError(f"PostgreSQL did not start on {host}:{port}:\n{server.log()[-2000:]}")
        time.sleep(0.1)
    return server


def _accepts(bindir: Path, host: str, port: int) -> bool:
    ready = bindir / "pg_isready"
    probe = [str(ready), "-q", "-h", host, "-p", str(port), "-U", "postgres"]
    return subprocess.run(probe, check=False).returncode == 0


def stop_postgres(server: RunningPostgres) -> None:
    """Stop the server (fast shutdown) and remove its folder."""
    stop_process(server.process, timeout_s=30)
    shutil.rmtree(server.data_dir, ignore_errors=True)


@contextlib.contextmanager
def running_postgres(**kwargs: object) -> Iterator[RunningPostgres]:
    """A private server for the duration of the block."""
    server = start_postgres(**kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        stop_postgres(server)
