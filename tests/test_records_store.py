"""Generated reports: stored with their hashes and audit entries, QA review signed and re-checked."""

from __future__ import annotations

import hashlib
import json

import pytest

from coldwatch.identity_model import AccessDeniedError, SignerIdentity
from coldwatch.records.provenance import provenance
from coldwatch.records.store import AlreadySignedError, NoSuchReportError, ReportStore
from coldwatch.records.twins import twins
from coldwatch.review import signature_problems
from coldwatch.storage.identity_store import identity_store
from tests.conftest import Backend
from tests.identity_helpers import opened

QUINN = SignerIdentity("quinn", "Quinn Quality", "qa")
OLGA = SignerIdentity("olga", "Olga Operator", "operator")


async def entries_of(storage: object) -> list[object]:
    return [e async for e in storage.audit_entries()]  # type: ignore[attr-defined]


async def test_save_get_list_and_sign(backend: Backend) -> None:
    """A report keeps its PDF and figures with their hashes; generation and review are audited and bound."""
    async with opened(backend.location) as (storage, _identity, clock):
        store = ReportStore(identity_store(storage), "Europe/Paris")
        prov = await provenance(storage, "excursion alarm=7", clock())
        assert prov.audit_head_seq >= 0
        assert ("SQLite" in prov.database) != backend.postgres
        assert "***" not in prov.database
        data = {"rows": [{"a": 1, "b": None}, {"a": 2.5, "c": True}], "title": "x"}
        first = await store.save(
            "excursion", "alarm 7", prov.query, data, b"%PDF-1 one", "olga", clock(), prov
        )
        second = await store.save(
            "periodic", "site s1", "p", {"rows": []}, b"%PDF-1 two", "quinn", clock(), prov
        )
        assert second == first + 1
        got = await store.get(first)
        assert got is not None
        assert got.pdf == b"%PDF-1 one"
        assert got.data == data
        assert got.intact
        assert got.summary.pdf_sha256 == hashlib.sha256(b"%PDF-1 one").hexdigest()
        assert [r.id for r in await store.list()] == [second, first]
        assert [r.id for r in await store.list("excursion")] == [first]
        assert await store.get(999) is None
        with pytest.raises(AccessDeniedError):
            await store.sign_review(first, OLGA, "reviewed", "looked", clock())
        with pytest.raises(NoSuchReportError):
            await store.sign_review(999, QUINN, "reviewed", "looked", clock())
        sig = await store.sign_review(first, QUINN, "reviewed", "checked against the deviation", clock())
        assert (sig.signer, sig.meaning, sig.object_type, sig.object_id) == (
            "quinn",
            "reviewed",
            "report",
            str(first),
        )
        with pytest.raises(AlreadySignedError):
            await store.sign_review(first, QUINN, "approved", "again", clock())
        entries = await entries_of(storage)
        actions = [(e.action, e.object_type, e.object_id) for e in entries]  # type: ignore[attr-defined]
        assert ("report.generated", "report", str(first)) in actions
        assert ("report.reviewed", "report", str(first)) in actions
        assert ("signature.applied", "report", str(first)) in actions
        generated = next(e for e in entries if e.action == "report.generated")  # type: ignore[attr-defined]
        assert json.loads(generated.new_value)["pdf_sha256"] == got.summary.pdf_sha256  # type: ignore[attr-defined]
        count, problems = await signature_problems(identity_store(storage), entries)
        assert (count, problems) == (1, [])
        csv_text, json_bytes = twins(data)
        assert csv_text.splitlines() == ["a,b,c", "1,,", "2.5,,true"]
        assert json.loads(json_bytes) == data


async def test_a_copied_report_signature_is_reported(backend: Backend) -> None:
    """A report's review signature copied onto another report is found by the signature re-check."""
    async with opened(backend.location) as (storage, _identity, clock):
        store = ReportStore(identity_store(storage), "UTC")
        prov = await provenance(storage, "q", clock())
        one = await store.save("excursion", "alarm 1", "q", {"rows": []}, b"one", "olga", clock(), prov)
        two = await store.save("excursion", "alarm 2", "q", {"rows": []}, b"two", "olga", clock(), prov)
        await store.sign_review(one, QUINN, "reviewed", "ok", clock())
        ids = identity_store(storage)
        copy = (
            "INSERT INTO signatures(object_type, object_id, action, signer, full_name, meaning, reason, "
            f"signed_us, record_hash, content) SELECT object_type, '{two}', action, signer, full_name, "
            f"meaning, reason, signed_us, record_hash, content FROM signatures WHERE object_id = '{one}'"
        )
        await ids.fetch(copy)
        count, problems = await signature_problems(ids, await entries_of(storage))
        assert count == 2
        assert len(problems) == 1
        assert f"report {two}" in problems[0]
        assert "not this record" in problems[0]


async def test_a_signature_over_changed_report_hashes_is_reported(backend: Backend) -> None:
    """A review signature no longer matches when the report's stored hashes are changed behind its back."""
    async with opened(backend.location) as (storage, _identity, clock):
        ids = identity_store(storage)
        store = ReportStore(ids, "UTC")
        prov = await provenance(storage, "q", clock())
        one = await store.save("excursion", "alarm 1", "q", {"rows": []}, b"one", "olga", clock(), prov)
        await store.sign_review(one, QUINN, "reviewed", "ok", clock())
        assert (await signature_problems(ids, await entries_of(storage)))[1] == []
        if backend.postgres:
            await ids.fetch("ALTER TABLE reports DISABLE TRIGGER reports_append_only")
        else:
            await ids.fetch("DROP TRIGGER reports_no_update")
        fake = hashlib.sha256(b"another pdf").hexdigest()
        await ids.fetch(f"UPDATE reports SET pdf = 'x', pdf_sha256 = '{fake}' WHERE id = {one}")
        _, problems = await signature_problems(ids, await entries_of(storage))
        assert len(problems) == 1
        assert "the record's content differs from what was signed" in problems[0]
        got = await store.get(one)
        assert got is not None
        assert not got.intact
