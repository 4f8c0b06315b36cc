"""The audit trail of a running collector: what it records, and that tampering is found."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import asyncpg
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coldwatch.audit import AuditDraft, AuditEntry, seal
from coldwatch.audit_keys import anchor_path, key_path, public_pem, read_anchors
from coldwatch.audit_seal import GUARDS_RESTORED, KEY_REPLACED, Signer
from coldwatch.broker import RunningBroker
from coldwatch.config import load_config
from coldwatch.daemon import config_loaded
from coldwatch.storage import open_storage
from coldwatch.storage import postgres as postgres_storage
from coldwatch.storage import sqlite as sqlite_storage
from coldwatch.storage.audit_pg import SEALS_SCHEMA_PG
from coldwatch.storage.audit_sqlite import GUARDS, SEALS_SCHEMA
from tests.conftest import (
    Backend,
    db_query,
    eventually,
    raise_comm_loss,
    running_daemon,
    silent_incubator_config,
    write_config,
)
from tests.identity_helpers import FAST_IDENTITY, OPERATOR_PW, opened, people
from tests.test_api import VIEWER_TOKEN, api_users

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
    """A collector run with an alarm raised and acknowledged (signed) by an operator; its config file."""
    config = silent_incubator_config(
        tmp_path / "c.yaml",
        broker=broker,
        prefix=prefix,
        api=api_users,
        database=backend.location,
        identity=FAST_IDENTITY,
    )
    async with running_daemon(config) as running:
        async with opened(backend.location, config) as (_, identity, _):
            await people(identity)
        await raise_comm_loss(broker, config, running)
        async with httpx.AsyncClient(base_url=running.base_url, timeout=10) as client:
            done = await client.post(
                "/api/v1/alarms/1/ack",
                json={
                    "user": "olga",
                    "password": OPERATOR_PW,
                    "meaning": "acknowledged, investigating",
                    "reason": "checked the logger",
                },
            )
            assert done.status_code == 200, done.text
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
            # Put the forged row between two real ones by moving the later ones up (in two
            # steps: seq is unique, checked row by row).
            conn.execute(f"UPDATE audit_log SET seq = seq + 100000 WHERE seq > {target}")
            conn.execute("UPDATE audit_log SET seq = seq - 99999 WHERE seq > 100000")
            conn.execute(tamper.format(seq=target).replace("seq + 1000", "seq + 1"))
        else:
            conn.execute(tamper.format(seq=target))


# --- signatures, anchors and guards: an attacker with write access to the database, without the key

_COLUMNS = "seq, at_us, actor, action, object_type, object_id, old_value, new_value, reason, prev_hash, hash"


def attack(location: str, *statements: str) -> None:
    """Run ``statements`` on the database as someone who can write it (but holds no key) would."""
    if location.startswith("postgresql://"):

        async def run() -> None:
            conn = await asyncpg.connect(location)
            try:
                async with conn.transaction():
                    for sql in statements:
                        await conn.execute(sql)
            finally:
                await conn.close()

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, run()).result(30)
        return
    with closing(sqlite3.connect(location)) as conn, conn:
        for sql in statements:
            conn.execute(sql)


def guards_off(backend: Backend) -> list[str]:
    """The statements that switch the append-only guards off."""
    if backend.postgres:
        return ["ALTER TABLE audit_log DISABLE TRIGGER USER", "ALTER TABLE audit_seals DISABLE TRIGGER USER"]
    return [f"DROP TRIGGER {name}" for name in GUARDS]


def guards_on(backend: Backend) -> list[str]:
    """The statements that put the guards back exactly as they were (to hide the attack)."""
    if backend.postgres:
        return ["ALTER TABLE audit_log ENABLE TRIGGER USER", "ALTER TABLE audit_seals ENABLE TRIGGER USER"]
    return list(GUARDS.values())


def sql_text(value: object) -> str:
    """A SQL literal of ``value`` (text, integer or NULL)."""
    if value is None:
        return "NULL"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def stored_entries(backend: Backend) -> list[AuditEntry]:
    """The audit entries as stored."""
    return [AuditEntry(*row) for row in backend.query(f"SELECT {_COLUMNS} FROM audit_log ORDER BY seq")]


def insert_sql(entry: AuditEntry) -> str:
    """An INSERT of ``entry`` into audit_log."""
    values = ", ".join(sql_text(v) for v in dataclasses.astuple(entry))
    return f"INSERT INTO audit_log({_COLUMNS}) VALUES ({values})"


def forged(after: AuditEntry, seq: int | None = None) -> AuditEntry:
    """An entry an attacker writes after ``after``, its hash computed as coldwatch would."""
    draft = AuditDraft(
        at_us=after.at_us + 1,
        actor="olga",
        action="alarm.acknowledged",
        object_type="alarm",
        object_id="1",
        old_value="active_unacknowledged",
        new_value="active_acknowledged",
        reason="checked the logger",
    )
    return seal([draft], after.seq + 1 if seq is None else seq, after.hash)[0]


def high_water_sql(backend: Backend, seq: int) -> str:
    """Set the database's record of the highest seq issued, as the attacker would to hide a deletion."""
    if backend.postgres:
        return f"UPDATE audit_high_water SET seq = {seq}"
    return f"UPDATE sqlite_sequence SET seq = {seq} WHERE name = 'audit_log'"


def updated_row(backend: Backend, entries: list[AuditEntry]) -> tuple[list[str], str, int]:
    """One row's reason changed in place."""
    mid = entries[len(entries) // 2].seq
    return [f"UPDATE audit_log SET reason = 'nothing to see' WHERE seq = {mid}"], "changed", mid


def deleted_middle(backend: Backend, entries: list[AuditEntry]) -> tuple[list[str], str, int]:
    """A row in the middle deleted."""
    mid = entries[len(entries) // 2].seq
    return [f"DELETE FROM audit_log WHERE seq = {mid}"], "deleted", mid


def deleted_last(backend: Backend, entries: list[AuditEntry]) -> tuple[list[str], str, int]:
    """The last row deleted with its signature, and the high-water mark wound back."""
    last = entries[-1].seq
    return (
        [
            f"DELETE FROM audit_log WHERE seq = {last}",
            f"DELETE FROM audit_seals WHERE seq = {last}",
            high_water_sql(backend, last - 1),
        ],
        "deleted",
        last,
    )


def inserted_middle(backend: Backend, entries: list[AuditEntry]) -> tuple[list[str], str, int]:
    """A forged row slipped in after the middle one, the later rows renumbered to make room."""
    mid = entries[len(entries) // 2]
    return (
        [
            f"UPDATE audit_log SET seq = seq + 100000 WHERE seq > {mid.seq}",
            "UPDATE audit_log SET seq = seq - 99999 WHERE seq > 100000",
            insert_sql(forged(mid)),
        ],
        "inserted",
        mid.seq + 1,
    )


def inserted_end(backend: Backend, entries: list[AuditEntry]) -> tuple[list[str], str, int]:
    """A forged row appended at the end, chained and hashed correctly (the guards let it in)."""
    return [insert_sql(forged(entries[-1]))], "inserted", entries[-1].seq + 1


def inserted_end_with_a_seal(backend: Backend, entries: list[AuditEntry]) -> tuple[list[str], str, int]:
    """A forged row appended at the end and signed with a key of the attacker's own."""
    entry = forged(entries[-1])
    origin = int(backend.query("SELECT from_seq FROM audit_seals ORDER BY seq LIMIT 1")[0][0])
    fake = Signer(Ed25519PrivateKey.generate()).seal(origin, entry.seq, entry.seq, entry.hash)
    return (
        [
            insert_sql(entry),
            (
                "INSERT INTO audit_seals(seq, from_seq, key_id, signature) VALUES "
                f"({fake.seq}, {fake.from_seq}, {sql_text(fake.key_id)}, {sql_text(fake.signature)})"
            ),
        ],
        "inserted",
        entry.seq,
    )


def truncated(backend: Backend, entries: list[AuditEntry]) -> tuple[list[str], str, int]:
    """Every row and every signature deleted, and the high-water mark reset."""
    if backend.postgres:
        return ["TRUNCATE audit_log, audit_seals", high_water_sql(backend, 0)], "deleted", 1
    return (
        [
            "DELETE FROM audit_log",
            "DELETE FROM audit_seals",
            "DELETE FROM sqlite_sequence WHERE name = 'audit_log'",
        ],
        "deleted",
        1,
    )


def rewritten(backend: Backend, entries: list[AuditEntry]) -> tuple[list[str], str, int]:
    """One entry changed and every hash from it on recomputed, so that the chain holds again."""
    k = len(entries) // 2
    drafts = [
        AuditDraft(
            at_us=e.at_us,
            actor=e.actor,
            action=e.action,
            object_type=e.object_type,
            object_id=e.object_id,
            old_value=e.old_value,
            new_value=e.new_value,
            reason="nothing to see" if i == 0 else e.reason,
        )
        for i, e in enumerate(entries[k:])
    ]
    again = seal(drafts, entries[k].seq, entries[k - 1].hash)
    statements = [
        f"UPDATE audit_log SET reason = {sql_text(e.reason)}, prev_hash = '{e.prev_hash}', hash = '{e.hash}' "
        f"WHERE seq = {e.seq}"
        for e in again
    ]
    covering = backend.query(f"SELECT from_seq FROM audit_seals WHERE seq >= {entries[k].seq} ORDER BY seq")
    return statements, "changed", int(covering[0][0])


ATTACKS = {
    f.__name__: f
    for f in (
        updated_row,
        deleted_middle,
        deleted_last,
        inserted_middle,
        inserted_end,
        inserted_end_with_a_seal,
        truncated,
        rewritten,
    )
}


def export_public_key(config: Path, name: str = "inspector.pem") -> Path:
    """The public key as an inspector keeps it (``coldwatch audit public-key``)."""
    shown = coldwatch(config, "audit", "public-key")
    assert shown.returncode == 0, shown.stderr
    kept = config.parent / name
    kept.write_text(shown.stdout)
    return kept


def verdict(result: subprocess.CompletedProcess[str]) -> tuple[str, int | None]:
    """The kind and seq named by a failed verify."""
    first = result.stdout.splitlines()[0]
    assert first.startswith("audit trail TAMPERED ("), result.stdout + result.stderr
    kind = first.split("(")[1].split(")")[0]
    seq = int(first.split(" at seq ")[1].split(":")[0]) if " at seq " in first else None
    return kind, seq


@pytest.mark.parametrize("attack_name", sorted(ATTACKS))
async def test_verify_finds_every_kind_of_tampering_by_a_writer_without_the_key(
    audited: Path, backend: Backend, attack_name: str
) -> None:
    """Each attack on a collector's trail (guards switched off and put back) is found and named by verify."""
    key = export_public_key(audited)
    entries = stored_entries(backend)
    first = entries[0]
    intact = coldwatch(audited, "audit", "verify", "--public-key", str(key))
    assert intact.returncode == 0, intact.stdout + intact.stderr
    statements, kind, seq = ATTACKS[attack_name](backend, entries)
    attack(backend.location, *guards_off(backend), *statements, *guards_on(backend))
    # An earlier anchor given by hand is checked as well, never instead of the end.
    for by_hand in ([], ["--anchor", f"{first.seq}:{first.hash}"]):
        result = coldwatch(audited, "audit", "verify", "--public-key", str(key), *by_hand)
        assert result.returncode == 1, result.stdout + result.stderr
        assert verdict(result) == (kind, seq), result.stdout
        assert "append-only guards: all in place" in result.stdout


async def test_verify_reports_dropped_guards_and_the_collector_restores_them(
    audited: Path, backend: Backend, broker: RunningBroker
) -> None:
    """Guards switched off are reported by verify; the next start restores them and records it."""
    key = export_public_key(audited)
    attack(backend.location, *guards_off(backend))
    result = coldwatch(audited, "audit", "verify", "--public-key", str(key))
    assert result.returncode == 1, result.stdout
    assert verdict(result) == ("guards", None)
    assert "append-only guards: PROBLEM: audit_log_no_update" in result.stdout
    async with running_daemon(load_config(audited, environ={})):
        pass
    again = coldwatch(audited, "audit", "verify", "--public-key", str(key))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "append-only guards: all in place" in again.stdout
    restored = [e for e in stored_entries(backend) if e.action == GUARDS_RESTORED]
    assert len(restored) == 1
    assert "audit_log_no_update" in str(restored[0].new_value)
    assert "found missing or altered and restored" in again.stdout


async def test_a_first_run_signs_with_a_private_key_file_and_shows_only_the_public_key(
    audited: Path, backend: Backend
) -> None:
    """Out of the box the collector makes a 0600 key file; public-key shows the public half; all is signed."""
    config = load_config(audited, environ={})
    key_file = key_path(config)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    shown = coldwatch(audited, "audit", "public-key")
    assert shown.stdout.startswith("-----BEGIN PUBLIC KEY-----"), shown.stdout
    assert "PRIVATE" not in shown.stdout + shown.stderr
    private_text = key_file.read_text()
    exported = coldwatch(audited, "audit", "export", "--format", "json")
    assert private_text.splitlines()[1] not in exported.stdout + exported.stderr
    result = coldwatch(audited, "audit", "verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "signed from seq 1 to seq" in result.stdout
    assert read_anchors(anchor_path(config)), "the chain head is anchored at shutdown"


async def test_verify_refuses_a_trail_checked_with_another_key(audited: Path) -> None:
    """A public key that did not sign the trail does not verify it."""
    other = audited.parent / "other.pem"
    other.write_text(public_pem(Ed25519PrivateKey.generate().public_key()))
    result = coldwatch(audited, "audit", "verify", "--public-key", str(other))
    assert result.returncode == 1, result.stdout
    assert verdict(result)[0] == "inserted"
    assert "neither given as trusted" in result.stdout


async def test_a_rotated_key_is_trusted_through_the_entry_the_old_key_signed(
    audited: Path, backend: Backend
) -> None:
    """After rotate-key the inspector's old public key verifies the whole trail, the new key's part too."""
    old_key = export_public_key(audited)
    rotated = coldwatch(audited, "audit", "rotate-key", "--actor", "qa.lead", "--reason", "yearly rotation")
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    new_key = export_public_key(audited, "new.pem")
    assert new_key.read_text() != old_key.read_text()
    assert rotated.stdout == new_key.read_text()
    async with running_daemon(load_config(audited, environ={})):
        pass
    result = coldwatch(audited, "audit", "verify", "--public-key", str(old_key))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "signing key rotated from" in result.stdout
    seals = backend.query("SELECT DISTINCT key_id FROM audit_seals")
    assert len(seals) == 2


async def test_a_lost_key_is_recorded_and_verifies_only_with_the_new_key_given(
    audited: Path, backend: Backend
) -> None:
    """A collector started without its old key records the replacement; the new key must be given."""
    old_key = export_public_key(audited)
    config = load_config(audited, environ={})
    key_path(config).unlink()
    async with running_daemon(config):
        pass
    new_key = export_public_key(audited, "new.pem")
    assert [e.action for e in stored_entries(backend)].count(KEY_REPLACED) == 1
    alone = coldwatch(audited, "audit", "verify", "--public-key", str(old_key))
    assert alone.returncode == 1, alone.stdout
    both = coldwatch(audited, "audit", "verify", "--public-key", str(old_key), "--public-key", str(new_key))
    assert both.returncode == 0, both.stdout + both.stderr
    assert "without a rotation entry" in both.stdout


async def test_the_chain_head_is_anchored_at_intervals_while_running(
    broker: RunningBroker, prefix: str, tmp_path: Path, api_users: dict[str, object], backend: Backend
) -> None:
    """With anchor_interval_s 1, the signed head of a new entry is anchored while the collector runs."""
    config = silent_incubator_config(
        tmp_path / "c.yaml", broker=broker, prefix=prefix, api=api_users, database=backend.location
    )
    config = write_config(
        tmp_path / "c.yaml",
        broker=broker,
        prefix=prefix,
        devices=[d.model_dump(mode="json") for d in config.devices],
        rules={"devices": {"inc-1": [{"type": "comm_loss", "timeout_s": 1}]}},
        api=api_users,
        storage={"path": backend.location},
        audit={"anchor_interval_s": 1},
    )
    path = anchor_path(config)
    async with running_daemon(config) as running:
        await raise_comm_loss(broker, config, running)
        raised = max(e.seq for e in stored_entries(backend) if e.action == "alarm.raised")
        await eventually(
            lambda: any(a.seq >= raised for a in read_anchors(path)), what="an anchor of the alarm's entry"
        )


async def test_an_older_trail_upgrades_and_is_reported_as_written_before_signing_began(
    *,
    broker: RunningBroker,
    prefix: str,
    tmp_path: Path,
    api_users: dict[str, object],
    backend: Backend,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Unsigned entries of a database from before signing stay verifiable; verify says where signing began."""
    config = silent_incubator_config(
        tmp_path / "c.yaml", broker=broker, prefix=prefix, api=api_users, database=backend.location
    )
    # The database as the release before signing left it: its schema, its unsigned entries.
    if backend.postgres:
        older_pg = postgres_storage.MIGRATIONS_PG[: postgres_storage.MIGRATIONS_PG.index(SEALS_SCHEMA_PG)]
        monkeypatch.setattr(postgres_storage, "MIGRATIONS_PG", older_pg)
    else:
        older = sqlite_storage.MIGRATIONS[: sqlite_storage.MIGRATIONS.index(SEALS_SCHEMA)]
        monkeypatch.setattr(sqlite_storage, "MIGRATIONS", older)
    storage = open_storage(backend.location)
    await storage.open()
    try:
        await storage.record_audit(
            [config_loaded(config, reason=f"older release, start {i}") for i in range(3)]
        )
    finally:
        await storage.close()
    assert not backend.query("SELECT 1 FROM audit_log WHERE seq > 3")
    monkeypatch.undo()
    async with running_daemon(config):
        pass
    result = coldwatch(tmp_path / "c.yaml", "audit", "verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "signed from seq 4 to seq" in result.stdout
    assert "seqs 1 to 3 were written before signing began" in result.stdout


async def test_an_anchor_file_that_cannot_be_written_is_counted_and_ingest_goes_on(
    broker: RunningBroker, prefix: str, tmp_path: Path, api_users: dict[str, object]
) -> None:
    """A failed anchor write is counted in coldwatch_audit_anchor_failures_total; the collector runs on."""
    blocked = tmp_path / "not-a-file"
    blocked.mkdir()
    config = write_config(
        tmp_path / "c.yaml",
        broker=broker,
        prefix=prefix,
        devices=[{"id": "inc-1", "kind": "incubator", "site": "s", "area": "lab"}],
        rules={"devices": {"inc-1": [{"type": "comm_loss", "timeout_s": 1}]}},
        api=api_users,
        audit={"anchor_file": str(blocked), "anchor_interval_s": 1},
    )
    async with running_daemon(config) as running:
        await raise_comm_loss(broker, config, running)
        await eventually(
            lambda: running.sample("coldwatch_audit_anchor_failures_total") >= 1, what="an anchor failure"
        )
        assert running.sample("coldwatch_broker_connected") == 1
