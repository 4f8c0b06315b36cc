"""The HTTP API of instruments and calibration: read; register, install, swap, calibrate.

- ``GET /api/v1/calibration``: every monitoring point's instrument and calibration state
  (``?since=&until=`` adds the intervals its readings were taken out of calibration).
- ``GET /api/v1/instruments`` and ``GET /api/v1/instruments/{serial}``: instruments, with
  an instrument's stays on points and its calibration records, each with its signature's
  manifestation (printed name, UTC and site time, meaning).
- ``POST /api/v1/instruments`` (register), ``POST /api/v1/points/{device}/install|swap|remove``:
  a person's session with the ``operator`` or ``qa`` role and its CSRF token; a reason is
  mandatory. A service token reads only.
- ``POST /api/v1/instruments/{serial}/calibrations``: a calibration record, signed with
  every component (user, password, meaning, reason); a correction names the record it
  ``supersedes``.
"""

# No "from __future__ import annotations": FastAPI must see the local dependency aliases.

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request, status
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from coldwatch.api import ApiContext, SignedBody
from coldwatch.api_input import ID_MAX, ReasonText, Text, UtcTime, to_us
from coldwatch.config import Config
from coldwatch.export import format_ts
from coldwatch.identity_model import Principal, SignerIdentity
from coldwatch.records.calibration import PointCalibration
from coldwatch.records.instruments import (
    Calibration,
    Installation,
    Instrument,
    Instruments,
    NoSuchInstrumentError,
    calibration_states,
)
from coldwatch.roles import Permission
from coldwatch.signatures import StoredSignature, manifestation_json
from coldwatch.storage.identity_store import IdentityStore, identity_store
from coldwatch.web_auth import client_address, refusals

__all__ = [
    "PointView",
    "calibration_json",
    "instrument_json",
    "instruments_of",
    "instruments_router",
    "point_json",
    "point_views",
    "recorded_calibration",
]


def storable(text: str) -> str:
    """Refuse (422) a path text the databases cannot store: a NUL or a lone surrogate."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("must be valid Unicode") from exc
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
    return text


Short = Annotated[Text, Field(min_length=1, pattern=r"\S")]
Long = ReasonText  # 1 to 2,000 characters, not blank, storable
Serial = Annotated[Text, Field(min_length=1, max_length=100, pattern=r"\S")]
SerialPath = Annotated[str, Path(min_length=1, max_length=100), AfterValidator(storable)]
DevicePath = Annotated[str, Path(min_length=1, max_length=200), AfterValidator(storable)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegisterBody(_Body):
    """A new instrument."""

    serial: Serial
    model: Short
    manufacturer: Short
    reason: ReasonText


class StayBody(_Body):
    """Install or swap: the instrument, why, and from when (default now)."""

    serial: Serial
    reason: ReasonText
    at: UtcTime | None = None


class RemoveBody(_Body):
    """Remove the point's instrument: why, and from when (default now)."""

    reason: ReasonText
    at: UtcTime | None = None


class CalibrationBody(SignedBody):
    """A calibration record, signed (user, password, meaning, reason)."""

    performed: UtcTime
    due: UtcTime
    certificate: Short
    as_found: Long
    as_left: Long
    performed_by: Short
    passed: bool
    supersedes: Annotated[int, Field(ge=1, le=ID_MAX)] | None = None


@dataclass(frozen=True, slots=True)
class PointView:
    """A monitoring point as the instrument pages show it."""

    device_id: str
    site: str
    area: str
    kind: str
    calibration: PointCalibration


def instruments_of(ctx: ApiContext) -> Instruments:
    """The instrument records on the context's database."""
    return Instruments(identity_store(ctx.storage), ctx.config.site.timezone, ctx.config.device_map())


async def point_views(
    store: IdentityStore,
    config: Config,
    now_us: int,
    since_us: int | None = None,
    until_us: int | None = None,
) -> list[PointView]:
    """Every configured point with its calibration state at ``now_us`` (and intervals over the span)."""
    devices = config.devices
    start = now_us if since_us is None else since_us
    end = now_us if until_us is None else until_us
    states = await calibration_states(
        store,
        [d.id for d in devices],
        start,
        end,
        now_us,
        alert_before_days=config.calibration.alert_before_days,
    )
    return [PointView(d.id, d.site, d.area, d.kind.value, states[d.id]) for d in devices]


def _ts(at_us: int | None) -> str | None:
    return None if at_us is None else format_ts(at_us)


def point_json(view: PointView) -> dict[str, Any]:
    """A point's calibration, as the API gives it."""
    c = view.calibration
    return {
        "device": view.device_id,
        "site": view.site,
        "area": view.area,
        "instrument": c.instrument_serial,
        "state": c.state,
        "due": _ts(c.due_us),
        "last_calibration_passed": c.last_passed,
        "uncalibrated": [{"from": format_ts(a), "until": format_ts(b)} for a, b in c.uncalibrated],
    }


def _instrument_json(i: Instrument) -> dict[str, Any]:
    return {
        "serial": i.serial,
        "model": i.model,
        "manufacturer": i.manufacturer,
        "registered_at": format_ts(i.created_us),
        "registered_by": i.created_by,
    }


def _stay_json(s: Installation) -> dict[str, Any]:
    return {
        "device": s.device_id,
        "instrument": s.serial,
        "from": format_ts(s.from_us),
        "until": _ts(s.until_us),
        "installed_by": s.installed_by,
        "reason": s.reason,
        "removed_by": s.removed_by,
        "removed_reason": s.removed_reason,
    }


def calibration_json(
    c: Calibration, signatures: Sequence[StoredSignature], zone: str, superseded_by: int | None
) -> dict[str, Any]:
    """A calibration record with its signatures' manifestations."""
    return {
        "id": c.id,
        "instrument": c.serial,
        "performed": format_ts(c.performed_us),
        "due": format_ts(c.due_us),
        "certificate": c.certificate,
        "as_found": c.as_found,
        "as_left": c.as_left,
        "performed_by": c.performed_by,
        "passed": c.passed,
        "supersedes": c.supersedes,
        "superseded_by": superseded_by,
        "recorded_at": format_ts(c.recorded_us),
        "recorded_by": c.recorded_by,
        "signatures": [manifestation_json(s, zone) for s in signatures],
    }


async def instrument_json(records: Instruments, serial: str) -> dict[str, Any]:
    """One instrument with its stays and calibration records (404 if unknown)."""
    found = await records.instrument(serial)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no instrument with serial {serial!r}")
    calibrations = await records.calibrations(found.id)
    signatures = await records.signatures_of(calibrations)
    later = {c.supersedes: c.id for c in calibrations if c.supersedes is not None}
    zone = records.zone
    return {
        **_instrument_json(found),
        "stays": [_stay_json(s) for s in await records.stays(instrument_id=found.id)],
        "calibrations": [
            calibration_json(c, signatures.get(c.id, []), zone, later.get(c.id)) for c in calibrations
        ],
    }


async def recorded_calibration(
    ctx: ApiContext,
    serial: str,
    body: CalibrationBody,
    *,
    client: str,
    session: Principal | None = None,
    user: str | None,
) -> Calibration:
    """Verify the signature's components and record the calibration (raises the identity layer's errors)."""
    who = await ctx.identity.verify_signer(
        action="calibrate",
        permission=Permission.CALIBRATE,
        meaning=body.meaning,
        user=user,
        password=body.password,
        client=client,
        session=session,
    )
    return await instruments_of(ctx).calibrate(
        SignerIdentity(who.name, who.full_name, who.role),
        serial,
        performed_us=to_us(body.performed),
        due_us=to_us(body.due),
        certificate=body.certificate,
        as_found=body.as_found,
        as_left=body.as_left,
        performed_by=body.performed_by,
        passed=body.passed,
        meaning=body.meaning,
        reason=body.reason,
        now_us=ctx.clock_us(),
        supersedes=body.supersedes,
    )


async def _calibrate(ctx: ApiContext, serial: str, body: CalibrationBody, request: Request) -> dict[str, Any]:
    principal = await ctx.auth.signing_principal(request)
    if principal is not None and principal.name != body.user:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "a signature in a session is the session's user's")
    with refusals():
        if await instruments_of(ctx).instrument(serial) is None:
            raise NoSuchInstrumentError(f"no instrument with serial {serial!r}")
        made = await recorded_calibration(ctx, serial, body, client=client_address(request), user=body.user)
    shown = await instrument_json(instruments_of(ctx), serial)
    return next(c for c in shown["calibrations"] if c["id"] == made.id)


def _span(since: datetime | None, until: datetime | None, now_us: int) -> tuple[int | None, int | None]:
    """The span asked for (one end given: the other is now); 422 when it ends before it starts."""
    start = None if since is None else to_us(since)
    end = None if until is None else to_us(until)
    if start is not None and end is not None and end < start:
        raise HTTPException(422, "until must not come before since")
    if start is not None and end is None:
        end = max(now_us, start)
    if end is not None and start is None:
        start = min(now_us, end)
    return start, end


async def _stay(ctx: ApiContext, change: str, device: str, body: StayBody, who: Principal) -> dict[str, Any]:
    records = instruments_of(ctx)
    act = records.install if change == "install" else records.swap
    at = None if body.at is None else to_us(body.at)
    with refusals():
        done = await act(who, device, body.serial, reason=body.reason, now_us=ctx.clock_us(), at_us=at)
    return {"event": "installed" if change == "install" else "swapped", "stay": _stay_json(done)}


def instruments_router(ctx: ApiContext) -> APIRouter:
    """The /api/v1 routes of instruments and calibration."""
    router = APIRouter(prefix="/api/v1")
    auth = ctx.auth
    Viewer = Annotated[Principal, Depends(auth.require(Permission.READ))]  # noqa: N806 - a type alias
    Manager = Annotated[Principal, Depends(auth.require(Permission.INSTRUMENTS_MANAGE))]  # noqa: N806
    Checked = [Depends(auth.csrf)]  # noqa: N806 - dependencies
    Signing = [Depends(auth.signing_principal), Depends(auth.csrf)]  # noqa: N806 - dependencies

    @router.get("/calibration")
    async def calibration(
        _: Viewer, since: UtcTime | None = None, until: UtcTime | None = None
    ) -> list[dict[str, Any]]:
        """Every point's instrument and calibration state now; with a span, its uncalibrated intervals."""
        now = ctx.clock_us()
        start, end = _span(since, until, now)
        return [
            point_json(v) for v in await point_views(identity_store(ctx.storage), ctx.config, now, start, end)
        ]

    @router.get("/instruments")
    async def list_instruments(_: Viewer) -> list[dict[str, Any]]:
        """Every instrument, with the point it is installed on now (if any)."""
        records = instruments_of(ctx)
        current = {s.instrument_id: s.device_id for s in await records.stays() if s.until_us is None}
        return [{**_instrument_json(i), "point": current.get(i.id)} for i in await records.instruments()]

    @router.get("/instruments/{serial}")
    async def get_instrument(serial: SerialPath, _: Viewer) -> dict[str, Any]:
        """One instrument: its stays on points and its calibration records with their signatures."""
        return await instrument_json(instruments_of(ctx), serial)

    @router.post("/instruments", dependencies=Checked, status_code=status.HTTP_201_CREATED)
    async def register(body: RegisterBody, who: Manager) -> dict[str, Any]:
        """Register an instrument (operator or qa, in a session)."""
        with refusals():
            made = await instruments_of(ctx).register(
                who,
                serial=body.serial,
                model=body.model,
                manufacturer=body.manufacturer,
                reason=body.reason,
                now_us=ctx.clock_us(),
            )
        return _instrument_json(made)

    @router.post("/points/{device}/install", dependencies=Checked)
    async def install(device: DevicePath, body: StayBody, who: Manager) -> dict[str, Any]:
        """Install an instrument on a point that has none (operator or qa, in a session)."""
        return await _stay(ctx, "install", device, body, who)

    @router.post("/points/{device}/swap", dependencies=Checked)
    async def swap(device: DevicePath, body: StayBody, who: Manager) -> dict[str, Any]:
        """Swap the point's instrument for another at one instant (operator or qa, in a session)."""
        return await _stay(ctx, "swap", device, body, who)

    @router.post("/points/{device}/remove", dependencies=Checked)
    async def remove(device: DevicePath, body: RemoveBody, who: Manager) -> dict[str, Any]:
        """End the point's instrument stay without a replacement (operator or qa, in a session)."""
        at = None if body.at is None else to_us(body.at)
        with refusals():
            done = await instruments_of(ctx).remove(
                who, device, reason=body.reason, now_us=ctx.clock_us(), at_us=at
            )
        return {"event": "removed", "stay": _stay_json(done)}

    @router.post(
        "/instruments/{serial}/calibrations", dependencies=Signing, status_code=status.HTTP_201_CREATED
    )
    async def calibrate(serial: SerialPath, body: CalibrationBody, request: Request) -> dict[str, Any]:
        """Record a calibration, signed by an operator or qa user (all components; correction: supersedes)."""
        return await _calibrate(ctx, serial, body, request)

    return router
