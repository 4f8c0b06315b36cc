"""The storage protocol every backend implements, and the records that cross it."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from coldwatch.audit import AuditDraft, AuditEntry, VerifyResult
from coldwatch.audit_seal import AuditEvidence, AuditHead
from coldwatch.config import DeviceConfig
from coldwatch.notify.model import OutboxItem
from coldwatch.payload import Telemetry
from coldwatch.rules.lifecycle import Alarm, AlarmState, Transition
from coldwatch.rules.model import AlarmKey, EngineReading, Severity
from coldwatch.rules.snapshot import RuleSnapshot

__all__ = [
    "QUARANTINE_MAX_BYTES",
    "Batch",
    "BatchResult",
    "DeviceState",
    "ExportRow",
    "QuarantineEntry",
    "SeqGap",
    "Storage",
    "alarm_from_row",
    "group_readings",
]


QUARANTINE_MAX_BYTES = 64 * 1024 * 1024  # the default bound on the quarantine's kept payloads


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    """A rejected message, kept with its reason and (a prefix of) its raw bytes for inspection.

    ``payload`` may be only the first bytes of what was received: ``payload_size`` and
    ``payload_sha256`` (hex) describe the whole message.
    """

    received_us: int
    reason: str
    detail: str
    topic: str
    device_id: str | None
    payload: bytes
    payload_size: int = -1  # of the whole payload; -1: ``payload`` is whole
    payload_sha256: str = ""  # of the whole payload (hex); "": computed from ``payload``

    def __post_init__(self) -> None:
        if self.payload_size < 0:
            object.__setattr__(self, "payload_size", len(self.payload))
        if not self.payload_sha256:
            object.__setattr__(self, "payload_sha256", hashlib.sha256(self.payload).hexdigest())

    @classmethod
    def of(
        cls,
        *,
        received_us: int,
        reason: str,
        detail: str,
        topic: str,
        device_id: str | None,
        payload: bytes,
        keep_bytes: int,
    ) -> QuarantineEntry:
        """An entry keeping at most ``keep_bytes`` of ``payload``, with its full size and SHA-256."""
        return cls(
            received_us,
            reason,
            detail,
            topic,
            device_id,
            payload[:keep_bytes],
            len(payload),
            hashlib.sha256(payload).hexdigest(),
        )

    @property
    def truncated(self) -> bool:
        """Whether only a prefix of the payload was kept."""
        return self.payload_size > len(self.payload)


@dataclass(frozen=True, slots=True)
class SeqGap:
    """Sequence numbers a device skipped: readings lost before they reached the collector."""

    device_id: str
    first_missing: int
    last_missing: int
    detected_us: int

    @property
    def count(self) -> int:
        """How many readings are missing."""
        return self.last_missing - self.first_missing + 1


@dataclass(slots=True)
class DeviceState:
    """What the collector remembers about a device across restarts."""

    last_seq: int | None = None
    last_ts_us: int | None = None
    last_received_us: int | None = None
    online: bool | None = None


@dataclass(slots=True)
class Batch:
    """Everything one transaction commits: readings, rejections, gaps and device state."""

    readings: list[tuple[Telemetry, int]] = field(default_factory=list)  # (reading, received_us)
    rejections: list[QuarantineEntry] = field(default_factory=list)
    gaps: list[SeqGap] = field(default_factory=list)
    devices: dict[str, DeviceState] = field(default_factory=dict)
    transitions: list[Transition] = field(default_factory=list)
    notifications: list[OutboxItem] = field(default_factory=list)
    audit: list[AuditDraft] = field(default_factory=list)
    # Electronic signatures of user actions in this batch (coldwatch.signatures.signature_row).
    signatures: list[tuple[object, ...]] = field(default_factory=list)
    # Gaps that reached their final state: (gap, "recovered" or "lost", when).
    gap_updates: list[tuple[SeqGap, str, int]] = field(default_factory=list)
    # Messages received twice within this batch (a redelivery before the first copy was
    # committed): neither stored nor judged again, counted as duplicates.
    copies: int = 0
    # Rule state of devices after judging this batch (coldwatch.rules.snapshot): one row
    # a device, replaced, in the same transaction as the readings that produced it.
    snapshots: list[RuleSnapshot] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.readings) + len(self.rejections)


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What a committed batch changed."""

    stored: int
    duplicates: frozenset[tuple[str, int, int]]  # (device_id, seq, ts_us) already stored


@dataclass(frozen=True, slots=True)
class ExportRow:
    """One metric value of one reading, as exported for QA."""

    device_id: str
    kind: str
    metric: str
    ts_us: int
    value: float
    received_us: int
    buffered: bool
    seq: int  # the device's reading number: tells apart two readings with the same time


def alarm_from_row(r: Sequence[Any]) -> Alarm:
    """An alarm from a row of the ``alarms`` table.

    Columns: id, device, metric, rule, severity, state, raised_ts, raised_received, value,
    limit, late, detail, cleared_ts, shelved_until, shelved_by, acknowledged_by.
    """
    return Alarm(
        int(r[0]),
        AlarmKey(r[1], r[2], r[3]),
        Severity[str(r[4]).upper()],
        AlarmState(r[5]),
        int(r[6]),
        int(r[7]),
        r[8],
        r[9],
        bool(r[10]),
        str(r[11]),
        r[12],
        r[13],
        r[14],
        r[15],
    )


def group_readings(
    device_id: str, rows: Iterable[Sequence[Any]], names: dict[int, str]
) -> Iterator[EngineReading]:
    """Readings from value rows (ts_us, seq, metric id, value, received_us, buffered) in (ts, seq) order."""
    current: tuple[int, int] | None = None
    values: dict[str, float] = {}
    received, buffered = 0, False
    for ts_us, seq, metric, value, received_us, is_buffered in rows:
        if current is not None and (ts_us, seq) != current:
            yield EngineReading(device_id, current[0], values, current[1], buffered, received)
            values = {}
        current = (ts_us, seq)
        values[names[metric]] = value
        received, buffered = received_us, bool(is_buffered)
    if current is not None:
        yield EngineReading(device_id, current[0], values, current[1], buffered, received)


class Storage(Protocol):
    """A storage backend. One writer; every method is safe to await from the event loop."""

    async def open(self) -> None:
        """Open the database and apply pending migrations."""

    async def close(self) -> None:
        """Flush and close."""

    async def register_devices(self, devices: Sequence[DeviceConfig]) -> dict[str, DeviceState]:
        """Record the registered devices and return what is remembered about each."""

    async def write_batch(self, batch: Batch) -> BatchResult:
        """Commit ``batch`` atomically; readings already stored are skipped, not duplicated."""

    async def check_writable(self) -> None:
        """Raise :class:`coldwatch.errors.StorageError` if the database cannot take a write."""

    def export(
        self, device_id: str | None, since_us: int | None, until_us: int | None
    ) -> AsyncGenerator[ExportRow, None]:
        """Stream stored readings ordered by device, time and metric."""

    async def quarantine(self, limit: int = 100) -> list[QuarantineEntry]:
        """The most recent rejected messages, newest first."""

    async def counts(self) -> dict[str, int]:
        """Row counts by table, for health and tests."""

    async def record_audit(self, drafts: list[AuditDraft]) -> None:
        """Append audit entries in a transaction of their own."""

    async def open_gaps(self, devices: Sequence[str] | None = None) -> list[tuple[SeqGap, set[int]]]:
        """Gaps neither recovered nor lost (of ``devices`` when given), with the missing seqs stored since."""

    async def open_alarms(self, devices: Sequence[str] | None = None) -> tuple[list[Alarm], int]:
        """The alarms not yet closed (of ``devices`` only, when given), and the id the next alarm gets."""

    async def alarms(
        self,
        *,
        open_only: bool = False,
        device_id: str | None = None,
        site: str | None = None,
        severity: str | None = None,
        state: str | None = None,
        since_us: int | None = None,
        until_us: int | None = None,
        alarm_id: int | None = None,
        limit: int = 1000,
    ) -> list[Alarm]:
        """Alarms matching every given filter, newest first."""

    async def metric_readings(
        self, device_id: str, metric: str, since_us: int | None, until_us: int | None, limit: int
    ) -> list[tuple[int, float, int, bool]]:
        """(ts_us, value, received_us, buffered) of one device metric, oldest first."""

    async def last_values(self, device_id: str) -> dict[str, float]:
        """The metric values of a device's newest reading."""

    async def alarm_history(self, alarm_id: int) -> list[dict[str, object]]:
        """Every transition of one alarm, oldest first."""

    async def rejection_totals(self) -> dict[str, int]:
        """Every rejection ever recorded, by reason (survives quarantine pruning)."""

    async def verify_audit(self) -> VerifyResult:
        """Check the whole audit chain."""

    def audit_entries(self) -> AsyncIterator[AuditEntry]:
        """Every audit entry in order."""

    async def audit_evidence(self) -> AuditEvidence:
        """Entries, seals, high-water mark and guard problems, in one snapshot."""

    async def audit_head(self, *, with_rotation: bool = False) -> AuditHead | None:
        """The last signed entry (None before signing began); the last rotation's key if asked."""

    async def restore_audit_guards(self) -> list[str]:
        """Recreate missing, disabled or altered append-only guards; return their names."""

    async def rule_snapshots(self, devices: Sequence[str]) -> list[RuleSnapshot]:
        """The stored rule snapshots of ``devices`` (one at most each)."""
        ...

    def readings_since(
        self, device_id: str, since_us: int, *, after_seq: int | None = None
    ) -> AsyncIterator[EngineReading]:
        """A device's stored readings from ``since_us`` on, in (ts, seq) order (for restart).

        With ``after_seq``: those after (``since_us``, ``after_seq``) only (a rewind's
        readings after its checkpoint: a device whose clock is stuck stamps every reading
        alike, and only those after the checkpoint's seq are wanted).
        """
