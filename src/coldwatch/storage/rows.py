"""The rows both backends write: one mapping from records to table rows, kept in one place."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable

from coldwatch.audit import AuditEntry
from coldwatch.payload import Telemetry
from coldwatch.rules.lifecycle import Transition
from coldwatch.storage.base import Batch, QuarantineEntry, SeqGap

__all__ = ["RowIds", "alarm_rows", "audit_rows", "quarantine_rows", "reason_totals", "transition_rows"]


def first_copies(readings: list[tuple[Telemetry, int]]) -> list[tuple[Telemetry, int]]:
    """``readings`` without any whose (device, seq, ts) an earlier one has (usually all of them)."""
    keys = {(r.device_id, r.seq, r.ts_us) for r, _ in readings}
    if len(keys) == len(readings):
        return readings
    seen: set[tuple[str, int, int]] = set()
    out = []
    for pair in readings:
        key = (pair[0].device_id, pair[0].seq, pair[0].ts_us)
        if key not in seen:
            seen.add(key)
            out.append(pair)
    return out


class RowIds:
    """Device and metric row ids of a backend, and the rows of a batch in terms of them."""

    def __init__(self) -> None:
        self._device_rowid: dict[str, int] = {}
        self._device_by_rowid: dict[int, str] = {}
        self._metric_rowid: dict[str, int] = {}

    def _reading_rows(
        self, batch: Batch, *, arrival_as_delay: bool = False
    ) -> list[tuple[int, int, int, int, float, int, bool]]:
        """Value rows of the batch's readings; with ``arrival_as_delay``, arrival after ``ts_us``.

        A reading is stored whole or not at all, as first received: a later message of the
        batch at the same (device, seq, ts) adds none of its values (the rules judged the
        first; ``first_copies`` is the same for what is stored already).
        """
        devices, metrics = self._device_rowid, self._metric_rowid
        readings = first_copies(batch.readings)
        return [
            (
                devices[r.device_id],
                metrics[name],
                r.ts_us,
                r.seq,
                value,
                received_us - r.ts_us if arrival_as_delay else received_us,
                r.buffered,
            )
            for r, received_us in readings
            for name, value in r.values
        ]

    def _gap_row(self, gap: SeqGap) -> tuple[int, int, int, int]:
        return (self._device_rowid[gap.device_id], gap.first_missing, gap.last_missing, gap.detected_us)

    def _gap_update_rows(self, batch: Batch) -> list[tuple[str, int, int, int, int, int]]:
        return [
            (state, at_us, self._device_rowid[g.device_id], g.first_missing, g.last_missing, g.detected_us)
            for g, state, at_us in batch.gap_updates
        ]

    def _metric_names(self) -> dict[int, str]:
        """Metric names by row id."""
        return {rowid: name for name, rowid in self._metric_rowid.items()}

    def _device_rows(self, batch: Batch) -> list[tuple[int | None, int | None, int | None, bool | None, int]]:
        return [
            (s.last_seq, s.last_ts_us, s.last_received_us, s.online, self._device_rowid[device_id])
            for device_id, s in batch.devices.items()
        ]


def quarantine_rows(
    rejections: Iterable[QuarantineEntry], kept_from: int
) -> tuple[list[tuple[object, ...]], int]:
    """``quarantine`` rows (without their id), and where the next kept payload starts.

    ``kept_from`` numbers every payload byte the quarantine ever kept, in order: where the
    newest entry's payload ends. The byte bound deletes by a range of it, never summing.
    """
    rows: list[tuple[object, ...]] = []
    for q in rejections:
        whole = (q.received_us, q.reason, q.detail, q.topic, q.device_id, q.payload)
        rows.append((*whole, q.payload_size, q.payload_sha256, kept_from))
        kept_from += len(q.payload)
    return rows, kept_from


def reason_totals(rejections: Iterable[QuarantineEntry]) -> list[tuple[str, int]]:
    """How many of ``rejections`` have each reason, in reason order (one lock order for every writer)."""
    return sorted(Counter(q.reason for q in rejections).items())


def alarm_rows(transitions: Iterable[Transition]) -> list[tuple[object, ...]]:
    """The newest state of every alarm the transitions touch, in the ``alarms`` column order."""
    latest = {t.alarm.id: t.alarm for t in transitions}
    return [
        (
            a.id,
            a.key.device_id,
            a.key.metric,
            a.key.rule,
            a.severity.label,
            a.state.value,
            a.raised_ts_us,
            a.raised_received_us,
            a.cleared_ts_us,
            a.value,
            a.limit,
            a.late,
            a.detail,
            a.shelved_until_us,
            a.shelved_by,
            a.acknowledged_by,
        )
        for a in latest.values()
    ]


def transition_rows(transitions: Iterable[Transition]) -> list[tuple[object, ...]]:
    """``alarm_transitions`` rows (without their id), in order."""
    return [
        (
            t.alarm.id,
            t.event,
            t.ts_us,
            t.received_us,
            t.from_state.value if t.from_state else None,
            t.alarm.state.value,
            t.alarm.severity.label,
            t.alarm.value,
            t.alarm.limit,
            t.alarm.late,
            t.actor,
            t.reason,
        )
        for t in transitions
    ]


def audit_rows(entries: Iterable[AuditEntry]) -> list[tuple[object, ...]]:
    """``audit_log`` rows, in its column order (the entry's field order)."""
    return [dataclasses.astuple(e) for e in entries]
