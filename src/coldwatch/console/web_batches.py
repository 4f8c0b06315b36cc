"""The console's batch and shipment pages: registers, amendments, dispatch and receipt, signed; reports.

- ``GET /console/batches``: registered batches and, for operators and qa, the register form.
- ``POST /console/batches``: register a batch with its stays (signed; CSRF).
- ``GET /console/batches/{lot}``: the current stays, every version with its signature, the
  amendment form and the "Batch report" button.
- ``POST /console/batches/{lot}/amend`` (signed) and ``POST /console/batches/{lot}/report``.
- ``GET /console/shipments``: shipments and the dispatch form; ``POST /console/shipments`` (signed).
- ``GET /console/shipments/{id}``: the shipment, the receipt form, the "Shipment report" button;
  ``POST /console/shipments/{id}/receive`` (signed) and ``POST /console/shipments/{id}/report``.

Signing follows the alarm pages: the user id and password at the first signing of a
session, the password alone afterwards. Times are entered in the site's time zone.
Mounted by the daemon next to the console: ``BatchPages(console).router``.
"""

# No "from __future__ import annotations": FastAPI reads the endpoint signatures at run time.

import math
from collections.abc import Awaitable, Callable
from typing import Any, Final

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import RedirectResponse

from coldwatch.catalogue import Kind
from coldwatch.console.web import PREFIX, Console, _alarm_id, _Form, _form, _parse_local
from coldwatch.console.web_more import PageError
from coldwatch.identity_model import IdentityError, Principal
from coldwatch.records.batch_model import LOT_PATTERN, Stay
from coldwatch.records.batches import Batches
from coldwatch.records.shipments import Shipments, forecast_at, forecast_rule
from coldwatch.roles import Permission
from coldwatch.signatures import SignatureDraft, manifestation_json
from coldwatch.storage.identity_store import WriteRefusedError
from coldwatch.web_auth import client_address

__all__ = ["BatchPages"]

STAY_ROWS: Final = 6  # stay rows a form offers (empty ones are ignored)
_DONE: Final = {
    "registered": "Batch registered and signed.",
    "amended": "Amendment signed: a new version of the stays is recorded; earlier ones are kept.",
    "dispatched": "Dispatch signed.",
    "received": "Receipt signed.",
}
Handler = Callable[[Request, Principal, str], Awaitable[Response]]


class BatchPages:
    """The batch and shipment pages of one console."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.ctx = console.ctx
        store = self.ctx.reviews.store
        config = self.ctx.config
        self.batches = Batches(store, config.devices, config.site.timezone)
        self.shipments = Shipments(store, config)
        areas = sorted({(d.site, d.area) for d in config.devices if d.kind is Kind.PARTICLE_COUNTER})
        self.places = [(f"area:{s}/{a}", f"area {s}/{a} (room)") for s, a in areas] + [
            (f"device:{d.id}", f"{d.kind.value} {d.id} ({d.site}/{d.area})")
            for d in config.devices
            if d.kind is not Kind.PARTICLE_COUNTER
        ]
        self.shippers = [d.id for d in config.devices if d.shipper]
        self.router = self._routes()

    # ----- routes ------------------------------------------------------------------------
    def _routes(self) -> APIRouter:
        router = APIRouter(prefix=PREFIX, include_in_schema=False)
        pages: list[tuple[str, str, Handler]] = [
            ("GET", "/batches", self._batch_list),
            ("POST", "/batches", self._register),
            ("GET", "/batches/{key}", self._batch_page),
            ("POST", "/batches/{key}/amend", self._amend),
            ("POST", "/batches/{key}/report", self._batch_report),
            ("GET", "/shipments", self._shipment_list),
            ("POST", "/shipments", self._dispatch),
            ("GET", "/shipments/{key}", self._shipment_page),
            ("POST", "/shipments/{key}/receive", self._receive),
            ("POST", "/shipments/{key}/report", self._shipment_report),
        ]
        for method, path, handler in pages:
            router.add_api_route(path, self._endpoint(handler), methods=[method])
        return router

    def _endpoint(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            who = await self.console._who(request)  # noqa: SLF001 - the console's own session check
            if isinstance(who, Response):
                return who
            return await handler(request, who, str(request.path_params.get("key", "")))

        return endpoint

    def _render(self, request: Request, template: str, who: Principal, **values: Any) -> Response:
        done = request.query_params.get("done", "")
        return self.console.render(
            request, template, who, done=_DONE.get(done), may_sign=who.may(Permission.RECORDS_SIGN),
            may_report=who.may(Permission.REPORT_GENERATE), first_signing=not who.signed_in_session,
            meanings=self.ctx.config.identity.meanings("batch"), places=self.places, rows=STAY_ROWS,
            **values,
        )  # fmt: skip

    def _refused(self, request: Request, who: Principal, exc: PageError) -> Response:
        return self.console._error(request, who, exc.code, exc.message)  # noqa: SLF001

    # ----- batches -----------------------------------------------------------------------
    async def _batch_list(self, request: Request, who: Principal, _: str) -> Response:
        listing = await self.batches.listing()
        return self._render(
            request, "batches_list.html", who, title="Batches", batches=listing, form=_Form({}), error=None
        )

    async def _batch_page(
        self,
        request: Request,
        who: Principal,
        lot: str,
        *,
        error: str | None = None,
        form: _Form | None = None,
        code: int = status.HTTP_400_BAD_REQUEST,
    ) -> Response:
        record = await self.batches.get(lot) if LOT_PATTERN.match(lot) else None
        if record is None:
            return self.console._error(request, who, status.HTTP_404_NOT_FOUND, "no such batch")  # noqa: SLF001
        zone = self.ctx.config.site.timezone
        versions = [
            (v, stays, record.signature_of(v)) for v, stays in sorted(record.versions.items(), reverse=True)
        ]
        return self._render(
            request, "batches_batch.html", who, code=code if error else 200,
            title=f"Batch {record.lot}", b=record, error=error, form=form or _Form({}),
            versions=[(v, s, sig and manifestation_json(sig, zone)) for v, s, sig in versions],
            current=[self._stay_value(s) for s in record.stays],
        )  # fmt: skip

    def _stay_value(self, stay: Stay) -> dict[str, str]:
        place = f"device:{stay.device_id}" if stay.device_id else f"area:{stay.site}/{stay.area}"
        return {"place": place, "from": self._local(stay.from_us), "until": self._local(stay.until_us)}

    def _local(self, at_us: int) -> str:
        return self.console._fmt_site(at_us)[:16].replace(" ", "T")  # noqa: SLF001 - datetime-local value

    async def _register(self, request: Request, who: Principal, _: str) -> Response:
        form = _Form({})
        try:
            form = await self._signed_form(request, who)
            lot = form.text("lot", "The lot id", most=64)
            signed = await self._signature(request, who, form, "batch")
            with _page_errors():
                await self.batches.register(lot, form.text("product", "The product"), form.get("coi"),
                                            self._stays(form), signed, self.ctx.clock_us())  # fmt: skip
        except PageError as exc:
            listing = await self.batches.listing()
            return self._render(request, "batches_list.html", who, code=exc.code, title="Batches",
                                batches=listing, form=form, error=exc.message)  # fmt: skip
        return RedirectResponse(f"{PREFIX}/batches/{lot}?done=registered", status.HTTP_303_SEE_OTHER)

    async def _amend(self, request: Request, who: Principal, lot: str) -> Response:
        form = _Form({})
        try:
            form = await self._signed_form(request, who)
            if await self.batches.get(lot) is None:
                raise PageError(status.HTTP_404_NOT_FOUND, "no such batch")  # noqa: TRY301 - the page's refusal
            signed = await self._signature(request, who, form, "batch")
            with _page_errors():
                await self.batches.amend(lot, self._stays(form), signed, self.ctx.clock_us())
        except PageError as exc:
            if exc.code == status.HTTP_404_NOT_FOUND:
                return self._refused(request, who, exc)
            return await self._batch_page(request, who, lot, error=exc.message, form=form, code=exc.code)
        return RedirectResponse(f"{PREFIX}/batches/{lot}?done=amended", status.HTTP_303_SEE_OTHER)

    def _stays(self, form: _Form) -> list[Stay]:
        stays = []
        for i in range(STAY_ROWS):
            place, start, until = (form.get(f"{k}{i}").strip() for k in ("place", "from", "until"))
            if not (place or start or until):
                continue
            kind, _, name = place.partition(":")
            start_us, until_us = (
                _parse_local(start, self.console.zone),
                _parse_local(until, self.console.zone),
            )
            if start_us is None or until_us is None or kind not in {"area", "device"} or not name:
                raise PageError(
                    status.HTTP_400_BAD_REQUEST, f"stay {i + 1}: choose a place, a start and an end"
                )
            if kind == "device":
                stays.append(Stay("", None, name, start_us, until_us))
            else:
                site, _, area = name.partition("/")
                stays.append(Stay(site, area, None, start_us, until_us))
        return stays

    async def _batch_report(self, request: Request, who: Principal, lot: str) -> Response:
        from coldwatch.records.batch import generate_batch_report  # noqa: PLC0415 - WeasyPrint when used

        async def make() -> int:
            report_id, _ = await generate_batch_report(
                self.ctx.storage, self.ctx.config, lot, who.name, self.ctx.clock_us()
            )
            return report_id

        return await self._report(request, who, make)

    # ----- shipments ---------------------------------------------------------------------
    async def _shipment_list(
        self,
        request: Request,
        who: Principal,
        _: str,
        *,
        error: str | None = None,
        form: _Form | None = None,
        code: int = status.HTTP_400_BAD_REQUEST,
    ) -> Response:
        return self._render(
            request, "batches_shipments.html", who, code=code if error else 200,
            title="Shipments", shipments=await self.shipments.listing(), shippers=self.shippers,
            error=error, form=form or _Form({}),
        )  # fmt: skip

    async def _shipment_page(
        self,
        request: Request,
        who: Principal,
        key: str,
        *,
        error: str | None = None,
        form: _Form | None = None,
        code: int = status.HTTP_400_BAD_REQUEST,
    ) -> Response:
        number = _alarm_id(key)  # the same rule: 1 to 2**63-1, digits only
        record = None if number is None else await self.shipments.get(number)
        if record is None:
            return self.console._error(request, who, status.HTTP_404_NOT_FOUND, "no such shipment")  # noqa: SLF001
        zone = self.ctx.config.site.timezone
        return self._render(
            request, "batches_shipment.html", who, code=code if error else 200,
            title=f"Shipment {record.id}", s=record, error=error, form=form or _Form({}),
            signatures=[manifestation_json(sig, zone) for sig in record.signatures],
        )  # fmt: skip

    async def _dispatch(self, request: Request, who: Principal, _: str) -> Response:
        form = _Form({})
        try:
            form = await self._signed_form(request, who)
            device = form.text("device", "The shipper", most=64)
            hold_h = _hours(form.text("hold_h", "The required hold time", most=20))
            signed = await self._signature(request, who, form, "shipment")
            now = self.ctx.clock_us()
            spec = forecast_rule(self.ctx.config, device)
            forecast = None if spec is None else await forecast_at(self.ctx.storage, spec, device, now)
            with _page_errors():
                made = await self.shipments.start(
                    device, form.get("coi"), form.text("origin", "The origin"),
                    form.text("destination", "The destination"),
                    round(hold_h * 3600), forecast, signed, now,
                )  # fmt: skip
        except PageError as exc:
            return await self._shipment_list(request, who, "", error=exc.message, form=form, code=exc.code)
        return RedirectResponse(f"{PREFIX}/shipments/{made.id}?done=dispatched", status.HTTP_303_SEE_OTHER)

    async def _receive(self, request: Request, who: Principal, key: str) -> Response:
        number = _alarm_id(key)
        form = _Form({})
        try:
            form = await self._signed_form(request, who)
            if number is None or await self.shipments.get(number) is None:
                raise PageError(status.HTTP_404_NOT_FOUND, "no such shipment")  # noqa: TRY301
            signed = await self._signature(request, who, form, "shipment")
            with _page_errors():
                await self.shipments.receive(number, signed, self.ctx.clock_us())
        except PageError as exc:
            if exc.code == status.HTTP_404_NOT_FOUND:
                return self._refused(request, who, exc)
            return await self._shipment_page(request, who, key, error=exc.message, form=form, code=exc.code)
        return RedirectResponse(f"{PREFIX}/shipments/{number}?done=received", status.HTTP_303_SEE_OTHER)

    async def _shipment_report(self, request: Request, who: Principal, key: str) -> Response:
        from coldwatch.records.shipment import generate_shipment_report  # noqa: PLC0415

        async def make() -> int:
            number = _alarm_id(key)
            if number is None:
                raise PageError(status.HTTP_404_NOT_FOUND, "no such shipment")
            report_id, _ = await generate_shipment_report(
                self.ctx.storage, self.ctx.config, number, who.name, self.ctx.clock_us()
            )
            return report_id

        return await self._report(request, who, make)

    # ----- shared ------------------------------------------------------------------------
    async def _report(self, request: Request, who: Principal, make: Callable[[], Awaitable[int]]) -> Response:
        try:
            await self.console._csrf(request)  # noqa: SLF001
            if not who.may(Permission.REPORT_GENERATE):
                raise PageError(status.HTTP_403_FORBIDDEN, f"role {who.role!r} may not generate reports")  # noqa: TRY301
            with _page_errors():
                report_id = await make()
        except PageError as exc:
            return self._refused(request, who, exc)
        return RedirectResponse(f"{PREFIX}/reports/{report_id}?done=generated", status.HTTP_303_SEE_OTHER)

    async def _signed_form(self, request: Request, who: Principal) -> _Form:
        await self.console._csrf(request)  # noqa: SLF001
        if not who.may(Permission.RECORDS_SIGN):
            raise PageError(
                status.HTTP_403_FORBIDDEN, f"role {who.role!r} may not sign batch or shipment records"
            )
        return await _form(request)

    async def _signature(self, request: Request, who: Principal, form: _Form, action: str) -> SignatureDraft:
        meaning = form.text("meaning", "The meaning", most=100)
        reason = form.text("reason", "A reason")
        password = form.get("password")[:1024]
        if not password:
            raise PageError(status.HTTP_400_BAD_REQUEST, "your password is required to sign")
        try:
            signer = await self.ctx.identity.verify_signer(
                action=action, permission=Permission.RECORDS_SIGN, meaning=meaning,
                user=form.get("user").strip() or None, password=password, client=client_address(request),
                session=who,
            )  # fmt: skip
        except IdentityError as exc:
            message = str(exc)
            if exc.status == status.HTTP_401_UNAUTHORIZED:
                message = (
                    "Password not accepted: the signature was refused (repeated failures lock the account)."
                )
            raise PageError(exc.status, message) from exc
        return SignatureDraft(signer.name, signer.full_name, meaning, reason)


def _hours(text: str) -> float:
    """A required hold time in hours, as typed: a finite number (its range is checked by the records)."""
    try:
        hours = float(text)
    except ValueError:
        hours = math.nan
    if not math.isfinite(hours) or not 0 < hours <= 60 * 24:
        raise PageError(
            status.HTTP_400_BAD_REQUEST, "the required hold time is a number of hours, up to 1440"
        )
    return hours


class _page_errors:  # noqa: N801 - used as a context manager, like contextlib's
    """Turn the records' refusals into page errors with their status (never a 500)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, IdentityError):
            raise PageError(exc.status, str(exc)) from exc
        if isinstance(exc, WriteRefusedError):
            raise PageError(status.HTTP_409_CONFLICT, str(exc)) from exc
