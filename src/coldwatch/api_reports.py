"""The HTTP API of generated reports: list, read, download, sign as reviewed, and generate.

- ``GET /api/v1/reports`` (``kind``, ``limit``), ``GET /api/v1/reports/{id}`` (figures,
  hashes, provenance, signatures' manifestations), ``GET /api/v1/reports/{id}.pdf`` (the
  report as printed: once signed, with its signature page appended), ``.original.pdf``
  (exactly as generated and hashed), ``.csv`` and ``.json`` (its twins): any reader
  (viewer and up, service tokens).
- ``POST /api/v1/reports/{id}/review``: the QA review signature (qa; user, password,
  meaning, reason; never a service token).
- ``POST /api/v1/alarms/{id}/report``: generate the excursion report of one alarm
  (operator or qa: the people who handle excursions; never a service token).

Other report kinds add their generate endpoints next to these in their own modules.
"""

# No "from __future__ import annotations": FastAPI reads the endpoint signatures at run time.

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, status

from coldwatch.api import ApiContext, SignedBody
from coldwatch.api_input import ID_MAX
from coldwatch.export import format_ts
from coldwatch.identity_model import Principal
from coldwatch.records.excursion_source import changed_since_report, generate_excursion_report
from coldwatch.records.signed_copy import printable_pdf
from coldwatch.records.store import KINDS, ReportStore, ReportSummary, StoredReport
from coldwatch.records.twins import twins
from coldwatch.roles import Permission
from coldwatch.signatures import manifestation_json
from coldwatch.web_auth import client_address, refusals

__all__ = ["report_json", "reports_router"]

ReportId = Annotated[int, Path(ge=1, le=ID_MAX, description="a report id (1 to 2**63-1)")]
AlarmId = Annotated[int, Path(ge=1, le=ID_MAX, description="an alarm id (1 to 2**63-1)")]


def summary_json(summary: ReportSummary) -> dict[str, Any]:
    """A report's summary as the API gives it."""
    return {
        "id": summary.id,
        "kind": summary.kind,
        "subject": summary.subject,
        "query": summary.query,
        "generated_at": format_ts(summary.generated_us),
        "generated_by": summary.generated_by,
        "audit_head": {"seq": summary.audit_head_seq, "hash": summary.audit_head_hash},
        "pdf_sha256": summary.pdf_sha256,
        "data_sha256": summary.data_sha256,
        "path": summary.path,
        "links": {
            "pdf": f"/api/v1/reports/{summary.id}.pdf",
            "original_pdf": f"/api/v1/reports/{summary.id}.original.pdf",
            "csv": f"/api/v1/reports/{summary.id}.csv",
            "json": f"/api/v1/reports/{summary.id}.json",
        },
    }


async def report_json(reports: ReportStore, report: StoredReport) -> dict[str, Any]:
    """One report: summary, integrity, signatures' manifestations and figures."""
    signatures = await reports.signatures(report.id)
    return {
        **summary_json(report.summary),
        "intact": report.intact,
        "reviewed": any(s.action == "review" for s in signatures),
        "signatures": [manifestation_json(s, reports.zone) for s in signatures],
        "data": report.data,
    }


async def _found(reports: ReportStore, report_id: int) -> StoredReport:
    report = await reports.get(report_id)
    if report is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no report {report_id}")
    return report


def _download(report: StoredReport, what: str, printable: bytes | None = None) -> Response:
    name = f"coldwatch-{report.summary.kind}-report-{report.id}.{what}"
    content: bytes | str
    if what == "original.pdf":
        content, media = report.pdf, "application/pdf"
    elif what == "pdf":
        content, media = report.pdf if printable is None else printable, "application/pdf"
    elif what == "csv":
        content, media = twins(report.data)[0], "text/csv; charset=utf-8"
    else:
        content, media = twins(report.data)[1], "application/json"
    return Response(
        content, media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}"'}
    )


def reports_router(ctx: ApiContext) -> APIRouter:
    """The /api/v1 report routes (mounted by the daemon next to the other API routes)."""
    router = APIRouter(prefix="/api/v1")
    reports = ReportStore(ctx.reviews.store, ctx.config.site.timezone)
    _reading(router, ctx, reports)
    _writing(router, ctx, reports)
    return router


def _reading(router: APIRouter, ctx: ApiContext, reports: ReportStore) -> None:
    Viewer = Annotated[Principal, Depends(ctx.auth.require(Permission.READ))]  # noqa: N806 - a type alias

    @router.get("/reports")
    async def list_reports(
        _: Viewer,
        kind: Annotated[str | None, Query(pattern="^(" + "|".join(KINDS) + ")$")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ) -> list[dict[str, Any]]:
        """Generated reports, newest first (of one kind, when given), and whether each is reviewed."""
        found = await reports.list(kind, limit)
        reviewed = await reports.reviewed(s.id for s in found)
        return [{**summary_json(s), "reviewed": s.id in reviewed} for s in found]

    @router.get("/reports/{report_id}.original.pdf")
    async def report_original_pdf(report_id: ReportId, _: Viewer) -> Response:
        """The report's PDF exactly as generated: the bytes its ``pdf_sha256`` and signatures cover."""
        return _download(await _found(reports, report_id), "original.pdf")

    @router.get("/reports/{report_id}.pdf")
    async def report_pdf(report_id: ReportId, _: Viewer) -> Response:
        """The report as printed: the PDF as generated and, once signed, its signature page after it."""
        report = await _found(reports, report_id)
        sites = ", ".join(sorted({d.site for d in ctx.config.devices}))
        printed = await printable_pdf(
            reports,
            report,
            ctx.storage,
            ctx.config.site.timezone,
            sites,
            ctx.clock_us(),
            ctx.config.site.notice,
        )
        return _download(report, "pdf", printed)

    @router.get("/reports/{report_id}.csv")
    async def report_csv(report_id: ReportId, _: Viewer) -> Response:
        """The report's figures as CSV (its ``rows``)."""
        return _download(await _found(reports, report_id), "csv")

    @router.get("/reports/{report_id}.json")
    async def report_twin_json(report_id: ReportId, _: Viewer) -> Response:
        """The report's figures as JSON (all of them)."""
        return _download(await _found(reports, report_id), "json")

    @router.get("/reports/{report_id}")
    async def get_report(report_id: ReportId, _: Viewer) -> dict[str, Any]:
        """One report: summary, hashes, whether they still match, signatures and figures."""
        return await report_json(reports, await _found(reports, report_id))


class ReviewBody(SignedBody):
    """A report's review signature; ``as_generated``: signed although the record changed since."""

    as_generated: bool = False


def _writing(router: APIRouter, ctx: ApiContext, reports: ReportStore) -> None:
    auth = ctx.auth
    Generator = Annotated[Principal, Depends(auth.require(Permission.REPORT_GENERATE))]  # noqa: N806
    Signing = [Depends(auth.signing_principal), Depends(auth.csrf)]  # noqa: N806 - dependencies

    @router.post("/reports/{report_id}/review", dependencies=Signing)
    async def review_report(report_id: ReportId, body: ReviewBody, request: Request) -> dict[str, Any]:
        """Sign the report as reviewed: qa only, with user, password, meaning and reason.

        An excursion report generated before later changes to its alarm's record (cleared,
        acknowledged, reviewed, ...) is refused (409, the changes listed) unless
        ``as_generated`` is true: a new report shows them.
        """
        principal = await auth.signing_principal(request)
        if principal is not None and principal.name != body.user:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "a signature in a session is the session's user's")
        report = await _found(reports, report_id)
        changes = await changed_since_report(ctx.storage, ctx.config, report.data)
        if changes and not body.as_generated:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                "the report was generated before later changes to the alarm's record ("
                + "; ".join(changes)
                + "): generate a new report, or sign this one as it was generated "
                "(as_generated true; on the command line, --as-generated)",
            )
        with refusals():
            signer = await ctx.identity.verify_signer(
                action="review",
                permission=Permission.REPORT_REVIEW,
                meaning=body.meaning,
                user=body.user,
                password=body.password,
                client=client_address(request),
            )
            await reports.sign_review(report_id, signer, body.meaning, body.reason, ctx.clock_us())
        return await report_json(reports, await _found(reports, report_id))

    @router.post("/alarms/{alarm_id}/report", status_code=status.HTTP_201_CREATED)
    async def excursion_report(alarm_id: AlarmId, who: Generator, request: Request) -> dict[str, Any]:
        """Generate the excursion report of one alarm (operator or qa); the stored report."""
        await auth.csrf(request)
        with refusals():
            report_id = await generate_excursion_report(
                ctx.storage, ctx.config, alarm_id, who.name, ctx.clock_us()
            )
        return await report_json(reports, await _found(reports, report_id))
