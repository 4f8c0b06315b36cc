"""Instruments, stays on points and signed calibrations, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest

from coldwatch.identity import Identity
from coldwatch.identity_model import AccessDeniedError, Principal, RefusedError
from coldwatch.records.calibration import DAY_US
from coldwatch.records.instruments import (
    ConflictError,
    Instruments,
    NoSuchInstrumentError,
    calibration_states,
)
from coldwatch.review import signature_problems
from coldwatch.roles import Permission
from coldwatch.signatures import record_hash
from coldwatch.storage.identity_store import Write, identity_store
from tests.conftest import Backend
from tests.identity_helpers import ADMIN_PW, OPERATOR_PW, QA_PW, opened, people

POINTS = ("inc-1", "inc-2")


async def _who(identity: Identity, name: str, password: str) -> Principal:
    return (await identity.sign_in(name, password, "test")).principal


async def _signer(identity: Identity, name: str, password: str) -> object:
    return await identity.verify_signer(
        action="calibrate",
        permission=Permission.CALIBRATE,
        meaning="responsibility",
        user=name,
        password=password,
        client="test",
    )


async def test_swap_keeps_the_points_history_and_audits_each_step(backend: Backend) -> None:
    """Register, install and swap: the old stay ends where the new one starts, each step audited."""
    async with opened(backend.location) as (storage, identity, clock):
        await people(identity)
        olga = await _who(identity, "olga", OPERATOR_PW)
        store = identity_store(storage)
        instruments = Instruments(store, "UTC", POINTS)
        for serial in ("SN-1", "SN-2"):
            await instruments.register(
                olga, serial=serial, model="PT100", manufacturer="Acme", reason="new probe", now_us=clock()
            )
        installed_at = clock()
        await instruments.install(olga, "inc-1", "SN-1", reason="commissioning", now_us=clock())
        clock.advance(3600)
        swap_at = clock()
        new = await instruments.swap(olga, "inc-1", "SN-2", reason="SN-1 off for calibration", now_us=clock())
        assert (new.serial, new.from_us, new.until_us) == ("SN-2", swap_at, None)
        stays = await instruments.stays(device_id="inc-1")
        assert [(s.serial, s.from_us, s.until_us) for s in stays] == [
            ("SN-1", installed_at, swap_at),
            ("SN-2", swap_at, None),
        ]
        assert stays[0].removed_by == "olga"
        assert stays[0].removed_reason == "SN-1 off for calibration"
        actions = [
            r[0]
            for r in await store.fetch(
                "SELECT action FROM audit_log WHERE object_type IN ('instrument', 'point') ORDER BY seq"
            )
        ]
        assert actions == [
            "instrument.registered",
            "instrument.registered",
            "instrument.installed",
            "instrument.swapped",
        ]
        # SN-1 is free again: it may go to another point, but never to two at once.
        clock.advance(60)
        await instruments.install(olga, "inc-2", "SN-1", reason="back from the lab", now_us=clock())
        with pytest.raises(ConflictError):
            await instruments.swap(olga, "inc-1", "SN-1", reason="again", now_us=clock())
        with pytest.raises(ConflictError):
            await instruments.install(olga, "inc-1", "SN-1", reason="occupied", now_us=clock())
        with pytest.raises(ConflictError):
            await instruments.register(
                olga, serial="SN-1", model="x", manufacturer="y", reason="z", now_us=clock()
            )
        with pytest.raises(NoSuchInstrumentError):
            await instruments.install(olga, "no-such-point", "SN-1", reason="r", now_us=clock())
        admin = await _who(identity, "ada", ADMIN_PW)
        with pytest.raises(AccessDeniedError):
            await instruments.register(
                admin, serial="SN-9", model="x", manufacturer="y", reason="z", now_us=clock()
            )


async def test_calibration_is_signed_correctable_once_and_append_only(backend: Backend) -> None:
    """A calibration is signed and audited; a correction supersedes it once; the table refuses edits."""
    async with opened(backend.location) as (storage, identity, clock):
        await people(identity)
        olga = await _who(identity, "olga", OPERATOR_PW)
        store = identity_store(storage)
        instruments = Instruments(store, "Europe/Paris", POINTS)
        await instruments.register(
            olga, serial="SN-1", model="m", manufacturer="a", reason="r", now_us=clock()
        )
        signer = await _signer(identity, "quinn", QA_PW)
        first = await instruments.calibrate(
            signer,  # type: ignore[arg-type]
            "SN-1",
            performed_us=clock() - DAY_US,
            due_us=clock() + 100 * DAY_US,
            certificate="CERT-1",
            as_found="+0.12 C",
            as_left="+0.02 C",
            performed_by="Metro Lab GmbH",
            passed=True,
            meaning="responsibility",
            reason="annual calibration",
            now_us=clock(),
        )
        assert first.recorded_by == "quinn"
        clock.advance(60)
        fixed = await instruments.calibrate(
            signer,  # type: ignore[arg-type]
            "SN-1",
            performed_us=first.performed_us,
            due_us=clock() + 200 * DAY_US,
            certificate="CERT-1",
            as_found="+0.12 C",
            as_left="+0.02 C",
            performed_by="Metro Lab GmbH",
            passed=True,
            meaning="responsibility",
            reason="due date mistyped",
            now_us=clock(),
            supersedes=first.id,
        )
        clock.advance(60)
        with pytest.raises(ConflictError, match="corrected already"):
            await instruments.calibrate(
                signer,  # type: ignore[arg-type]
                "SN-1",
                performed_us=first.performed_us,
                due_us=clock() + 300 * DAY_US,
                certificate="CERT-1",
                as_found="x",
                as_left="y",
                performed_by="z",
                passed=True,
                meaning="responsibility",
                reason="again",
                now_us=clock(),
                supersedes=first.id,
            )
        with pytest.raises(RefusedError, match="due date"):
            await instruments.calibrate(
                signer,  # type: ignore[arg-type]
                "SN-1",
                performed_us=clock(),
                due_us=clock() - 1,
                certificate="C",
                as_found="x",
                as_left="y",
                performed_by="z",
                passed=True,
                meaning="responsibility",
                reason="r",
                now_us=clock(),
            )
        records = await instruments.calibrations()
        assert [(c.id, c.supersedes) for c in records] == [(first.id, None), (fixed.id, first.id)]
        sigs = await instruments.signatures_of(records)
        assert [s.signer for s in sigs[first.id]] == ["quinn"]
        assert sigs[fixed.id][0].reason == "due date mistyped"
        audit = await store.fetch(
            "SELECT action, object_id, new_value FROM audit_log WHERE object_type = 'calibration' ORDER BY seq"
        )
        assert [a[0] for a in audit] == [
            "calibration.recorded",
            "signature.applied",
            "calibration.corrected",
            "signature.applied",
        ]
        assert json.loads(audit[0][2])["certificate"] == "CERT-1"
        assert "signed by Quinn Quality (quinn)" in audit[1][2]
        assert "meaning: responsibility" in audit[1][2]
        for statement in ("UPDATE calibrations SET passed = passed", "DELETE FROM calibrations"):
            with pytest.raises(Exception, match="append-only"):
                await store.apply([Write(statement)], [])
        # The state counts the correction, not the record it superseded.
        states = await calibration_states(store, ["inc-1"], clock() - DAY_US, clock(), clock())
        assert states["inc-1"].state == "no_instrument"
        await instruments.install(olga, "inc-1", "SN-1", reason="r", now_us=clock())
        clock.advance(1)
        states = await calibration_states(store, ["inc-1"], clock() - DAY_US, clock(), clock())
        assert (states["inc-1"].state, states["inc-1"].due_us) == ("in_calibration", fixed.due_us)


async def test_copied_or_edited_calibration_signature_is_reported(backend: Backend) -> None:
    """Audit verification names a calibration signature copied to another record, or edited."""
    async with opened(backend.location) as (storage, identity, clock):
        await people(identity)
        olga = await _who(identity, "olga", OPERATOR_PW)
        store = identity_store(storage)
        instruments = Instruments(store, "UTC", POINTS)
        signer = await _signer(identity, "olga", OPERATOR_PW)
        made = []
        for serial in ("SN-1", "SN-2"):
            await instruments.register(
                olga, serial=serial, model="m", manufacturer="a", reason="r", now_us=clock()
            )
            made.append(
                await instruments.calibrate(
                    signer,  # type: ignore[arg-type]
                    serial,
                    performed_us=clock(),
                    due_us=clock() + DAY_US,
                    certificate=f"C-{serial}",
                    as_found="ok",
                    as_left="ok",
                    performed_by="lab",
                    passed=True,
                    meaning="responsibility",
                    reason="r",
                    now_us=clock(),
                )
            )
            clock.advance(1)
        entries = [e async for e in storage.audit_entries()]
        assert await signature_problems(store, entries) == (2, [])
        one, two = made
        copy = (
            "INSERT INTO signatures(object_type, object_id, action, signer, full_name, meaning, reason, "
            "signed_us, record_hash, content) SELECT object_type, ?, action, signer, full_name, meaning, "
            "reason, signed_us, record_hash, content FROM signatures WHERE object_id = ?"
        )
        await store.apply([Write(copy, (two.key, one.key))], [])
        rows = await store.fetch("SELECT content FROM signatures WHERE object_id = ? ORDER BY id", one.key)
        content = json.loads(rows[0][0])
        content["record"]["due_us"] += 365 * DAY_US  # a forger's longer validity, hash recomputed
        forged = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        edit = (
            "INSERT INTO signatures(object_type, object_id, action, signer, full_name, meaning, reason, "
            "signed_us, record_hash, content) SELECT object_type, object_id, action, signer, full_name, "
            "meaning, reason, signed_us, ?, ? FROM signatures WHERE object_id = ?"
        )
        await store.apply([Write(edit, (record_hash(forged), forged, one.key))], [])
        entries = [e async for e in storage.audit_entries()]
        count, problems = await signature_problems(store, entries)
        assert count == 4
        assert len(problems) == 2, problems
        assert f"calibration {two.key}" in problems[0]
        assert "not this record" in problems[0]
        assert f"calibration {one.key}" in problems[1]
        assert "differs from what was signed" in problems[1]
