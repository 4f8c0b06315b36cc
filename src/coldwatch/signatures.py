"""Electronic signatures: what is signed, how it is bound to its record, how it is shown. Pure.

21 CFR Part 11 and EU GMP Annex 11 §14:

- 11.50 / Annex 11 §14: a signed record shows the signer's printed name, the date and
  time of signing (here in UTC and in the site's time zone, ``site.timezone``) and the
  meaning of the signature: :func:`manifestation`.
- 11.70: a signature is linked to its record so that it cannot be copied to another.
  The signed content (the record's identifying facts, the action, signer, meaning,
  reason and time) is hashed; the hash is stored with the signature and written into
  the hash-chained, sealed audit trail in the ``signature.applied`` entry of that record.
  :func:`check_bindings` re-checks every stored signature against its record and that
  entry, so a signature row copied to another alarm, or edited, is reported.

No I/O and no clock: times are passed in.
"""

from __future__ import annotations

import hashlib
import json
import zoneinfo
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from coldwatch.audit import AuditDraft, AuditEntry
from coldwatch.identity_config import UTC_ZONES

__all__ = [
    "SELECT_SIGNATURES",
    "SIGNATURE_ACTION",
    "SignatureDraft",
    "StoredSignature",
    "alarm_facts",
    "bind",
    "check_bindings",
    "manifestation",
    "manifestation_json",
    "record_hash",
]

SIGNATURE_ACTION: Final = "signature.applied"
SELECT_SIGNATURES: Final = (
    "SELECT id, object_type, object_id, action, signer, full_name, meaning, reason, signed_us, "
    "record_hash, content FROM signatures"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class SignatureDraft:
    """A verified signer's signature, before it is bound to the record it signs."""

    signer: str
    full_name: str
    meaning: str
    reason: str


@dataclass(frozen=True, slots=True)
class StoredSignature:
    """A signature as stored."""

    id: int
    object_type: str
    object_id: str
    action: str
    signer: str
    full_name: str
    meaning: str
    reason: str
    signed_us: int
    record_hash: str
    content: str

    @classmethod
    def of(cls, row: tuple[Any, ...]) -> StoredSignature:
        """From a row of :data:`SELECT_SIGNATURES`."""
        i, ot, oid, action, signer, full, meaning, reason, signed, digest, content = row
        return cls(
            int(i),
            str(ot),
            str(oid),
            str(action),
            str(signer),
            str(full),
            str(meaning),
            str(reason),
            int(signed),
            str(digest),
            str(content),
        )


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def record_hash(content: str) -> str:
    """The SHA-256 (hex) of a signature's canonical content."""
    return hashlib.sha256(content.encode()).hexdigest()


def alarm_facts(alarm_id: int, device: str, metric: str, rule: str, raised_ts_us: int) -> dict[str, object]:
    """The facts that identify an alarm for ever (they never change after it is raised)."""
    return {"alarm": alarm_id, "device": device, "metric": metric, "rule": rule, "raised_ts_us": raised_ts_us}


def _when(at_us: int, zone: str) -> tuple[str, str]:
    moment = _EPOCH + timedelta(microseconds=at_us)
    utc = moment.strftime("%Y-%m-%d %H:%M:%S UTC")
    local = moment.astimezone(zoneinfo.ZoneInfo(zone))
    return utc, local.strftime("%Y-%m-%d %H:%M:%S %Z") + f" ({zone})"


def manifestation(full_name: str, signer: str, signed_us: int, zone: str, meaning: str) -> str:
    """How a signature reads wherever its record is shown: name, UTC and site time, meaning.

    The site time is left out when the site's zone is UTC (it would repeat the same time).
    """
    utc, local = _when(signed_us, zone)
    when = utc if zone in UTC_ZONES else f"{utc} / {local}"
    return f"signed by {full_name} ({signer}) on {when}, meaning: {meaning}"


def manifestation_json(sig: StoredSignature, zone: str) -> dict[str, object]:
    """A signature as the JSON API and exports give it."""
    utc, local = _when(sig.signed_us, zone)
    return {
        "signer": sig.signer,
        "full_name": sig.full_name,
        "action": sig.action,
        "meaning": sig.meaning,
        "reason": sig.reason,
        "signed_at_utc": utc,
        "signed_at_site": local,
        "record_sha256": sig.record_hash,
        "manifestation": manifestation(sig.full_name, sig.signer, sig.signed_us, zone, sig.meaning),
    }


def bind(  # noqa: PLR0917 - the record, the signature and how to show its time
    object_type: str,
    object_id: str,
    action: str,
    facts: Mapping[str, object],
    draft: SignatureDraft,
    signed_us: int,
    zone: str,
) -> tuple[tuple[object, ...], AuditDraft]:
    """The signatures row and the audit entry that bind ``draft`` to the record ``facts`` describe."""
    content = _canonical(
        {
            "object_type": object_type,
            "object_id": object_id,
            "action": action,
            "record": dict(facts),
            "signer": draft.signer,
            "meaning": draft.meaning,
            "reason": draft.reason,
            "signed_us": signed_us,
        }
    )
    digest = record_hash(content)
    row = (
        object_type,
        object_id,
        action,
        draft.signer,
        draft.full_name,
        draft.meaning,
        draft.reason,
        signed_us,
        digest,
        content,
    )
    audit = AuditDraft(
        at_us=signed_us,
        actor=draft.signer,
        action=SIGNATURE_ACTION,
        object_type=object_type,
        object_id=object_id,
        old_value=None,
        new_value=f"{action} {manifestation(draft.full_name, draft.signer, signed_us, zone, draft.meaning)}; "
        f"record sha256 {digest}",
        reason=draft.reason,
    )
    return row, audit


def check_bindings(
    signatures: Iterable[StoredSignature],
    entries: Iterable[AuditEntry],
    facts_of: Callable[[str, str], Mapping[str, object] | None],
) -> list[str]:
    """Every way a stored signature fails to be bound to its record and its audit entry (empty: all bound)."""
    sealed: dict[tuple[str, str, str], AuditEntry] = {}
    for entry in entries:
        if entry.action == SIGNATURE_ACTION and entry.new_value:
            digest = entry.new_value.rpartition("record sha256 ")[2]
            sealed[(entry.object_type, entry.object_id, digest)] = entry
    problems = []
    for sig in signatures:
        where = f"signature {sig.id} ({sig.object_type} {sig.object_id}, {sig.signer})"
        if record_hash(sig.content) != sig.record_hash:
            problems.append(f"{where}: its content does not hash to its record hash (edited)")
            continue
        try:
            content = json.loads(sig.content)
        except ValueError:
            problems.append(f"{where}: its content is not JSON")
            continue
        stated = (
            content.get("object_type"),
            content.get("object_id"),
            content.get("action"),
            content.get("signer"),
            content.get("meaning"),
            content.get("reason"),
            content.get("signed_us"),
        )
        if stated != (
            sig.object_type,
            sig.object_id,
            sig.action,
            sig.signer,
            sig.meaning,
            sig.reason,
            sig.signed_us,
        ):
            problems.append(
                f"{where}: it was signed for {content.get('object_type')} "
                f"{content.get('object_id')}, not this record (copied or edited)"
            )
            continue
        if content.get("record") != facts_of(sig.object_type, sig.object_id):
            problems.append(f"{where}: the record's content differs from what was signed")
            continue
        binding = sealed.get((sig.object_type, sig.object_id, sig.record_hash))
        if binding is None or binding.actor != sig.signer:
            problems.append(f"{where}: no audit entry binds it to this record (copied or inserted)")
    return problems
