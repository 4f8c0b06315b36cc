"""The console's other pages: overview (live), device detail, audit trail review, users.

A mixin of :class:`coldwatch.console.web.Console` (the routes and the rendering live there).
"""

from __future__ import annotations

import io
import time
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import Request, Response, status
from fastapi.responses import HTMLResponse

from coldwatch.audit import AuditEntry, to_csv
from coldwatch.console.chart import render_svg
from coldwatch.console.model import DeviceStatus
from coldwatch.identity_model import IdentityError, Principal
from coldwatch.roles import ROLE_NAMES
from coldwatch.storage.identity_store import WriteRefusedError

if TYPE_CHECKING:
    from coldwatch.api import ApiContext
    from coldwatch.console.pages import ConsoleData
    from coldwatch.console.web import _Form

__all__ = ["MorePages", "PageError"]

US: Final = 1_000_000
RANGES: Final = {"1h": 3600, "6h": 6 * 3600, "24h": 86_400, "7d": 7 * 86_400, "30d": 30 * 86_400}
AUDIT_SHOWN: Final = 300
STATUS_LABEL: Final = {
    DeviceStatus.ACTION: "action",
    DeviceStatus.ALERT: "alert",
    DeviceStatus.OFFLINE: "offline",
    DeviceStatus.STALE: "stale",
    DeviceStatus.CALIBRATION_DUE: "calibration due",
    DeviceStatus.NORMAL: "normal",
}
OVERVIEW_MAX_DEVICES: Final = 500  # beyond this, choose an area


class PageError(Exception):
    """A request the page answers with a message (never a 500)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _now_us() -> int:
    return time.time_ns() // 1000


class MorePages:
    """Overview, device, audit and users pages (mixed into the console)."""

    ctx: ApiContext
    zone: ZoneInfo

    async def data(self) -> ConsoleData:  # pragma: no cover - provided by the console
        """The page data."""
        raise NotImplementedError

    def render(  # pragma: no cover - provided by the console
        self, request: Request, template: str, who: Principal | None, *, code: int = 200, **values: Any
    ) -> HTMLResponse:
        """A page."""
        raise NotImplementedError

    # ----- overview ------------------------------------------------------------------------
    async def _overview(self, request: Request, who: Principal) -> Response:
        q = request.query_params
        site, area = q.get("site") or None, q.get("area") or None
        data = await self.data()
        now = _now_us()
        areas = await data.areas(now)
        devices = await data.overview(now, site=site, area=area)
        shown = devices[:OVERVIEW_MAX_DEVICES]
        by_area: dict[tuple[str, str], list[Any]] = {}
        for d in shown:
            by_area.setdefault((d.row.site, d.row.area), []).append(d)
        kept = [(k, v) for k, v in q.multi_items() if k in {"site", "area"} and v]
        values: dict[str, Any] = {
            "title": "Overview",
            "areas": sorted(areas, key=lambda a: (a.site, a.area)),
            "by_area": sorted(by_area.items()),
            "statuses": list(DeviceStatus),
            "status_label": STATUS_LABEL,
            "hidden": len(devices) - len(shown),
            "site": site,
            "area": area,
            "live_url": "/console/overview?" + urlencode([*kept, ("fragment", "1")]),
        }
        template = "overview_body.html" if q.get("fragment") else "overview.html"
        return self.render(request, template, who, **values)

    # ----- device ----------------------------------------------------------------------------
    async def _device_page(self, request: Request, who: Principal, device_id: str) -> Response:
        q = request.query_params
        chosen = q.get("range", "24h")
        if chosen not in RANGES:
            raise PageError(status.HTTP_400_BAD_REQUEST, "unknown range")
        if device_id not in self.ctx.config.device_map():
            raise PageError(status.HTTP_404_NOT_FOUND, "no such device")
        now = _now_us()
        since = now - RANGES[chosen] * US
        data = await self.data()
        detail = await data.device_detail(device_id, since, now, now_us=now, metric=q.get("metric") or None)
        if detail is None:
            raise PageError(status.HTTP_404_NOT_FOUND, "no such device")
        from coldwatch.catalogue import KINDS, Kind  # noqa: PLC0415

        kind = Kind(detail.device.kind) if detail.device.kind in {k.value for k in Kind} else None
        metrics = [n for n, spec in KINDS[kind].items() if not spec.boolean] if kind is not None else []
        from markupsafe import Markup  # noqa: PLC0415

        return self.render(
            request,
            "device.html",
            who,
            title=f"Device {device_id}",
            d=detail,
            dev=detail.device,
            chart=Markup(render_svg(detail.chart, element_id="device-chart")),  # noqa: S704 - our SVG
            chart_narrow=Markup(render_svg(detail.chart, width=360, height=300, element_id="device-chart-n")),  # noqa: S704
            ranges=list(RANGES),
            chosen=chosen,
            metrics=metrics,
            metric=detail.chart.metric,
        )

    # ----- audit -----------------------------------------------------------------------------
    async def _audit_page(self, request: Request, who: Principal, *, export: bool) -> Response:
        from coldwatch.console.web import _parse_local  # noqa: PLC0415 - shared with the alarm filters

        q = request.query_params
        user, action, device = (q.get(k, "").strip() for k in ("user", "action", "device"))
        since = _parse_local(q.get("since", ""), self.zone)
        until = _parse_local(q.get("until", ""), self.zone)

        def keep(e: AuditEntry) -> bool:
            return (
                (not user or e.actor == user or (e.object_type == "user" and e.object_id == user))
                and (not action or e.action.startswith(action))
                and (not device or e.object_id == device or device in (e.new_value or ""))
                and (since is None or e.at_us >= since)
                and (until is None or e.at_us < until)
            )

        storage = self.ctx.storage
        everything = [e async for e in storage.audit_entries()]
        entries = [e for e in everything if keep(e)]
        if export:
            out = io.StringIO()
            to_csv(entries, out)
            return Response(
                out.getvalue(),
                media_type="text/csv; charset=utf-8",
                headers={
                    "Content-Disposition": 'attachment; filename="coldwatch-audit.csv"',
                    "Cache-Control": "no-store",
                    "X-Content-Type-Options": "nosniff",
                },
            )
        verified = await storage.verify_audit()
        from coldwatch.review import signature_problems  # noqa: PLC0415
        from coldwatch.storage.identity_store import identity_store  # noqa: PLC0415

        signed, problems = await signature_problems(identity_store(storage), everything)
        kept = [(k, v) for k, v in q.multi_items() if v]
        return self.render(
            request,
            "audit.html",
            who,
            title="Audit trail",
            verified=verified,
            signed=signed,
            problems=problems,
            entries=list(reversed(entries))[:AUDIT_SHOWN],
            total=len(entries),
            shown_max=AUDIT_SHOWN,
            q=q,
            export_url="/console/audit/export.csv?" + urlencode(kept),
        )

    # ----- users -----------------------------------------------------------------------------
    async def _users_page(
        self, request: Request, who: Principal, *, code: int = 200, error: str | None = None
    ) -> Response:
        accounts = await self.ctx.identity.accounts()
        return self.render(
            request,
            "users.html",
            who,
            code=code,
            title="Users",
            accounts=accounts,
            roles=ROLE_NAMES,
            error=error,
            done=request.query_params.get("done"),
            now_us=_now_us(),
        )

    async def _user_change(self, who: Principal, change: str, form: _Form) -> str:
        """Apply an administrator's change to an account; what was done, for the page."""
        identity = self.ctx.identity
        name = form.text("name", "The user id", most=64)
        reason = form.text("reason", "A reason")
        try:
            if change == "add":
                full_name = form.text("full_name", "The full name", most=200)
                role = form.get("role")
                if role not in ROLE_NAMES:
                    raise PageError(status.HTTP_400_BAD_REQUEST, "choose a role")
                password = form.text("password", "A first password", most=1024)
                await identity.add_user(who, name, full_name, role, password, reason)
                return f"{name} added: they must change the password at first sign-in"
            if change == "disable":
                await identity.disable(who, name, reason)
                return f"{name} disabled"
            if change == "enable":
                await identity.enable(who, name, reason)
                return f"{name} enabled"
            if change == "reset-password":
                password = form.text("password", "A new password", most=1024)
                await identity.reset_password(who, name, password, reason)
                return f"{name}'s password reset: they must change it at next sign-in"
            if change == "role":
                role = form.get("role")
                if role not in ROLE_NAMES:
                    raise PageError(status.HTTP_400_BAD_REQUEST, "choose a role")
                await identity.set_role(who, name, role, reason)
                return f"{name} is now {role}"
        except IdentityError as exc:
            raise PageError(exc.status, str(exc)) from exc
        except WriteRefusedError as exc:
            raise PageError(status.HTTP_409_CONFLICT, str(exc)) from exc
        raise PageError(status.HTTP_404_NOT_FOUND, "no such change")
