"""The console's report pages: the list, one report (figures, downloads, signatures), QA sign-off.

- ``GET /console/reports`` (``kind``): generated reports, newest first; any signed-in person.
- ``GET /console/reports/{id}``: what the report showed (its CSV figures), where it came
  from (query, audit head, hashes and whether they still match), its signatures'
  manifestations, and downloads (PDF, CSV, JSON); a qa person who has not signed it sees
  the "Sign as reviewed" form (password alone after the first signing of the session).
- ``GET /console/reports/{id}.pdf|.original.pdf|.csv|.json``: the downloads (``.pdf`` is the
  report as printed, with its signature page once signed; ``.original.pdf`` the stored bytes).
- ``POST /console/reports/{id}/review``: the QA review signature (qa; CSRF).
- ``POST /console/reports/excursion`` (``alarm_id``): generate an alarm's excursion report
  (operator or qa; the alarm page's "Excursion report" button) and open it.

Mounted by the daemon next to the console's own routes: ``ReportPages(console).router``.
"""

# No "from __future__ import annotations": FastAPI reads the endpoint signatures at run time.

from typing import Any, Final

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import RedirectResponse

from coldwatch.api_reports import _download
from coldwatch.console.web import PREFIX, Console, _alarm_id, _Form, _form
from coldwatch.console.web_more import PageError
from coldwatch.identity_model import IdentityError, Principal
from coldwatch.records.excursion_source import changed_since_report, generate_excursion_report
from coldwatch.records.signed_copy import printable_pdf
from coldwatch.records.store import KINDS, ReportStore, StoredReport
from coldwatch.roles import Permission
from coldwatch.signatures import manifestation_json
from coldwatch.storage.identity_store import WriteRefusedError
from coldwatch.web_auth import client_address

__all__ = ["ReportPages"]

_DONE: Final = {
    "generated": "Report generated and stored: download its PDF below.",
    "reviewed": "Review signed and recorded.",
}
_DOWNLOADS: Final = ("pdf", "original.pdf", "csv", "json")
# Plain words for the figures' column names (any report kind; others fall back to _label's rules).
_LABELS: Final = {
    "start_us": "From (UTC)",
    "end_us": "To (UTC)",
    "readings": "Readings",
    "covered_s": "Time with data (s)",
    "no_data_s": "Time without data (s)",
    "min": "Minimum",
    "max": "Maximum",
    "peak": "Peak",
    "peak_ts_us": "Peak at (UTC)",
    "mean_tw": "Time-weighted mean",
    "mkt_c": "Mean kinetic temperature, MKT (°C)",
    "completeness": "Completeness (% of expected readings)",
    # The periodic report's columns.
    "device_id": "Point",
    "kind": "Kind",
    "area": "Area",
    "metric": "Metric",
    "unit": "Unit",
    "n": "Readings",
    "completeness_pct": "Completeness (%)",
    "point_expected": "Point: readings expected",
    "point_received": "Point: readings received",
    "point_completeness_pct": "Point: completeness (%)",
    "gaps_recovered": "Gap readings recovered",
    "gaps_lost": "Gap readings lost",
    "gaps_open": "Gap readings open",
    "comm_losses": "Communication losses",
    "alarms": "Alarms",
    "alarm_duration_s": "Alarm time (s)",
    "calibration_state": "Calibration",
    "calibration_alarms": "Calibration reminders",
    "out_of_calibration": "Readings out of calibration",
}
# Columns whose values are codes (``in_calibration``): shown with spaces.
_CODES: Final = frozenset({"kind", "calibration_state", "state", "severity", "rule"})
# Up to this many rows the figures are shown one column per row (an excursion's before,
# during and after windows read better side by side); more rows, and a periodic report's
# grid of points and metrics, get one table row each, in the report's column order.
TRANSPOSE_MAX: Final = 3


def _label(column: str) -> str:
    """A column name in words: ``beyond alert high 37.5 s`` -> ``Time beyond alert high 37.5 (s)``."""
    if column in _LABELS:
        return _LABELS[column]
    if column.startswith("beyond ") and column.endswith(" s"):
        return f"Time beyond {column[7:-2]} (s)"
    if column.startswith("beyond_") and column.endswith("_s"):
        return f"Time beyond {column[7:-2].replace('_', ' ')} (s)"
    words = column.removesuffix("_us").removesuffix("_s").replace("_", " ")
    unit = " (UTC)" if column.endswith("_us") else " (s)" if column.endswith("_s") else ""
    return words[:1].upper() + words[1:] + unit


def _report_id(text: str) -> int | None:
    return _alarm_id(text)  # the same rule: 1 to 2**63-1, digits only


class ReportPages:
    """The report pages of one console."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.ctx = console.ctx
        self.reports = ReportStore(self.ctx.reviews.store, self.ctx.config.site.timezone)
        self.router = self._routes()

    def _routes(self) -> APIRouter:  # noqa: C901 - one closure per page
        router = APIRouter(prefix=PREFIX, include_in_schema=False)
        console = self.console

        @router.get("/reports")
        async def report_list(request: Request) -> Response:
            who = await console._who(request)  # noqa: SLF001 - the console's own session check
            if isinstance(who, Response):
                return who
            kind = request.query_params.get("kind") or None
            if kind is not None and kind not in KINDS:
                return console._error(request, who, status.HTTP_400_BAD_REQUEST, "unknown report kind")  # noqa: SLF001
            rows = await self.reports.list(kind, 200)
            reviewed = await self.reports.reviewed(r.id for r in rows)
            return console.render(
                request,
                "reports_list.html",
                who,
                title="Reports",
                rows=rows,
                reviewed=reviewed,
                kind=kind,
                kinds=KINDS,
            )

        @router.post("/reports/excursion")
        async def generate(request: Request) -> Response:
            who = await console._who(request)  # noqa: SLF001
            if isinstance(who, Response):
                return who
            try:
                report_id = await self._generate(request, who)
            except PageError as exc:
                return console._error(request, who, exc.code, exc.message)  # noqa: SLF001
            return RedirectResponse(f"{PREFIX}/reports/{report_id}?done=generated", status.HTTP_303_SEE_OTHER)

        @router.get("/reports/{name}")
        async def report(request: Request, name: str) -> Response:
            who = await console._who(request)  # noqa: SLF001
            if isinstance(who, Response):
                return who
            number, _, ext = name.partition(".")
            found = await self._found(number)
            if found is None or (ext and ext not in _DOWNLOADS):
                return console._error(request, who, status.HTTP_404_NOT_FOUND, "no such report")  # noqa: SLF001
            if ext == "pdf":
                sites = ", ".join(sorted({d.site for d in self.ctx.config.devices}))
                printed = await printable_pdf(
                    self.reports,
                    found,
                    self.ctx.storage,
                    self.reports.zone,
                    sites,
                    self.ctx.clock_us(),
                    self.ctx.config.site.notice,
                )
                return _download(found, ext, printed)
            if ext:
                return _download(found, ext)
            return await self._page(request, who, found)

        @router.post("/reports/{number}/review")
        async def review(request: Request, number: str) -> Response:
            who = await console._who(request)  # noqa: SLF001
            if isinstance(who, Response):
                return who
            found = await self._found(number)
            if found is None:
                return console._error(request, who, status.HTTP_404_NOT_FOUND, "no such report")  # noqa: SLF001
            form = _Form({})
            try:
                await console._csrf(request)  # noqa: SLF001
                form = await _form(request)
                await self._sign(request, who, found, form)
            except PageError as exc:
                return await self._page(request, who, found, code=exc.code, error=exc.message, form=form)
            return RedirectResponse(f"{PREFIX}/reports/{found.id}?done=reviewed", status.HTTP_303_SEE_OTHER)

        return router

    async def _found(self, number: str) -> StoredReport | None:
        report_id = _report_id(number)
        return None if report_id is None else await self.reports.get(report_id)

    async def _generate(self, request: Request, who: Principal) -> int:
        await self.console._csrf(request)  # noqa: SLF001
        if not who.may(Permission.REPORT_GENERATE):
            raise PageError(status.HTTP_403_FORBIDDEN, f"role {who.role!r} may not generate reports")
        form = await _form(request)
        alarm_id = _alarm_id(form.get("alarm_id"))
        if alarm_id is None:
            raise PageError(status.HTTP_400_BAD_REQUEST, "no such alarm")
        try:
            return await generate_excursion_report(
                self.ctx.storage, self.ctx.config, alarm_id, who.name, self.ctx.clock_us()
            )
        except IdentityError as exc:
            raise PageError(exc.status, str(exc)) from exc

    async def _page(
        self,
        request: Request,
        who: Principal,
        report: StoredReport,
        *,
        code: int = 200,
        error: str | None = None,
        form: _Form | None = None,
    ) -> Response:
        signatures = await self.reports.signatures(report.id)
        reviewed = any(s.action == "review" for s in signatures)
        data = report.data
        # Told while it may still be signed: what this (excursion) report leaves out.
        changes = [] if reviewed else await changed_since_report(self.ctx.storage, self.ctx.config, data)
        rows: list[dict[str, Any]] = [r for r in data.get("rows", []) if isinstance(r, dict)]
        columns = list(dict.fromkeys([*data.get("columns", []), *(k for r in rows for k in r)]))
        return self.console.render(
            request,
            "reports_report.html",
            who,
            code=code,
            title=f"Report #{report.id}",
            r=report.summary,
            intact=report.intact,
            rows=rows,
            columns=columns,
            labels={c: _label(c) for c in columns},
            codes=_CODES,
            transposed=len(rows) <= TRANSPOSE_MAX and report.summary.kind != "periodic",
            signatures=[manifestation_json(s, self.reports.zone) for s in signatures],
            reviewed=reviewed,
            may_sign=who.may(Permission.REPORT_REVIEW) and not reviewed,
            meanings=self.ctx.config.identity.meanings("review"),
            first_signing=not who.signed_in_session,
            error=error,
            form=form or _Form({}),
            done=request.query_params.get("done"),
            done_text=_DONE.get(request.query_params.get("done", ""), "Recorded."),
            alarm_id=data.get("alarm", {}).get("id") if isinstance(data.get("alarm"), dict) else None,
            changes=changes,
        )

    async def _sign(self, request: Request, who: Principal, report: StoredReport, form: _Form) -> None:
        if not who.may(Permission.REPORT_REVIEW):
            raise PageError(status.HTTP_403_FORBIDDEN, f"role {who.role!r} may not sign reports as reviewed")
        report_id = report.id
        changes = await changed_since_report(self.ctx.storage, self.ctx.config, report.data)
        if changes and form.get("as_generated") != "yes":
            raise PageError(
                status.HTTP_409_CONFLICT,
                "This report was generated before later changes to the alarm's record ("
                + "; ".join(changes)
                + "). Generate a new report to sign a complete record, or confirm that you sign "
                "this one as it was generated.",
            )
        meaning = form.text("meaning", "The meaning", most=100)
        reason = form.text("reason", "A reason")
        password = form.get("password")[:1024]
        if not password:
            raise PageError(status.HTTP_400_BAD_REQUEST, "your password is required to sign")
        try:
            signer = await self.ctx.identity.verify_signer(
                action="review",
                permission=Permission.REPORT_REVIEW,
                meaning=meaning,
                user=form.get("user").strip() or None,
                password=password,
                client=client_address(request),
                session=who,
            )
            await self.reports.sign_review(report_id, signer, meaning, reason, self.ctx.clock_us())
        except IdentityError as exc:
            message = str(exc)
            if exc.status == status.HTTP_401_UNAUTHORIZED:
                message = (
                    "Password not accepted: the signature was refused (repeated failures lock the account)."
                )
            raise PageError(exc.status, message) from exc
        except WriteRefusedError as exc:
            raise PageError(status.HTTP_409_CONFLICT, str(exc)) from exc
