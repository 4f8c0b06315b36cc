"""Instrument and calibration records as read from either backend, and the state they give. No writes.

Rows of ``instruments``, ``point_instruments`` and ``calibrations`` as dataclasses; the
errors of the instrument records; :func:`calibration_states` (the contract every report
calls) and :func:`calibration_facts_of` (what ``coldwatch audit verify`` re-checks each
calibration signature against). Changes: :class:`coldwatch.records.instruments.Instruments`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

from coldwatch.identity_model import IdentityError, RefusedError
from coldwatch.records.calibration import DAY_US, CalibrationFacts, PointCalibration, Stay, point_calibration
from coldwatch.storage.identity_store import IdentityStore

__all__ = [
    "CALIBRATION_SQL",
    "INSTRUMENT_SQL",
    "LONGEST_US",
    "SIGNED_TYPE",
    "SKEW_US",
    "STAY_SQL",
    "Calibration",
    "ConflictError",
    "Installation",
    "Instrument",
    "NoSuchInstrumentError",
    "as_json",
    "calibration_facts_of",
    "calibration_of",
    "calibration_states",
    "checked_text",
    "instrument_of",
    "stay_of",
    "storable",
    "where_clause",
]

SIGNED_TYPE: Final = "calibration"
SKEW_US: Final = 300_000_000  # a calibration may be dated at most this far in the future (clocks)
LONGEST_US: Final = 20 * 366 * DAY_US  # a due date further than this after the calibration is a typo
INSTRUMENT_SQL: Final = "SELECT id, serial, model, manufacturer, created_us, created_by FROM instruments"
STAY_SQL: Final = (
    "SELECT p.id, p.device_id, p.instrument_id, i.serial, p.from_us, p.until_us, p.installed_by, p.reason, "
    "p.removed_by, p.removed_reason "
    "FROM point_instruments AS p JOIN instruments AS i ON i.id = p.instrument_id"
)
CALIBRATION_SQL: Final = (
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


def instrument_of(r: Sequence[Any]) -> Instrument:
    """An instrument from a row of :data:`INSTRUMENT_SQL`."""
    return Instrument(int(r[0]), str(r[1]), str(r[2]), str(r[3]), int(r[4]), str(r[5]))


def stay_of(r: Sequence[Any]) -> Installation:
    """A stay from a row of :data:`STAY_SQL`."""
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


def calibration_of(r: Sequence[Any]) -> Calibration:
    """A calibration record from a row of :data:`CALIBRATION_SQL`."""
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


def checked_text(value: str, label: str, most: int, *, required: bool = True) -> str:
    """``value`` stripped, refused (422) when missing, too long or not storable."""
    value = value.strip()
    if not storable(value):
        raise RefusedError(f"{label} must be valid Unicode without NUL characters")
    if required and not value:
        raise RefusedError(f"{label} is required")
    if len(value) > most:
        raise RefusedError(f"{label} is too long (at most {most} characters)")
    return value


def storable(text: str) -> bool:
    """Text both databases store: UTF-8 encodable (no lone surrogates) and without NUL."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def as_json(values: dict[str, object]) -> str:
    """An audit entry's JSON value (sorted keys, UTF-8 text)."""
    return json.dumps(values, ensure_ascii=False, sort_keys=True)


def where_clause(*pairs: tuple[str, object]) -> tuple[str, list[object]]:
    """A WHERE clause of equalities for the (column, value) pairs whose value is given."""
    given = [(column, value) for column, value in pairs if value is not None]
    if not given:
        return "", []
    return " WHERE " + " AND ".join(f"{c} = ?" for c, _ in given), [v for _, v in given]


async def calibration_facts_of(store: IdentityStore) -> dict[str, dict[str, object]]:
    """Every calibration record's signed facts, by its signature's object id (for ``audit verify``)."""
    rows = await store.fetch(CALIBRATION_SQL)
    return {c.key: c.facts() for c in map(calibration_of, rows)}


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
    for r in await store.fetch(STAY_SQL + " ORDER BY p.from_us, p.id"):
        stay = stay_of(r)
        if stay.device_id in wanted:
            stays[stay.device_id].append(Stay(stay.instrument_id, stay.serial, stay.from_us, stay.until_us))
    records: dict[int, list[CalibrationFacts]] = defaultdict(list)
    for r in await store.fetch(CALIBRATION_SQL):
        record = calibration_of(r)
        records[record.instrument_id].append(record.state_facts())
    alert_us = round(alert_before_days * DAY_US)
    return {
        d: point_calibration(d, stays.get(d, []), records, start_us, end_us, now_us, alert_us)
        for d in device_ids
    }
