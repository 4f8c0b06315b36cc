"""The audit trail of a running collector: what it records, and that tampering is found."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import asyncpg
import httpx
import pytest

from coldwatch.broker import RunningBroker
from tests.conftest import Backend, db_query, raise_comm_loss, running_daemon, silent_incubator_config
from tests.test_api import OPERATOR_TOKEN, VIEWER_TOKEN, api_users

__all__ = ["api_users"]


def coldwatch(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the coldwatch command line on ``config``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLDWATCH_")}
    return subprocess.run(
        [sys.executable, "-m", "coldwatch", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )


@pytest.fixture
async def audited(
    broker: RunningBroker, prefix: str, tmp_path: Path, api_users: dict[str, object], backend: Backend
) -> Path:
    """A collector run with an alarm raised and acknowledged by an operator; returns its config file."""
    config = silent_incubator_config(
        tmp_path / "c.yaml", broker=broker, prefix=prefix, api=api_users, database=backend.location
    )
    async with running_daemon(config) as running:
        await raise_comm_loss(broker, config, running)
        async with httpx.AsyncClient(base_url=running.base_url, timeout=10) as client:
            done = await client.post(
                "/api/v1/alarms/1/ack",
                json={"reason": "checked the logger"},
                headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"},
            )
            assert done.status_code == 200
            listed = await client.get("/api/v1/alarms", headers={"Authorization": f"Bearer {VIEWER_TOKEN}"})
            assert listed.status_code == 200
    return tmp_path / "c.yaml"


async def test_trail_records_configuration_alarms_and_the_operator(audited: Path) -> None:
    """The trail holds the configuration hash, the raise, and who acknowledged and why; it verifies."""
    verified = coldwatch(audited, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "intact" in verified.stdout
    exported = coldwatch(audited, "audit", "export", "--format", "json")
    assert exported.returncode == 0, exported.stderr
    entries = json.loads(exported.stdout)["entries"]
    actions = [(e["action"], e["actor"]) for e in entries]
    assert ("config.loaded", "coldwatch") in actions
    assert ("alarm.raised", "coldwatch") in actions
    ack = next(e for e in entries if e["action"] == "alarm.acknowledged")
    assert (ack["actor"], ack["reason"], ack["object_id"]) == ("olga", "checked the logger", "1")
    assert (ack["old_value"], ack["new_value"]) == ("active_unacknowledged", "active_acknowledged action")
    config_entry = next(e for e in entries if e["action"] == "config.loaded")
    assert config_entry["new_value"].startswith("sha256 ")
    csv_out = coldwatch(audited, "audit", "export")
    assert csv_out.stdout.splitlines()[0].startswith("seq,at_utc,actor,action")


@pytest.mark.parametrize(
    ("tamper", "kind"),
    [
        ("UPDATE audit_log SET reason = 'nothing to see' WHERE seq = {seq}", "changed"),
        ("DELETE FROM audit_log WHERE seq = {seq}", "deleted"),
        (
            (
                "INSERT INTO audit_log SELECT seq + 1000, at_us, actor, action, object_type, object_id, "
                "old_value, new_value, reason, prev_hash, hash FROM audit_log WHERE seq = {seq}"
            ),
            "inserted",
        ),
    ],
)
async def test_tampering_with_one_row_is_found_and_named(
    audited: Path, backend: Backend, tamper: str, kind: str
) -> None:
    """Changing, deleting or inserting one audit row in the database makes verify fail and name it."""
    if backend.postgres:
        db, copy = backend.location, await tampered_pg_copy(backend.location, tamper, kind)
    else:
        db, copy = backend.location, str(audited.parent / f"tampered-{kind}.db")
        tamper_sqlite_copy(db, copy, tamper, kind)
    tampered_config = audited.parent / f"tampered-{kind}.yaml"
    tampered_config.write_text(audited.read_text().replace(db, copy))
    result = coldwatch(tampered_config, "audit", "verify")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "TAMPERED" in result.stdout
    named = int(result.stdout.split(" at seq ")[1].split(":")[0])
    seqs = [int(row[0]) for row in db_query(db, "SELECT seq FROM audit_log ORDER BY seq")]
    target = seqs[len(seqs) // 2]
    assert named in {target, target + 1}, result.stdout


async def tampered_pg_copy(url: str, tamper: str, kind: str) -> str:
    """A copy of the PostgreSQL database at ``url`` with one audit row tampered by its owner."""
    base, _, name = url.rpartition("/")
    copy_name = f"{name}_{kind}"
    admin = await asyncpg.connect(f"{base}/postgres")
    try:
        await admin.execute(f"CREATE DATABASE {copy_name} TEMPLATE {name}")
    finally:
        await admin.close()
    conn = await asyncpg.connect(f"{base}/{copy_name}")
    try:
        seqs = [row[0] for row in await conn.fetch("SELECT seq FROM audit_log ORDER BY seq")]
        target = seqs[len(seqs) // 2]
        # The owner can switch the guards off; the hash chain still gives them away.
        await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
        if kind == "inserted":
            await conn.execute(f"UPDATE audit_log SET seq = seq + 100000 WHERE seq > {target}")
            await conn.execute("UPDATE audit_log SET seq = seq - 99999 WHERE seq > 100000")
            await conn.execute(tamper.format(seq=target).replace("seq + 1000", "seq + 1"))
        else:
            await conn.execute(tamper.format(seq=target))
    finally:
        await conn.close()
    return f"{base}/{copy_name}"


def tamper_sqlite_copy(db: str, copy: str, tamper: str, kind: str) -> None:
    """A copy of the SQLite file ``db`` at ``copy`` with one audit row tampered."""
    shutil.copy(db, copy)
    with sqlite3.connect(copy) as conn:
        seqs = [row[0] for row in conn.execute("SELECT seq FROM audit_log ORDER BY seq")]
        target = seqs[len(seqs) // 2]
        # Someone with the file can drop the guards; the hash chain still gives them away.
        for trigger in ("audit_log_no_update", "audit_log_no_delete", "audit_log_append_only"):
            conn.execute(f"DROP TRIGGER {trigger}")
        if kind == "inserted":
            # Put the forged row between two real ones by moving the later ones up.
            conn.execute(f"UPDATE audit_log SET seq = seq + 1 WHERE seq > {target}")
            conn.execute(tamper.format(seq=target).replace("seq + 1000", "seq + 1"))
        else:
            conn.execute(tamper.format(seq=target))
