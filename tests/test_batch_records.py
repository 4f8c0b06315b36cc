"""Batch registration and amendment, shipments: signed, validated, audited, verified, on both backends."""

from __future__ import annotations

import json

import pytest

from coldwatch.config import Config
from coldwatch.identity_model import RefusedError
from coldwatch.records.batch_model import Stay, overlaps, validate_stays, verdict
from coldwatch.records.batches import Batches, BatchExistsError
from coldwatch.records.shipments import Shipments, ShipmentStateError
from coldwatch.review import signature_problems
from coldwatch.signatures import SignatureDraft
from coldwatch.storage.identity_store import identity_store
from tests.batch_helpers import DEVICES, HOUR_US, SIGN_MEANING, site_config
from tests.conftest import Backend
from tests.identity_helpers import opened

T0 = 1_800_000_000_000_000 - 48 * HOUR_US
OLGA = SignatureDraft("olga", "Olga Operator", SIGN_MEANING, "batch started")
COI = "  =W1234 26 123456 00 ß/é  "  # opaque: kept exactly, spaces and all


def stays() -> list[Stay]:
    """An area, an incubator and a dewar, one after the other."""
    return [
        Stay("s1", "room-a", None, T0, T0 + 2 * HOUR_US),
        Stay("", None, "inc-1", T0 + 2 * HOUR_US, T0 + 20 * HOUR_US),
        Stay("s1", None, "ln2-1", T0 + 20 * HOUR_US, T0 + 30 * HOUR_US),
    ]


def test_validation_names_the_wrong_stay() -> None:
    """Unknown places, reversed or absurd times and duplicates are refused with a readable reason."""
    devices = site_config().devices
    now = T0 + 48 * HOUR_US
    cases = [
        (Stay("s1", "room-z", None, T0, T0 + 1), "no configured area s1/room-z"),
        (Stay("s1", None, "inc-9", T0, T0 + 1), "no configured device 'inc-9'"),
        (Stay("s1", None, "pc-a1", T0, T0 + 1), "is a particle counter"),
        (Stay("s2", None, "inc-1", T0, T0 + 1), "is at site s1, not s2"),
        (Stay("s1", "room-a", None, T0 + 5, T0 + 5), "must end after it starts"),
        (Stay("s1", "room-a", None, 0, 10), "before 2000-01-01"),
        (Stay("s1", "room-a", None, now, now + 400 * 86_400 * 10**6), "more than a year"),
    ]
    for stay, message in cases:
        with pytest.raises(RefusedError, match=message):
            validate_stays([stay], devices, now)
    twice = Stay("s1", "room-a", None, T0, T0 + 1)
    with pytest.raises(RefusedError, match="given twice"):
        validate_stays([twice, twice], devices, now)
    with pytest.raises(RefusedError, match="at least one stay"):
        validate_stays([], devices, now)
    resolved = validate_stays([Stay("", None, "inc-1", T0, T0 + 1)], devices, now)
    assert resolved == [Stay("s1", "lab", "inc-1", T0, T0 + 1)]


def test_verdict_and_overlap() -> None:
    """The verdict follows the reviews; an alarm touches a stay only when the intervals meet."""
    assert verdict([], []) == "no excursion"
    assert verdict([1, 2], [1]) == "excursions awaiting review"
    assert verdict([1, 2], [2, 1, 7]) == "excursions, all reviewed"
    assert overlaps(5, None, 0, 10)
    assert overlaps(0, 6, 5, 10)
    assert not overlaps(10, 12, 0, 10)  # raised at the stay's end: after it
    assert not overlaps(0, 5, 5, 10)  # cleared as the stay began
    assert not overlaps(11, None, 0, 10)


async def test_register_amend_verify(backend: Backend) -> None:
    """Register then amend: both versions kept, each signed and audited; an edited signature is reported."""
    config = site_config()
    async with opened(backend.location) as (storage, _, clock):
        store = identity_store(storage)
        batches = Batches(store, config.devices, "Europe/Paris")
        first = await batches.register("LOT-001", "CAR-T autologous", COI, stays(), OLGA, clock())
        assert first.version == 1
        assert first.coi == COI
        with pytest.raises(BatchExistsError):
            await batches.register("LOT-001", "x", "y", stays(), OLGA, clock())
        clock.advance(60)
        amended_stays = [*stays()[:2], Stay("s1", "room-b", None, T0 + 30 * HOUR_US, T0 + 31 * HOUR_US)]
        amendment = SignatureDraft("quinn", "Quinn Quality", "verified", "wrong room entered at first")
        second = await batches.amend("LOT-001", amended_stays, amendment, clock())
        assert second.version == 2
        with pytest.raises(RefusedError, match="nothing to amend"):  # the same stays, in another order
            await batches.amend("LOT-001", amended_stays[::-1], amendment, clock())
        assert set(second.versions) == {1, 2}
        assert (await batches.get("LOT-001")) == second
        assert second.versions[1] == validate_stays(stays(), config.devices, clock())
        assert [s.place for s in second.stays][-1] == "area s1/room-b"
        assert [(s.action, s.signer, s.reason) for s in second.signatures] == [
            ("register", "olga", "batch started"),
            ("amend", "quinn", "wrong room entered at first"),
        ]
        entries = [e async for e in storage.audit_entries()]
        actions = [(e.action, e.object_id) for e in entries if e.object_type == "batch"]
        assert actions == [
            ("batch.registered", "LOT-001"),
            ("signature.applied", "LOT-001#v1"),
            ("batch.amended", "LOT-001"),
            ("signature.applied", "LOT-001#v2"),
        ]
        amended = next(e for e in entries if e.action == "batch.amended")
        assert amended.reason == "wrong room entered at first"
        assert json.loads(amended.old_value or "")["version"] == 1
        count, problems = await signature_problems(store, entries)
        assert (count, problems) == (2, [])
        # A tamperer moves a stay of version 1: its signature no longer covers the record.
        await storage_execute(
            backend, storage, "DELETE FROM batch_stays WHERE version = 1 AND device_id = 'ln2-1'"
        )
        _, problems = await signature_problems(store, entries)
        assert len(problems) == 1
        assert "batch LOT-001#v1" in problems[0]
        assert "differs from what was signed" in problems[0]


async def test_edited_batch_signature_is_reported(backend: Backend) -> None:
    """A signature with an edited meaning (append-only rows: a tamperer adds an edited copy) is reported."""
    config = site_config()
    async with opened(backend.location) as (storage, _, clock):
        store = identity_store(storage)
        await Batches(store, config.devices, "UTC").register("L2", "p", "c", stays(), OLGA, clock())
        edited = (
            "INSERT INTO signatures(object_type, object_id, action, signer, full_name, meaning, reason, "
            "signed_us, record_hash, content) SELECT object_type, object_id, action, signer, full_name, "
            "'approved', reason, signed_us, record_hash, content FROM signatures"
        )
        await storage_execute(backend, storage, edited)
        entries = [e async for e in storage.audit_entries()]
        _, problems = await signature_problems(store, entries)
        assert len(problems) == 1
        assert "batch L2#v1" in problems[0]
        assert "copied or edited" in problems[0]


async def test_shipment_dispatch_and_receipt(backend: Backend) -> None:
    """One open shipment per shipper; both ends signed and audited; a copied receipt is reported."""
    config = site_config()
    async with opened(backend.location) as (storage, _, clock):
        store = identity_store(storage)
        shipments = Shipments(store, config)
        sent = SignatureDraft("olga", "Olga Operator", SIGN_MEANING, "dispatched to the clinic")
        with pytest.raises(RefusedError, match="no configured cryoshipper"):
            await shipments.start("inc-1", "c", "a", "b", 3600, None, sent, clock())
        dewar = {"id": "ln2-9", "kind": "cryoshipper", "ships": False, "site": "s1", "area": "store"}
        static = Shipments(store, Config.model_validate({"devices": [*DEVICES, dewar]}))
        with pytest.raises(RefusedError, match="ln2-9 is a static dewar"):
            await static.start("ln2-9", "c", "a", "b", 3600, None, sent, clock())
        with pytest.raises(RefusedError, match="required hold time"):
            await shipments.start("ln2-1", "c", "a", "b", 0, None, sent, clock())
        first = await shipments.start(
            "ln2-1", COI, "Site 1", "Hospital", 5 * 86_400, 7.5 * 86_400, sent, clock()
        )
        assert (first.state, first.coi, first.dispatch_forecast_s) == ("in_transit", COI, 7.5 * 86_400)
        with pytest.raises(ShipmentStateError, match="open shipment"):
            await shipments.start("ln2-1", "c", "a", "b", 3600, None, sent, clock())
        clock.advance(86_400)
        got = SignatureDraft("quinn", "Quinn Quality", SIGN_MEANING, "received intact")
        done = await shipments.receive(first.id, got, clock())
        assert (done.state, done.received_by) == ("received", "quinn")
        assert [s.action for s in done.signatures] == ["dispatch", "receive"]
        with pytest.raises(ShipmentStateError, match="received already"):
            await shipments.receive(first.id, got, clock())
        second = await shipments.start("ln2-1", "other", "a", "b", 3600, None, sent, clock())
        entries = [e async for e in storage.audit_entries()]
        assert [e.action for e in entries if e.object_type == "shipment"] == [
            "shipment.dispatched",
            "shipment.received",
            "shipment.dispatched",
        ]
        assert await signature_problems(store, entries) == (3, [])
        copy = (
            "INSERT INTO signatures(object_type, object_id, action, signer, full_name, meaning, reason, "
            f"signed_us, record_hash, content) SELECT object_type, '{second.object_id}', action, signer, "
            "full_name, meaning, reason, signed_us, record_hash, content FROM signatures "
            "WHERE object_type = 'shipment_receipt'"
        )
        await storage_execute(backend, storage, copy)
        _, problems = await signature_problems(store, entries)
        assert len(problems) == 1
        assert "not this record" in problems[0]


async def storage_execute(backend: Backend, storage: object, sql: str) -> None:
    """One statement behind the application's back (a tamperer's edit), on the open database."""
    from coldwatch.storage.sqlite import SqliteStorage  # noqa: PLC0415

    if isinstance(storage, SqliteStorage):
        await storage._conn.execute(sql)
        await storage._conn.commit()
        return
    import asyncpg  # noqa: PLC0415

    conn = await asyncpg.connect(backend.location)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()
