"""Where shipments on a cryoshipper are started, received and read, signed and audited, on either backend.

Dispatch writes the shipment (state ``in_transit``) with the hold-time forecast at that
moment; receipt closes it. Each is signed (object types ``shipment_dispatch`` and
``shipment_receipt``, object id ``DEVICE@DISPATCHED_US``) and audited (``shipment.dispatched``
/ ``shipment.received``) in the same transaction. One open shipment per shipper (guarded
in the transaction and by a unique index).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from coldwatch.audit import AuditDraft
from coldwatch.catalogue import Kind
from coldwatch.config import Config
from coldwatch.identity_model import IdentityError, RefusedError
from coldwatch.records.shipment_model import (
    check_shipment_text,
    dispatch_object_id,
    forecast_series,
    shipment_facts,
)
from coldwatch.rules.config import ForecastRule
from coldwatch.rules.profiles import rules_for
from coldwatch.signatures import SELECT_SIGNATURES, SignatureDraft, StoredSignature, bind
from coldwatch.storage.base import Storage
from coldwatch.storage.identity_schema import INSERT_SIGNATURE
from coldwatch.storage.identity_store import IdentityStore, Write

__all__ = ["NoSuchShipmentError", "ShipmentRecord", "Shipments", "forecast_at", "shipment_signed_facts"]

_COLUMNS = (
    "SELECT id, device_id, coi, origin, destination, required_hold_s, state, dispatched_us, dispatched_by, "
    "dispatch_forecast_s, received_us, received_by FROM shipments"
)


class NoSuchShipmentError(IdentityError):
    """No shipment with that id."""

    status = 404


class ShipmentStateError(IdentityError):
    """The shipment or shipper is not in a state that allows this."""

    status = 409


@dataclass(frozen=True, slots=True)
class ShipmentRecord:
    """A shipment as stored, with its signatures (dispatch, then receipt)."""

    id: int
    device_id: str
    coi: str
    origin: str
    destination: str
    required_hold_s: int
    state: str
    dispatched_us: int
    dispatched_by: str
    dispatch_forecast_s: float | None
    received_us: int | None
    received_by: str | None
    signatures: list[StoredSignature] = field(default_factory=list)

    @property
    def object_id(self) -> str:
        """The signed object id of this shipment."""
        return dispatch_object_id(self.device_id, self.dispatched_us)

    def facts(self, *, received: bool) -> dict[str, object]:
        """What the dispatch (``received`` False) or receipt signature covers."""
        return shipment_facts(
            self.device_id,
            self.coi,
            self.origin,
            self.destination,
            self.required_hold_s,
            self.dispatched_us,
            self.dispatch_forecast_s,
            self.received_us if received else None,
        )


def _record(row: Sequence[object], signatures: list[StoredSignature] | None = None) -> ShipmentRecord:
    i, dev, coi, origin, dest, hold, state, sent, by, forecast, got, got_by = row
    return ShipmentRecord(
        int(str(i)),
        str(dev),
        str(coi),
        str(origin),
        str(dest),
        int(str(hold)),
        str(state),
        int(str(sent)),
        str(by),
        None if forecast is None else float(str(forecast)),
        None if got is None else int(str(got)),
        None if got_by is None else str(got_by),
        signatures or [],
    )


def forecast_rule(config: Config, device_id: str) -> ForecastRule | None:
    """The shipper's hold-time forecast rule, or None (not a cryoshipper, or the rule is off)."""
    device = config.device_map().get(device_id)
    if device is None or device.kind is not Kind.CRYOSHIPPER:
        return None
    return next((r for r in rules_for(device, config.rules) if isinstance(r, ForecastRule)), None)


async def forecast_at(storage: Storage, spec: ForecastRule, device_id: str, at_us: int) -> float | None:
    """The hold-time forecast (seconds) the rule makes at ``at_us``, replayed from the stored readings."""
    start = at_us - round(spec.window_s * 1e6)
    ts, values = await _aligned(storage, device_id, (spec.metric, spec.temp_metric), start, at_us + 1)
    _, hours = forecast_series(spec, ts, values)
    return None if len(hours) == 0 else float(hours[-1]) * 3600.0


async def _aligned(
    storage: Storage, device_id: str, metrics: Sequence[str], start_us: int, end_us: int
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Readings of ``metrics`` aligned on their union of times (NaN where a reading lacks a metric)."""
    from coldwatch.records.conditions import read_series  # noqa: PLC0415 - conditions imports the reports' PDF

    series = {m: await read_series(storage, device_id, m, start_us, end_us) for m in metrics}
    times = np.unique(np.concatenate([r.ts_us for r in series.values()])).astype(np.int64)
    out: dict[str, np.ndarray] = {}
    for metric, readings in series.items():
        column = np.full(len(times), np.nan)
        column[np.searchsorted(times, readings.ts_us)] = readings.values
        out[metric] = column
    return times, out


class Shipments:
    """Starts, receives and reads shipments."""

    def __init__(self, store: IdentityStore, config: Config) -> None:
        self.store = store
        self.config = config
        self.zone = config.site.timezone

    async def get(self, shipment_id: int) -> ShipmentRecord | None:
        """One shipment with its signatures, or None."""
        rows = await self.store.fetch(_COLUMNS + " WHERE id = ?", shipment_id)
        if not rows:
            return None
        record = _record(rows[0])
        sigs = await self.store.fetch(
            SELECT_SIGNATURES + " WHERE object_type IN ('shipment_dispatch', 'shipment_receipt') "
            "AND object_id = ? ORDER BY signed_us, id",
            record.object_id,
        )
        return _record(rows[0], [StoredSignature.of(r) for r in sigs])

    async def listing(self, limit: int = 500) -> list[ShipmentRecord]:
        """Shipments, newest dispatch first."""
        rows = await self.store.fetch(_COLUMNS + " ORDER BY dispatched_us DESC, id DESC LIMIT ?", limit)
        return [_record(r) for r in rows]

    async def start(  # noqa: PLR0917 - the shipment and its signature
        self,
        device_id: str,
        coi: str,
        origin: str,
        destination: str,
        required_hold_s: int,
        forecast_s: float | None,
        signed: SignatureDraft,
        now_us: int,
    ) -> ShipmentRecord:
        """Dispatch: a new shipment on a cryoshipper with no open shipment, signed and audited."""
        check_shipment_text(coi, origin, destination, required_hold_s)
        device = self.config.device_map().get(device_id)
        if device is None or device.kind is not Kind.CRYOSHIPPER:
            raise RefusedError(f"no configured cryoshipper {device_id!r}")
        if not device.shipper:
            raise RefusedError(f"{device_id} is a static dewar (ships: false): a shipment needs a shipper")
        if await self.store.fetch(
            "SELECT 1 FROM shipments WHERE device_id = ? AND state = 'in_transit'", device_id
        ):
            raise ShipmentStateError(f"{device_id} has an open shipment: receive it first")
        facts = shipment_facts(device_id, coi, origin, destination, required_hold_s, now_us, forecast_s)
        object_id = dispatch_object_id(device_id, now_us)
        row, sig_entry = bind("shipment_dispatch", object_id, "dispatch", facts, signed, now_us, self.zone)
        write = Write(
            "INSERT INTO shipments(device_id, coi, origin, destination, required_hold_s, state, "
            "dispatched_us, dispatched_by, dispatch_forecast_s) "
            "SELECT ?, ?, ?, ?, CAST(? AS BIGINT), 'in_transit', CAST(? AS BIGINT), ?, "
            "CAST(? AS DOUBLE PRECISION) "
            "WHERE NOT EXISTS (SELECT 1 FROM shipments WHERE device_id = ? AND state = 'in_transit')",
            (
                device_id,
                coi,
                origin,
                destination,
                required_hold_s,
                now_us,
                signed.signer,
                forecast_s,
                device_id,
            ),
            expect=1,
            refusal=f"{device_id} has an open shipment: receive it first",
        )
        await self.store.apply(
            [write, Write(INSERT_SIGNATURE, row)],
            [_entry("shipment.dispatched", object_id, signed, now_us, facts), sig_entry],
        )
        rows = await self.store.fetch(
            "SELECT id FROM shipments WHERE device_id = ? AND dispatched_us = ?", device_id, now_us
        )
        found = await self.get(int(rows[0][0]))
        assert found is not None  # just committed
        return found

    async def receive(self, shipment_id: int, signed: SignatureDraft, now_us: int) -> ShipmentRecord:
        """Receipt: close an open shipment, signed and audited."""
        current = await self.get(shipment_id)
        if current is None:
            raise NoSuchShipmentError(f"no shipment {shipment_id}")
        if current.state != "in_transit":
            raise ShipmentStateError(f"shipment {shipment_id} was received already")
        if now_us <= current.dispatched_us:
            raise RefusedError("a receipt must come after the dispatch")
        facts = shipment_facts(
            current.device_id,
            current.coi,
            current.origin,
            current.destination,
            current.required_hold_s,
            current.dispatched_us,
            current.dispatch_forecast_s,
            now_us,
        )
        row, sig_entry = bind(
            "shipment_receipt", current.object_id, "receive", facts, signed, now_us, self.zone
        )
        write = Write(
            "UPDATE shipments SET state = 'received', received_us = ?, received_by = ? "
            "WHERE id = ? AND state = 'in_transit'",
            (now_us, signed.signer, shipment_id),
            expect=1,
            refusal=f"shipment {shipment_id} was received meanwhile",
        )
        entry = _entry("shipment.received", current.object_id, signed, now_us, facts)
        await self.store.apply([write, Write(INSERT_SIGNATURE, row)], [entry, sig_entry])
        found = await self.get(shipment_id)
        assert found is not None  # just committed
        return found


def _entry(
    action: str, object_id: str, signed: SignatureDraft, now_us: int, facts: dict[str, object]
) -> AuditDraft:
    return AuditDraft(
        at_us=now_us,
        actor=signed.signer,
        action=action,
        object_type="shipment",
        object_id=object_id,
        old_value=None,
        new_value=json.dumps(facts, ensure_ascii=False, sort_keys=True),
        reason=signed.reason,
    )


async def shipment_signed_facts(store: IdentityStore) -> dict[tuple[str, str], dict[str, object]]:
    """What every shipment signature must cover, by (object type, object id): for audit verify."""
    out: dict[tuple[str, str], dict[str, object]] = {}
    for row in await store.fetch(_COLUMNS):
        record = _record(row)
        out[("shipment_dispatch", record.object_id)] = record.facts(received=False)
        if record.received_us is not None:
            out[("shipment_receipt", record.object_id)] = record.facts(received=True)
    return out
