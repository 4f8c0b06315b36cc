"""The audit trail's pure core: hash-chained entries, their verification and export.

21 CFR Part 11 and EU GMP Annex 11 ask for secure, computer-generated, time-stamped
entries recording who did what, when, the old and new value and why, that never
overwrite earlier ones. Each entry here carries the hash of the entry before it, so an
entry that is changed, removed or slipped in afterwards breaks the chain and
:func:`verify` names the first place where it breaks.

What a chain alone cannot show: anyone who can write the database and read this module
can recompute every hash from some entry onwards, cut entries off the end or append
well-formed ones. :func:`verify` therefore reports the number of entries and the last
seq and hash (the "anchor"); print or export the anchor regularly, keep it outside the
database, and pass it back as ``anchor`` to prove nothing up to it was rewritten or cut.
The collector also signs the chain and anchors it outside the database by itself
(:mod:`coldwatch.audit_seal`), which closes these gaps for anyone without the signing key.

No I/O and no clock: callers pass the time in ``at_us`` (UTC microseconds since epoch).
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, NamedTuple, TextIO, TypeAlias

from coldwatch.errors import ColdwatchError

__all__ = [
    "CSV_HEADER",
    "FIRST_SEQ",
    "GENESIS_HASH",
    "GENESIS_LINK",
    "Anchor",
    "AuditDraft",
    "AuditEntry",
    "AuditFormatError",
    "TamperKind",
    "VerifyResult",
    "check_end",
    "entry_hash",
    "format_at",
    "from_json",
    "seal",
    "to_csv",
    "to_json",
    "verify",
]

GENESIS_HASH: Final = "0" * 64
FIRST_SEQ: Final = 1
CSV_HEADER: Final = (
    "seq",
    "at_utc",
    "actor",
    "action",
    "object_type",
    "object_id",
    "old_value",
    "new_value",
    "reason",
    "prev_hash",
    "hash",
)
JSON_FORMAT: Final = "coldwatch-audit-trail"
JSON_VERSION: Final = 1

TamperKind: TypeAlias = Literal["changed", "deleted", "inserted"]

_HEX64 = re.compile(r"[0-9a-f]{64}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_REQUIRED_TEXT = ("actor", "action", "object_type", "object_id", "reason")


class AuditFormatError(ColdwatchError, ValueError):
    """A JSON export that is not a well-formed coldwatch audit trail."""


class _Finding(NamedTuple):
    """The first problem in a chain: where, what it looks like, and why."""

    seq: int
    kind: TamperKind
    problem: str


@dataclass(frozen=True, slots=True)
class AuditDraft:
    """One action to record, before it gets its place in the chain."""

    at_us: int
    actor: str
    action: str
    object_type: str
    object_id: str
    old_value: str | None
    new_value: str | None
    reason: str

    def __post_init__(self) -> None:
        if type(self.at_us) is not int:
            raise TypeError(f"audit at_us must be an int (UTC microseconds), got {self.at_us!r}")
        for name in _REQUIRED_TEXT:
            value = getattr(self, name)
            # Attributable and, under Annex 11, a reason for every change: none may be blank.
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"audit {name} must be a non-blank string, got {value!r}")
        for name in (*_REQUIRED_TEXT, "old_value", "new_value"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"audit {name} must be a string or None, got {value!r}")
            if isinstance(value, str):
                # Refuse now what the hash (UTF-8) or SQLite could not store later.
                try:
                    value.encode()
                except UnicodeEncodeError as exc:
                    raise ValueError(f"audit {name} is not valid Unicode text: {exc}") from exc


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """A sealed entry: its place in the chain, the recorded action, and the chain hashes.

    Not validated on construction: entries read back from storage must reach
    :func:`verify` exactly as stored, however they were tampered with.
    """

    seq: int
    at_us: int
    actor: str
    action: str
    object_type: str
    object_id: str
    old_value: str | None
    new_value: str | None
    reason: str
    prev_hash: str
    hash: str

    def computed_hash(self) -> str:
        """The hash this entry's content and ``prev_hash`` call for."""
        return entry_hash(
            self.seq,
            at_us=self.at_us,
            actor=self.actor,
            action=self.action,
            object_type=self.object_type,
            object_id=self.object_id,
            old_value=self.old_value,
            new_value=self.new_value,
            reason=self.reason,
            prev_hash=self.prev_hash,
        )


@dataclass(frozen=True, slots=True)
class Anchor:
    """An entry's seq and hash, recorded outside the database to check the chain against later."""

    seq: int
    hash: str


GENESIS_LINK: Final = Anchor(FIRST_SEQ - 1, GENESIS_HASH)


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The outcome of :func:`verify`.

    ``checked`` entries verified in order; ``last_seq`` and ``last_hash`` belong to the
    last of them (the anchor to print and keep). On failure ``first_bad_seq`` is the
    first seq found changed, deleted or inserted, ``kind`` says which it looks like and
    ``problem`` says why in one sentence.
    """

    ok: bool
    checked: int
    first_bad_seq: int | None
    problem: str | None
    kind: TamperKind | None = None
    last_seq: int = FIRST_SEQ - 1
    last_hash: str = GENESIS_HASH

    @property
    def anchor(self) -> Anchor:
        """The last verified entry's seq and hash."""
        return Anchor(self.last_seq, self.last_hash)

    def describe(self) -> str:
        """One line for a person: intact with its anchor, or the first problem."""
        if self.ok:
            return (
                f"audit trail intact: {self.checked} entries, last seq {self.last_seq}, hash {self.last_hash}"
            )
        return f"audit trail TAMPERED ({self.kind}) at seq {self.first_bad_seq}: {self.problem}"


def entry_hash(
    seq: int,
    *,
    at_us: int,
    actor: str,
    action: str,
    object_type: str,
    object_id: str,
    old_value: str | None,
    new_value: str | None,
    reason: str,
    prev_hash: str,
) -> str:
    """SHA-256 (hex) of the canonical JSON encoding of an entry's seq, content and ``prev_hash``.

    Canonical: JSON with sorted keys, separators ``(",", ":")``, ``ensure_ascii=False``,
    encoded as UTF-8. Changing this breaks every stored chain: never change it in place.
    """
    canonical = json.dumps(
        {
            "seq": seq,
            "at_us": at_us,
            "actor": actor,
            "action": action,
            "object_type": object_type,
            "object_id": object_id,
            "old_value": old_value,
            "new_value": new_value,
            "reason": reason,
            "prev_hash": prev_hash,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def seal(drafts: Iterable[AuditDraft], first_seq: int, prev_hash: str) -> list[AuditEntry]:
    """Number ``drafts`` from ``first_seq`` on and chain them to ``prev_hash``."""
    if first_seq < FIRST_SEQ:
        raise ValueError(f"audit seq starts at {FIRST_SEQ}, got {first_seq}")
    if not _HEX64.fullmatch(prev_hash):
        raise ValueError(f"prev_hash must be 64 lowercase hex digits, got {prev_hash!r}")
    entries: list[AuditEntry] = []
    for seq, draft in enumerate(drafts, start=first_seq):
        fields = asdict(draft)
        digest = entry_hash(seq, prev_hash=prev_hash, **fields)
        entries.append(AuditEntry(seq=seq, prev_hash=prev_hash, hash=digest, **fields))
        prev_hash = digest
    return entries


def verify(
    entries: Iterable[AuditEntry],
    *,
    start: Anchor | None = None,
    anchor: Anchor | None = None,
) -> VerifyResult:
    """Walk the chain in seq order and report the first entry changed, deleted or inserted.

    ``start`` is the link the first entry continues: genesis (the default) for a whole
    trail, the entry before it for a partial export. ``anchor``, if given, is a seq and
    hash kept outside the database: it must still be in the chain, which catches what a
    chain alone cannot (the last entries cut off, or everything rewritten).
    """
    begin = GENESIS_LINK if start is None else start
    chain = sorted(entries, key=lambda e: e.seq)
    # Every verified hash and its seq: a broken link that points back to one of them
    # means the entries after that one were slipped in.
    known = {begin.hash: begin.seq}
    prev = begin
    for i, entry in enumerate(chain):
        following = chain[i + 1] if i + 1 < len(chain) else None
        finding = _check(entry, prev, following, known, first=i == 0)
        if finding is not None:
            seq, kind, problem = finding
            # Entries verified so far, less any now known to be suspect (an insertion
            # or a rewrite is found only at the entry after it).
            good = max(0, min(i, seq - begin.seq - 1))
            last = Anchor(chain[good - 1].seq, chain[good - 1].hash) if good else begin
            return VerifyResult(False, good, seq, problem, kind, last.seq, last.hash)
        known[entry.hash] = entry.seq
        prev = Anchor(entry.seq, entry.hash)
    result = VerifyResult(True, len(chain), None, None, None, prev.seq, prev.hash)
    if anchor is not None:
        return _check_anchor(result, anchor, known)
    return result


def _check(
    entry: AuditEntry,
    prev: Anchor,
    following: AuditEntry | None,
    known: dict[str, int],
    *,
    first: bool,
) -> _Finding | None:
    """Why ``entry`` cannot follow ``prev``, or None if it can."""
    expected = prev.seq + 1
    if entry.seq < expected:
        return _Finding(
            entry.seq, "inserted", f"seq {entry.seq} appears more than once or before the start of the chain"
        )
    if entry.seq > expected:
        missing = (
            f"seq {expected} is" if entry.seq == expected + 1 else f"seqs {expected} to {entry.seq - 1} are"
        )
        return _Finding(expected, "deleted", f"{missing} missing: seq {entry.seq} follows seq {prev.seq}")
    if entry.prev_hash == prev.hash and entry.computed_hash() == entry.hash:
        return None
    return _diagnose(entry, prev, following, known, first=first)


def _diagnose(
    entry: AuditEntry,
    prev: Anchor,
    following: AuditEntry | None,
    known: dict[str, int],
    *,
    first: bool,
) -> _Finding:
    """What a hash mismatch at ``entry`` (in its expected seq) looks like."""
    if following is not None and following.prev_hash == prev.hash:
        # The next entry names this one's predecessor as its own: this one was slipped in.
        return _Finding(
            entry.seq,
            "inserted",
            f"seq {following.seq} chains to seq {prev.seq}, so seq {entry.seq} between them was inserted",
        )
    linked = entry.prev_hash == prev.hash
    # With its link broken, an entry the rest of the chain still hangs on is genuine (the
    # break lies before it); one that the next entry does not chain to was itself rewritten.
    hung_on = following is None or following.prev_hash == entry.hash
    if linked or not hung_on:
        problem = (
            "its stored hash does not match its content"
            if linked
            else f"it chains neither to seq {prev.seq} nor on to seq {entry.seq + 1}"
        )
        return _Finding(
            entry.seq, "changed", f"seq {entry.seq} was changed after it was written (or forged): {problem}"
        )
    if entry.prev_hash in known:
        origin = known[entry.prev_hash]
        return _Finding(
            origin + 1,
            "inserted",
            f"seq {entry.seq} chains to seq {origin}, so the entries from seq {origin + 1} on were inserted",
        )
    if entry.computed_hash() != entry.hash:
        return _Finding(
            entry.seq,
            "deleted",
            f"seq {entry.seq} chains to an entry no longer present and does not match its own hash:"
            " an entry was deleted here and the later ones renumbered",
        )
    if first:
        return _Finding(entry.seq, "changed", f"seq {entry.seq} does not chain to the start of the trail")
    return _Finding(
        prev.seq,
        "changed",
        f"seq {entry.seq} chains to a different version of seq {prev.seq}: seq {prev.seq} was changed"
        " and its hash recomputed",
    )


def _check_anchor(result: VerifyResult, anchor: Anchor, known: dict[str, int]) -> VerifyResult:
    """``result`` (an intact chain) checked against an anchor kept outside the database."""
    if known.get(anchor.hash) == anchor.seq:
        return result
    if anchor.seq > result.last_seq:
        first = result.last_seq + 1
        return VerifyResult(
            False,
            result.checked,
            first,
            f"the trail ends at seq {result.last_seq} but the anchor records seq {anchor.seq}: "
            f"entries from seq {first} on were deleted",
            "deleted",
            result.last_seq,
            result.last_hash,
        )
    return VerifyResult(
        False,
        result.checked,
        anchor.seq,
        f"seq {anchor.seq}'s hash differs from the anchor: the chain was rewritten at or before"
        f" seq {anchor.seq}",
        "changed",
        result.last_seq,
        result.last_hash,
    )


def check_end(result: VerifyResult, high_water: int) -> VerifyResult:
    """``result`` of an intact chain, failed as "deleted" if seqs up to ``high_water`` were issued.

    ``high_water`` is the highest seq the database remembers issuing: entries cut off
    the end of the trail leave the chain intact but fall short of it.
    """
    if not result.ok or high_water <= result.last_seq:
        return result
    first = result.last_seq + 1
    return VerifyResult(
        ok=False,
        checked=result.checked,
        first_bad_seq=first,
        problem=f"seq {high_water} was issued but the trail ends at seq {result.last_seq}: "
        f"the entries from seq {first} on were deleted",
        kind="deleted",
        last_seq=result.last_seq,
        last_hash=result.last_hash,
    )


def format_at(at_us: int) -> str:
    """RFC 3339 UTC with microseconds, exact for every integer ``at_us``."""
    return (_EPOCH + timedelta(microseconds=at_us)).isoformat(timespec="microseconds")


def to_csv(entries: Iterable[AuditEntry], out: TextIO) -> int:
    """Write entries as CSV (for people; None and "" both show as an empty cell); return the row count."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    rows = 0
    for e in entries:
        writer.writerow(
            (
                e.seq,
                format_at(e.at_us),
                e.actor,
                e.action,
                e.object_type,
                e.object_id,
                "" if e.old_value is None else e.old_value,
                "" if e.new_value is None else e.new_value,
                e.reason,
                e.prev_hash,
                e.hash,
            )
        )
        rows += 1
    return rows


def to_json(entries: Iterable[AuditEntry]) -> str:
    """A JSON document of the entries, exact enough to verify again with :func:`from_json`."""
    items = list(entries)
    doc = {
        "format": JSON_FORMAT,
        "version": JSON_VERSION,
        "hash": "sha256 of JSON (sorted keys, separators ',' ':', UTF-8) of seq, at_us, actor, action, "
        "object_type, object_id, old_value, new_value, reason, prev_hash",
        "count": len(items),
        "last_seq": items[-1].seq if items else None,
        "last_hash": items[-1].hash if items else None,
        "entries": [{**asdict(e), "at_utc": format_at(e.at_us)} for e in items],
    }
    return json.dumps(doc, ensure_ascii=False, indent=2)


def from_json(text: str) -> list[AuditEntry]:
    """The entries of a :func:`to_json` document, type-checked but not verified."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise AuditFormatError(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != JSON_FORMAT or doc.get("version") != JSON_VERSION:
        raise AuditFormatError(f"not a {JSON_FORMAT} version {JSON_VERSION} document")
    raw = doc.get("entries")
    if not isinstance(raw, list):
        raise AuditFormatError("'entries' must be a list")
    return [_entry_from_json(i, item) for i, item in enumerate(raw)]


_INT_FIELDS: Final[Sequence[str]] = ("seq", "at_us")
_STR_FIELDS: Final[Sequence[str]] = (
    "actor",
    "action",
    "object_type",
    "object_id",
    "reason",
    "prev_hash",
    "hash",
)


def _entry_from_json(index: int, item: object) -> AuditEntry:
    if not isinstance(item, dict):
        raise AuditFormatError(f"entries[{index}] is not an object")
    for name in _INT_FIELDS:
        if type(item.get(name)) is not int:
            raise AuditFormatError(f"entries[{index}].{name} must be an integer")
    for name in _STR_FIELDS:
        if not isinstance(item.get(name), str):
            raise AuditFormatError(f"entries[{index}].{name} must be a string")
    for name in ("old_value", "new_value"):
        if item.get(name) is not None and not isinstance(item[name], str):
            raise AuditFormatError(f"entries[{index}].{name} must be a string or null")
    return AuditEntry(
        seq=item["seq"],
        at_us=item["at_us"],
        actor=item["actor"],
        action=item["action"],
        object_type=item["object_type"],
        object_id=item["object_id"],
        old_value=item.get("old_value"),
        new_value=item.get("new_value"),
        reason=item["reason"],
        prev_hash=item["prev_hash"],
        hash=item["hash"],
    )
