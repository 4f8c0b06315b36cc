"""A report as printed once signed: the stored PDF, unchanged, with a signature page appended.

21 CFR 11.50 asks that a signed record show its signatures' manifestations (printed name,
date and time, meaning) in every human-readable form, printouts included. A report is
signed after it is generated, and the stored PDF is what the signature is bound to (its
SHA-256), so the PDF cannot carry its own signature. The signed copy is therefore the
stored PDF's pages, byte for byte, followed by a signature page that names the report,
the two SHA-256 the signatures are bound to, whether the stored record still hashes as
signed, and each signature's manifestation. The exact stored PDF stays available on its
own (``.original.pdf``) for anyone who checks its hash.

Why pypdf: a maintained, pure-Python PDF library; appending one document's pages to
another is all that is needed here, and it keeps the original pages' content streams as
they are.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence

from pypdf import PdfReader, PdfWriter

from coldwatch.records.pdf import render_pdf
from coldwatch.records.provenance import Provenance, provenance
from coldwatch.records.store import ReportStore, StoredReport
from coldwatch.signatures import StoredSignature, manifestation_json
from coldwatch.storage.base import Storage

__all__ = ["printable_pdf", "signed_copy"]


def signed_copy(
    report: StoredReport, signatures: Sequence[StoredSignature], zone: str, site: str, provenance: Provenance
) -> bytes:
    """The stored PDF followed by the signature page (the stored PDF alone when unsigned)."""
    if not signatures:
        return report.pdf
    original = PdfReader(io.BytesIO(report.pdf))
    page = render_pdf(
        "signature_page.html",
        {
            "title": f"Signatures of report #{report.id}",
            "site": site,
            "zone": zone,
            "report": report.summary,
            "pages": len(original.pages),
            "intact": report.intact,
            "signatures": [manifestation_json(s, zone) for s in signatures],
        },
        provenance,
    )
    writer = PdfWriter(clone_from=original)
    writer.append(PdfReader(io.BytesIO(page)))
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


async def printable_pdf(  # noqa: PLR0917 - the report, where it is stored, how it reads
    reports: ReportStore,
    report: StoredReport,
    storage: Storage,
    zone: str,
    site: str,
    now_us: int,
    notice: str | None = None,
) -> bytes:
    """The report as it is printed now: with its signature page once signed."""
    signatures = await reports.signatures(report.id)
    if not signatures:
        return report.pdf
    prov = await provenance(storage, f"signature page of report #{report.id}", now_us, notice)
    return await asyncio.to_thread(signed_copy, report, signatures, zone, site, prov)
