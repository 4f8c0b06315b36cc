"""Audit trail: hash chain, tamper detection (pure and on real SQLite files), export."""

from __future__ import annotations

import base64
import csv
import dataclasses
import hashlib
import io
import itertools
import json
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, closing
from pathlib import Path

import aiosqlite
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from coldwatch.audit import (
    CSV_HEADER,
    GENESIS_HASH,
    Anchor,
    AuditDraft,
    AuditEntry,
    AuditFormatError,
    entry_hash,
    format_at,
    from_json,
    seal,
    to_csv,
    to_json,
    verify,
)
from coldwatch.audit_keys import load_signer, rotation_draft
from coldwatch.audit_seal import (
    AuditKeyError,
    Seal,
    Signer,
    anchor_line,
    check_trail,
    key_id,
    parse_anchor_line,
)
from coldwatch.config import parse_config
from coldwatch.errors import StorageError
from coldwatch.storage import SqliteStorage
from coldwatch.storage.audit_sqlite import AUDIT_SCHEMA, append, last_link, read_all, verify_stored

US = 1_000_000
T0 = 1_714_564_800 * US  # 2024-05-01T12:00:00Z
N = 6
DRAFT_FIELDS = ("at_us", "actor", "action", "object_type", "object_id", "old_value", "new_value", "reason")


def draft(i: int, **changes: object) -> AuditDraft:
    """The ``i``-th test action: a limit change on an incubator, with its reason."""
    fields: dict[str, object] = {
        "at_us": T0 + i * US,
        "actor": "qa.lead@plant-1",
        "action": "limit.update",
        "object_type": "rule",
        "object_id": f"inc-01/temp_c/high-{i}",
        "old_value": f"{37 + i}.5",
        "new_value": f"{37 + i}.0",
        "reason": f"CAPA-{i:04d} tightened",
    }
    fields.update(changes)
    return AuditDraft(**fields)  # type: ignore[arg-type]


def chain(n: int = N) -> list[AuditEntry]:
    """An untouched chain of ``n`` entries from genesis."""
    return seal([draft(i) for i in range(1, n + 1)], 1, GENESIS_HASH)


def rehashed(entry: AuditEntry, **changes: object) -> AuditEntry:
    """``entry`` with ``changes`` and a hash recomputed to match, as a tamperer who read this code would."""
    changed = dataclasses.replace(entry, **changes)  # type: ignore[arg-type]
    return dataclasses.replace(changed, hash=changed.computed_hash())


def renumbered(entries: Sequence[AuditEntry], shift: int) -> list[AuditEntry]:
    """``entries`` with their seq shifted, hashes left as they were."""
    return [dataclasses.replace(e, seq=e.seq + shift) for e in entries]


# --- hashing and sealing ------------------------------------------------------------


def test_hash_is_sha256_of_the_canonical_json() -> None:
    """The hash is SHA-256 over sorted-key, compact, non-ASCII-preserving JSON in UTF-8, pinned to a value."""
    digest = entry_hash(
        7,
        at_us=T0,
        actor="zoë.müller",
        action="alarm.ack",
        object_type="alarm",
        object_id="42",
        old_value=None,
        new_value="acknowledged",
        reason="Tür geprüft, Sensor ok",
        prev_hash=GENESIS_HASH,
    )
    canonical = (
        '{"action":"alarm.ack","actor":"zoë.müller","at_us":1714564800000000,"new_value":"acknowledged",'
        '"object_id":"42","object_type":"alarm","old_value":null,"prev_hash":"' + GENESIS_HASH + '",'
        '"reason":"Tür geprüft, Sensor ok","seq":7}'
    )
    assert digest == hashlib.sha256(canonical.encode()).hexdigest()
    assert digest == "85aa42aaa6178a30b6f753d31036cd276161a88a1176a2e1359113e54a122ed2"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seq", 2),
        ("at_us", T0 + 1),
        ("actor", "someone.else"),
        ("action", "limit.delete"),
        ("object_type", "device"),
        ("object_id", "inc-02/temp_c/high-1"),
        ("old_value", None),
        ("old_value", ""),
        ("new_value", None),
        ("reason", "CAPA-0001 tightened."),
        ("prev_hash", "f" * 64),
    ],
)
def test_hash_changes_with_every_field(field: str, value: object) -> None:
    """Changing any one field, including seq and prev_hash (and None against ""), changes the hash."""
    entry = chain(1)[0]
    assert entry.computed_hash() == entry.hash
    assert dataclasses.replace(entry, **{field: value}).computed_hash() != entry.hash  # type: ignore[arg-type]


def test_seal_numbers_and_chains_entries_from_genesis() -> None:
    """Sealed entries are numbered from 1, the first chains to genesis and each to the one before."""
    entries = chain()
    assert [e.seq for e in entries] == list(range(1, N + 1))
    assert entries[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(entries))
    assert all(e.hash == e.computed_hash() for e in entries)
    assert [getattr(entries[0], f) for f in DRAFT_FIELDS] == [getattr(draft(1), f) for f in DRAFT_FIELDS]


def test_seal_continues_an_existing_chain() -> None:
    """Sealing in two batches from the returned link gives the same chain as one batch."""
    first = seal([draft(1), draft(2)], 1, GENESIS_HASH)
    second = seal([draft(3)], first[-1].seq + 1, first[-1].hash)
    assert first + second == chain(3)
    assert seal([], 4, first[-1].hash) == []


@pytest.mark.parametrize(("first_seq", "prev_hash"), [(0, GENESIS_HASH), (1, "0" * 63), (1, "A" * 64)])
def test_seal_refuses_an_impossible_start(first_seq: int, prev_hash: str) -> None:
    """Seal refuses a seq below 1 and a prev_hash that is not 64 lowercase hex digits."""
    with pytest.raises(ValueError, match=r"seq|prev_hash"):
        seal([draft(1)], first_seq, prev_hash)


@pytest.mark.parametrize("field", ["actor", "action", "object_type", "object_id", "reason"])
@pytest.mark.parametrize("blank", ["", "   ", "\t"])
def test_draft_requires_who_what_and_why(field: str, blank: str) -> None:
    """A draft without actor, action, object or reason (Annex 11: reason mandatory) is refused."""
    with pytest.raises(ValueError, match=field):
        draft(1, **{field: blank})


@pytest.mark.parametrize(
    ("field", "value"), [("at_us", 1.5), ("at_us", True), ("old_value", 3), ("new_value", b"x")]
)
def test_draft_refuses_wrong_types(field: str, value: object) -> None:
    """A draft's time is integer microseconds and its values are text or None."""
    with pytest.raises(TypeError, match=field):
        draft(1, **{field: value})


def test_draft_refuses_text_that_cannot_be_utf8() -> None:
    """A lone surrogate (which UTF-8, hence the hash and SQLite, cannot hold) is refused up front."""
    with pytest.raises(ValueError, match="Unicode"):
        draft(1, reason="bad \ud800 text")


# --- verification -------------------------------------------------------------------


def test_verify_accepts_an_untouched_chain_and_reports_its_anchor() -> None:
    """An untouched chain verifies, with its count and the last seq and hash to keep as an anchor."""
    entries = chain()
    result = verify(entries)
    assert (result.ok, result.checked, result.first_bad_seq, result.problem, result.kind) == (
        True,
        N,
        None,
        None,
        None,
    )
    assert result.anchor == Anchor(N, entries[-1].hash)
    assert result.describe() == f"audit trail intact: {N} entries, last seq {N}, hash {entries[-1].hash}"
    assert verify(entries, anchor=result.anchor).ok


def test_verify_accepts_an_empty_trail_and_any_input_order() -> None:
    """An empty trail is intact, and entries are checked in seq order whatever order they come in."""
    assert verify([]).ok
    assert verify([]).anchor == Anchor(0, GENESIS_HASH)
    assert verify(reversed(chain())).ok


def test_verify_accepts_a_partial_export_from_its_start_link() -> None:
    """The tail of a trail verifies when given the link (seq and hash) it continues."""
    entries = chain()
    assert verify(entries[3:], start=Anchor(3, entries[2].hash)).ok
    assert not verify(entries[3:]).ok


def test_verify_names_an_entry_changed_in_place() -> None:
    """An entry whose reason was edited is reported as changed, at its own seq."""
    entries = chain()
    entries[2] = dataclasses.replace(entries[2], reason="no reason")
    result = verify(entries)
    assert (result.ok, result.first_bad_seq, result.kind, result.checked) == (False, 3, "changed", 2)
    assert result.problem is not None
    assert "seq 3" in result.problem
    assert result.anchor == Anchor(2, entries[1].hash)
    assert "TAMPERED (changed) at seq 3" in result.describe()


def test_verify_names_an_entry_changed_with_its_hash_recomputed() -> None:
    """An edited entry with a recomputed hash is found through the next entry's link, and named."""
    entries = chain()
    entries[2] = rehashed(entries[2], new_value="39.9")
    result = verify(entries)
    assert (result.ok, result.first_bad_seq, result.kind, result.checked) == (False, 3, "changed", 2)


def test_verify_names_a_changed_first_entry() -> None:
    """The first entry, changed in place, is reported at seq 1."""
    entries = chain()
    entries[0] = dataclasses.replace(entries[0], actor="intruder")
    result = verify(entries)
    assert (result.first_bad_seq, result.kind, result.checked) == (1, "changed", 0)


def test_verify_names_a_deleted_entry() -> None:
    """A missing entry in the middle is reported as deleted, at the missing seq."""
    entries = chain()
    del entries[2]
    result = verify(entries)
    assert (result.ok, result.first_bad_seq, result.kind, result.checked) == (False, 3, "deleted", 2)
    assert result.problem == "seq 3 is missing: seq 4 follows seq 2"


def test_verify_names_the_first_of_several_deleted_entries() -> None:
    """Several missing entries are reported from the first missing seq."""
    entries = chain()
    del entries[2:4]
    result = verify(entries)
    assert (result.first_bad_seq, result.kind) == (3, "deleted")
    assert result.problem == "seqs 3 to 4 are missing: seq 5 follows seq 2"


def test_verify_names_a_deleted_first_entry() -> None:
    """A missing first entry is reported as deleted at seq 1."""
    result = verify(chain()[1:])
    assert (result.first_bad_seq, result.kind, result.checked) == (1, "deleted", 0)


def test_verify_names_a_deletion_hidden_by_renumbering() -> None:
    """An entry deleted and the later ones renumbered to close the gap is still reported, at its seq."""
    entries = chain()
    entries = entries[:2] + renumbered(entries[3:], -1)
    result = verify(entries)
    assert (result.ok, result.first_bad_seq, result.kind) == (False, 3, "deleted")


def test_verify_alone_cannot_see_the_last_entry_deleted_but_an_anchor_can() -> None:
    """Cutting off the newest entry leaves a valid, shorter chain; an anchor kept earlier catches it."""
    entries = chain()
    kept = verify(entries).anchor
    result = verify(entries[:-1])
    assert result.ok
    assert (result.checked, result.last_seq) == (N - 1, N - 1)
    assert result.last_hash != kept.hash
    anchored = verify(entries[:-1], anchor=kept)
    assert (anchored.ok, anchored.first_bad_seq, anchored.kind) == (False, N, "deleted")


def test_verify_with_an_anchor_catches_a_rewritten_chain() -> None:
    """A chain rewritten consistently (every hash recomputed) still fails against an earlier anchor."""
    entries = chain()
    kept = verify(entries).anchor
    rewritten = seal(
        [draft(1), draft(2, reason="rewritten"), *[draft(i) for i in range(3, N + 1)]], 1, GENESIS_HASH
    )
    assert verify(rewritten).ok
    result = verify(rewritten, anchor=kept)
    assert (result.ok, result.first_bad_seq, result.kind) == (False, N, "changed")


def test_verify_names_an_inserted_entry_with_a_valid_hash() -> None:
    """A forged entry slipped in (later entries renumbered), hashed correctly, is named as inserted."""
    entries = chain()
    forged = seal([draft(99, reason="backdated approval")], 3, entries[1].hash)
    result = verify(entries[:2] + forged + renumbered(entries[2:], +1))
    assert (result.ok, result.first_bad_seq, result.kind, result.checked) == (False, 3, "inserted", 2)
    assert result.anchor == Anchor(2, entries[1].hash)


def test_verify_names_an_inserted_entry_with_a_plausible_but_wrong_hash() -> None:
    """A forged entry with a random-looking hash, slipped in, is named as inserted, not changed."""
    entries = chain()
    forged = dataclasses.replace(
        seal([draft(99)], 3, entries[1].hash)[0], hash=hashlib.sha256(b"forged").hexdigest()
    )
    result = verify([*entries[:2], forged, *renumbered(entries[2:], +1)])
    assert (result.first_bad_seq, result.kind) == (3, "inserted")


def test_verify_names_an_inserted_entry_with_a_made_up_prev_hash() -> None:
    """A self-consistent forged entry chained to a made-up hash is named as inserted (the next skips it)."""
    entries = chain()
    forged = seal([draft(99)], 3, "e" * 64)
    result = verify(entries[:2] + forged + renumbered(entries[2:], +1))
    assert (result.first_bad_seq, result.kind) == (3, "inserted")


def test_verify_names_a_duplicated_seq_as_inserted() -> None:
    """A second entry with an existing seq is reported as inserted."""
    entries = chain()
    copy = rehashed(entries[2], reason="second version")
    result = verify([*entries, copy])
    assert (result.ok, result.first_bad_seq, result.kind) == (False, 3, "inserted")


def test_verify_names_an_entry_before_the_start_as_inserted() -> None:
    """An entry numbered before seq 1 is reported as inserted."""
    entries = chain()
    forged = dataclasses.replace(entries[0], seq=0)
    result = verify([forged, *entries])
    assert (result.first_bad_seq, result.kind, result.checked) == (0, "inserted", 0)


def test_verify_names_a_forged_entry_appended_with_a_wrong_hash() -> None:
    """An entry added at the end with a plausible, wrong hash is named (it looks like a change)."""
    entries = chain()
    forged = dataclasses.replace(seal([draft(99)], N + 1, entries[-1].hash)[0], hash="ab" * 32)
    result = verify([*entries, forged])
    assert (result.ok, result.first_bad_seq, result.kind) == (False, N + 1, "changed")


def test_verify_cannot_see_a_well_formed_entry_appended_at_the_end() -> None:
    """Known limit: an entry appended with the public algorithm verifies (it needs a key to catch)."""
    entries = chain()
    forged = seal([draft(99)], N + 1, entries[-1].hash)
    result = verify(entries + forged)
    assert result.ok
    assert result.last_seq == N + 1


def test_verify_names_an_entry_replaced_with_one_chained_elsewhere() -> None:
    """A self-consistent replacement chained to genesis or to a made-up hash is named at its own seq."""
    entries = chain()
    for fake_prev in (GENESIS_HASH, "d" * 64):
        tampered = list(entries)
        tampered[3] = seal([draft(99)], 4, fake_prev)[0]
        result = verify(tampered)
        assert (result.first_bad_seq, result.kind, result.checked) == (4, "changed", 3), fake_prev


TAMPERINGS = {
    "changed": lambda es, i: [*es[:i], dataclasses.replace(es[i], reason="edited"), *es[i + 1 :]],
    "rehashed": lambda es, i: [*es[:i], rehashed(es[i], reason="edited"), *es[i + 1 :]],
    "deleted": lambda es, i: [*es[:i], *es[i + 1 :]],
    "renumbered": lambda es, i: [*es[:i], *renumbered(es[i + 1 :], -1)],
    "inserted": lambda es, i: [
        *es[:i],
        *seal([draft(99)], i + 1, es[i - 1].hash if i else GENESIS_HASH),
        *renumbered(es[i:], +1),
    ],
}
EXPECTED_KIND = {"changed": "changed", "rehashed": "changed", "deleted": "deleted", "renumbered": "deleted"}


@pytest.mark.parametrize("how", sorted(TAMPERINGS))
@pytest.mark.parametrize("position", range(N))
def test_verify_names_one_tampering_at_any_position(how: str, position: int) -> None:
    """Each kind of tampering at each position is named at its seq; at the end only what a chain can show."""
    result = verify(TAMPERINGS[how](chain(), position))
    seq = position + 1
    if seq == N and how in {"rehashed", "deleted", "renumbered"}:
        assert result.ok  # a recomputed or removed newest entry needs an anchor
        return
    assert (result.ok, result.first_bad_seq, result.kind) == (False, seq, EXPECTED_KIND.get(how, how))
    assert result.checked == position


def test_verify_reports_only_the_first_problem() -> None:
    """With an entry changed and a later one deleted, the earlier seq is reported."""
    entries = chain()
    entries[1] = dataclasses.replace(entries[1], reason="edited")
    del entries[4]
    result = verify(entries)
    assert (result.first_bad_seq, result.kind) == (2, "changed")


# --- export ---------------------------------------------------------------------------


def test_format_at_is_exact_rfc3339_utc() -> None:
    """Times are RFC 3339 UTC with every microsecond kept, even far from the epoch."""
    assert format_at(T0) == "2024-05-01T12:00:00.000000+00:00"
    assert format_at(T0 + 123_457) == "2024-05-01T12:00:00.123457+00:00"
    assert format_at(253_402_300_799_999_999) == "9999-12-31T23:59:59.999999+00:00"


def test_csv_export_has_the_documented_columns() -> None:
    """The CSV has the documented header, one row per entry, RFC 3339 times and empty cells for None."""
    entries = seal([draft(1, old_value=None, reason='said "ok", then left')], 1, GENESIS_HASH)
    out = io.StringIO()
    assert to_csv(entries, out) == 1
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert tuple(rows[0]) == CSV_HEADER
    e = entries[0]
    assert rows[1] == [
        "1",
        "2024-05-01T12:00:01.000000+00:00",
        e.actor,
        e.action,
        e.object_type,
        e.object_id,
        "",
        e.new_value,
        'said "ok", then left',
        GENESIS_HASH,
        e.hash,
    ]


def test_json_export_round_trips_and_still_verifies() -> None:
    """A JSON export reads back to the same entries, which verify; an edit in the file is caught."""
    entries = chain()
    text = to_json(entries)
    doc = json.loads(text)
    assert (doc["count"], doc["last_seq"], doc["last_hash"]) == (N, N, entries[-1].hash)
    assert doc["entries"][0]["at_utc"] == "2024-05-01T12:00:01.000000+00:00"
    assert from_json(text) == entries
    assert verify(from_json(text)).ok
    doc["entries"][3]["new_value"] = "45.0"
    result = verify(from_json(json.dumps(doc)))
    assert (result.first_bad_seq, result.kind) == (4, "changed")


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"format": "coldwatch-audit-trail", "version": 2, "entries": []}',
        '{"format": "coldwatch-audit-trail", "version": 1, "entries": {}}',
        '{"format": "coldwatch-audit-trail", "version": 1, "entries": [{"seq": "1"}]}',
    ],
)
def test_json_import_refuses_malformed_documents(text: str) -> None:
    """A document that is not a well-formed export is refused with AuditFormatError."""
    with pytest.raises(AuditFormatError):
        from_json(text)


# --- SQLite ---------------------------------------------------------------------------


@asynccontextmanager
async def connect(path: Path) -> AsyncIterator[aiosqlite.Connection]:
    """A connection like the storage's: explicit BEGIN/COMMIT (isolation_level None)."""
    db = await aiosqlite.connect(path, isolation_level=None)
    # Durability is not under test here, and fsync costs more than everything else.
    await db.execute("PRAGMA synchronous=OFF")
    try:
        yield db
    finally:
        await db.close()


async def append_committed(db: aiosqlite.Connection, drafts: Sequence[AuditDraft]) -> tuple[int, str]:
    """Append ``drafts`` in one committed transaction, from the stored link; return the new link."""
    next_seq, prev_hash = await last_link(db)
    await db.execute("BEGIN IMMEDIATE")
    link = await append(db, drafts, next_seq, prev_hash)
    await db.execute("COMMIT")
    return link


async def stored(db: aiosqlite.Connection) -> list[AuditEntry]:
    """Every stored entry, in seq order."""
    return [e async for e in read_all(db)]


def tamper(path: Path, *statements: str, params: Sequence[object] = ()) -> None:
    """Run ``statements`` on the file through a plain sqlite3 connection, as an intruder would."""
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA synchronous=OFF")
        for sql in statements[:-1]:
            db.execute(sql)
        db.execute(statements[-1], params)


DROP_TRIGGERS = (
    "DROP TRIGGER audit_log_no_update",
    "DROP TRIGGER audit_log_no_delete",
    "DROP TRIGGER audit_log_append_only",
)


@pytest.fixture
async def trail(tmp_path: Path) -> Path:
    """A database file with the audit schema and N entries, appended in two transactions."""
    path = tmp_path / "audit.db"
    async with connect(path) as db:
        await db.executescript(AUDIT_SCHEMA)
        await append_committed(db, [draft(i) for i in range(1, 4)])
        await append_committed(db, [draft(i) for i in range(4, N + 1)])
    return path


async def test_last_link_of_an_empty_trail_is_genesis(tmp_path: Path) -> None:
    """An empty audit_log continues from seq 1 and the genesis hash."""
    async with connect(tmp_path / "audit.db") as db:
        await db.executescript(AUDIT_SCHEMA)
        assert await last_link(db) == (1, GENESIS_HASH)
        assert (await verify_stored(db)).ok


async def test_appended_entries_read_back_intact(trail: Path) -> None:
    """Entries appended in two transactions read back as the sealed chain and verify after reopening."""
    async with connect(trail) as db:
        entries = await stored(db)
        assert entries == chain()
        assert await last_link(db) == (N + 1, entries[-1].hash)
        result = await verify_stored(db)
        assert (result.ok, result.checked, result.anchor) == (True, N, Anchor(N, entries[-1].hash))


async def test_append_returns_the_link_for_the_next_batch(tmp_path: Path) -> None:
    """Two appends in one transaction chained by the returned link equal one append of both."""
    async with connect(tmp_path / "audit.db") as db:
        await db.executescript(AUDIT_SCHEMA)
        await db.execute("BEGIN IMMEDIATE")
        link = await append(db, [draft(1), draft(2)], 1, GENESIS_HASH)
        link = await append(db, [], *link)
        link = await append(db, [draft(3)], *link)
        await db.execute("COMMIT")
        assert await stored(db) == chain(3)
        assert link == await last_link(db)


async def test_append_outside_a_transaction_is_refused(tmp_path: Path) -> None:
    """Appending outside the batch's transaction raises StorageError and stores nothing."""
    async with connect(tmp_path / "audit.db") as db:
        await db.executescript(AUDIT_SCHEMA)
        with pytest.raises(StorageError, match="transaction"):
            await append(db, [draft(1)], 1, GENESIS_HASH)
        assert await stored(db) == []


async def test_rolled_back_entries_leave_no_trace(trail: Path) -> None:
    """Entries of a rolled-back transaction are gone and the stored link is unchanged."""
    async with connect(trail) as db:
        before = await last_link(db)
        await db.execute("BEGIN IMMEDIATE")
        await append(db, [draft(7)], *before)
        await db.execute("ROLLBACK")
        assert await last_link(db) == before
        assert (await verify_stored(db)).ok


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE audit_log SET reason = 'tidied up' WHERE seq = 3",
        "DELETE FROM audit_log WHERE seq = 3",
        "DELETE FROM audit_log",
        "INSERT OR REPLACE INTO audit_log SELECT * FROM audit_log WHERE seq = 3",
        "INSERT INTO audit_log SELECT * FROM audit_log WHERE seq = 3 ON CONFLICT DO UPDATE SET reason = 'x'",
        (
            "INSERT INTO audit_log SELECT seq + 10, at_us, actor, action, object_type, object_id, old_value,"
            " new_value, reason, prev_hash, hash FROM audit_log WHERE seq = 3"
        ),
    ],
)
async def test_triggers_refuse_changes_while_present(trail: Path, sql: str) -> None:
    """UPDATE, DELETE, REPLACE, upsert and an INSERT that does not chain on are aborted by the triggers."""
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        tamper(trail, sql)
    async with connect(trail) as db:
        assert await stored(db) == chain()
        assert (await verify_stored(db)).ok


async def test_verify_names_a_stored_entry_updated_after_dropping_triggers(trail: Path) -> None:
    """A reason rewritten in the file with the triggers dropped is reported as changed at its seq."""
    tamper(trail, *DROP_TRIGGERS, "UPDATE audit_log SET reason = 'routine' WHERE seq = 3")
    async with connect(trail) as db:
        result = await verify_stored(db)
    assert (result.ok, result.first_bad_seq, result.kind, result.checked) == (False, 3, "changed", 2)


async def test_verify_names_a_stored_entry_deleted_after_dropping_triggers(trail: Path) -> None:
    """A row deleted from the middle is reported as deleted at its seq."""
    tamper(trail, *DROP_TRIGGERS, "DELETE FROM audit_log WHERE seq = 3")
    async with connect(trail) as db:
        result = await verify_stored(db)
    assert (result.ok, result.first_bad_seq, result.kind) == (False, 3, "deleted")


async def test_verify_names_the_last_stored_entry_deleted(trail: Path) -> None:
    """The newest row deleted is caught by SQLite's high-water seq, and stays caught after new appends."""
    tamper(trail, *DROP_TRIGGERS, f"DELETE FROM audit_log WHERE seq = {N}")
    async with connect(trail) as db:
        assert verify(await stored(db)).ok  # the chain alone cannot tell
        result = await verify_stored(db)
        assert (result.ok, result.first_bad_seq, result.kind, result.checked) == (False, N, "deleted", N - 1)
        # The writer carries on after the highest seq ever issued: the gap stays visible.
        await append_committed(db, [draft(7)])
        result = await verify_stored(db)
    assert (result.ok, result.first_bad_seq, result.kind) == (False, N, "deleted")


async def test_last_entry_deleted_with_its_traces_needs_an_anchor(trail: Path) -> None:
    """Known limit: with sqlite_sequence edited too, only an anchor kept outside the file shows it."""
    async with connect(trail) as db:
        kept = (await verify_stored(db)).anchor
    tamper(
        trail,
        *DROP_TRIGGERS,
        f"DELETE FROM audit_log WHERE seq = {N}",
        f"UPDATE sqlite_sequence SET seq = {N - 1} WHERE name = 'audit_log'",
    )
    async with connect(trail) as db:
        assert (await verify_stored(db)).ok
        result = await verify_stored(db, anchor=kept)
    assert (result.ok, result.first_bad_seq, result.kind) == (False, N, "deleted")


async def test_verify_names_a_forged_row_inserted_after_dropping_triggers(trail: Path) -> None:
    """A forged row slipped in at seq 3 (later rows renumbered), correctly hashed, is named as inserted."""
    async with connect(trail) as db:
        original = await stored(db)
    forged = seal([draft(99, reason="backdated approval")], 3, original[1].hash)[0]
    tamper(
        trail,
        *DROP_TRIGGERS,
        "UPDATE audit_log SET seq = seq + 1000 WHERE seq >= 3",
        "UPDATE audit_log SET seq = seq - 999 WHERE seq >= 1000",
        "INSERT INTO audit_log VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        params=dataclasses.astuple(forged),
    )
    async with connect(trail) as db:
        result = await verify_stored(db)
    assert (result.ok, result.first_bad_seq, result.kind, result.checked) == (False, 3, "inserted", 2)


async def test_verify_names_a_forged_row_appended_with_a_plausible_hash(trail: Path) -> None:
    """A forged row appended at the end (triggers let a well-linked row in) with a made-up hash is named."""
    async with connect(trail) as db:
        original = await stored(db)
    forged = dataclasses.replace(
        seal([draft(99)], N + 1, original[-1].hash)[0], hash=hashlib.sha256(b"plausible").hexdigest()
    )
    tamper(
        trail,
        "INSERT INTO audit_log VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        params=dataclasses.astuple(forged),
    )
    async with connect(trail) as db:
        result = await verify_stored(db)
    assert (result.ok, result.first_bad_seq, result.checked) == (False, N + 1, N)


async def test_verify_names_an_entry_changed_by_editing_the_file_bytes(trail: Path) -> None:
    """A reason changed by editing the database file's bytes (no SQL, no triggers) is reported at its seq."""
    data = trail.read_bytes()
    assert data.count(b"CAPA-0004 tightened") == 1
    trail.write_bytes(data.replace(b"CAPA-0004 tightened", b"CAPA-0004 withdrawn"))
    async with connect(trail) as db:
        assert (await stored(db))[3].reason == "CAPA-0004 withdrawn"
        result = await verify_stored(db)
    assert (result.ok, result.first_bad_seq, result.kind) == (False, 4, "changed")


# --- signatures and anchors (coldwatch.audit_seal): the pure core -------------------


def sealed_trail(
    batches: Sequence[Sequence[AuditDraft]], signers: Sequence[Signer | None]
) -> tuple[list[AuditEntry], list[Seal]]:
    """Entries appended batch by batch, each batch sealed by its signer (None: appended without a key)."""
    entries: list[AuditEntry] = []
    seals: list[Seal] = []
    for drafts, signer in zip(batches, signers, strict=True):
        prev = entries[-1].hash if entries else GENESIS_HASH
        added = seal(drafts, len(entries) + 1, prev)
        entries.extend(added)
        if signer is not None:
            origin = seals[0].from_seq if seals else added[0].seq
            seals.append(signer.seal(origin, added[0].seq, added[-1].seq, added[-1].hash))
    return entries, seals


def new_signer() -> Signer:
    """A signer with a fresh Ed25519 key."""
    return Signer(Ed25519PrivateKey.generate())


def trusting(*signers: Signer) -> dict[str, Ed25519PublicKey]:
    """The public keys of ``signers`` as an inspector holds them."""
    return {s.key_id: s.public_key for s in signers}


def batches(*sizes: int) -> list[list[AuditDraft]]:
    """Consecutive test drafts cut into batches of ``sizes``."""
    out, i = [], 1
    for size in sizes:
        out.append([draft(j) for j in range(i, i + size)])
        i += size
    return out


def test_check_trail_accepts_a_sealed_trail_and_says_what_is_covered() -> None:
    """A trail sealed batch by batch verifies with the public key and reports the signed range."""
    key = new_signer()
    entries, seals = sealed_trail(batches(3, 1, 2), [key, key, key])
    report = check_trail(entries, seals, high_water=6, trusted=trusting(key))
    assert (report.ok, report.signed_from, report.signed_to) == (True, 1, 6), report.describe()
    assert "signed from seq 1 to seq 6" in report.describe()


def test_check_trail_names_entries_appended_at_the_end_without_the_key() -> None:
    """A well-formed entry appended after the last seal is covered by no signature: inserted."""
    key = new_signer()
    entries, seals = sealed_trail(batches(3, 1), [key, None])
    report = check_trail(entries, seals, high_water=4, trusted=trusting(key))
    assert (report.ok, report.kind, report.first_bad_seq) == (False, "inserted", 4)


def test_check_trail_names_entries_slipped_in_between_two_appends() -> None:
    """Entries between two seals' ranges (later sealed over by the collector) are named as inserted."""
    key = new_signer()
    entries, seals = sealed_trail(batches(2, 2, 1), [key, None, key])
    report = check_trail(entries, seals, high_water=5, trusted=trusting(key))
    assert (report.ok, report.kind, report.first_bad_seq) == (False, "inserted", 3)


def test_check_trail_refuses_seals_made_with_an_untrusted_key() -> None:
    """Seals made with a key the inspector does not trust do not vouch for anything."""
    key, forger = new_signer(), new_signer()
    entries, seals = sealed_trail(batches(2, 2), [key, forger])
    report = check_trail(entries, seals, high_water=4, trusted=trusting(key))
    assert (report.ok, report.kind, report.first_bad_seq) == (False, "inserted", 3)


def test_check_trail_names_a_rewritten_chain_by_its_broken_signature() -> None:
    """Recomputing every hash from a changed entry on keeps the chain but breaks the seal over it."""
    key = new_signer()
    entries, seals = sealed_trail(batches(2, 3), [key, key])
    forged = seal([draft(3, reason="nothing to see"), draft(4), draft(5)], 3, entries[1].hash)
    report = check_trail([*entries[:2], *forged], seals, high_water=5, trusted=trusting(key))
    assert (report.ok, report.kind, report.first_bad_seq) == (False, "changed", 3)


def test_check_trail_names_removed_first_seals() -> None:
    """Removing the first seals moves where signing seems to begin, and breaks every later seal."""
    key = new_signer()
    entries, seals = sealed_trail(batches(2, 2), [key, key])
    report = check_trail(entries, seals[1:], high_water=4, trusted=trusting(key))
    assert (report.ok, report.kind) == (False, "changed")


def test_check_trail_follows_a_rotation_and_retires_the_old_key() -> None:
    """A rotation entry sealed by the old key hands over to the new one; the old key may not sign after it."""
    old, new = new_signer(), new_signer()
    rotation = rotation_draft(old, new, T0, "qa.lead", "yearly rotation")
    entries, seals = sealed_trail([[draft(1)], [rotation], [draft(3)]], [old, old, new])
    report = check_trail(entries, seals, high_water=3, trusted=trusting(old))
    assert report.ok, report.describe()
    assert any("rotated" in note for note in report.notes)
    entries, seals = sealed_trail([[draft(1)], [rotation], [draft(3)]], [old, old, old])
    report = check_trail(entries, seals, high_water=3, trusted=trusting(old, new))
    assert (report.ok, report.kind, report.first_bad_seq) == (False, "inserted", 3)
    assert "retired" in str(report.problem)


def test_check_trail_accepts_a_replacement_key_only_when_it_is_trusted() -> None:
    """After a lost key, the new key's seals verify only if the inspector gives that key, and it is noted."""
    old, new = new_signer(), new_signer()
    entries, seals = sealed_trail(batches(2, 2), [old, new])
    assert not check_trail(entries, seals, high_water=4, trusted=trusting(old)).ok
    report = check_trail(entries, seals, high_water=4, trusted=trusting(old, new))
    assert report.ok, report.describe()
    assert any("without a rotation entry" in note for note in report.notes)


def test_check_trail_without_a_key_or_a_seal_does_not_call_the_trail_intact() -> None:
    """No public key, or no seal at all, is never reported as intact."""
    key = new_signer()
    entries, seals = sealed_trail(batches(2), [key])
    assert check_trail(entries, seals, high_water=2, trusted={}).kind == "unsigned"
    assert check_trail(entries, [], high_water=2, trusted=trusting(key)).kind == "unsigned"


def test_check_trail_reports_unsigned_entries_as_before_signing_began() -> None:
    """Entries written before the first seal are held by the chain and reported as before signing began."""
    key = new_signer()
    entries, seals = sealed_trail(batches(3, 2), [None, key])
    report = check_trail(entries, seals, high_water=5, trusted=trusting(key))
    assert (report.ok, report.signed_from) == (True, 4)
    assert "seqs 1 to 3 were written before signing began" in report.describe()


def test_check_trail_names_a_cut_end_from_a_signed_anchor() -> None:
    """An anchor beyond the trail's end shows the last entries deleted, whatever the database says."""
    key = new_signer()
    entries, seals = sealed_trail(batches(2, 1), [key, key])
    anchor = key.anchor(1, 3, entries[2].hash, T0)
    report = check_trail(entries[:2], seals[:1], high_water=2, trusted=trusting(key), anchors=[anchor])
    assert (report.ok, report.kind, report.first_bad_seq) == (False, "deleted", 3)


def test_check_trail_names_a_rewrite_before_an_anchor_and_an_edited_anchor() -> None:
    """An anchor whose hash differs from the trail's, or whose signature fails, is reported."""
    key = new_signer()
    entries, seals = sealed_trail(batches(2, 1), [key, key])
    good = key.anchor(1, 2, entries[1].hash, T0)
    assert check_trail(entries, seals, high_water=3, trusted=trusting(key), anchors=[good]).anchors == 1
    other = key.anchor(1, 2, "f" * 64, T0)
    report = check_trail(entries, seals, high_water=3, trusted=trusting(key), anchors=[other])
    assert (report.kind, report.first_bad_seq) == ("changed", 2)
    edited = dataclasses.replace(good, at_us=T0 + 1)
    report = check_trail(entries, seals, high_water=3, trusted=trusting(key), anchors=[edited])
    assert "anchor file was edited" in str(report.problem)


def test_anchor_lines_round_trip_and_the_signer_never_shows_its_key() -> None:
    """An anchor line reads back identical; a signer's repr names its key id only."""
    key = new_signer()
    record = key.anchor(1, 7, "a" * 64, T0)
    assert parse_anchor_line(anchor_line(record)) == record
    assert repr(key) == f"Signer({key.key_id})"
    with pytest.raises(AuditKeyError):
        parse_anchor_line('{"seq": "7"}')


# --- append-only guards on SQLite -----------------------------------------------------


async def test_guards_altered_are_reported_and_restored(tmp_path: Path) -> None:
    """A guard replaced by a do-nothing trigger is reported, and restoring puts the refusing one back."""
    storage = SqliteStorage(tmp_path / "c.db")
    await storage.open()
    try:
        await storage.record_audit([draft(1), draft(2)])
        tamper(
            tmp_path / "c.db",
            "DROP TRIGGER audit_log_no_delete",
            "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log BEGIN SELECT 1; END",
            "DROP TRIGGER audit_seals_no_update",
        )
        found = (await storage.audit_evidence()).guard_problems
        assert found == ["audit_log_no_delete altered", "audit_seals_no_update missing"]
        assert await storage.restore_audit_guards() == ["audit_log_no_delete", "audit_seals_no_update"]
        assert (await storage.audit_evidence()).guard_problems == []
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            tamper(tmp_path / "c.db", "DELETE FROM audit_log WHERE seq = 1")
    finally:
        await storage.close()


def test_a_signing_key_from_the_environment_is_used_and_never_shown(tmp_path: Path) -> None:
    """COLDWATCH_AUDIT__SIGNING_KEY (PEM or base64 seed) signs; the configuration never shows it."""
    key = Ed25519PrivateKey.generate()
    seed = base64.b64encode(
        key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
    ).decode()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    for text in (seed, pem):
        config = parse_config(
            f"storage: {{path: {tmp_path / 'c.db'}}}\n", environ={"COLDWATCH_AUDIT__SIGNING_KEY": text}
        )
        signer = load_signer(config)
        assert signer.key_id == key_id(key.public_key())
        shown = repr(config) + str(config.model_dump()) + config.model_dump_json() + repr(signer)
        assert seed not in shown
        assert pem.splitlines()[1] not in shown
    assert not (tmp_path / "c.db.audit-key").exists(), "no key file is made when the key is configured"


def test_check_trail_verified_with_only_the_rotated_in_key_says_to_give_the_first_key() -> None:
    """A trail checked with only the key rotated in later says to give its first key, not only "forged"."""
    old, new = new_signer(), new_signer()
    rotation = rotation_draft(old, new, T0, "qa.lead", "yearly rotation")
    entries, seals = sealed_trail([[draft(1)], [rotation], [draft(3)]], [old, old, new])
    report = check_trail(entries, seals, high_water=3, trusted=trusting(new))
    assert (report.ok, report.first_bad_seq) == (False, 1)
    assert "give that public key with --public-key" in str(report.problem)
    entries, seals = sealed_trail([[draft(1)], [rotation], [draft(3)]], [old, old, new_signer()])
    forged = check_trail(entries, seals, high_water=3, trusted=trusting(old))
    assert (forged.ok, forged.first_bad_seq) == (False, 3)
    assert "give that public key" not in str(forged.problem), forged.describe()


def test_a_failed_check_says_that_the_anchors_were_not_all_checked() -> None:
    """A count of 0 anchors after a failure is not read as "no anchors": the report says checking stopped."""
    key = new_signer()
    entries, seals = sealed_trail(batches(2, 1), [key, None])
    anchor = key.anchor(1, 2, entries[1].hash, T0)
    failed = check_trail(entries, seals, high_water=3, trusted=trusting(key), anchors=[anchor])
    assert not failed.ok
    assert "anchors checked: 0 (checking stops at the first problem)" in failed.describe()
    intact = check_trail(entries[:2], seals, high_water=2, trusted=trusting(key), anchors=[anchor])
    assert intact.ok, intact.describe()
    assert "anchors checked: 1\n" in intact.describe() + "\n"
