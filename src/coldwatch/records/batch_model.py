"""Batches and the places they used: validation, signed facts and the QA verdict. Pure.

A batch (lot id, product, chain-of-identity id) is registered with its *stays*: a place
and the time spent there. A place is either an area (site and area: the room, watched by
its particle counters) or a device (an incubator, a dewar or cryoshipper). Amending a
batch registers a new version of the whole set of stays; earlier versions are kept.

The chain-of-identity id is opaque (ISBT 128 codes and the like are licensed formats):
it is stored and shown exactly as given, never trimmed or normalised.

No I/O and no clock: the time a check needs is passed in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from coldwatch.catalogue import Kind
from coldwatch.config import DeviceConfig
from coldwatch.identity_model import RefusedError

__all__ = [
    "LOT_PATTERN",
    "MAX_STAYS",
    "Stay",
    "Verdict",
    "batch_facts",
    "check_batch_text",
    "devices_of_stay",
    "overlaps",
    "split_object_id",
    "validate_stays",
    "verdict",
    "version_object_id",
]

LOT_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_STAYS: Final = 200
TEXT_MAX: Final = 200
# Nothing this system records lies before 2000 or over a year ahead of now; a stay lasts
# at most a year (a batch in a dewar for longer is registered again for the next year).
EARLIEST_US: Final = 946_684_800_000_000  # 2000-01-01T00:00:00Z
YEAR_US: Final = 366 * 86_400 * 1_000_000

Verdict = Literal["no excursion", "excursions, all reviewed", "excursions awaiting review"]


@dataclass(frozen=True, slots=True)
class Stay:
    """One place a batch used and when: [from_us, until_us)."""

    site: str
    area: str | None
    device_id: str | None
    from_us: int
    until_us: int

    @property
    def place(self) -> str:
        """How the place reads: ``device d1 (s1/a1)`` or ``area s1/a1``."""
        if self.device_id is not None:
            return (
                f"device {self.device_id} ({self.site}/{self.area})"
                if self.area
                else f"device {self.device_id}"
            )
        return f"area {self.site}/{self.area}"

    def facts(self) -> dict[str, object]:
        """The stay as it is signed."""
        return {
            "site": self.site,
            "area": self.area,
            "device": self.device_id,
            "from_us": self.from_us,
            "until_us": self.until_us,
        }


def check_batch_text(lot: str, product: str, coi: str) -> None:
    """Refuse (422) a lot id, product or chain-of-identity id that cannot be a record's key or text."""
    if not LOT_PATTERN.match(lot):
        raise RefusedError(
            "a lot id is 1 to 64 characters: letters, digits and . _ - (starting with a letter or digit)"
        )
    for name, value in (("product", product), ("chain-of-identity id", coi)):
        if not value.strip():
            raise RefusedError(f"the {name} must not be empty")
        if len(value) > TEXT_MAX:
            raise RefusedError(f"the {name} has at most {TEXT_MAX} characters")
        if "\x00" in value:
            raise RefusedError(f"the {name} must not contain NUL characters")


def _check_times(index: int, stay: Stay, now_us: int) -> None:
    where = f"stay {index + 1} ({stay.place})"
    if stay.until_us <= stay.from_us:
        raise RefusedError(f"{where}: it must end after it starts")
    if stay.from_us < EARLIEST_US:
        raise RefusedError(f"{where}: it starts before 2000-01-01, which cannot be a real stay")
    if stay.until_us > now_us + YEAR_US:
        raise RefusedError(f"{where}: it ends more than a year from now")
    if stay.until_us - stay.from_us > YEAR_US:
        raise RefusedError(f"{where}: it lasts more than a year; register one stay per year")


def _resolved(
    index: int, stay: Stay, devices: Mapping[str, DeviceConfig], areas: set[tuple[str, str]]
) -> Stay:
    """The stay with the device's site and area filled in, or a refusal when the place is not configured."""
    where = f"stay {index + 1}"
    if stay.device_id is not None:
        device = devices.get(stay.device_id)
        if device is None:
            raise RefusedError(f"{where}: no configured device {stay.device_id!r}")
        if device.kind is Kind.PARTICLE_COUNTER:
            raise RefusedError(
                f"{where}: {stay.device_id} is a particle counter: "
                f"name its area ({device.site}/{device.area})"
            )
        if stay.site and stay.site != device.site:
            raise RefusedError(f"{where}: device {stay.device_id} is at site {device.site}, not {stay.site}")
        if stay.area and stay.area != device.area:
            raise RefusedError(f"{where}: device {stay.device_id} is in area {device.area}, not {stay.area}")
        return Stay(device.site, device.area, device.id, stay.from_us, stay.until_us)
    if not stay.area or (stay.site, stay.area) not in areas:
        raise RefusedError(
            f"{where}: no configured area {stay.site}/{stay.area} (a room with particle counters)"
        )
    return stay


def validate_stays(stays: Sequence[Stay], devices: Iterable[DeviceConfig], now_us: int) -> list[Stay]:
    """The stays, checked and resolved (device stays get their site and area), ordered by start.

    Raises :class:`RefusedError` (HTTP 422) naming the first wrong stay: a place that is not
    configured, an end not after the start, a time before 2000 or over a year ahead, a
    stay longer than a year, the same stay twice, none at all or more than ``MAX_STAYS``.
    """
    if not stays:
        raise RefusedError("a batch needs at least one stay (a place and the time spent there)")
    if len(stays) > MAX_STAYS:
        raise RefusedError(f"a batch has at most {MAX_STAYS} stays")
    configured = {d.id: d for d in devices}
    areas = {(d.site, d.area) for d in configured.values() if d.kind is Kind.PARTICLE_COUNTER}
    out: list[Stay] = []
    for index, stay in enumerate(stays):
        _check_times(index, stay, now_us)
        resolved = _resolved(index, stay, configured, areas)
        if resolved in out:
            raise RefusedError(f"stay {index + 1} ({resolved.place}) is given twice")
        out.append(resolved)
    return sorted(out, key=lambda s: (s.from_us, s.until_us, s.site, s.area or "", s.device_id or ""))


def devices_of_stay(stay: Stay, devices: Iterable[DeviceConfig]) -> list[DeviceConfig]:
    """The devices whose conditions a stay covers: the device itself, or the area's particle counters."""
    if stay.device_id is not None:
        return [d for d in devices if d.id == stay.device_id]
    return [
        d for d in devices if d.kind is Kind.PARTICLE_COUNTER and d.site == stay.site and d.area == stay.area
    ]


def overlaps(raised_us: int, cleared_us: int | None, from_us: int, until_us: int) -> bool:
    """Whether an alarm interval [raised, cleared) (open: not cleared yet) meets the stay [from, until)."""
    return raised_us < until_us and (cleared_us is None or cleared_us > from_us)


def batch_facts(lot: str, product: str, coi: str, version: int, stays: Sequence[Stay]) -> dict[str, object]:
    """What a registration or amendment signature covers: the batch and the whole set of stays."""
    return {
        "lot": lot,
        "product": product,
        "coi": coi,
        "version": version,
        "stays": [s.facts() for s in stays],
    }


def version_object_id(lot: str, version: int) -> str:
    """The signed object of one version of a batch: ``LOT#vN``."""
    return f"{lot}#v{version}"


def split_object_id(object_id: str) -> tuple[str, int] | None:
    """The lot and version of :func:`version_object_id`, or None."""
    lot, mark, version = object_id.rpartition("#v")
    if not mark or not version.isdigit():
        return None
    return lot, int(version)


def verdict(alarm_ids: Iterable[int], reviewed: Iterable[int]) -> Verdict:
    """The QA verdict line of a batch: no excursion, all reviewed, or some awaiting review."""
    touching = set(alarm_ids)
    if not touching:
        return "no excursion"
    if touching <= set(reviewed):
        return "excursions, all reviewed"
    return "excursions awaiting review"
