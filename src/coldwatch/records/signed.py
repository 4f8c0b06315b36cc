"""The records' signed facts, for ``coldwatch audit verify`` (review.signature_problems)."""

from __future__ import annotations

from coldwatch.records.batches import batch_signed_facts
from coldwatch.records.shipments import shipment_signed_facts
from coldwatch.storage.identity_store import IdentityStore

__all__ = ["RECORD_TYPES", "records_signed_facts"]

RECORD_TYPES = frozenset({"batch", "shipment_dispatch", "shipment_receipt"})


async def records_signed_facts(store: IdentityStore) -> dict[tuple[str, str], dict[str, object]]:
    """What each batch and shipment signature must cover, by (object type, object id)."""
    return {**await batch_signed_facts(store), **await shipment_signed_facts(store)}
