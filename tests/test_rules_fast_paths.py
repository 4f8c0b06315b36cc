"""The device's fast paths judge exactly as the plain loop: every rule updated, every latch fed.

``DeviceRules._judge`` skips what cannot change an alarm: a stateless rule whose reading
is calm while its alarm is idle, and the latch of an idle alarm fed a signal without a
level (or held back during door recovery). The reference here is the loop without any
shortcut; the engine is run with each on the same random feeds of every kind (late,
out-of-order and door-recovery readings included) and must emit the very same events.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest.mock import patch

from hypothesis import given, settings
from hypothesis import strategies as st

from coldwatch.rules.config import RulesConfig
from coldwatch.rules.device import DOOR_METRIC, DeviceRules, _Judged
from coldwatch.rules.engine import Engine
from coldwatch.rules.lifecycle import Alarm, AlarmState
from coldwatch.rules.model import US, AlarmEvent, AlarmKey, EngineReading, EventKind, Severity, Signal
from tests.test_rules_checkpoints import KINDS, describe, feed, fleet


def plain_judge(self: DeviceRules, state: _Judged, reading: EngineReading, *, late: bool) -> list[AlarmEvent]:
    """Judge a reading with every rule and every latch, no shortcut (the reference)."""
    ts = reading.ts_us
    door = reading.values.get(DOOR_METRIC)
    if door is not None:
        if state.door_open and door < 0.5:
            state.door_closed_us = ts
        state.door_open = door >= 0.5
    suppressed = state.door_open or (
        state.door_closed_us is not None and ts - state.door_closed_us < self.door_recovery_us
    )
    events: list[AlarmEvent] = []
    for evaluator, latch in zip(state.evaluators, state.latches, strict=True):
        signal = evaluator.update(ts, reading.values)
        if signal is None:
            continue
        if suppressed and evaluator.suppressible and latch.active is None:
            signal = Signal(None, signal.value, signal.limit)
        events += latch.feed(ts, signal, late=late)
    return events


@contextmanager
def plain_device() -> Iterator[None]:
    """Judge with :func:`plain_judge` while inside."""
    with patch.object(DeviceRules, "_judge", plain_judge):
        yield


def run(kind: str, readings: list[EngineReading], horizon_s: float) -> tuple[list[AlarmEvent], int]:
    """The events of a fresh engine fed ``readings``, and its count of readings too late."""
    devices, rules = fleet(kind)
    config = RulesConfig.model_validate({**rules, "reorder_horizon_s": horizon_s})
    engine = Engine(devices, config, started_us=0)
    return engine.ingest_many(readings), engine.too_late()


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(KINDS), st.integers(0, 2**32), st.sampled_from([0.0, 600.0, 3600.0]))
def test_the_fast_paths_judge_exactly_as_the_plain_loop(kind: str, seed: int, horizon_s: float) -> None:
    """On random feeds with late readings and door openings, the shortcuts change no event."""
    readings = feed(kind, fleet(kind)[0], seed, 400)
    fast = run(kind, readings, horizon_s)
    with plain_device():
        plain = run(kind, readings, horizon_s)
    assert describe(fast[0]) == describe(plain[0])
    assert fast[1] == plain[1]
    assert fast[0], "the feed raised nothing: it tests too little"


def test_an_alarm_restored_after_quiet_readings_clears_at_the_next_calm_reading() -> None:
    """A stored alarm taken back by ``reconcile`` is judged at the next reading, screen or not."""
    devices, _ = fleet("cryoshipper")
    engine = Engine(devices[:1], RulesConfig(), started_us=0)
    calm = {
        "temp_c": -190.0,
        "temp_b_c": -190.0,
        "ln2_level_pct": 80.0,
        "tilt_deg": 2.0,
        "lid_open": 0.0,
        "battery_pct": 90.0,
    }
    for step in range(5):
        assert engine.ingest(EngineReading("d0", step * 10 * US, calm, seq=step)) == []
    key = AlarmKey("d0", "tilt_deg", next(s.rule_id() for s in engine.rules["d0"] if s.metric == "tilt_deg"))
    stored = Alarm(1, key, Severity.ALERT, AlarmState.ACTIVE_UNACK, 20 * US, 20 * US)
    engine.reconcile([stored])
    events = engine.ingest(EngineReading("d0", 60 * US, calm, seq=6))
    assert [(e.kind, e.key) for e in events] == [(EventKind.CLEARED, key)]


def _evaluators_with(attribute: str) -> list[Any]:
    """Every built-in evaluator with ``attribute`` (``calm_range``, ``calm_pair``), of every kind."""
    out: list[Any] = []
    for kind in ("incubator", "cryoshipper", "particle_counter"):
        devices, _ = fleet(kind)
        engine = Engine(devices[:1], RulesConfig(), started_us=0)
        out += [ev for ev in engine.devices["d0"].judged.evaluators if hasattr(ev, attribute)]
    return out


SCREENED = _evaluators_with("calm_range")
PAIRED = _evaluators_with("calm_pair")


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(SCREENED),
    st.one_of(
        st.floats(allow_nan=False),
        st.sampled_from([-150.0, 20.0, 45.0, 0.5, 37.5, 36.5, 0.0, 1.0]).flatmap(
            lambda v: st.sampled_from([v, math.nextafter(v, math.inf), math.nextafter(v, -math.inf)])
        ),
    ),
)
def test_a_calm_range_says_exactly_what_calm_says(evaluator: Any, value: float) -> None:
    """A stateless rule's ``calm_range`` holds a value exactly when its ``calm`` is true."""
    metric, low, high = evaluator.calm_range
    assert evaluator.calm({metric: value}) == (low <= value <= high)
    assert evaluator.calm({"other": value})


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(PAIRED),
    st.floats(min_value=-200.0, max_value=60.0),
    st.one_of(
        st.floats(min_value=-10.0, max_value=10.0),
        st.sampled_from([2.0, 3.0, 5.0, -2.0, -3.0, -5.0, 0.0]).flatmap(
            lambda d: st.sampled_from([d, math.nextafter(d, math.inf), math.nextafter(d, -math.inf)])
        ),
    ),
    st.booleans(),
    st.booleans(),
)
def test_a_calm_pair_says_exactly_what_calm_says(
    evaluator: Any, a: float, difference: float, has_a: bool, has_b: bool
) -> None:
    """A stateless rule's ``calm_pair`` holds a reading exactly when its ``calm`` is true."""
    metric, other, bound = evaluator.calm_pair
    values = {}
    if has_a:
        values[metric] = a
    if has_b:
        values[other] = a + difference
    expected = not (has_a and has_b) or abs(values[metric] - values[other]) <= bound
    assert evaluator.calm(values) == expected


def test_devices_of_one_profile_share_one_screen() -> None:
    """The screen is built once per profile, not per device or per rewind."""
    devices, _ = fleet("cryoshipper")
    engine = Engine(devices, RulesConfig(), started_us=0)
    first, second = (engine.devices[d.id].judged for d in devices)
    assert first.screen is second.screen
    ranges, pairs, checks = first.screen
    assert {metric for metric, _, _ in ranges} == {
        "temp_c",
        "temp_b_c",
        "ln2_level_pct",
        "tilt_deg",
        "lid_open",
        "battery_pct",
    }
    # Probe disagreement: no single metric's range, a bound on the two probes' difference.
    assert [(metric, other) for metric, other, _ in pairs] == [("temp_c", "temp_b_c")]
    assert checks == ()


def test_devices_of_one_profile_share_a_rules_settings_not_its_state() -> None:
    """Each device's windowed evaluator is its own, made from one per rule: settings shared, state not.

    Two devices of a profile, one fed readings out of every band and the other none: the
    second judges its own readings afterwards exactly as a device of an engine that never
    saw the first one's.
    """
    for kind in ("cryoshipper", "particle_counter"):  # every windowed rule of the default profiles
        devices, rules = fleet(kind)
        config = RulesConfig.model_validate(rules)
        engine = Engine(devices, config, started_us=0)
        first, second = (engine.devices[d.id].judged.evaluators for d in devices)
        renewed = [(a, b) for a, b in zip(first, second, strict=True) if hasattr(a, "fresh")]
        assert renewed, kind
        for a, b in renewed:
            assert a is not b
            assert a.delays_us is b.delays_us
            assert getattr(a, "_levels") is getattr(b, "_levels")  # noqa: B009 - private, what is shared
        alone = Engine(devices[1:], config, started_us=0)
        readings = feed(kind, devices, 11, 600)
        for reading in readings:
            if reading.device_id == devices[0].id:
                engine.ingest(reading)
        together = [e for r in readings if r.device_id == devices[1].id for e in engine.ingest(r)]
        apart = [e for r in readings if r.device_id == devices[1].id for e in alone.ingest(r)]
        assert together, kind  # the feed raises alarms on the second device too
        assert [e.identity() for e in together] == [e.identity() for e in apart]
