"""A scenario's timeline turned into readings: arrays per device, deterministic. Pure.

Readings are taken every ``interval`` from the scenario start. Each metric follows its
segments one after another (the last value is held after the last segment). Gaps remove
readings; an outage marks its readings buffered and delivers them when it ends (or drops
them when the device cannot buffer); door and lid windows set ``door_open``/``lid_open``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from coldwatch.replay.scenario import DeviceTimeline, Scenario, SignalSegment
from coldwatch.rules.model import US, EngineReading

__all__ = ["DeviceStream", "build_streams", "merged_arrivals"]

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]


@dataclass(slots=True)
class DeviceStream:
    """One device's readings in timestamp order. A missing value is NaN."""

    device_id: str
    ts_us: Ints
    received_us: Ints
    buffered: Bools
    seq: Ints
    values: dict[str, Floats]

    def __len__(self) -> int:
        return len(self.ts_us)

    @property
    def in_order(self) -> bool:
        """Whether the readings arrive in timestamp order (no late data to rewind for)."""
        return bool(np.all(np.diff(self.received_us) >= 0))

    def reading(self, index: int) -> EngineReading:
        """Reading ``index`` as the engine takes it."""
        values = {m: float(a[index]) for m, a in self.values.items() if not np.isnan(a[index])}
        return EngineReading(
            self.device_id,
            int(self.ts_us[index]),
            values,
            seq=int(self.seq[index]),
            buffered=bool(self.buffered[index]),
            received_us=int(self.received_us[index]),
        )


def _signal(segments: list[SignalSegment], t_us: Ints) -> Floats:
    """A metric's value at each offset in ``t_us`` (NaN before its first value)."""
    out = np.full(len(t_us), np.nan)
    begin = 0
    last = np.nan
    for segment in segments:
        length = round(segment.duration_s * US)
        end = begin + length
        lo, hi = np.searchsorted(t_us, [begin, end], side="left")
        t = t_us[lo:hi]
        match segment.kind:
            case "hold":
                assert segment.hold is not None
                value = segment.hold.value if segment.hold.value is not None else last
                out[lo:hi] = value
                last = value
            case "step":
                assert segment.step is not None
                out[lo:hi] = last = segment.step.to
            case "ramp":
                assert segment.ramp is not None
                first = segment.ramp.start if segment.ramp.start is not None else last
                out[lo:hi] = first + (segment.ramp.to - first) * (t - begin) / length
                last = segment.ramp.to
            case "noise":
                assert segment.noise is not None
                mean = segment.noise.mean if segment.noise.mean is not None else last
                rng = np.random.default_rng(segment.noise.seed)
                out[lo:hi] = mean + segment.noise.sd * rng.standard_normal(hi - lo)
                last = mean
        begin = end
    tail = np.searchsorted(t_us, begin, side="left")
    out[tail:] = last
    return out


def _inside(t_us: Ints, at_s: float, for_s: float) -> Bools:
    lo = round(at_s * US)
    return (t_us >= lo) & (t_us < lo + round(for_s * US))


def _device_stream(device_id: str, spec: DeviceTimeline, start_us: int, duration_us: int) -> DeviceStream:  # noqa: C901 - one step per timeline feature
    interval_us = round(spec.interval * US)
    end_us = duration_us if spec.end is None else min(duration_us, round(spec.end * US))
    t = np.arange(0, end_us, interval_us, dtype=np.int64)
    values = {metric: _signal(segments, t) for metric, segments in spec.metrics.items()}
    for metric, windows in (("door_open", spec.door), ("lid_open", spec.lid)):
        if windows:
            flag = np.zeros(len(t))
            for window in windows:
                flag[_inside(t, window.at, window.duration)] = 1.0
            values[metric] = flag
    received = t.copy()
    buffered = np.zeros(len(t), dtype=np.bool_)
    keep = np.ones(len(t), dtype=np.bool_)
    for gap in spec.gaps:
        keep &= ~_inside(t, gap.at, gap.duration)
    for outage in spec.outages:
        if not outage.backfill:
            keep &= ~_inside(t, outage.at, outage.duration)
    # Overlapping outages are one outage: the buffer empties when the network is back.
    spans: list[list[float]] = []
    for outage in sorted((o for o in spec.outages if o.backfill), key=lambda o: o.at):
        if spans and outage.at <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], outage.at + outage.duration)
        else:
            spans.append([outage.at, outage.at + outage.duration])
    for at, until in spans:
        inside = _inside(t, at, until - at)
        buffered |= inside
        received[inside] = round(until * US)
    t, received, buffered = t[keep], received[keep], buffered[keep]
    values = {m: v[keep] for m, v in values.items()}
    if spec.points:
        t, received, buffered, values = _with_points(spec, t, received, buffered, values)
    # A reading with no value at all is no message.
    present = np.zeros(len(t), dtype=np.bool_)
    for v in values.values():
        present |= ~np.isnan(v)
    t, received, buffered = t[present], received[present], buffered[present]
    values = {m: v[present] for m, v in values.items()}
    return DeviceStream(
        device_id,
        t + start_us,
        received + start_us,
        buffered,
        np.arange(len(t), dtype=np.int64),
        values,
    )


def _with_points(
    spec: DeviceTimeline, t: Ints, received: Ints, buffered: Bools, values: dict[str, Floats]
) -> tuple[Ints, Ints, Bools, dict[str, Floats]]:
    extra_t = []
    for point in spec.points:
        at = round(point.at * US)
        index = int(np.searchsorted(t, at))
        for metric in point.values:
            if metric not in values:
                values[metric] = np.full(len(t), np.nan)
        if not (index < len(t) and t[index] == at):
            extra_t.append(at)
    if extra_t:
        new_t = np.unique(np.concatenate([t, np.asarray(extra_t, dtype=np.int64)]))
        where = np.searchsorted(new_t, t)
        grown = {m: np.full(len(new_t), np.nan) for m in values}
        for metric, v in values.items():
            grown[metric][where] = v
        new_received = new_t.copy()
        new_received[where] = received
        new_buffered = np.zeros(len(new_t), dtype=np.bool_)
        new_buffered[where] = buffered
        t, received, buffered, values = new_t, new_received, new_buffered, grown
    for point in spec.points:
        index = int(np.searchsorted(t, round(point.at * US)))
        for metric, value in point.values.items():
            values[metric][index] = value
        buffered[index] = point.buffered
        if point.arrives is not None:
            received[index] = max(int(t[index]), round(point.arrives * US))
    return t, received, buffered, values


def build_streams(scenario: Scenario) -> dict[str, DeviceStream]:
    """Every device's readings."""
    return {
        device_id: _device_stream(device_id, spec, scenario.start_us, scenario.duration_us)
        for device_id, spec in scenario.timeline.items()
    }


def merged_arrivals(streams: dict[str, DeviceStream]) -> Iterator[tuple[int, DeviceStream, int]]:
    """(received_us, stream, index) of every reading, in the order the collector gets them.

    Arrival time first; at the same instant, devices in timeline order and each device's
    readings in timestamp order.
    """
    order = list(streams.values())
    if not order:
        return
    received = np.concatenate([s.received_us for s in order])
    device = np.concatenate([np.full(len(s), i, dtype=np.int64) for i, s in enumerate(order)])
    index = np.concatenate([np.arange(len(s), dtype=np.int64) for s in order])
    for position in np.lexsort((index, device, received)):
        yield int(received[position]), order[int(device[position])], int(index[position])
