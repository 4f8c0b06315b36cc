"""Where batches and their stays are registered, amended and read, signed and audited, on either backend.

A registration writes the batch (version 1) and its stays; an amendment writes a new
version of the whole set of stays and moves ``batches.version`` to it, guarded so two
amendments of one version cannot both commit. Each is signed (object type ``batch``,
object id ``LOT#vN``: the signature binds the batch and exactly that version's stays)
and audited (``batch.registered`` / ``batch.amended``) in the same transaction.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from coldwatch.audit import AuditDraft
from coldwatch.config import DeviceConfig
from coldwatch.identity_model import IdentityError, RefusedError
from coldwatch.records.batch_model import (
    Stay,
    batch_facts,
    check_batch_text,
    split_object_id,
    validate_stays,
    version_object_id,
)
from coldwatch.signatures import SELECT_SIGNATURES, SignatureDraft, StoredSignature, bind
from coldwatch.storage.identity_schema import INSERT_SIGNATURE
from coldwatch.storage.identity_store import IdentityStore, Write

__all__ = ["BatchExistsError", "BatchRecord", "Batches", "NoSuchBatchError", "batch_signed_facts"]

_BATCH_COLUMNS = "SELECT id, lot, product, coi, version, registered_us, registered_by FROM batches"
_STAY_COLUMNS = "SELECT batch_id, version, site, area, device_id, from_us, until_us FROM batch_stays"


class NoSuchBatchError(IdentityError):
    """No batch with that lot id."""

    status = 404


class BatchExistsError(IdentityError):
    """A batch with that lot id is registered already (amend it instead)."""

    status = 409


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """A batch with every version of its stays (version -> stays) and its signatures, oldest first."""

    id: int
    lot: str
    product: str
    coi: str
    version: int
    registered_us: int
    registered_by: str
    versions: dict[int, list[Stay]] = field(default_factory=dict)
    signatures: list[StoredSignature] = field(default_factory=list)

    @property
    def stays(self) -> list[Stay]:
        """The stays of the current version."""
        return self.versions.get(self.version, [])

    def signature_of(self, version: int) -> StoredSignature | None:
        """The signature of one version (registration or amendment)."""
        wanted = version_object_id(self.lot, version)
        return next((s for s in self.signatures if s.object_id == wanted), None)


def _stay(row: Sequence[object]) -> tuple[int, int, Stay]:
    batch_id, version, site, area, device, start, end = row
    return (
        int(str(batch_id)),
        int(str(version)),
        Stay(
            str(site),
            None if area is None else str(area),
            None if device is None else str(device),
            int(str(start)),
            int(str(end)),
        ),
    )


def _stays_key(stay: Stay) -> tuple[int, int, str, str, str]:
    return (stay.from_us, stay.until_us, stay.site, stay.area or "", stay.device_id or "")


def _stay_key(stay: Stay) -> tuple[str, str, str, int, int]:
    return (stay.site, stay.area or "", stay.device_id or "", stay.from_us, stay.until_us)


class Batches:
    """Registers, amends and reads batches."""

    def __init__(self, store: IdentityStore, devices: Sequence[DeviceConfig], zone: str) -> None:
        self.store = store
        self.devices = list(devices)
        self.zone = zone

    async def get(self, lot: str) -> BatchRecord | None:
        """One batch with all its versions and signatures, or None."""
        rows = await self.store.fetch(_BATCH_COLUMNS + " WHERE lot = ?", lot)
        if not rows:
            return None
        bid, lot_, product, coi, version, at, by = rows[0]
        versions: dict[int, list[Stay]] = defaultdict(list)
        for row in await self.store.fetch(_STAY_COLUMNS + " WHERE batch_id = ?", bid):
            _, v, stay = _stay(row)
            versions[v].append(stay)
        for stays in versions.values():
            stays.sort(key=_stays_key)
        sigs = await self.store.fetch(
            SELECT_SIGNATURES + " WHERE object_type = 'batch' AND object_id LIKE ? ORDER BY signed_us, id",
            f"{lot_}#v%",  # "_" in a lot is a LIKE wildcard: the exact lot is checked below
        )
        signatures = [
            s for s in map(StoredSignature.of, sigs) if (split_object_id(s.object_id) or ("",))[0] == lot_
        ]
        return BatchRecord(
            int(bid),
            str(lot_),
            str(product),
            str(coi),
            int(version),
            int(at),
            str(by),
            dict(sorted(versions.items())),
            signatures,
        )

    async def listing(self, limit: int = 500) -> list[BatchRecord]:
        """Batches, newest registration first (without their stays)."""
        rows = await self.store.fetch(_BATCH_COLUMNS + " ORDER BY registered_us DESC, id DESC LIMIT ?", limit)
        return [
            BatchRecord(int(i), str(lot), str(p), str(c), int(v), int(at), str(by))
            for i, lot, p, c, v, at, by in rows
        ]

    async def register(  # noqa: PLR0917 - the batch, its stays and the signature
        self, lot: str, product: str, coi: str, stays: Sequence[Stay], signed: SignatureDraft, now_us: int
    ) -> BatchRecord:
        """Register a batch (version 1) with its stays, signed and audited in one transaction."""
        check_batch_text(lot, product, coi)
        checked = validate_stays(stays, self.devices, now_us)
        if await self.store.fetch("SELECT 1 FROM batches WHERE lot = ?", lot):
            raise BatchExistsError(f"batch {lot} is registered already: amend it instead")
        facts = batch_facts(lot, product, coi, 1, checked)
        writes = [
            Write(
                "INSERT INTO batches(lot, product, coi, version, registered_us, registered_by) "
                "SELECT ?, ?, ?, 1, CAST(? AS BIGINT), ? "
                "WHERE NOT EXISTS (SELECT 1 FROM batches WHERE lot = ?)",
                (lot, product, coi, now_us, signed.signer, lot),
                expect=1,
                refusal=f"batch {lot} was registered meanwhile: amend it instead",
            ),
            *self._stay_writes(lot, 1, checked),
        ]
        entry = _entry("batch.registered", lot, signed, now_us, None, facts)
        await self._commit(lot, 1, "register", facts, signed, now_us, writes, entry)
        return await self._must_get(lot)

    async def amend(
        self, lot: str, stays: Sequence[Stay], signed: SignatureDraft, now_us: int
    ) -> BatchRecord:
        """A new version of the whole set of stays, signed with the reason; earlier ones are kept."""
        current = await self.get(lot)
        if current is None:
            raise NoSuchBatchError(f"no batch {lot}")
        checked = validate_stays(stays, self.devices, now_us)
        if sorted(checked, key=_stay_key) == sorted(current.stays, key=_stay_key):
            raise RefusedError(
                f"nothing to amend: the stays given are those of version {current.version} of batch {lot}"
            )
        version = current.version + 1
        facts = batch_facts(lot, current.product, current.coi, version, checked)
        old = batch_facts(lot, current.product, current.coi, current.version, current.stays)
        writes = [
            Write(
                "UPDATE batches SET version = ? WHERE lot = ? AND version = ?",
                (version, lot, current.version),
                expect=1,
                refusal=f"batch {lot} was amended meanwhile: reload it and amend again",
            ),
            *self._stay_writes(lot, version, checked),
        ]
        entry = _entry("batch.amended", lot, signed, now_us, old, facts)
        await self._commit(lot, version, "amend", facts, signed, now_us, writes, entry)
        return await self._must_get(lot)

    def _stay_writes(self, lot: str, version: int, stays: Sequence[Stay]) -> list[Write]:
        return [
            Write(
                "INSERT INTO batch_stays(batch_id, version, site, area, device_id, from_us, until_us) "
                "SELECT id, CAST(? AS INTEGER), ?, ?, ?, CAST(? AS BIGINT), CAST(? AS BIGINT) "
                "FROM batches WHERE lot = ?",
                (version, s.site, s.area, s.device_id, s.from_us, s.until_us, lot),
                expect=1,
            )
            for s in stays
        ]

    async def _commit(  # noqa: PLR0917 - one signed, audited change
        self,
        lot: str,
        version: int,
        action: str,
        facts: dict[str, object],
        signed: SignatureDraft,
        now_us: int,
        writes: list[Write],
        entry: AuditDraft,
    ) -> None:
        row, signature_entry = bind(
            "batch", version_object_id(lot, version), action, facts, signed, now_us, self.zone
        )
        await self.store.apply([*writes, Write(INSERT_SIGNATURE, row)], [entry, signature_entry])

    async def _must_get(self, lot: str) -> BatchRecord:
        record = await self.get(lot)
        if record is None:  # pragma: no cover - just committed
            raise NoSuchBatchError(f"no batch {lot}")
        return record


def _entry(  # noqa: PLR0917 - one audit entry
    action: str,
    lot: str,
    signed: SignatureDraft,
    now_us: int,
    old: dict[str, object] | None,
    new: dict[str, object],
) -> AuditDraft:
    def text(value: dict[str, object] | None) -> str | None:
        return None if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)

    return AuditDraft(
        at_us=now_us,
        actor=signed.signer,
        action=action,
        object_type="batch",
        object_id=lot,
        old_value=text(old),
        new_value=text(new),
        reason=signed.reason,
    )


async def batch_signed_facts(store: IdentityStore) -> dict[tuple[str, str], dict[str, object]]:
    """What every batch version's signature must cover, by (object type, object id): for audit verify."""
    batches = {int(r[0]): r for r in await store.fetch(_BATCH_COLUMNS)}
    versions: dict[tuple[int, int], list[Stay]] = defaultdict(list)
    for row in await store.fetch(_STAY_COLUMNS):
        bid, version, stay = _stay(row)
        versions[(bid, version)].append(stay)
    out: dict[tuple[str, str], dict[str, object]] = {}
    for (bid, version), stays in versions.items():
        b = batches.get(bid)
        if b is None:
            continue
        lot = str(b[1])
        out[("batch", version_object_id(lot, version))] = batch_facts(
            lot, str(b[2]), str(b[3]), version, sorted(stays, key=_stays_key)
        )
    return out
