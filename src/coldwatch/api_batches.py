"""The HTTP API of batch records and shipments: register, amend, dispatch, receive (signed), read, report.

Mounted under /api/v1 by :func:`coldwatch.api.build_router`. Reads need the ``read``
permission (any role, service tokens too); registering, amending, dispatching and
receiving are signed by an operator or a qa user with every component (user, password,
meaning, reason), as alarm actions are; generating a report needs the same role (it
creates a stored record), without a signature.
"""

# No "from __future__ import annotations": FastAPI must see the local dependency aliases.

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request, status
from pydantic import BaseModel, ConfigDict, Field, model_validator

from coldwatch.api_input import ID_MAX, ReasonText, Text, UserId, UtcTime, to_us
from coldwatch.export import format_ts
from coldwatch.identity_model import Principal
from coldwatch.records.batch_model import Stay
from coldwatch.records.batches import Batches, BatchRecord
from coldwatch.records.shipments import ShipmentRecord, Shipments, forecast_at, forecast_rule
from coldwatch.records.store import ReportStore
from coldwatch.roles import Permission
from coldwatch.signatures import SignatureDraft, manifestation_json
from coldwatch.storage.identity_store import identity_store
from coldwatch.web_auth import client_address, refusals

if TYPE_CHECKING:
    from coldwatch.api import ApiContext

__all__ = ["batch_json", "batches_router", "shipment_json"]

Lot = Annotated[str, Path(max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
ShipmentId = Annotated[int, Path(ge=1, le=ID_MAX, description="a shipment id")]
Name = Annotated[str, Field(min_length=1, max_length=200)]


class _Signed(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: UserId
    password: Annotated[str, Field(min_length=1, max_length=1024)]
    meaning: Text
    reason: ReasonText


class StayBody(BaseModel):
    """One place and time: an area (site and area) or a device, from a time until a later one."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    site: Annotated[str, Field(max_length=64)] = ""
    area: Annotated[str | None, Field(max_length=64)] = None
    device: Annotated[str | None, Field(max_length=64)] = None
    start: Annotated[UtcTime, Field(alias="from")]
    until: UtcTime

    @model_validator(mode="after")
    def _one_place(self) -> "StayBody":
        if (self.area is None) == (self.device is None):
            raise ValueError("a stay names either an area (with its site) or a device, not both")
        if self.device is None and not self.site:
            raise ValueError("an area stay names its site")
        return self

    def stay(self) -> Stay:
        """As the records module takes it."""
        return Stay(self.site, self.area, self.device, to_us(self.start), to_us(self.until))


class RegisterBody(_Signed):
    """A new batch with its stays, signed."""

    lot: Annotated[str, Field(max_length=64)]
    product: Name
    coi: Annotated[
        str, Field(min_length=1, max_length=200, description="chain-of-identity id, stored as given")
    ]
    stays: Annotated[list[StayBody], Field(min_length=1, max_length=200)]


class AmendBody(_Signed):
    """The whole new set of stays, signed; ``reason`` says why."""

    stays: Annotated[list[StayBody], Field(min_length=1, max_length=200)]


class DispatchBody(_Signed):
    """A shipment's start on a cryoshipper, signed at dispatch."""

    device: Annotated[str, Field(min_length=1, max_length=64)]
    coi: Annotated[str, Field(min_length=1, max_length=200)]
    origin: Name
    destination: Name
    required_hold_h: Annotated[float, Field(gt=0, le=60 * 24, allow_inf_nan=False)]


def batch_json(record: BatchRecord, zone: str) -> dict[str, Any]:
    """A batch with every version of its stays and each version's signature manifestation."""

    def stay(s: Stay) -> dict[str, Any]:
        return {
            "place": s.place,
            "site": s.site,
            "area": s.area,
            "device": s.device_id,
            "from": format_ts(s.from_us),
            "until": format_ts(s.until_us),
        }

    versions = []
    for version, stays in sorted(record.versions.items()):
        sig = record.signature_of(version)
        versions.append(
            {
                "version": version,
                "stays": [stay(s) for s in stays],
                "signature": manifestation_json(sig, zone) if sig is not None else None,
            }
        )
    return {
        "lot": record.lot,
        "product": record.product,
        "coi": record.coi,
        "version": record.version,
        "registered_at": format_ts(record.registered_us),
        "registered_by": record.registered_by,
        "stays": [stay(s) for s in record.stays],
        "versions": versions,
    }


def shipment_json(record: ShipmentRecord, zone: str) -> dict[str, Any]:
    """A shipment with its dispatch and receipt signatures' manifestations."""
    return {
        "id": record.id,
        "device": record.device_id,
        "coi": record.coi,
        "origin": record.origin,
        "destination": record.destination,
        "required_hold_h": record.required_hold_s / 3600,
        "state": record.state,
        "dispatched_at": format_ts(record.dispatched_us),
        "dispatched_by": record.dispatched_by,
        "dispatch_forecast_h": None
        if record.dispatch_forecast_s is None
        else record.dispatch_forecast_s / 3600,
        "received_at": None if record.received_us is None else format_ts(record.received_us),
        "received_by": record.received_by,
        "signatures": [manifestation_json(s, zone) for s in record.signatures],
    }


class _Routes:
    """What both route groups share: the context, the stores and the signer check."""

    def __init__(self, ctx: "ApiContext") -> None:
        self.ctx = ctx
        self.zone = ctx.config.site.timezone
        store = identity_store(ctx.storage)
        self.batches = Batches(store, ctx.config.devices, self.zone)
        self.shipments = Shipments(store, ctx.config)

    async def stored(self, report_id: int) -> dict[str, Any]:
        """A stored report as the reports API answers it."""
        from coldwatch.api_reports import report_json  # noqa: PLC0415 - it imports the PDF engine's modules

        reports = ReportStore(identity_store(self.ctx.storage), self.zone)
        report = await reports.get(report_id)
        if report is None:  # just stored
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no report {report_id}")
        return await report_json(reports, report)

    async def signer(self, request: Request, action: str, body: _Signed) -> SignatureDraft:
        """The verified signer of a signed request (every component: the API is no continuous session)."""
        auth = self.ctx.auth
        principal = await auth.signing_principal(request)
        if principal is not None and principal.name != body.user:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "a signature in a session is the session's user's")
        with refusals():
            who = await self.ctx.identity.verify_signer(
                action=action,
                permission=Permission.RECORDS_SIGN,
                meaning=body.meaning,
                user=body.user,
                password=body.password,
                client=client_address(request),
            )
        return SignatureDraft(who.name, who.full_name, body.meaning, body.reason)


def batches_router(ctx: "ApiContext") -> APIRouter:
    """The /batches and /shipments routes (mounted under /api/v1)."""
    router = APIRouter()
    routes = _Routes(ctx)
    _batch_routes(router, routes)
    _shipment_routes(router, routes)
    return router


def _batch_routes(router: APIRouter, routes: _Routes) -> None:
    ctx, batches, zone, signer = routes.ctx, routes.batches, routes.zone, routes.signer
    auth = ctx.auth
    Viewer = Annotated[Principal, Depends(auth.require(Permission.READ))]  # noqa: N806 - a type alias
    Author = Annotated[Principal, Depends(auth.require(Permission.REPORT_GENERATE))]  # noqa: N806
    Signing = [Depends(auth.signing_principal), Depends(auth.csrf)]  # noqa: N806 - dependencies

    @router.get("/batches")
    async def list_batches(_: Viewer) -> list[dict[str, Any]]:
        """Registered batches, newest first (current version's stays not included)."""
        return [
            {
                "lot": b.lot,
                "product": b.product,
                "coi": b.coi,
                "version": b.version,
                "registered_at": format_ts(b.registered_us),
                "registered_by": b.registered_by,
            }
            for b in await batches.listing()
        ]

    @router.get("/batches/{lot}")
    async def get_batch(lot: Lot, _: Viewer) -> dict[str, Any]:
        """One batch with all versions of its stays and their signatures."""
        record = await batches.get(lot)
        if record is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no batch {lot}")
        return batch_json(record, zone)

    @router.post("/batches", dependencies=Signing)
    async def register(body: RegisterBody, request: Request) -> dict[str, Any]:
        """Register a batch with its stays, signed by an operator or qa user."""
        signed = await signer(request, "batch", body)
        with refusals():
            record = await batches.register(
                body.lot, body.product, body.coi, [s.stay() for s in body.stays], signed, ctx.clock_us()
            )
        return batch_json(record, zone)

    @router.post("/batches/{lot}/amend", dependencies=Signing)
    async def amend(lot: Lot, body: AmendBody, request: Request) -> dict[str, Any]:
        """A new version of the batch's stays, signed with the reason for the amendment."""
        if await batches.get(lot) is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no batch {lot}")
        signed = await signer(request, "batch", body)
        with refusals():
            record = await batches.amend(lot, [s.stay() for s in body.stays], signed, ctx.clock_us())
        return batch_json(record, zone)

    @router.post(
        "/batches/{lot}/report", dependencies=[Depends(auth.csrf)], status_code=status.HTTP_201_CREATED
    )
    async def batch_report(lot: Lot, who: Author) -> dict[str, Any]:
        """Generate and store the batch's environmental record (PDF and figures); the stored report."""
        from coldwatch.records.batch import generate_batch_report  # noqa: PLC0415 - WeasyPrint when used

        with refusals():
            report_id, data = await generate_batch_report(
                ctx.storage, ctx.config, lot, who.name, ctx.clock_us()
            )
        return {**await routes.stored(report_id), "verdict": data["verdict"]}


def _shipment_routes(router: APIRouter, routes: _Routes) -> None:
    ctx, shipments, zone, signer = routes.ctx, routes.shipments, routes.zone, routes.signer
    auth = ctx.auth
    Viewer = Annotated[Principal, Depends(auth.require(Permission.READ))]  # noqa: N806 - a type alias
    Author = Annotated[Principal, Depends(auth.require(Permission.REPORT_GENERATE))]  # noqa: N806
    Signing = [Depends(auth.signing_principal), Depends(auth.csrf)]  # noqa: N806 - dependencies

    @router.get("/shipments")
    async def list_shipments(_: Viewer) -> list[dict[str, Any]]:
        """Shipments, newest dispatch first."""
        return [shipment_json(s, zone) for s in await shipments.listing()]

    @router.get("/shipments/{shipment_id}")
    async def get_shipment(shipment_id: ShipmentId, _: Viewer) -> dict[str, Any]:
        """One shipment with its signatures."""
        record = await shipments.get(shipment_id)
        if record is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no shipment {shipment_id}")
        return shipment_json(record, zone)

    @router.post("/shipments", dependencies=Signing)
    async def dispatch(body: DispatchBody, request: Request) -> dict[str, Any]:
        """Start a shipment on a cryoshipper, signed at dispatch; the hold-time forecast is stored."""
        signed = await signer(request, "shipment", body)
        now = ctx.clock_us()
        spec = forecast_rule(ctx.config, body.device)
        forecast = None if spec is None else await forecast_at(ctx.storage, spec, body.device, now)
        with refusals():
            record = await shipments.start(
                body.device,
                body.coi,
                body.origin,
                body.destination,
                round(body.required_hold_h * 3600),
                forecast,
                signed,
                now,
            )
        return shipment_json(record, zone)

    @router.post("/shipments/{shipment_id}/receive", dependencies=Signing)
    async def receive(shipment_id: ShipmentId, body: _Signed, request: Request) -> dict[str, Any]:
        """End a shipment on receipt, signed."""
        if await shipments.get(shipment_id) is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no shipment {shipment_id}")
        signed = await signer(request, "shipment", body)
        with refusals():
            record = await shipments.receive(shipment_id, signed, ctx.clock_us())
        return shipment_json(record, zone)

    @router.post(
        "/shipments/{shipment_id}/report",
        dependencies=[Depends(auth.csrf)],
        status_code=status.HTTP_201_CREATED,
    )
    async def shipment_report(shipment_id: ShipmentId, who: Author) -> dict[str, Any]:
        """Generate and store the shipment record (PDF and figures); the stored report."""
        from coldwatch.records.shipment import generate_shipment_report  # noqa: PLC0415

        with refusals():
            report_id, data = await generate_shipment_report(
                ctx.storage, ctx.config, shipment_id, who.name, ctx.clock_us()
            )
        return {**await routes.stored(report_id), "figures": data["summary"]}
