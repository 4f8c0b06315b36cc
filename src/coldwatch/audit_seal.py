"""Signatures over the audit chain and anchors of it: the pure core (no I/O, no clock).

A hash chain alone proves nothing against someone who can write the database: they can
recompute every hash. Here the collector signs, with an Ed25519 key kept outside the
database, the chain head of every append (one signature per transaction, not per entry):
a *seal* says "I appended seqs ``from_seq`` to ``seq``, and the chain then ended in
``hash``". As each hash covers everything before it, a seal vouches for every entry up to
its ``seq``; as each seal names where its appends began, entries slipped in between two
appends are covered by no seal and show. Anyone holding the public key checks the seals;
nobody without the private key can make one.

Every seal's message also names the seq at which signing began (``origin``, the first
seal's ``from_seq``): removing the first seals changes it and breaks every later one.

An *anchor* is a signed chain head written outside the database (a file the collector
appends to at intervals and at shutdown): entries cut off the end, or a whole trail
replaced, disagree with it.

Keys: the trail's first seal names the first key; a ``audit.key_rotated`` entry, sealed
by the current key, names the next one (its public key in ``new_value``) and retires the
current one. A key that the inspector trusts (gives to :func:`check_trail`) may also take
over without a rotation entry (a lost key): that change is reported.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from coldwatch.audit import Anchor, AuditEntry, VerifyResult, check_end, verify
from coldwatch.errors import ColdwatchError

__all__ = [
    "GUARDS_RESTORED",
    "KEY_REPLACED",
    "KEY_ROTATED",
    "AnchorRecord",
    "AuditEvidence",
    "AuditHead",
    "AuditKeyError",
    "Seal",
    "Signer",
    "TrailReport",
    "anchor_line",
    "check_trail",
    "key_id",
    "parse_anchor_line",
    "public_key_from_text",
    "public_key_text",
]

KEY_ROTATED: Final = "audit.key_rotated"
KEY_REPLACED: Final = "audit.key_replaced"
GUARDS_RESTORED: Final = "audit.guards_restored"
_SEAL_PREFIX: Final = "coldwatch-audit-seal/v1"
_ANCHOR_PREFIX: Final = "coldwatch-audit-anchor/v1"


class AuditKeyError(ColdwatchError, ValueError):
    """A key or an anchor line that cannot be read."""


def key_id(public: Ed25519PublicKey) -> str:
    """A short, stable name of a public key: the first 16 hex digits of SHA-256 of its raw bytes."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


def public_key_text(public: Ed25519PublicKey) -> str:
    """The public key as stored in a rotation entry: ``ed25519:`` and base64 of its 32 raw bytes."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + base64.b64encode(raw).decode()


def public_key_from_text(text: str) -> Ed25519PublicKey:
    """The key of :func:`public_key_text`, or of a PEM ``PUBLIC KEY`` block."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
            if not isinstance(key, Ed25519PublicKey):
                raise AuditKeyError("not an Ed25519 public key")
            return key
        if text.startswith("ed25519:"):
            return Ed25519PublicKey.from_public_bytes(base64.b64decode(text[8:], validate=True))
    except (ValueError, binascii.Error) as exc:
        raise AuditKeyError(f"not an Ed25519 public key: {exc}") from exc
    raise AuditKeyError("not an Ed25519 public key (expected PEM or 'ed25519:<base64>')")


def _seal_message(origin: int, from_seq: int, seq: int, digest: str) -> bytes:
    return f"{_SEAL_PREFIX}:{origin}:{from_seq}:{seq}:{digest}".encode()


def _anchor_message(origin: int, seq: int, digest: str, at_us: int) -> bytes:
    return f"{_ANCHOR_PREFIX}:{origin}:{seq}:{digest}:{at_us}".encode()


@dataclass(frozen=True, slots=True)
class Seal:
    """A signature over the chain head after one append: it covers seqs ``from_seq`` to ``seq``."""

    seq: int
    from_seq: int
    key_id: str
    signature: str  # hex


@dataclass(frozen=True, slots=True)
class AnchorRecord:
    """A signed chain head kept outside the database (one line of the anchor file)."""

    seq: int
    hash: str
    origin: int
    at_us: int
    key_id: str
    signature: str  # hex


@dataclass(frozen=True, slots=True)
class AuditHead:
    """The last signed entry as the database has it: what the collector anchors and signs on from."""

    seq: int
    hash: str
    origin: int
    key_id: str
    rotated_to: str | None  # the public key named by the last rotation entry (when asked for)


@dataclass(frozen=True, slots=True)
class AuditEvidence:
    """Everything a verification reads from the database, taken in one snapshot."""

    entries: list[AuditEntry]
    seals: list[Seal]
    high_water: int
    guard_problems: list[str]  # append-only guards missing, disabled or altered


class Signer:
    """Signs seals and anchors with a private key; never shows the key (not even in ``repr``)."""

    __slots__ = ("_key", "key_id", "public_key")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)

    def __repr__(self) -> str:
        return f"Signer({self.key_id})"

    def seal(self, origin: int, from_seq: int, seq: int, digest: str) -> Seal:
        """The seal of an append of seqs ``from_seq``..``seq`` ending in ``digest``."""
        signature = self._key.sign(_seal_message(origin, from_seq, seq, digest))
        return Seal(seq, from_seq, self.key_id, signature.hex())

    def anchor(self, origin: int, seq: int, digest: str, at_us: int) -> AnchorRecord:
        """A signed anchor of the chain head ``seq``/``digest`` at ``at_us``."""
        signature = self._key.sign(_anchor_message(origin, seq, digest, at_us))
        return AnchorRecord(seq, digest, origin, at_us, self.key_id, signature.hex())


def anchor_line(record: AnchorRecord) -> str:
    """One JSON line (no newline) for the anchor file."""
    return json.dumps(
        {
            "seq": record.seq,
            "hash": record.hash,
            "origin": record.origin,
            "at_us": record.at_us,
            "key_id": record.key_id,
            "signature": record.signature,
        },
        sort_keys=True,
        separators=(",", ":"),
    )


def parse_anchor_line(text: str) -> AnchorRecord:
    """The record of one anchor-file line."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise AuditKeyError(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise AuditKeyError("not a JSON object")
    ints = ("seq", "origin", "at_us")
    strs = ("hash", "key_id", "signature")
    if any(type(doc.get(k)) is not int for k in ints) or any(not isinstance(doc.get(k), str) for k in strs):
        raise AuditKeyError(f"needs integers {', '.join(ints)} and strings {', '.join(strs)}")
    return AnchorRecord(doc["seq"], doc["hash"], doc["origin"], doc["at_us"], doc["key_id"], doc["signature"])


def _valid(public: Ed25519PublicKey, signature: str, message: bytes) -> bool:
    try:
        public.verify(bytes.fromhex(signature), message)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class TrailReport:
    """What :func:`check_trail` found: the first problem (if any) and what the trail proves."""

    ok: bool
    chain: VerifyResult
    first_bad_seq: int | None = None
    kind: str | None = None  # changed, deleted, inserted, unsigned, guards
    problem: str | None = None
    signed_from: int | None = None  # the first seq appended under a signature
    signed_to: int | None = None  # the last seq covered by a valid signature
    anchors: int = 0  # anchors checked
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        """Lines for a person: the verdict, then what the trail proves and what was noticed."""
        c = self.chain
        if self.ok:
            head = f"audit trail intact: {c.checked} entries, last seq {c.last_seq}, hash {c.last_hash}"
        else:
            where = f" at seq {self.first_bad_seq}" if self.first_bad_seq is not None else ""
            head = f"audit trail TAMPERED ({self.kind}){where}: {self.problem}"
        lines = [head]
        if self.signed_from is not None:
            lines.append(
                f"signed from seq {self.signed_from}"
                + (f" to seq {self.signed_to}" if self.signed_to is not None else "")
                + (
                    f"; seqs 1 to {self.signed_from - 1} were written before signing began"
                    " (held by the chain and the first signature)"
                    if self.signed_from > 1
                    else ""
                )
            )
        lines.append(
            f"anchors checked: {self.anchors}" + ("" if self.ok else " (checking stops at the first problem)")
        )
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


@dataclass
class _Walk:
    """The state of the walk over the seals: which key is current, which are retired."""

    trusted: Mapping[str, Ed25519PublicKey]
    known: dict[str, Ed25519PublicKey] = field(default_factory=dict)
    current: str | None = None
    retired: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)

    def key_for(self, seal: Seal) -> Ed25519PublicKey | str:
        """The key to check ``seal`` with, or why it cannot be trusted."""
        kid = seal.key_id
        if kid == self.current:
            return self.known[kid]
        if kid in self.retired:
            return f"it is signed by {kid}, a key retired before seq {seal.from_seq}"
        if kid in self.trusted:
            if self.current is not None:
                self.notes.append(
                    f"the signing key changed to {kid} at seq {seal.from_seq} without a rotation entry"
                    f" signed by {self.current} (accepted: {kid} was given as trusted)"
                )
                self.retired.add(self.current)
            self.current = kid
            self.known[kid] = self.trusted[kid]
            return self.known[kid]
        hint = (
            " (a trail whose key was since rotated or replaced verifies from its first key:"
            " give that public key with --public-key)"
            if self.current is None
            else ""
        )
        return f"it is signed by {kid}, a key neither given as trusted nor named by a rotation entry{hint}"


def check_trail(  # noqa: C901, PLR0911, PLR0912 - one walk, each branch one finding
    entries: Sequence[AuditEntry],
    seals: Iterable[Seal],
    *,
    high_water: int,
    trusted: Mapping[str, Ed25519PublicKey],
    anchors: Sequence[AnchorRecord] = (),
    anchor: Anchor | None = None,
) -> TrailReport:
    """Verify the chain, the seals against the ``trusted`` public keys (by key id), and the anchors.

    Nothing at the end goes unchecked: entries after the last seal were appended without
    the key; a seal or an anchor past the last entry shows entries cut off; ``high_water``
    (the highest seq the database remembers issuing) too. ``anchor`` (a seq and hash an
    inspector kept) is checked in addition, never instead.
    """
    chain = check_end(verify(entries, anchor=anchor), high_water)
    if not chain.ok:
        return TrailReport(False, chain, chain.first_bad_seq, chain.kind, chain.problem)
    by_seq = {e.seq: e for e in entries}
    last = chain.last_seq
    ordered = sorted(seals, key=lambda s: s.seq)
    if not trusted:
        return TrailReport(
            False, chain, None, "unsigned", "no public key given: the signatures were not checked"
        )
    cut = _cut_off(entries, trusted, anchors, last)
    if cut is not None:
        return TrailReport(False, chain, last + 1, "deleted", cut)
    if not ordered:
        return TrailReport(
            False,
            chain,
            1 if last else None,
            "unsigned",
            "no entry is signed (a trail never written by a signing collector, or its signatures removed)",
        )
    origin = ordered[0].from_seq
    walk = _Walk(trusted)
    expected = origin
    for s in ordered:
        if s.from_seq != expected or s.seq < s.from_seq:
            kind = "inserted" if s.from_seq > expected else "changed"
            problem = (
                f"seqs {expected} to {s.from_seq - 1} are covered by no signature: appended without the key"
                if s.from_seq > expected
                else f"the signature at seq {s.seq} claims seqs from {s.from_seq}, overlapping an earlier one"
            )
            return _failed(chain, walk, origin, expected - 1, expected, kind, problem)
        if s.seq > last:
            return _failed(
                chain,
                walk,
                origin,
                expected - 1,
                last + 1,
                "deleted",
                f"a signature covers up to seq {s.seq} but the trail ends at seq {last}:"
                " entries were deleted",
            )
        key = walk.key_for(s)
        if isinstance(key, str):
            problem = f"seqs {s.from_seq} to {s.seq}: {key}"
            return _failed(chain, walk, origin, expected - 1, s.from_seq, "inserted", problem)
        if not _valid(key, s.signature, _seal_message(origin, s.from_seq, s.seq, by_seq[s.seq].hash)):
            return _failed(
                chain,
                walk,
                origin,
                expected - 1,
                s.from_seq,
                "changed",
                f"the signature over seqs {s.from_seq} to {s.seq} does not match: the trail up to seq {s.seq}"
                " is not the one signed (entries changed and the chain recomputed, or signatures removed)",
            )
        for seq in range(s.from_seq, s.seq + 1):
            entry = by_seq[seq]
            if entry.action == KEY_ROTATED and entry.new_value is not None:
                try:
                    new_key = public_key_from_text(entry.new_value)
                except AuditKeyError:
                    walk.notes.append(f"seq {seq}: rotation entry without a readable public key (ignored)")
                    continue
                new_id = key_id(new_key)
                walk.notes.append(f"seq {seq}: signing key rotated from {walk.current} to {new_id}")
                if walk.current is not None:
                    walk.retired.add(walk.current)
                walk.known[new_id] = new_key
                walk.current = new_id
            elif entry.action == KEY_REPLACED:
                walk.notes.append(f"seq {seq}: signing key replaced without the old key ({entry.reason})")
            elif entry.action == GUARDS_RESTORED:
                walk.notes.append(
                    f"seq {seq}: append-only guards were found missing or altered and restored:"
                    f" {entry.new_value}"
                )
        expected = s.seq + 1
    if expected <= last:
        return _failed(
            chain,
            walk,
            origin,
            expected - 1,
            expected,
            "inserted",
            f"seqs {expected} to {last} are covered by no signature: appended without the key",
        )
    checked = 0
    for record in anchors:
        found = _anchor_problem(record, walk, by_seq, origin, last)
        if found is not None:
            seq, kind, text = found
            return _failed(chain, walk, origin, last, seq, kind, text, anchors=checked)
        checked += 1
    notes = tuple(walk.notes)
    return TrailReport(True, chain, signed_from=origin, signed_to=last, anchors=checked, notes=notes)


def _cut_off(
    entries: Sequence[AuditEntry],
    trusted: Mapping[str, Ed25519PublicKey],
    anchors: Sequence[AnchorRecord],
    last: int,
) -> str | None:
    """Why the trail's end was cut off, if a validly signed anchor lies beyond it."""
    keys = dict(trusted)
    for entry in entries:
        if entry.action == KEY_ROTATED and entry.new_value is not None:
            try:
                new_key = public_key_from_text(entry.new_value)
            except AuditKeyError:
                continue
            keys[key_id(new_key)] = new_key
    for record in anchors:
        key = keys.get(record.key_id)
        if (
            record.seq > last
            and key is not None
            and _valid(
                key, record.signature, _anchor_message(record.origin, record.seq, record.hash, record.at_us)
            )
        ):
            return (
                f"the anchor of seq {record.seq} (kept outside the database) lies beyond the trail's end at"
                f" seq {last}: entries from seq {last + 1} on were deleted"
            )
    return None


def _anchor_problem(
    record: AnchorRecord, walk: _Walk, by_seq: Mapping[int, AuditEntry], origin: int, last: int
) -> tuple[int, str, str] | None:
    key = walk.known.get(record.key_id) or walk.trusted.get(record.key_id)
    if key is None or not _valid(
        key, record.signature, _anchor_message(record.origin, record.seq, record.hash, record.at_us)
    ):
        return (
            record.seq,
            "changed",
            (
                f"the anchor of seq {record.seq} is not signed by a key of this trail:"
                " the anchor file was edited"
            ),
        )
    if record.seq > last:
        return (
            last + 1,
            "deleted",
            f"an anchor records seq {record.seq} but the trail ends at seq {last}: entries were deleted",
        )
    entry = by_seq.get(record.seq)
    if entry is None or entry.hash != record.hash:
        return (
            record.seq,
            "changed",
            (
                f"seq {record.seq}'s hash differs from its anchor:"
                f" the trail was rewritten at or before seq {record.seq}"
            ),
        )
    if record.origin != origin:
        return (
            min(origin, record.origin),
            "changed",
            (
                f"the anchor of seq {record.seq} says signing began at seq {record.origin}, the trail at"
                f" seq {origin}: signatures were removed or replaced"
            ),
        )
    return None


def _failed(  # noqa: PLR0917 - a report's fields
    chain: VerifyResult,
    walk: _Walk,
    origin: int,
    signed_to: int,
    seq: int,
    kind: str,
    problem: str,
    *,
    anchors: int = 0,
) -> TrailReport:
    return TrailReport(
        False,
        chain,
        seq,
        kind,
        problem,
        signed_from=origin,
        signed_to=signed_to if signed_to >= origin else None,
        anchors=anchors,
        notes=tuple(walk.notes),
    )
