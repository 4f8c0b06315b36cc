"""The batched engine phase: a device's whole series judged at once, with the same alarms.

For readings that arrive in timestamp order, a rule's verdict at every reading is
computed with NumPy (each evaluator's ``signals``); rules without one (MKT) are judged by
their own ``update``, reading by reading. The alarm latch, the same class the daemon
uses, is then fed only where something can change: where the signal or the door
suppression changes, where an on-delay elapses, and right after every event. Between
those readings a latch fed the same signal in the same state does nothing, so the events
are exactly those of the reading-by-reading engine; ``tests/test_replay_batch.py``
checks that on every library scenario and on random timelines.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise

import numpy as np

from coldwatch.config import DeviceConfig
from coldwatch.replay.runner import PHASE_READING, PHASE_TIMER, EmittedEvent, action_times
from coldwatch.replay.scenario import LoadedScenario
from coldwatch.replay.timeline import DeviceStream
from coldwatch.rules.config import CommLossRule, RulesConfig, RuleSpec
from coldwatch.rules.device import DOOR_METRIC
from coldwatch.rules.engine import build_evaluator
from coldwatch.rules.latch import Latch
from coldwatch.rules.model import US, AlarmEvent, AlarmKey, EventKind, RuleEvaluator, Severity, Signal
from coldwatch.rules.profiles import rules_for
from coldwatch.rules.vector import Bools, Floats, Ints, SignalArrays

__all__ = ["batched_events", "door_suppression"]

# (emit_us, phase, device order, reading index, order within the reading, event)
_Sortable = tuple[int, int, int, int, int, AlarmEvent]


def door_suppression(ts_us: Ints, values: dict[str, Floats], recovery_us: int) -> Bools:
    """Whether each reading falls while the door is open or within the recovery after it closed."""
    door = values.get(DOOR_METRIC)
    if door is None:
        return np.zeros(len(ts_us), dtype=np.bool_)
    given = ~np.isnan(door)
    last = np.maximum.accumulate(np.where(given, np.arange(len(door)), -1))
    is_open = np.where(last >= 0, door[np.maximum(last, 0)] >= 0.5, False)
    was_open = np.concatenate([[False], is_open[:-1]])
    closes = given & was_open & ~is_open
    last_close = np.maximum.accumulate(np.where(closes, np.arange(len(door)), -1))
    recovering = (last_close >= 0) & (ts_us - ts_us[np.maximum(last_close, 0)] < recovery_us)
    return is_open | recovering


def _fallback(evaluator: RuleEvaluator, stream: DeviceStream) -> SignalArrays:
    """Signals of a rule without a batched form, from its own ``update``."""
    names = list(stream.values)
    columns = [stream.values[m].tolist() for m in names]
    ts = stream.ts_us.tolist()
    index: list[int] = []
    level: list[int] = []
    keeps: list[int] = []
    value: list[float] = []
    limit: list[float] = []
    nan = float("nan")
    for i, row in enumerate(zip(*columns, strict=True)):
        reading = {m: v for m, v in zip(names, row, strict=True) if v == v}  # noqa: PLR0124 - NaN test
        signal = evaluator.update(ts[i], reading)
        if signal is None:
            continue
        index.append(i)
        level.append(int(signal.level or 0))
        keeps.append(int(signal.keeps() or 0))
        value.append(nan if signal.value is None else signal.value)
        limit.append(nan if signal.limit is None else signal.limit)
    return SignalArrays(
        np.asarray(index, dtype=np.int64),
        np.asarray(level, dtype=np.int8),
        np.asarray(keeps, dtype=np.int8),
        np.asarray(value, dtype=np.float64),
        np.asarray(limit, dtype=np.float64),
        with_hold=True,
    )


def _feed_sparse(
    latch: Latch,
    arrays: SignalArrays,
    ts_us: Ints,
    suppressed: Bools | None,
    buffered: Bools,
) -> list[tuple[int, AlarmEvent]]:
    """Feed the latch where it can change; (reading index, event) in order."""
    n = len(arrays.index)
    if n == 0:
        return []
    ts = ts_us[arrays.index]
    code = arrays.level.astype(np.int64) * 4 + arrays.keeps.astype(np.int64)
    held = suppressed[arrays.index] if suppressed is not None else None
    if held is not None:
        code = code * 2 + held
    bounds = [0, *(np.flatnonzero(np.diff(code)) + 1).tolist(), n]
    out: list[tuple[int, AlarmEvent]] = []
    for begin, end in pairwise(bounds):
        position: int | None = begin
        while position is not None:
            reading = int(arrays.index[position])
            hold_back = held is not None and bool(held[position]) and latch.active is None
            signal: Signal = arrays.signal(position, suppressed=hold_back)
            events = latch.feed(int(ts[position]), signal, late=bool(buffered[reading]))
            out += [(reading, e) for e in events]
            after = position + 1
            upcoming = after if events else end
            for severity, started in latch.run_start.items():
                if latch.active is not None and severity <= latch.active:
                    continue
                due = started + latch.delays_us[severity]
                if due > ts[position]:
                    upcoming = min(upcoming, after + int(np.searchsorted(ts[after:end], due, side="left")))
            position = upcoming if upcoming < end else None
    return out


def _judged(
    device: DeviceConfig, specs: Sequence[RuleSpec], rules: RulesConfig, stream: DeviceStream, order: int
) -> list[_Sortable]:
    suppressed = door_suppression(stream.ts_us, stream.values, round(rules.door_recovery_s * US))
    out: list[_Sortable] = []
    evaluators = [build_evaluator(s) for s in specs if not isinstance(s, CommLossRule)]
    for rank, evaluator in enumerate(evaluators):
        batched: Callable[..., SignalArrays] | None = getattr(evaluator, "signals", None)
        arrays = batched(stream.ts_us, stream.values) if batched is not None else _fallback(evaluator, stream)
        latch = Latch(AlarmKey(device.id, evaluator.metric, evaluator.rule), dict(evaluator.delays_us))
        fed = _feed_sparse(
            latch, arrays, stream.ts_us, suppressed if evaluator.suppressible else None, stream.buffered
        )
        out += [(int(stream.received_us[i]), PHASE_READING, order, i, rank, e) for i, e in fed]
    return out


def _comm_loss(  # noqa: PLR0917 - the parts of one device's timing
    device: DeviceConfig,
    rule: CommLossRule,
    stream: DeviceStream,
    order: tuple[int, int],
    ticks: Ints,
    started_us: int,
) -> list[_Sortable]:
    """Silence timed by arrival: raised when a tick comes at or after last arrival + timeout."""
    key = AlarmKey(device.id, rule.metric or "device", rule.rule_id())
    timeout_us = round(rule.timeout_s * US)
    severity = Severity.ACTION if rule.severity == "action" else Severity.ALERT
    if rule.metric is None:
        carrying = np.arange(len(stream), dtype=np.int64)
    else:
        series = stream.values.get(rule.metric)
        carrying = (
            np.zeros(0, dtype=np.int64)
            if series is None
            else np.flatnonzero(~np.isnan(series)).astype(np.int64)
        )
    arrivals = stream.received_us[carrying]
    previous = np.maximum(np.concatenate([[started_us], arrivals]), started_us)
    due = previous + timeout_us
    following = np.concatenate([arrivals, [np.iinfo(np.int64).max]])
    out: list[_Sortable] = []
    for gap in np.flatnonzero(due <= following).tolist():
        at = int(due[gap])
        tick = int(np.searchsorted(ticks, at, side="left"))
        if tick == len(ticks) or (gap < len(arrivals) and ticks[tick] > following[gap]):
            continue  # no timer ran between the deadline and the next reading
        raised = AlarmEvent(
            EventKind.RAISED, key, at, severity, detail=f"no reading for {rule.timeout_s:g} s"
        )
        out.append((int(ticks[tick]), PHASE_TIMER, order[0], -1, 0, raised))
        if gap < len(arrivals):
            i = int(carrying[gap])
            when = int(arrivals[gap])
            cleared = AlarmEvent(EventKind.CLEARED, key, when, None, late=bool(stream.buffered[i]))
            out.append((when, PHASE_READING, order[1], i, -1, cleared))
    return out


def batched_events(
    loaded: LoadedScenario,
    streams: dict[str, DeviceStream],
    progress: Callable[[int], None] | None = None,
) -> list[EmittedEvent]:
    """The engine phase for in-order readings, device by device."""
    scenario = loaded.scenario
    end = scenario.start_us + scenario.duration_us
    arrivals = [s.received_us for s in streams.values()]
    ticks = np.unique(np.concatenate([*arrivals, np.asarray([*action_times(loaded), end], dtype=np.int64)]))
    out: list[_Sortable] = []
    # Readings at one instant reach the engine in timeline order; timers run in device order.
    arrival_rank = {device_id: rank for rank, device_id in enumerate(streams)}
    for order, device in enumerate(loaded.devices):
        stream = streams.get(device.id)
        specs = list(rules_for(device, loaded.rules))
        if stream is None:
            none = np.zeros(0, dtype=np.int64)
            stream = DeviceStream(device.id, none, none, np.zeros(0, dtype=np.bool_), none, {})
        rank = arrival_rank.get(device.id, len(streams))
        out += _judged(device, specs, loaded.rules, stream, rank)
        for spec in specs:
            if isinstance(spec, CommLossRule):
                out += _comm_loss(device, spec, stream, (order, rank), ticks, scenario.start_us)
        if progress is not None:
            progress(len(stream))
    out.sort(key=lambda item: item[:5])
    return [EmittedEvent(emit, phase, event) for emit, phase, _, _, _, event in out]
