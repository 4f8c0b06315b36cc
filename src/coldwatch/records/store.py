"""Generated reports: kept with exactly what they showed, and their QA review signatures.

A report is stored once and never changed (the table refuses UPDATE and DELETE): its PDF,
its figures as canonical JSON, the SHA-256 of both, who generated it, when, by which
query, and where the sealed audit trail stood then. Its generation is an audit entry
(``report.generated``, carrying both hashes) in the same transaction.

A QA review is a Part 11 signature (object type ``report``, action ``review``) bound to
the report's identity and both hashes, so it cannot be moved to another report nor kept
over an edited one: ``coldwatch audit verify`` re-checks it (see
:func:`coldwatch.review.signature_problems`). A report is reviewed once.
"""

from __future__ import annotations

import builtins
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from coldwatch.audit import AuditDraft
from coldwatch.identity_model import AccessDeniedError, IdentityError, SignerIdentity
from coldwatch.records.provenance import Provenance
from coldwatch.signatures import SELECT_SIGNATURES, SignatureDraft, StoredSignature, bind
from coldwatch.storage.identity_schema import INSERT_SIGNATURE
from coldwatch.storage.identity_store import IdentityStore, Write, WriteRefusedError, is_postgres

__all__ = [
    "KINDS",
    "AlreadySignedError",
    "NoSuchReportError",
    "ReportStore",
    "ReportSummary",
    "StoredReport",
    "canonical_json",
    "report_facts",
]

KINDS: Final = ("excursion", "periodic", "batch", "shipment")
_SUMMARY: Final = (
    "SELECT id, kind, subject, query, generated_us, generated_by, audit_head_seq, audit_head_hash, "
    "pdf_sha256, data_sha256, path FROM reports"
)
_COLUMNS: Final = (
    "kind, subject, query, generated_us, generated_by, audit_head_seq, audit_head_hash, "
    "pdf, pdf_sha256, data, data_sha256, path"
)
_TRIES: Final = 5
# A report's review signature, guarded in its transaction: once per report.
_INSERT_REVIEW_SIGNATURE: Final = (
    INSERT_SIGNATURE.split(" VALUES ", 1)[0]  # noqa: S608 - constants only
    + " SELECT ?, ?, ?, ?, ?, ?, ?, CAST(? AS BIGINT), ?, ? WHERE NOT EXISTS (SELECT 1 FROM signatures "
    "WHERE object_type = 'report' AND object_id = ? AND action = 'review')"
)


class NoSuchReportError(IdentityError):
    """No report with that id."""

    status = 404


class AlreadySignedError(IdentityError):
    """The report has its review signature already (a review is never replaced)."""

    status = 409


def canonical_json(data: object) -> str:
    """The one text of a report's figures that is stored and hashed."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class ReportSummary:
    """A stored report without its PDF and figures."""

    id: int
    kind: str
    subject: str
    query: str
    generated_us: int
    generated_by: str
    audit_head_seq: int
    audit_head_hash: str
    pdf_sha256: str
    data_sha256: str
    path: str | None

    @classmethod
    def of(cls, row: tuple[Any, ...]) -> ReportSummary:
        """From a row of the summary columns."""
        i, kind, subject, query, gen, by, seq, head, pdf_sha, data_sha, path = row
        return cls(
            int(i), str(kind), str(subject), str(query), int(gen), str(by), int(seq), str(head),
            str(pdf_sha), str(data_sha), None if path is None else str(path),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class StoredReport:
    """A stored report with its PDF and figures; ``intact`` says both still hash as stored."""

    summary: ReportSummary
    pdf: bytes
    data_text: str

    @property
    def id(self) -> int:
        """The report's id."""
        return self.summary.id

    @property
    def data(self) -> dict[str, Any]:
        """The figures the report showed."""
        value = json.loads(self.data_text)
        return value if isinstance(value, dict) else {"rows": []}

    @property
    def intact(self) -> bool:
        """Whether the PDF and figures still hash to what was stored (and signed) at generation."""
        return (
            _sha256(self.pdf) == self.summary.pdf_sha256
            and _sha256(self.data_text.encode()) == self.summary.data_sha256
        )


def report_facts(summary: ReportSummary) -> dict[str, object]:
    """What a review signature of a report covers: its identity and the hashes of PDF and figures."""
    return {
        "report": summary.id,
        "kind": summary.kind,
        "subject": summary.subject,
        "generated_us": summary.generated_us,
        "pdf_sha256": summary.pdf_sha256,
        "data_sha256": summary.data_sha256,
    }


class ReportStore:
    """Saves and reads generated reports and signs their reviews, on either backend."""

    def __init__(self, store: IdentityStore, zone: str) -> None:
        self.store = store
        self.zone = zone

    async def save(  # noqa: PLR0917 - what a report is, and where it came from
        self,
        kind: str,
        subject: str,
        query: str,
        data: dict[str, Any],
        pdf: bytes,
        who: str,
        now_us: int,
        prov: Provenance,
        path: str | None = None,
    ) -> int:
        """Store a generated report and its audit entry ``report.generated`` in one transaction; its id."""
        if kind not in KINDS:
            raise ValueError(f"unknown report kind {kind!r}")
        text = canonical_json(data)
        pdf_sha, data_sha = _sha256(pdf), _sha256(text.encode())
        override = " OVERRIDING SYSTEM VALUE" if is_postgres(self.store) else ""
        for _ in range(_TRIES):
            rows = await self.store.fetch("SELECT COALESCE(MAX(id), 0) + 1 FROM reports")
            report_id = int(rows[0][0])
            entry = AuditDraft(
                at_us=now_us,
                actor=who,
                action="report.generated",
                object_type="report",
                object_id=str(report_id),
                old_value=None,
                new_value=canonical_json(
                    {
                        "kind": kind,
                        "subject": subject,
                        "query": query,
                        "pdf_sha256": pdf_sha,
                        "data_sha256": data_sha,
                        "audit_head_seq": prov.audit_head_seq,
                        "path": path,
                    }
                ),
                reason=f"{kind} report generated",
            )
            params = (report_id, kind, subject, query, now_us, who, prov.audit_head_seq,
                      prov.audit_head_hash, pdf, pdf_sha, text, data_sha, path, report_id)  # fmt: skip
            write = Write(
                f"INSERT INTO reports(id, {_COLUMNS}){override} SELECT"  # noqa: S608 - constants only
                "  CAST(? AS BIGINT), ?, ?, ?, "
                "CAST(? AS BIGINT), ?, CAST(? AS BIGINT), ?, ?, ?, ?, ?, ? "
                "WHERE NOT EXISTS (SELECT 1 FROM reports WHERE id = ?)",
                params,
                expect=1,
                refusal="another report took this id meanwhile",
            )
            try:
                await self.store.apply([write], [entry])
            except WriteRefusedError:
                continue
            return report_id
        raise WriteRefusedError("could not store the report: too many reports generated at once, try again")

    async def summary(self, report_id: int) -> ReportSummary | None:
        """One report's summary, or None."""
        rows = await self.store.fetch(_SUMMARY + " WHERE id = ?", report_id)
        return ReportSummary.of(rows[0]) if rows else None

    async def get(self, report_id: int) -> StoredReport | None:
        """One report with its PDF and figures, or None."""
        rows = await self.store.fetch(
            _SUMMARY.replace(" FROM reports", ", pdf, data FROM reports") + " WHERE id = ?", report_id
        )
        if not rows:
            return None
        row = rows[0]
        pdf = row[11]
        # A damaged row (SQLite keeps whatever type was written) reads as not intact, never as an error.
        pdf_bytes = bytes(pdf) if isinstance(pdf, (bytes, bytearray, memoryview)) else str(pdf).encode()
        return StoredReport(ReportSummary.of(row[:11]), pdf_bytes, str(row[12]))

    async def list(self, kind: str | None = None, limit: int = 200) -> list[ReportSummary]:
        """The newest reports (of ``kind`` only, when given), newest first."""
        where = "" if kind is None else " WHERE kind = ?"
        args: tuple[object, ...] = () if kind is None else (kind,)
        order = " ORDER BY generated_us DESC, id DESC LIMIT ?"
        rows = await self.store.fetch(_SUMMARY + where + order, *args, limit)
        return [ReportSummary.of(r) for r in rows]

    async def reviewed(self, report_ids: Iterable[int]) -> set[int]:
        """Which of these reports are signed as reviewed."""
        ids = [str(i) for i in report_ids]
        out: set[int] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            rows = await self.store.fetch(
                "SELECT object_id FROM signatures WHERE object_type = 'report' AND action = 'review' "  # noqa: S608 - marks only
                f"AND object_id IN ({marks})",
                *chunk,
            )
            out.update(int(r[0]) for r in rows)
        return out

    async def signatures(self, report_id: int) -> builtins.list[StoredSignature]:
        """The report's signatures, oldest first."""
        rows = await self.store.fetch(
            SELECT_SIGNATURES + " WHERE object_type = 'report' AND object_id = ? ORDER BY signed_us, id",
            str(report_id),
        )
        return [StoredSignature.of(r) for r in rows]

    async def sign_review(
        self, report_id: int, signer: SignerIdentity, meaning: str, reason: str, now_us: int
    ) -> StoredSignature:
        """Sign the report as reviewed (qa only; once), bound to its PDF and figures' hashes."""
        if signer.role != "qa":
            raise AccessDeniedError(f"{signer.name} is not in the qa role: only QA signs a report's review")
        summary = await self.summary(report_id)
        if summary is None:
            raise NoSuchReportError(f"no report {report_id}")
        if any(s.action == "review" for s in await self.signatures(report_id)):
            raise AlreadySignedError(f"report {report_id} is signed as reviewed already")
        row, signature_entry = bind(
            "report",
            str(report_id),
            "review",
            report_facts(summary),
            SignatureDraft(signer.name, signer.full_name, meaning, reason),
            now_us,
            self.zone,
        )
        entry = AuditDraft(
            at_us=now_us,
            actor=signer.name,
            action="report.reviewed",
            object_type="report",
            object_id=str(report_id),
            old_value=None,
            new_value=canonical_json(
                {"meaning": meaning, "pdf_sha256": summary.pdf_sha256, "data_sha256": summary.data_sha256}
            ),
            reason=reason,
        )
        guard = Write(
            _INSERT_REVIEW_SIGNATURE,
            (*row, str(report_id)),
            expect=1,
            refusal=f"report {report_id} was signed as reviewed meanwhile",
        )
        await self.store.apply([guard], [entry, signature_entry])
        return (await self.signatures(report_id))[-1]
