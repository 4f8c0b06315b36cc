"""A device's rule state written out with the batch that produced it, and read back. Pure.

After a restart the rules must judge on exactly as if nothing had happened. Judging
every stored reading of the longest window again (24 hours of a cryoshipper) made the
restart time grow with the history. Instead, the collector writes each device's rule
state (a *snapshot*) in the same transaction as a batch of its readings, every
``SNAPSHOT_EVERY_S`` of device time (sooner when a late reading rewound it, or after
``SNAPSHOT_EVERY_READINGS`` readings), and a restart reads the snapshots back and judges
again only the readings stored after each: minutes of readings, not the window.

A snapshot is the state after judging, in timestamp order, every reading of the device
up to its position (ts, seq): each windowed rule's points still in its window (the raw
bytes of its tape) and running sums, each latch's raised severity and pending on-delay
runs, the door state. It is tied to the device's rules by a fingerprint: a snapshot of
other rules (the configuration changed) is ignored and the device is rebuilt the old way,
by judging its stored readings again.

Format: ``CWS1``, a 4-byte big-endian header length, a JSON header (the state, with each
byte string replaced by ``{"b": i}``, and the blob lengths), then the blobs. JSON keeps
floats exact (shortest repr round trip); no code is ever run from a snapshot.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from coldwatch.rules.config import RuleSpec
from coldwatch.rules.model import Severity

if TYPE_CHECKING:
    from coldwatch.rules.device import DeviceRules, _Judged

__all__ = [
    "SNAPSHOT_EVERY_READINGS",
    "SNAPSHOT_EVERY_S",
    "RuleSnapshot",
    "SnapshotError",
    "apply",
    "capture",
    "decode",
    "encode",
    "fingerprint",
]

_MAGIC = b"CWS1"
FORMAT = 1
# Device time between two snapshots of a device. Much shorter than the reorder horizon:
# a reading too late to be judged again is older than any snapshot still current, so
# judging again the readings stored after a snapshot never judges one the live rules
# did not.
SNAPSHOT_EVERY_S = 300.0
# ... and readings between two snapshots: a fast device's horizon is bounded by count.
SNAPSHOT_EVERY_READINGS = 1024


class SnapshotError(ValueError):
    """A snapshot that cannot be read (damaged, or of another format)."""


@dataclass(frozen=True, slots=True)
class RuleSnapshot:
    """One device's rule state after judging its readings up to (``ts_us``, ``seq``)."""

    device_id: str
    ts_us: int
    seq: int
    fingerprint: str
    state: bytes


def fingerprint(specs: Sequence[RuleSpec], *, horizon_us: int, door_recovery_us: int) -> str:
    """What a snapshot's rules must match: the rule specs and the engine's settings."""
    described = [FORMAT, [s.model_dump(mode="json") for s in specs], horizon_us, door_recovery_us]
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:32]


def encode(state: object) -> bytes:
    """``state`` (ints, floats, None, strings, bytes, lists and tuples) as bytes."""
    blobs: list[bytes] = []

    def walk(value: object) -> object:
        if isinstance(value, bytes):
            blobs.append(value)
            return {"b": len(blobs) - 1}
        if isinstance(value, list | tuple):
            return [walk(item) for item in value]
        return value

    header = json.dumps([walk(state), [len(b) for b in blobs]], separators=(",", ":")).encode()
    return b"".join([_MAGIC, len(header).to_bytes(4, "big"), header, *blobs])


def decode(data: bytes) -> object:
    """The state of :func:`encode` (byte strings back, lists for tuples)."""
    if data[:4] != _MAGIC:
        raise SnapshotError("not a rule snapshot")
    size = int.from_bytes(data[4:8], "big")
    try:
        state, lengths = json.loads(data[8 : 8 + size])
    except (ValueError, TypeError) as exc:
        raise SnapshotError(f"damaged snapshot header: {exc}") from exc
    blobs: list[bytes] = []
    offset = 8 + size
    for length in lengths:
        blobs.append(bytes(data[offset : offset + length]))
        offset += length
    if offset != len(data):
        raise SnapshotError("snapshot length does not match its header")

    def walk(value: object) -> object:
        if isinstance(value, dict):
            return blobs[value["b"]]
        if isinstance(value, list):
            return [walk(item) for item in value]
        return value

    return walk(state)


def capture(device: DeviceRules) -> RuleSnapshot | None:
    """A snapshot of ``device`` at its newest reading (None: none judged, or a rule cannot be written)."""
    position = device.position()
    if position is None:
        return None
    judged = device.judged
    evaluators: list[object] = []
    for evaluator, shared in zip(judged.evaluators, judged.stateless, strict=True):
        if shared:
            evaluators.append(None)
            continue
        snapshot = getattr(evaluator, "snapshot", None)
        if snapshot is None:
            return None  # a custom evaluator without snapshots: rebuilt by judging again
        evaluators.append(snapshot())
    latches = [
        [
            None if latch.active is None else int(latch.active),
            [[int(s), t] for s, t in latch.run_start.items()],
        ]
        for latch in judged.latches
    ]
    state = [evaluators, latches, judged.door_open, judged.door_closed_us]
    return RuleSnapshot(device.device_id, position[0], position[1], device.fingerprint, encode(state))


def apply(device: DeviceRules, snapshot: RuleSnapshot) -> bool:
    """Put ``device`` (fresh, nothing judged) in the state of ``snapshot``; False if it does not fit."""
    if snapshot.fingerprint != device.fingerprint or device.fresh is None:
        return False
    try:
        judged, position = _rebuilt(device, snapshot)
    except SnapshotError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        # Damaged (or written by a bug): the device is left as it was, fresh.
        raise SnapshotError(f"unusable snapshot of {snapshot.device_id}: {exc!r}") from exc
    device.restore_at(judged, position)
    return True


def _rebuilt(device: DeviceRules, snapshot: RuleSnapshot) -> tuple[_Judged, tuple[int, int]]:
    """The state of ``snapshot`` in fresh evaluators of ``device``'s rules."""
    assert device.fresh is not None
    state = decode(snapshot.state)
    if not isinstance(state, list) or len(state) != 4:
        raise SnapshotError("snapshot of an unknown shape")
    evaluators, latches, door_open, door_closed_us = state
    judged = device.fresh()
    if len(evaluators) != len(judged.evaluators) or len(latches) != len(judged.latches):
        raise SnapshotError("snapshot of other rules")
    for evaluator, saved in zip(judged.evaluators, evaluators, strict=True):
        if saved is not None:
            evaluator.restore_snapshot(saved)  # type: ignore[attr-defined]
    for latch, (active, run_start) in zip(judged.latches, latches, strict=True):
        latch.active = None if active is None else Severity(active)
        latch.run_start = {Severity(s): int(t) for s, t in run_start}
    judged.door_open = bool(door_open)
    judged.door_closed_us = None if door_closed_us is None else int(door_closed_us)
    return judged, (snapshot.ts_us, snapshot.seq)
