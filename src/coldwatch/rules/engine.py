"""The rules engine: readings and the current time in, alarm events out. Pure.

The daemon, the validation replay and the tests all drive this same code. It never
reads the clock: ``advance(now_us)`` tells it the time for communication-loss timers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from coldwatch.config import DeviceConfig
from coldwatch.rules.config import (
    CommLossRule,
    ConsecutiveRule,
    EventsInWindowRule,
    ForecastRule,
    HeldRule,
    MktRule,
    ProbeDisagreementRule,
    RateRule,
    RulesConfig,
    RuleSpec,
    ThresholdRule,
    TimeOutOfRangeRule,
)
from coldwatch.rules.device import DeviceRules
from coldwatch.rules.evaluators import HeldEvaluator, ProbeDisagreementEvaluator, ThresholdEvaluator
from coldwatch.rules.forecast import ForecastEvaluator
from coldwatch.rules.lifecycle import Alarm
from coldwatch.rules.model import US, AlarmEvent, AlarmKey, EngineReading, RuleEvaluator
from coldwatch.rules.profiles import rules_for
from coldwatch.rules.snapshot import (
    SNAPSHOT_EVERY_READINGS,
    SNAPSHOT_EVERY_S,
    RuleSnapshot,
    apply,
    capture,
    fingerprint,
)
from coldwatch.rules.windows import (
    ConsecutiveEvaluator,
    EventsInWindowEvaluator,
    MktEvaluator,
    RateEvaluator,
    TimeOutOfRangeEvaluator,
)

__all__ = ["Engine", "Readback", "build_evaluator"]


@dataclass(frozen=True, slots=True)
class Readback:
    """Readings a rewind needs from the database: a device's, after ``after`` (ts, seq)."""

    device_id: str
    after: tuple[int, int]
    pending: list[EngineReading]  # not yet committed when it was asked for

    @property
    def since_us(self) -> int:
        """Read the device's stored readings from this timestamp on."""
        return self.after[0]


_EVALUATORS: dict[type, Callable[[Any], RuleEvaluator]] = {
    ThresholdRule: ThresholdEvaluator,
    HeldRule: HeldEvaluator,
    ProbeDisagreementRule: ProbeDisagreementEvaluator,
    RateRule: RateEvaluator,
    ConsecutiveRule: ConsecutiveEvaluator,
    EventsInWindowRule: EventsInWindowEvaluator,
    TimeOutOfRangeRule: TimeOutOfRangeEvaluator,
    MktRule: MktEvaluator,
    ForecastRule: ForecastEvaluator,
}


def build_evaluator(spec: RuleSpec) -> RuleEvaluator:
    """The evaluator for one rule spec (communication loss is handled by the device)."""
    factory = _EVALUATORS.get(type(spec))
    if factory is None:
        msg = f"no evaluator for {type(spec).__name__}"
        raise TypeError(msg)
    return factory(spec)


def _factory(spec: RuleSpec) -> Callable[[], RuleEvaluator]:
    """What makes a device's evaluator of ``spec``.

    A stateless one is shared by every device; one with a ``fresh`` method is made from a
    prototype, sharing its settings; any other is built anew for each device.
    """
    prototype = build_evaluator(spec)
    if getattr(prototype, "stateless", False):
        return lambda: prototype
    fresh: Callable[[], RuleEvaluator] | None = getattr(prototype, "fresh", None)
    if fresh is not None:
        return fresh
    return partial(build_evaluator, spec)


class Engine:
    """Rule state of every registered device."""

    def __init__(
        self,
        devices: Sequence[DeviceConfig],
        rules: RulesConfig,
        *,
        started_us: int,
        reorder_horizon_s: float | None = None,
        stored_history: bool = False,
    ) -> None:
        """Rule state of ``devices``, fresh.

        ``stored_history``: the readings of the reorder horizon are in a database, read back
        for a rewind (:meth:`stored_wanted`), not kept here (coldwatch.rules.history).
        """
        horizon_s = rules.reorder_horizon_s if reorder_horizon_s is None else reorder_horizon_s
        # Devices of one kind, grade and room state without rules of their own share one
        # list of (immutable) rule specs: 10,000 devices must not mean 10,000 copies.
        shared: dict[tuple[object, ...], list[RuleSpec]] = {}
        factories: dict[int, Callable[[], RuleEvaluator]] = {}  # by spec (all alive during __init__)
        self.rules = {}
        for d in devices:
            if d.id in rules.devices:
                self.rules[d.id] = rules_for(d, rules)
                continue
            profile = (d.kind, d.grade, d.room_state)
            if profile not in shared:
                shared[profile] = rules_for(d, rules)
            self.rules[d.id] = shared[profile]
        self.devices: dict[str, DeviceRules] = {}
        prints: dict[int, str] = {}  # fingerprint by spec list (shared ones: once)
        for device in devices:
            specs = self.rules[device.id]
            evaluators = []
            for s in specs:
                if isinstance(s, CommLossRule):
                    continue
                factory = factories.get(id(s))
                if factory is None:  # once per spec, not once per device
                    factory = factories[id(s)] = _factory(s)
                evaluators.append(factory)
            comm = [s for s in specs if isinstance(s, CommLossRule)]
            self.devices[device.id] = DeviceRules.build(
                device.id,
                evaluators,
                comm,
                door_recovery_s=rules.door_recovery_s,
                horizon_s=horizon_s,
                started_us=started_us,
                stored_history=stored_history,
            )
            rules_device = self.devices[device.id]
            if id(specs) not in prints:
                prints[id(specs)] = fingerprint(
                    specs, horizon_us=rules_device.horizon_us, door_recovery_us=rules_device.door_recovery_us
                )
            rules_device.fingerprint = prints[id(specs)]
        self._snapshot_every_us = round(min(SNAPSHOT_EVERY_S, horizon_s / 4) * US)

    def ingest(self, reading: EngineReading) -> list[AlarmEvent]:
        """Judge one reading of a registered device."""
        return self.devices[reading.device_id].ingest(reading)

    def ingest_many(self, readings: Iterable[EngineReading]) -> list[AlarmEvent]:
        """Judge several readings in the order given."""
        events: list[AlarmEvent] = []
        for reading in readings:
            events += self.devices[reading.device_id].ingest(reading)
        return events

    def stored_wanted(self, device_id: str, ts_us: int, seq: int) -> Readback | None:
        """What must be read back from the database before a reading is judged (None: nothing).

        With the history in the database, a late reading rewinds its device to a checkpoint
        and judges again every reading after it: those committed are read back (from
        ``Readback.since_us``) and given with :meth:`give_stored`; those not yet committed
        are here. The ones pending now are kept in the :class:`Readback`, as a batch
        committed while the database is read may or may not be in what it returns.
        """
        device = self.devices.get(device_id)
        if device is None or device.stored is None:
            return None
        after = device.stored_from(ts_us, seq)
        if after is None:
            return None
        return Readback(device_id, after, list(device.stored.pending.values()))

    def give_stored(self, readback: Readback, readings: Iterable[EngineReading]) -> None:
        """The readings read back for ``readback``: the next rewind of its device judges them."""
        stored = self.devices[readback.device_id].stored
        assert stored is not None
        stored.given = (readback.after, [*readings, *readback.pending])

    def committed(self, positions: Iterable[tuple[str, int, int]]) -> None:
        """Readings (device, ts, seq) now committed: the database holds them from here on."""
        devices = self.devices
        for device_id, ts_us, seq in positions:
            device = devices.get(device_id)
            stored = None if device is None else device.stored
            if stored is not None and stored.pending:
                stored.pending.pop((ts_us, seq), None)  # in the database now (every reading: inline)

    def took_copy(self, device_id: str) -> bool:
        """Whether the device's last reading was one it had judged already (and forget it).

        The same (ts, seq) again: a redelivery, or a message against the payload contract
        (a seq and time used twice). Its values are not the reading the rules judged, so it
        is not stored: the database then holds, for a rewind to read back, exactly what
        was judged (a second message with other metrics would otherwise add its values).
        """
        device = self.devices.get(device_id)
        if device is None or not device.copied:
            return False
        device.copied = False
        return True

    def failed(self, reading: EngineReading) -> None:
        """A rule failed on ``reading`` (it raised): stored all the same, it was not judged.

        Never judged again with the history in the database (one in memory never held it):
        a rewind leaves it out of what is read back, unless it is sent again and judged.
        """
        device = self.devices.get(reading.device_id)
        if device is not None and device.stored is not None:
            device.stored.fail((reading.ts_us, reading.seq))

    def status(self, device_id: str, *, online: bool, at_us: int) -> list[AlarmEvent]:
        """A device's retained online/offline status."""
        return self.devices[device_id].status(online, at_us)

    def advance(self, now_us: int) -> list[AlarmEvent]:
        """Fire timers due by ``now_us`` (communication loss)."""
        events: list[AlarmEvent] = []
        for device in self.devices.values():
            events += device.advance(now_us)
        return events

    def keys(self) -> set[AlarmKey]:
        """Every alarm key the rules can raise."""
        return {key for device in self.devices.values() for key in device.alarm_keys()}

    def reconcile(self, active: Iterable[Alarm]) -> None:
        """Make every device's alarm state match the stored active alarms (after a restart)."""
        by_device: dict[str, list[Alarm]] = {device_id: [] for device_id in self.devices}
        for alarm in active:
            if alarm.key.device_id in by_device:
                by_device[alarm.key.device_id].append(alarm)
        for device_id, device in self.devices.items():
            device.reconcile(by_device[device_id])

    def snapshots_due(self, device_ids: Iterable[str]) -> list[RuleSnapshot]:
        """Snapshots of those of ``device_ids`` whose last is old enough to be replaced.

        Written in the transaction of the batch whose readings were just judged, so a
        snapshot never runs ahead of the readings stored (coldwatch.rules.snapshot). Due
        after ``SNAPSHOT_EVERY_S`` of device time (a quarter of the reorder horizon if
        shorter; every batch without one), ``SNAPSHOT_EVERY_READINGS`` readings, or a
        rewind (a late reading changed the state a snapshot holds).
        """
        out = []
        for device_id in device_ids:
            device = self.devices.get(device_id)
            if device is None:
                continue
            position = device.position()
            if position is None or (position == device.snapshot_at and not device.rewound):
                continue  # nothing judged since the last (a late reading rewinds: then due)
            last = device.snapshot_at
            if not (
                last is None
                or device.rewound
                or position[0] - last[0] >= self._snapshot_every_us
                or device.since_snapshot >= SNAPSHOT_EVERY_READINGS
            ):
                continue
            snapshot = capture(device)
            device.snapshot_at, device.since_snapshot, device.rewound = position, 0, False
            if snapshot is not None:
                out.append(snapshot)
        return out

    def restore_snapshot(self, snapshot: RuleSnapshot) -> bool:
        """Put a device in the state of its stored snapshot; False if it is of other rules."""
        device = self.devices.get(snapshot.device_id)
        return device is not None and apply(device, snapshot)

    def too_late(self) -> int:
        """Readings that arrived too far behind to be judged again."""
        return sum(d.too_late for d in self.devices.values())

    def predictions_h(self) -> dict[str, float | None]:
        """Each cryoshipper's predicted remaining hold time, hours."""
        # Read from the live state each time: a rewind replaces a device's evaluators.
        return {
            device_id: evaluator.prediction_h
            for device_id, device in self.devices.items()
            for evaluator in device.judged.evaluators
            if isinstance(evaluator, ForecastEvaluator)
        }

    def all_limits(self) -> list[tuple[str, str, str, str, str, float]]:
        """Every configured limit: (device, metric, rule, severity, direction, value).

        ``direction`` says how the value is judged: ``high``/``low`` for a value limit,
        or the quantity of a derived limit (``rate_per_min``, ``budget_s``, ``held_s``,
        ``difference``, ``mkt_c``, ``hours_min``, ``timeout_s``).
        """
        return list(self.iter_limits())

    def iter_limits(self) -> Iterator[tuple[str, str, str, str, str, float]]:
        """:meth:`all_limits`, one at a time (10,000 devices have a hundred thousand)."""
        for device_id, specs in self.rules.items():
            for spec in specs:
                for row in _limits_of(spec):
                    yield (device_id, *row)

    def limits(self) -> list[tuple[str, str, str, str, str, float]]:
        """The limits on a reading's own value (the lines a dashboard draws on its plot)."""
        return [row for row in self.all_limits() if row[4] in {"high", "low"} and row[3] != "range"]


def _limits_of(spec: RuleSpec) -> list[tuple[str, str, str, str, float]]:  # noqa: PLR0911 - one per kind
    """(metric, rule, severity, direction, value) for each level of one rule."""
    rule = spec.rule_id()
    match spec:
        case ThresholdRule():
            return [(spec.metric, rule, sev, spec.direction, lv.limit) for sev, lv in spec.levels.items()]
        case ConsecutiveRule() | EventsInWindowRule():
            return [(spec.metric, rule, sev, "high", lv.limit) for sev, lv in spec.levels.items()]
        case RateRule():
            return [
                (spec.metric, rule, sev, "rate_per_min", lv.limit_per_min) for sev, lv in spec.levels.items()
            ]
        case TimeOutOfRangeRule():
            bounds = [("low", spec.low), ("high", spec.high)]
            return [
                *[(spec.metric, rule, sev, "budget_s", lv.budget_s) for sev, lv in spec.levels.items()],
                *[(spec.metric, rule, "range", side, v) for side, v in bounds if v is not None],
            ]
        case MktRule():
            return [(spec.metric, rule, sev, "mkt_c", lv.limit_c) for sev, lv in spec.levels.items()]
        case HeldRule():
            return [(spec.metric, rule, sev, "held_s", lv.delay_s) for sev, lv in spec.levels.items()]
        case ProbeDisagreementRule():
            return [(spec.metric, rule, sev, "difference", lv.limit) for sev, lv in spec.levels.items()]
        case ForecastRule():
            return [(spec.metric, rule, sev, "hours_min", lv.hours) for sev, lv in spec.levels.items()]
        case CommLossRule():
            return [(spec.metric or "device", rule, spec.severity, "timeout_s", spec.timeout_s)]
    return []
