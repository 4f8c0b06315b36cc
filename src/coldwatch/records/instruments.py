"""Instruments, their stays on monitoring points, and signed calibration records, on either backend.

- An instrument (serial, model, manufacturer) is registered once; its serial is unique.
- It is installed on a monitoring point (a device id) from an instant; a swap ends the old
  instrument's stay and starts the new one's at the same instant, in one transaction, with
  who and why. The point keeps its readings and its history of instruments.
- A calibration record (performed, due, certificate, as found, as left, performed by,
  passed) is signed by the person recording it and never changed: a correction is a new
  record that names the one it supersedes (once only), signed too.

Every change lands in the sealed audit trail in the same transaction
(:meth:`coldwatch.storage.identity_store.IdentityStore.apply`). A calibration's signature
is bound to the record's facts (object type ``calibration``; its object id is
``<instrument id>:<recorded µs>``, known before the row's own id is), and
:func:`calibration_facts_of` gives ``coldwatch audit verify`` those facts back.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence

from coldwatch.audit import AuditDraft
from coldwatch.identity_model import AccessDeniedError, Principal, RefusedError, SignerIdentity
from coldwatch.records.instrument_model import (
    CALIBRATION_SQL,
    INSTRUMENT_SQL,
    LONGEST_US,
    SIGNED_TYPE,
    SKEW_US,
    STAY_SQL,
    Calibration,
    ConflictError,
    Installation,
    Instrument,
    NoSuchInstrumentError,
    as_json,
    calibration_facts_of,
    calibration_of,
    calibration_states,
    checked_text,
    instrument_of,
    stay_of,
    storable,
    where_clause,
)
from coldwatch.roles import Permission
from coldwatch.signatures import SELECT_SIGNATURES, SignatureDraft, StoredSignature, bind
from coldwatch.storage.identity_schema import INSERT_SIGNATURE
from coldwatch.storage.identity_store import IdentityStore, Write

__all__ = [
    "Calibration",
    "ConflictError",
    "Installation",
    "Instrument",
    "Instruments",
    "NoSuchInstrumentError",
    "calibration_facts_of",
    "calibration_states",
]


class Instruments:
    """Registers instruments, installs and swaps them, records calibrations; reads them back."""

    def __init__(self, store: IdentityStore, zone: str, points: Collection[str]) -> None:
        self.store = store
        self.zone = zone
        self.points = frozenset(points)

    # ----- reads ------------------------------------------------------------------------
    async def instruments(self) -> list[Instrument]:
        """Every instrument, by serial."""
        return [instrument_of(r) for r in await self.store.fetch(INSTRUMENT_SQL + " ORDER BY serial")]

    async def instrument(self, serial: str) -> Instrument | None:
        """One instrument by serial, or None."""
        if not storable(serial):
            return None
        rows = await self.store.fetch(INSTRUMENT_SQL + " WHERE serial = ?", serial)
        return instrument_of(rows[0]) if rows else None

    async def stays(
        self, *, device_id: str | None = None, instrument_id: int | None = None
    ) -> list[Installation]:
        """Stays of instruments on points (of one point, or of one instrument), oldest first."""
        where, params = where_clause(("p.device_id", device_id), ("p.instrument_id", instrument_id))
        rows = await self.store.fetch(STAY_SQL + where + " ORDER BY p.device_id, p.from_us, p.id", *params)
        return [stay_of(r) for r in rows]

    async def calibrations(self, instrument_id: int | None = None) -> list[Calibration]:
        """Calibration records (of one instrument), in the order performed."""
        where, params = where_clause(("c.instrument_id", instrument_id))
        rows = await self.store.fetch(CALIBRATION_SQL + where + " ORDER BY c.performed_us, c.id", *params)
        return [calibration_of(r) for r in rows]

    async def signatures_of(self, calibrations: Sequence[Calibration]) -> dict[int, list[StoredSignature]]:
        """The signatures of these calibration records, by record id."""
        by_key = {c.key: c.id for c in calibrations}
        out: dict[int, list[StoredSignature]] = defaultdict(list)
        keys = list(by_key)
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            rows = await self.store.fetch(
                SELECT_SIGNATURES
                + f" WHERE object_type = ? AND object_id IN ({marks}) ORDER BY signed_us, id",
                SIGNED_TYPE,
                *chunk,
            )
            for row in rows:
                sig = StoredSignature.of(row)
                out[by_key[sig.object_id]].append(sig)
        return dict(out)

    # ----- changes ----------------------------------------------------------------------
    async def register(
        self, who: Principal, *, serial: str, model: str, manufacturer: str, reason: str, now_us: int
    ) -> Instrument:
        """Register an instrument (serials are unique)."""
        _may(who, Permission.INSTRUMENTS_MANAGE, "register instruments")
        serial = checked_text(serial, "The serial number", 100)
        model = checked_text(model, "The model", 200)
        manufacturer = checked_text(manufacturer, "The manufacturer", 200)
        reason = checked_text(reason, "A reason", 2000)
        entry = AuditDraft(
            at_us=now_us,
            actor=who.name,
            action="instrument.registered",
            object_type="instrument",
            object_id=serial,
            old_value=None,
            new_value=as_json({"serial": serial, "model": model, "manufacturer": manufacturer}),
            reason=reason,
        )
        insert = Write(
            "INSERT INTO instruments(serial, model, manufacturer, created_us, created_by) "
            "SELECT ?, ?, ?, CAST(? AS BIGINT), ? "
            "WHERE NOT EXISTS (SELECT 1 FROM instruments WHERE serial = ?)",
            (serial, model, manufacturer, now_us, who.name, serial),
            expect=1,
            refusal=f"an instrument with serial {serial!r} is registered already",
        )
        await self._apply([insert], [entry], f"an instrument with serial {serial!r} is registered already")
        found = await self.instrument(serial)
        assert found is not None
        return found

    async def install(
        self,
        who: Principal,
        device_id: str,
        serial: str,
        *,
        reason: str,
        now_us: int,
        at_us: int | None = None,
    ) -> Installation:
        """Install an instrument on a point that has none, from ``at_us`` (default now)."""
        _may(who, Permission.INSTRUMENTS_MANAGE, "install instruments")
        reason = checked_text(reason, "A reason", 2000)
        self._point(device_id)
        instrument = await self._known(serial)
        at = now_us if at_us is None else at_us
        _not_future(at, now_us, "an installation")
        current = await self._current(device_id)
        if current is not None:
            raise ConflictError(
                f"{device_id} has instrument {current.serial} installed: swap it (or remove it) instead"
            )
        entry = _stay_entry(who, "instrument.installed", device_id, None, serial, at, reason, now_us)
        await self._apply([self._insert_stay(device_id, instrument, at, who, reason)], [entry])
        return await self._must_current(device_id)

    async def swap(
        self,
        who: Principal,
        device_id: str,
        serial: str,
        *,
        reason: str,
        now_us: int,
        at_us: int | None = None,
    ) -> Installation:
        """Replace the point's instrument by another: one ends where the other starts, atomically."""
        _may(who, Permission.INSTRUMENTS_MANAGE, "swap instruments")
        reason = checked_text(reason, "A reason", 2000)
        self._point(device_id)
        instrument = await self._known(serial)
        at = now_us if at_us is None else at_us
        _not_future(at, now_us, "a swap")
        current = await self._current(device_id)
        if current is None:
            raise ConflictError(f"{device_id} has no instrument installed: install one instead")
        if current.instrument_id == instrument.id:
            raise ConflictError(f"{serial} is the instrument installed on {device_id} already")
        if at <= current.from_us:
            raise RefusedError(f"a swap must come after the current instrument's installation on {device_id}")
        end = self._end_stay(current, at, who, reason)
        entry = _stay_entry(who, "instrument.swapped", device_id, current.serial, serial, at, reason, now_us)
        await self._apply([end, self._insert_stay(device_id, instrument, at, who, reason)], [entry])
        return await self._must_current(device_id)

    async def remove(
        self, who: Principal, device_id: str, *, reason: str, now_us: int, at_us: int | None = None
    ) -> Installation:
        """End the point's instrument stay without a replacement (its readings count as uncalibrated)."""
        _may(who, Permission.INSTRUMENTS_MANAGE, "remove instruments")
        reason = checked_text(reason, "A reason", 2000)
        self._point(device_id)
        at = now_us if at_us is None else at_us
        _not_future(at, now_us, "a removal")
        current = await self._current(device_id)
        if current is None:
            raise ConflictError(f"{device_id} has no instrument installed")
        if at <= current.from_us:
            raise RefusedError("a removal must come after the installation")
        entry = _stay_entry(who, "instrument.removed", device_id, current.serial, None, at, reason, now_us)
        await self._apply([self._end_stay(current, at, who, reason)], [entry])
        return current

    async def calibrate(
        self,
        signer: SignerIdentity,
        serial: str,
        *,
        performed_us: int,
        due_us: int,
        certificate: str,
        as_found: str,
        as_left: str,
        performed_by: str,
        passed: bool,
        meaning: str,
        reason: str,
        now_us: int,
        supersedes: int | None = None,
    ) -> Calibration:
        """Record a calibration of an instrument, signed by ``signer`` (a correction: ``supersedes``)."""
        if signer.role not in {"operator", "qa"}:
            raise AccessDeniedError(f"role {signer.role!r} may not record calibrations")
        instrument = await self._known(serial)
        _not_future(performed_us, now_us, "a calibration")
        if due_us <= performed_us:
            raise RefusedError("the due date must come after the calibration")
        if due_us - performed_us > LONGEST_US:
            raise RefusedError("the due date is more than 20 years after the calibration")
        record = Calibration(
            0,
            instrument.id,
            instrument.serial,
            performed_us,
            due_us,
            checked_text(certificate, "The certificate reference", 200),
            checked_text(as_found, "As found", 2000),
            checked_text(as_left, "As left", 2000),
            checked_text(performed_by, "Performed by", 200),
            passed,
            supersedes,
            now_us,
            signer.name,
        )
        reason = checked_text(reason, "A reason", 2000)
        if supersedes is not None:
            await self._check_correctable(supersedes, instrument)
        row, signed = bind(
            SIGNED_TYPE,
            record.key,
            "record",
            record.facts(),
            SignatureDraft(signer.name, signer.full_name, meaning, reason),
            now_us,
            self.zone,
        )
        facts = {
            k: v
            for k, v in record.facts().items()
            if k not in {"instrument_id", "recorded_by", "recorded_us"}
        }
        entry = AuditDraft(
            at_us=now_us,
            actor=signer.name,
            action="calibration.corrected" if supersedes is not None else "calibration.recorded",
            object_type=SIGNED_TYPE,
            object_id=record.key,
            old_value=None if supersedes is None else f"supersedes calibration {supersedes}",
            new_value=as_json(facts),
            reason=reason,
        )
        insert = Write(
            "INSERT INTO calibrations(instrument_id, performed_us, due_us, certificate, as_found, as_left, "
            "performed_by, passed, supersedes, recorded_us, recorded_by) "
            "SELECT CAST(? AS BIGINT), CAST(? AS BIGINT), CAST(? AS BIGINT), ?, ?, ?, ?, CAST(? AS BOOLEAN), "
            "CAST(? AS BIGINT), CAST(? AS BIGINT), ? "
            "WHERE NOT EXISTS (SELECT 1 FROM calibrations WHERE instrument_id = ? AND recorded_us = ?) "
            "AND NOT EXISTS (SELECT 1 FROM calibrations WHERE supersedes IS NOT NULL AND supersedes = ?)",
            (
                instrument.id,
                performed_us,
                due_us,
                record.certificate,
                record.as_found,
                record.as_left,
                record.performed_by,
                passed,
                supersedes,
                now_us,
                signer.name,
                instrument.id,
                now_us,
                -1 if supersedes is None else supersedes,
            ),
            expect=1,
            refusal="this calibration was corrected meanwhile, or another was recorded at the same instant: "
            "look again",
        )
        await self._apply([insert, Write(INSERT_SIGNATURE, row)], [entry, signed])
        stored = [c for c in await self.calibrations(instrument.id) if c.recorded_us == now_us]
        return stored[0]

    # ----- helpers ----------------------------------------------------------------------
    async def _apply(self, writes: list[Write], audit: list[AuditDraft], duplicate: str = "") -> None:
        from coldwatch.errors import StorageError  # noqa: PLC0415
        from coldwatch.storage.identity_store import WriteRefusedError  # noqa: PLC0415

        try:
            await self.store.apply(writes, audit)
        except WriteRefusedError as exc:
            raise ConflictError(str(exc)) from exc
        except StorageError as exc:
            # A unique index caught what the guard's read could not see yet (two writers at once).
            if "unique" in str(exc).lower() or "duplicate" in str(exc).lower():
                raise ConflictError(duplicate or "the records changed meanwhile: look again") from exc
            raise

    def _point(self, device_id: str) -> None:
        if device_id not in self.points:
            raise NoSuchInstrumentError(f"no monitoring point {device_id!r} (a registered device id)")

    async def _known(self, serial: str) -> Instrument:
        found = await self.instrument(serial.strip())
        if found is None:
            raise NoSuchInstrumentError(f"no instrument with serial {serial!r}: register it first")
        return found

    async def _current(self, device_id: str) -> Installation | None:
        rows = await self.store.fetch(STAY_SQL + " WHERE p.device_id = ? AND p.until_us IS NULL", device_id)
        return stay_of(rows[0]) if rows else None

    async def _must_current(self, device_id: str) -> Installation:
        found = await self._current(device_id)
        assert found is not None
        return found

    async def _check_correctable(self, supersedes: int, instrument: Instrument) -> None:
        rows = await self.store.fetch(CALIBRATION_SQL + " WHERE c.id = ?", supersedes)
        if not rows:
            raise NoSuchInstrumentError(f"no calibration record {supersedes}")
        old = calibration_of(rows[0])
        if old.instrument_id != instrument.id:
            raise RefusedError(
                f"calibration {supersedes} is of instrument {old.serial}, not {instrument.serial}"
            )
        later = await self.store.fetch("SELECT id FROM calibrations WHERE supersedes = ?", supersedes)
        if later:
            raise ConflictError(
                f"calibration {supersedes} was corrected already (by record {later[0][0]}): correct that one"
            )

    @staticmethod
    def _insert_stay(
        device_id: str, instrument: Instrument, at_us: int, who: Principal, reason: str
    ) -> Write:
        # Guarded: the point has no instrument from then on, and the instrument is on no other
        # point then (it may have been elsewhere before).
        return Write(
            "INSERT INTO point_instruments(device_id, instrument_id, from_us, installed_by, reason) "
            "SELECT ?, CAST(? AS BIGINT), CAST(? AS BIGINT), ?, ? "
            "WHERE NOT EXISTS (SELECT 1 FROM point_instruments WHERE device_id = ? "
            "AND (until_us IS NULL OR until_us > ?)) "
            "AND NOT EXISTS (SELECT 1 FROM point_instruments WHERE instrument_id = ? "
            "AND (until_us IS NULL OR until_us > ?))",
            (device_id, instrument.id, at_us, who.name, reason, device_id, at_us, instrument.id, at_us),
            expect=1,
            refusal=f"{instrument.serial} is installed on another point at that time, or {device_id} "
            "had an instrument then: remove it there first, or choose a later time",
        )

    @staticmethod
    def _end_stay(current: Installation, at_us: int, who: Principal, reason: str) -> Write:
        return Write(
            "UPDATE point_instruments SET until_us = ?, removed_by = ?, removed_reason = ? "
            "WHERE id = ? AND until_us IS NULL",
            (at_us, who.name, reason, current.id),
            expect=1,
            refusal=f"the instrument of {current.device_id} changed meanwhile: look again",
        )


def _may(who: Principal, permission: Permission, what: str) -> None:
    if who.kind != "person" or not who.may(permission):
        raise AccessDeniedError(f"role {who.role!r} may not {what}")


def _not_future(at_us: int, now_us: int, what: str) -> None:
    if at_us > now_us + SKEW_US:
        raise RefusedError(f"{what} cannot be dated in the future")


def _stay_entry(  # noqa: PLR0917 - one audit entry of a point's instrument change
    who: Principal,
    action: str,
    device_id: str,
    old_serial: str | None,
    new_serial: str | None,
    at_us: int,
    reason: str,
    now_us: int,
) -> AuditDraft:
    from coldwatch.export import format_ts  # noqa: PLC0415

    new = f"instrument {new_serial}" if new_serial is not None else "no instrument"
    return AuditDraft(
        at_us=now_us,
        actor=who.name,
        action=action,
        object_type="point",
        object_id=device_id,
        old_value=None if old_serial is None else f"instrument {old_serial}",
        new_value=f"{new} from {format_ts(at_us)}",
        reason=reason,
    )
