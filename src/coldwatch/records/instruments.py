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

import json
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

from coldwatch.audit import AuditDraft
from coldwatch.identity_model import AccessDeniedError, IdentityError, Principal, RefusedError, SignerIdentity
from coldwatch.records.calibration import DAY_US, CalibrationFacts, PointCalibration, Stay, point_calibration
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

SIGNED_TYPE: Final = "calibration"
SKEW_US: Final = 300_000_000  # a calibration may be dated at most this far in the future (clocks)
LONGEST_US: Final = 20 * 366 * DAY_US  # a due date further than this after the calibration is a typo
_INSTRUMENT: Final = "SELECT id, serial, model, manufacturer, created_us, created_by FROM instruments"
_STAY: Final = (
    "SELECT p.id, p.device_id, p.instrument_id, i.serial, p.from_us, p.until_us, p.installed_by, p.reason, "
    "p.removed_by, p.removed_reason "
    "FROM point_instruments AS p JOIN instruments AS i ON i.id = p.instrument_id"
)
_CALIBRATION: Final = (
    "SELECT c.id, c.instrument_id, i.serial, c.performed_us, c.due_us, c.certificate, c.as_found, c.as_left, "
    "c.performed_by, c.passed, c.supersedes, c.recorded_us, c.recorded_by "
    "FROM calibrations AS c JOIN instruments AS i ON i.id = c.instrument_id"
)


class NoSuchInstrumentError(IdentityError):
    """No instrument (or point, or calibration) of that name."""

    status = 404


class ConflictError(IdentityError):
    """The records do not allow it now (the point has an instrument already, a record was corrected)."""

    status = 409


@dataclass(frozen=True, slots=True)
class Instrument:
    """A measuring instrument."""

    id: int
    serial: str
    model: str
    manufacturer: str
    created_us: int
    created_by: str


@dataclass(frozen=True, slots=True)
class Installation:
    """An instrument's stay on a monitoring point (``until_us`` None: still there)."""

    id: int
    device_id: str
    instrument_id: int
    serial: str
    from_us: int
    until_us: int | None
    installed_by: str
    reason: str
    removed_by: str | None
    removed_reason: str | None


@dataclass(frozen=True, slots=True)
class Calibration:
    """One calibration record of an instrument, as recorded and signed."""

    id: int
    instrument_id: int
    serial: str
    performed_us: int
    due_us: int
    certificate: str
    as_found: str
    as_left: str
    performed_by: str
    passed: bool
    supersedes: int | None
    recorded_us: int
    recorded_by: str

    @property
    def key(self) -> str:
        """The signature's object id: instrument and recording time (unique, guarded at insert)."""
        return f"{self.instrument_id}:{self.recorded_us}"

    def facts(self) -> dict[str, object]:
        """What the recorder's signature covers: every field of the record but its row id."""
        return {k: v for k, v in asdict(self).items() if k != "id"}

    def state_facts(self) -> CalibrationFacts:
        """What the calibration state needs of it."""
        return CalibrationFacts(
            self.id, self.instrument_id, self.performed_us, self.due_us, self.passed, self.supersedes
        )


def _instrument(r: Sequence[Any]) -> Instrument:
    return Instrument(int(r[0]), str(r[1]), str(r[2]), str(r[3]), int(r[4]), str(r[5]))


def _stay(r: Sequence[Any]) -> Installation:
    return Installation(
        int(r[0]),
        str(r[1]),
        int(r[2]),
        str(r[3]),
        int(r[4]),
        None if r[5] is None else int(r[5]),
        str(r[6]),
        str(r[7]),
        None if r[8] is None else str(r[8]),
        None if r[9] is None else str(r[9]),
    )


def _calibration(r: Sequence[Any]) -> Calibration:
    return Calibration(
        int(r[0]),
        int(r[1]),
        str(r[2]),
        int(r[3]),
        int(r[4]),
        str(r[5]),
        str(r[6]),
        str(r[7]),
        str(r[8]),
        bool(r[9]),
        None if r[10] is None else int(r[10]),
        int(r[11]),
        str(r[12]),
    )


def _text(value: str, label: str, most: int, *, required: bool = True) -> str:
    value = value.strip()
    if required and not value:
        raise RefusedError(f"{label} is required")
    if len(value) > most:
        raise RefusedError(f"{label} is too long (at most {most} characters)")
    return value


def _json(values: dict[str, object]) -> str:
    return json.dumps(values, ensure_ascii=False, sort_keys=True)


class Instruments:
    """Registers instruments, installs and swaps them, records calibrations; reads them back."""

    def __init__(self, store: IdentityStore, zone: str, points: Collection[str]) -> None:
        self.store = store
        self.zone = zone
        self.points = frozenset(points)

    # ----- reads ------------------------------------------------------------------------
    async def instruments(self) -> list[Instrument]:
        """Every instrument, by serial."""
        return [_instrument(r) for r in await self.store.fetch(_INSTRUMENT + " ORDER BY serial")]

    async def instrument(self, serial: str) -> Instrument | None:
        """One instrument by serial, or None."""
        rows = await self.store.fetch(_INSTRUMENT + " WHERE serial = ?", serial)
        return _instrument(rows[0]) if rows else None

    async def stays(
        self, *, device_id: str | None = None, instrument_id: int | None = None
    ) -> list[Installation]:
        """Stays of instruments on points (of one point, or of one instrument), oldest first."""
        where, params = _where(("p.device_id", device_id), ("p.instrument_id", instrument_id))
        rows = await self.store.fetch(_STAY + where + " ORDER BY p.device_id, p.from_us, p.id", *params)
        return [_stay(r) for r in rows]

    async def calibrations(self, instrument_id: int | None = None) -> list[Calibration]:
        """Calibration records (of one instrument), in the order performed."""
        where, params = _where(("c.instrument_id", instrument_id))
        rows = await self.store.fetch(_CALIBRATION + where + " ORDER BY c.performed_us, c.id", *params)
        return [_calibration(r) for r in rows]

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
        serial = _text(serial, "The serial number", 100)
        model = _text(model, "The model", 200)
        manufacturer = _text(manufacturer, "The manufacturer", 200)
        reason = _text(reason, "A reason", 2000)
        entry = AuditDraft(
            at_us=now_us,
            actor=who.name,
            action="instrument.registered",
            object_type="instrument",
            object_id=serial,
            old_value=None,
            new_value=_json({"serial": serial, "model": model, "manufacturer": manufacturer}),
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
        reason = _text(reason, "A reason", 2000)
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
        reason = _text(reason, "A reason", 2000)
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
        reason = _text(reason, "A reason", 2000)
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
            _text(certificate, "The certificate reference", 200),
            _text(as_found, "As found", 2000),
            _text(as_left, "As left", 2000),
            _text(performed_by, "Performed by", 200),
            passed,
            supersedes,
            now_us,
            signer.name,
        )
        reason = _text(reason, "A reason", 2000)
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
            new_value=_json(facts),
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
        rows = await self.store.fetch(_STAY + " WHERE p.device_id = ? AND p.until_us IS NULL", device_id)
        return _stay(rows[0]) if rows else None

    async def _must_current(self, device_id: str) -> Installation:
        found = await self._current(device_id)
        assert found is not None
        return found

    async def _check_correctable(self, supersedes: int, instrument: Instrument) -> None:
        rows = await self.store.fetch(_CALIBRATION + " WHERE c.id = ?", supersedes)
        if not rows:
            raise NoSuchInstrumentError(f"no calibration record {supersedes}")
        old = _calibration(rows[0])
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


def _where(*pairs: tuple[str, object]) -> tuple[str, list[object]]:
    given = [(column, value) for column, value in pairs if value is not None]
    if not given:
        return "", []
    return " WHERE " + " AND ".join(f"{c} = ?" for c, _ in given), [v for _, v in given]


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


async def calibration_facts_of(store: IdentityStore) -> dict[str, dict[str, object]]:
    """Every calibration record's signed facts, by its signature's object id (for ``audit verify``)."""
    rows = await store.fetch(_CALIBRATION)
    return {c.key: c.facts() for c in map(_calibration, rows)}


async def calibration_states(
    store: IdentityStore,
    device_ids: Sequence[str],
    start_us: int,
    end_us: int,
    now_us: int,
    *,
    alert_before_days: float = 30.0,
) -> dict[str, PointCalibration]:
    """Each point's calibration state at ``now_us`` and its uncalibrated intervals in ``[start_us, end_us)``.

    Two reads (stays, calibrations) for any number of points: the tables are small.
    """
    wanted = set(device_ids)
    stays: dict[str, list[Stay]] = defaultdict(list)
    for r in await store.fetch(_STAY + " ORDER BY p.from_us, p.id"):
        stay = _stay(r)
        if stay.device_id in wanted:
            stays[stay.device_id].append(Stay(stay.instrument_id, stay.serial, stay.from_us, stay.until_us))
    records: dict[int, list[CalibrationFacts]] = defaultdict(list)
    for r in await store.fetch(_CALIBRATION):
        record = _calibration(r)
        records[record.instrument_id].append(record.state_facts())
    alert_us = round(alert_before_days * DAY_US)
    return {
        d: point_calibration(d, stays.get(d, []), records, start_us, end_us, now_us, alert_us)
        for d in device_ids
    }
