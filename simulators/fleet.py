"""A fleet of simulated devices: one timeline of readings in simulated-time order.

Pure: the start time is an argument, nothing here reads the clock or does I/O, so a
timeline can be replayed, tested and paced by a publisher at any speed. Each device
reads every ``interval_s`` from a seeded phase inside its first interval, so devices do
not fire in lockstep. An :class:`OutagePlan` makes devices hold readings back, as a
logger does while its network is down, and backfill them when it ends.
"""

from __future__ import annotations

import heapq
import json
import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np

from simulators.models import AnyModel, Values, derive_seed, make_model

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from coldwatch.config import DeviceConfig

__all__ = [
    "OutagePlan",
    "Reading",
    "build_models",
    "encode_payload",
    "encode_reading",
    "parse_resend_request",
    "resend_topic",
    "status_topic",
    "telemetry_topic",
    "timeline",
]


@dataclass(frozen=True, slots=True)
class OutagePlan:
    """A network outage: from ``start_s`` for ``duration_s``, in simulated seconds.

    Both are offsets from the start of the simulated timeline.

    ``device_ids`` names the devices cut off; None means every device.
    """

    start_s: float
    duration_s: float
    device_ids: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if self.start_s < 0 or not self.duration_s > 0:
            raise ValueError("an outage needs start_s >= 0 and duration_s > 0")

    @property
    def end_s(self) -> float:
        """When the outage ends, in simulated seconds after the start."""
        return self.start_s + self.duration_s

    def covers(self, device_id: str, offset_s: float) -> bool:
        """Whether a reading of ``device_id`` at ``offset_s`` falls inside the outage."""
        affected = self.device_ids is None or device_id in self.device_ids
        return affected and self.start_s <= offset_s < self.end_s


@dataclass(frozen=True, slots=True)
class Reading:
    """One reading as a device would publish it.

    ``ts`` is when it was measured; ``due_s`` is when it is sent, in simulated seconds
    after the start (later than ``ts`` for a reading held back by an outage).
    """

    device: DeviceConfig
    seq: int
    ts: datetime
    values: Values
    buffered: bool
    due_s: float


def telemetry_topic(device: DeviceConfig, prefix: str = "coldwatch") -> str:
    """Return the topic the device publishes its readings on."""
    return f"{prefix}/{device.site}/{device.area}/{device.kind.value}/{device.id}/telemetry"


def status_topic(device: DeviceConfig, prefix: str = "coldwatch") -> str:
    """Return the topic of the device's retained online/offline status and last will."""
    return f"{prefix}/{device.site}/{device.area}/{device.kind.value}/{device.id}/status"


def resend_topic(device: DeviceConfig, prefix: str = "coldwatch") -> str:
    """Return the topic on which the collector asks the device to re-send readings."""
    return f"{prefix}/{device.site}/{device.area}/{device.kind.value}/{device.id}/resend"


def parse_resend_request(payload: bytes) -> tuple[int, int | None] | None:
    """``(from_seq, to_seq)`` of a re-send request (``to_seq`` None: all after), None if malformed."""
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(body, dict):
        return None
    first, last = body.get("from_seq"), body.get("to_seq")
    if type(first) is not int or first < 0 or not (last is None or type(last) is int):
        return None
    return first, last


def encode_payload(
    ts: datetime, seq: int, values: Mapping[str, float | bool], *, buffered: bool = False
) -> bytes:
    """Encode one reading as the device payload contract's JSON object."""
    if ts.utcoffset() is None:
        raise ValueError("ts must be timezone-aware")
    body: dict[str, object] = {
        "ts": ts.astimezone(UTC).isoformat(timespec="microseconds"),
        "seq": seq,
        "values": dict(values),
    }
    # The contract says "buffered" appears only on backfilled readings.
    if buffered:
        body["buffered"] = True
    # allow_nan=False: a model bug must fail here, not as a rejection in the collector.
    return json.dumps(body, allow_nan=False, separators=(",", ":")).encode()


def encode_reading(reading: Reading) -> bytes:
    """Encode a :class:`Reading` with :func:`encode_payload`."""
    return encode_payload(reading.ts, reading.seq, reading.values, buffered=reading.buffered)


def build_models(devices: Sequence[DeviceConfig], seed: int = 0) -> dict[str, AnyModel]:
    """Build one seeded model per device, by id; force events on them before a timeline."""
    return {device.id: make_model(device, seed) for device in devices}


def _phase_s(device: DeviceConfig, seed: int) -> float:
    """First reading time in ``(0, interval_s]``, stable for a seed and device id."""
    rng = np.random.default_rng(derive_seed(seed, device.id, "phase"))
    return float(device.interval_s) * (1.0 - rng.random())


# Heap entries are (due_s, order, device index); at equal times a backfill (order 0)
# goes before live readings (order 1), as a logger empties its buffer on reconnect.
_FLUSH, _READ = 0, 1


def timeline(
    devices: Sequence[DeviceConfig],
    *,
    start: datetime,
    seed: int = 0,
    until_s: float | None = None,
    outage: OutagePlan | None = None,
    models: Mapping[str, AnyModel] | None = None,
) -> Iterator[Reading]:
    """Yield every device's readings in the order they are sent, up to ``until_s``.

    ``start`` (timezone-aware) is simulated time zero; ``until_s`` None runs forever.
    Readings held back by ``outage`` are yielded, flagged buffered and with their
    original ``ts`` and ``seq``, when it ends; a timeline that stops inside an outage
    never sends them. Pass ``models`` from :func:`build_models` to force events.
    """
    if start.utcoffset() is None:
        raise ValueError("start must be timezone-aware")
    start = start.astimezone(UTC)
    models = build_models(devices, seed) if models is None else models
    limit_s = math.inf if until_s is None else until_s
    phases_s = [_phase_s(device, seed) for device in devices]
    counts = [0] * len(devices)
    heap: list[tuple[float, int, int]] = [(phase, _READ, i) for i, phase in enumerate(phases_s)]
    if outage is not None:
        heap.append((outage.end_s, _FLUSH, -1))
    heapq.heapify(heap)
    held: list[Reading] = []
    while heap:
        due_s, order, index = heapq.heappop(heap)
        if due_s > limit_s:
            return
        if order == _FLUSH:
            # Backfill in measurement order; equal times keep the devices' given order.
            for reading in sorted(held, key=lambda r: r.ts):
                yield replace(reading, due_s=due_s)
            held.clear()
            continue
        device = devices[index]
        model = models[device.id]
        values = model.step(due_s - model.t_s)
        reading = Reading(
            device=device,
            seq=counts[index],
            ts=start + timedelta(seconds=due_s),
            values=values,
            buffered=False,
            due_s=due_s,
        )
        if outage is not None and outage.covers(device.id, due_s):
            held.append(replace(reading, buffered=True))
        else:
            yield reading
        counts[index] += 1
        # Multiply rather than accumulate, so long runs do not drift off the interval grid.
        heapq.heappush(heap, (phases_s[index] + counts[index] * device.interval_s, _READ, index))
