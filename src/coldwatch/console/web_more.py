"""The console's other pages: overview (live), device detail, audit trail review, users.

A mixin of :class:`coldwatch.console.web.Console` (the routes and the rendering live there).
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import Request, Response, status
from fastapi.responses import HTMLResponse

from coldwatch.audit import AuditEntry, VerifyResult, to_csv
from coldwatch.console.chart import render_svg
from coldwatch.console.model import DeviceStatus
from coldwatch.identity_model import IdentityError, Principal
from coldwatch.roles import ROLE_NAMES
from coldwatch.storage.identity_store import WriteRefusedError

if TYPE_CHECKING:
    from coldwatch.api import ApiContext
    from coldwatch.console.pages import ConsoleData
    from coldwatch.console.web import _Form
    from coldwatch.storage import Storage

__all__ = ["MorePages", "PageError", "audit_where", "newest_audit"]

US: Final = 1_000_000
RANGES: Final = {"1h": 3600, "6h": 6 * 3600, "24h": 86_400, "7d": 7 * 86_400, "30d": 30 * 86_400}
AUDIT_SHOWN: Final = 300
AUDIT_CHECK_MAX_AGE_S: Final = 60.0  # the audit page re-verifies the whole trail at least this often
STATUS_LABEL: Final = {
    DeviceStatus.ACTION: "action",
    DeviceStatus.ALERT: "alert",
    DeviceStatus.OFFLINE: "offline",
    DeviceStatus.STALE: "stale",
    DeviceStatus.CALIBRATION_DUE: "calibration due",
    DeviceStatus.NORMAL: "normal",
}
OVERVIEW_MAX_DEVICES: Final = 250  # beyond this, choose an area (each card costs HTML time)


class PageError(Exception):
    """A request the page answers with a message (never a 500)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


log = logging.getLogger(__name__)


def _now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True)
class _AuditCheck:
    """A verification of the whole trail, and the head it was made at."""

    head: tuple[int, str] | None
    monotonic: float
    at_us: int
    verified: VerifyResult
    signed: int
    problems: list[str]


_AUDIT_COLUMNS: Final = (
    "SELECT seq, at_us, actor, action, object_type, object_id, old_value, new_value, reason, prev_hash, hash"
    " FROM audit_log"
)
_AUDIT_CHUNK: Final = 1000


def _like(text: str) -> str:
    """A LIKE pattern matching ``text`` anywhere (escape character ``!``)."""
    return "%" + text.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%"


def audit_where(
    user: str, action: str, device: str, since: int | None, until: int | None
) -> tuple[list[str], list[Any]]:
    """SQL conditions selecting at least the entries the page's filters keep (the page re-checks each)."""
    where: list[str] = []
    params: list[Any] = []
    if user:
        where.append("(actor = ? OR (object_type = 'user' AND object_id = ?))")
        params += [user, user]
    if action:
        where.append("substr(action, 1, ?) = ?")
        params += [len(action), action]
    if device:
        where.append("(object_id = ? OR new_value LIKE ? ESCAPE '!')")
        params += [device, _like(device)]
    if since is not None:
        where.append("at_us >= ?")
        params.append(since)
    if until is not None:
        where.append("at_us < ?")
        params.append(until)
    return where, params


async def newest_audit(
    storage: Storage, keep: Callable[[AuditEntry], bool], limit: int, where: tuple[list[str], list[Any]]
) -> tuple[list[AuditEntry], bool]:
    """The newest ``limit`` entries ``keep`` accepts, newest first, and whether more exist.

    Reads the trail backwards in keyset pages (``seq < last``), so a view costs the
    entries shown, not the whole trail.
    """
    from coldwatch.storage.identity_store import identity_store  # noqa: PLC0415

    store = identity_store(storage)
    shown: list[AuditEntry] = []
    before: int | None = None
    while True:
        conditions, params = list(where[0]), list(where[1])
        if before is not None:
            conditions.append("seq < ?")
            params.append(before)
        clause = " WHERE " + " AND ".join(conditions) if conditions else ""
        rows = await store.fetch(f"{_AUDIT_COLUMNS}{clause} ORDER BY seq DESC LIMIT {_AUDIT_CHUNK}", *params)
        for r in rows:
            entry = AuditEntry(int(r[0]), int(r[1]), r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10])
            if keep(entry):
                if len(shown) == limit:
                    return shown, True
                shown.append(entry)
        if len(rows) < _AUDIT_CHUNK:
            return shown, False
        before = int(rows[-1][0])


class MorePages:
    """Overview, device, audit and users pages (mixed into the console)."""

    ctx: ApiContext
    zone: ZoneInfo
    _audit_check: _AuditCheck | None = None
    _audit_rechecking: asyncio.Task[None] | None = None

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
        if site is None and area is None and len(self.ctx.config.devices) > OVERVIEW_MAX_DEVICES:
            # A large estate: the areas with their state counts first, one area's devices on choosing it.
            devices = []
            hidden = len(self.ctx.config.devices)
        else:
            devices = await data.overview(now, site=site, area=area)
            hidden = max(0, len(devices) - OVERVIEW_MAX_DEVICES)
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
            "hidden": hidden,
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
        if export:
            entries = [e async for e in storage.audit_entries() if keep(e)]
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
        shown, more = await newest_audit(
            storage, keep, AUDIT_SHOWN, audit_where(user, action, device, since, until)
        )
        check, rechecking = await self._audit_checked()
        kept = [(k, v) for k, v in q.multi_items() if v]
        return self.render(
            request,
            "audit.html",
            who,
            title="Audit trail",
            verified=check.verified,
            signed=check.signed,
            problems=check.problems,
            checked_at_us=check.at_us,
            rechecking=rechecking,
            check_max_age_s=int(AUDIT_CHECK_MAX_AGE_S),
            entries=shown,
            more=more,
            shown_max=AUDIT_SHOWN,
            q=q,
            export_url="/console/audit/export.csv?" + urlencode(kept),
        )

    async def _audit_checked(self) -> tuple[_AuditCheck, bool]:
        """The last verification of the whole trail, and whether a newer one is under way.

        Verifying reads the whole trail (about 1.7 s for 100,000 entries): it is done once
        per new head (an appended entry) and at least every :data:`AUDIT_CHECK_MAX_AGE_S`,
        and never holds a page up once a first check exists: a stale check is shown, marked
        as such, while a single re-check runs in the background.
        """
        from coldwatch.storage.identity_store import identity_store  # noqa: PLC0415

        store = identity_store(self.ctx.storage)
        rows = await store.fetch("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        head = (int(rows[0][0]), str(rows[0][1])) if rows else None
        cached = self._audit_check
        if cached is None:
            return await self._audit_check_now(head), False
        if cached.head == head and time.monotonic() - cached.monotonic < AUDIT_CHECK_MAX_AGE_S:
            return cached, False
        if self._audit_rechecking is None or self._audit_rechecking.done():
            self._audit_rechecking = asyncio.create_task(self._audit_recheck(head), name="audit-recheck")
        return cached, True

    async def _audit_recheck(self, head: tuple[int, str] | None) -> None:
        """A background re-check; a failure is logged and the next view tries again."""
        try:
            await self._audit_check_now(head)
        except Exception:
            log.exception("console: re-checking the audit trail failed")

    async def _audit_check_now(self, head: tuple[int, str] | None) -> _AuditCheck:
        from coldwatch.review import signature_problems  # noqa: PLC0415
        from coldwatch.storage.identity_store import identity_store  # noqa: PLC0415

        storage = self.ctx.storage
        started = time.monotonic()
        everything = [e async for e in storage.audit_entries()]
        verified = await storage.verify_audit()
        signed, problems = await signature_problems(identity_store(storage), everything)
        self._audit_check = _AuditCheck(head, started, _now_us(), verified, signed, problems)
        return self._audit_check

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
