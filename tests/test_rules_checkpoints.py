"""Checkpoints of windowed rules: small whatever the window, and judging exactly as before.

The differential tests run the engine twice on the same random feed (late and
out-of-order readings included): once with the windowed evaluators of the product, whose
checkpoints are tape indices and running sums, and once with the reference evaluators
(``tests/reference_windows.py``: the deques the engine used before, checkpointed by
``copy.deepcopy``). The event streams must be identical, event for event.
"""

from __future__ import annotations

import pickle
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coldwatch.config import DeviceConfig
from coldwatch.rules import engine as engine_module
from coldwatch.rules.config import (
    ConsecutiveRule,
    EventsInWindowRule,
    ForecastRule,
    MktRule,
    RateRule,
    RulesConfig,
    TimeOutOfRangeRule,
)
from coldwatch.rules.engine import Engine
from coldwatch.rules.lifecycle import AlarmBook
from coldwatch.rules.model import US, AlarmEvent, EngineReading
from coldwatch.rules.snapshot import RuleSnapshot, SnapshotError, capture
from tests import reference_windows as ref

REFERENCE: dict[type, Any] = {
    RateRule: ref.RateEvaluator,
    ConsecutiveRule: ref.ConsecutiveEvaluator,
    EventsInWindowRule: ref.EventsInWindowEvaluator,
    TimeOutOfRangeRule: ref.TimeOutOfRangeEvaluator,
    MktRule: ref.MktEvaluator,
    ForecastRule: ref.ForecastEvaluator,
}

# Every windowed rule, with windows short against the feeds so that they slide.
WINDOWED = [
    {"type": "rate", "metric": "temp_c", "window_s": 300, "levels": {"alert": {"limit_per_min": 0.5}}},
    {
        "type": "consecutive",
        "metric": "temp_c",
        "levels": {"alert": {"limit": 37.5, "n": 3, "m": 5}, "action": {"limit": 38.0, "n": 2, "m": 2}},
    },
    {
        "type": "events_in_window",
        "metric": "temp_c",
        "window_s": 900,
        "levels": {"alert": {"limit": 37.5, "count": 3}, "action": {"limit": 38.0, "count": 4}},
    },
    {
        "type": "time_out_of_range",
        "metric": "temp_c",
        "low": 36.0,
        "high": 37.5,
        "window_s": 1800,
        "levels": {"alert": {"budget_s": 300}, "action": {"budget_s": 600}},
    },
    {"type": "mkt", "metric": "temp_c", "window_s": 2400, "levels": {"action": {"limit_c": 37.3}}},
    {
        "type": "forecast",
        "metric": "ln2_level_pct",
        "temp_metric": "temp_c",
        "temp_limit_c": 38.5,
        "window_s": 1200,
        "min_points": 4,
        "levels": {"alert": {"hours": 5}, "action": {"hours": 1}},
    },
]

KINDS = ["incubator", "cryoshipper", "particle_counter", "windowed"]


def fleet(kind: str) -> tuple[list[DeviceConfig], dict[str, Any]]:
    """Two devices of ``kind`` and the rules section (``windowed``: an incubator with every windowed rule)."""
    real = "incubator" if kind == "windowed" else kind
    extra = {"grade": "A"} if real == "particle_counter" else {}
    devices = [
        DeviceConfig.model_validate({"id": f"d{i}", "kind": real, "site": "s", "area": "a", **extra})
        for i in range(2)
    ]
    rules: dict[str, Any] = {}
    if kind == "windowed":
        rules["devices"] = {d.id: WINDOWED for d in devices}
    return devices, rules


def values(kind: str, rng: random.Random, step: int) -> dict[str, float]:
    """One reading's values: mostly in band, with spells out of it."""
    spell = (step // 25) % 3 == 1  # a third of the time, a spell of excursions
    if kind == "cryoshipper":
        return {
            "temp_c": rng.choice([-190.0, -160.0, -149.0, -140.0] if spell else [-190.0, -185.0]),
            "temp_b_c": rng.choice([-190.0, -150.0]),
            "ln2_level_pct": max(0.0, 80.0 - step * 0.2 + rng.uniform(-1, 1)),
            "tilt_deg": rng.choice([2.0, 2.0, 50.0]),
            "lid_open": rng.choice([0.0, 0.0, 1.0]),
            "battery_pct": 90.0,
        }
    if kind == "particle_counter":
        return {
            "particles_0_5um_m3": rng.choice([100.0, 2000.0, 4000.0] if spell else [100.0]),
            "particles_5_0um_m3": rng.choice([0.0, 35.0] if spell else [0.0]),
        }
    return {
        "temp_c": round(rng.choice([36.5, 37.0, 37.6, 38.3, 35.5] if spell else [37.0, 37.1]), 2),
        "co2_pct": rng.choice([5.0, 5.0, 6.2]),
        "door_open": rng.choice([0.0] * 20 + [1.0]),
        "ln2_level_pct": max(0.0, 90.0 - step * 0.1 + rng.uniform(-0.5, 0.5)),
    }


def feed(kind: str, devices: list[DeviceConfig], seed: int, count: int) -> list[EngineReading]:
    """``count`` readings per device at irregular times, some late (within and beyond the horizon)."""
    rng = random.Random(seed)
    out: list[EngineReading] = []
    for device in devices:
        ts = 0
        for step in range(count):
            ts += rng.choice([10, 10, 10, 30, 60, 300])
            out.append(EngineReading(device.id, ts * US, values(kind, rng, step), seq=step))
    out.sort(key=lambda r: (r.ts_us, r.device_id))
    # Hold some readings back: a few places late, or far behind (a backfill).
    arrivals = [(index, r) for index, r in enumerate(out)]
    moved = [(index + rng.choice([3, 20, 200, 2000]), r) for index, r in arrivals if rng.random() < 0.05]
    kept = [(index, r) for index, r in arrivals if all(r is not m for _, m in moved)]
    return [r for _, r in sorted(kept + moved, key=lambda pair: pair[0])]


def describe(events: list[AlarmEvent]) -> list[tuple[object, ...]]:
    """Everything an event says, its revoked event included."""
    return [
        (
            e.identity(),
            e.value,
            e.limit,
            e.late,
            e.detail,
            None if e.revokes is None else e.revokes.identity(),
        )
        for e in events
    ]


@contextmanager
def reference_evaluators() -> Iterator[None]:
    """Build windowed rules with the reference (deep-copied) evaluators while inside."""
    with patch.dict(engine_module._EVALUATORS, REFERENCE):
        yield


def run(kind: str, readings: list[EngineReading], horizon_s: float) -> tuple[list[AlarmEvent], int]:
    """The events of a fresh engine fed ``readings``, and its count of readings too late."""
    devices, rules = fleet(kind)
    config = RulesConfig.model_validate({**rules, "reorder_horizon_s": horizon_s})
    engine = Engine(devices, config, started_us=0)
    events = engine.ingest_many(readings)
    return events, engine.too_late()


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(KINDS), st.integers(0, 2**32), st.sampled_from([0.0, 600.0, 3600.0]))
def test_tape_checkpoints_judge_exactly_as_deep_copies(kind: str, seed: int, horizon_s: float) -> None:
    """On random feeds with late readings, the engine emits the very events of the deep-copy engine."""
    readings = feed(kind, fleet(kind)[0], seed, 400)
    new = run(kind, readings, horizon_s)
    with reference_evaluators():
        old = run(kind, readings, horizon_s)
    assert describe(new[0]) == describe(old[0])
    assert new[1] == old[1]
    assert new[0], "the feed raised nothing: it tests too little"


def cryoshipper_day() -> tuple[Engine, list[EngineReading]]:
    """A cryoshipper engine and 24 h of its readings every 10 s, warm enough to hold out-of-range spans."""
    devices, _ = fleet("cryoshipper")
    rng = random.Random(7)
    readings = [
        EngineReading(
            "d0",
            step * 10 * US,
            {
                **values("cryoshipper", rng, step),
                "temp_c": -149.0 if (step // 60) % 2 else -190.0,  # ten minutes out, ten in
                "ln2_level_pct": 80.0 - step * 1e-3,
            },
            seq=step,
        )
        for step in range(8_640)
    ]
    return Engine(devices[:1], RulesConfig(), started_us=0), readings


def test_a_checkpoint_of_a_24_hour_window_is_a_few_numbers() -> None:
    """A cryoshipper's checkpoint with its 24 h windows full is under 2 KB (copied windows: hundreds)."""
    engine, readings = cryoshipper_day()
    engine.ingest_many(readings)
    saved = engine.devices["d0"].judged.save()
    assert len(pickle.dumps(saved)) < 2_000


def test_windows_hold_their_window_and_horizon_not_all_history() -> None:
    """After three days of readings every 10 s, a 30-minute window holds about its window plus the horizon."""
    devices, rules = fleet("windowed")
    config = RulesConfig.model_validate({**rules, "reorder_horizon_s": 600})
    engine = Engine(devices[:1], config, started_us=0)
    rng = random.Random(3)
    for step in range(3 * 8_640):
        engine.ingest(EngineReading("d0", step * 10 * US, values("windowed", rng, step), seq=step))
    held = {
        type(ev).__name__: len(getattr(ev, "_tape").columns[0])  # noqa: B009 - what the window holds
        for ev in engine.devices["d0"].judged.evaluators
        if hasattr(ev, "_tape")
    }
    # Readings of a window plus the horizon plus a checkpoint interval, at 10 s.
    assert held["TimeOutOfRangeEvaluator"] <= (1800 + 600) // 10 + 64 * 8
    assert held["MktEvaluator"] <= (2400 + 600) // 10 + 64 * 8
    assert held["RateEvaluator"] <= (300 + 600) // 10 + 64 * 8


def test_windows_forget_without_a_reorder_horizon() -> None:
    """With no reorder horizon (nothing rewound), a window still drops what left it."""
    devices, rules = fleet("windowed")
    config = RulesConfig.model_validate({**rules, "reorder_horizon_s": 0})
    engine = Engine(devices[:1], config, started_us=0)
    rng = random.Random(4)
    for step in range(2 * 8_640):
        engine.ingest(EngineReading("d0", step * 10 * US, values("windowed", rng, step), seq=step))
    mkt = next(ev for ev in engine.devices["d0"].judged.evaluators if type(ev).__name__ == "MktEvaluator")
    assert len(getattr(mkt, "_tape").columns[0]) <= 2400 // 10 + 64 + 1  # noqa: B009 - what it holds


def restarted(
    kind: str, stored: list[EngineReading], batch: int, horizon_s: float
) -> tuple[Engine, Engine, list[AlarmEvent]]:
    """The live engine after ``stored`` (judged in batches, snapshots kept as a collector
    commits them), and a new engine restored from those snapshots and the stored readings;
    and the live engine's events.
    """
    devices, rules = fleet(kind)
    config = RulesConfig.model_validate({**rules, "reorder_horizon_s": horizon_s})
    live = Engine(devices, config, started_us=0)
    book = AlarmBook()
    snapshots: dict[str, RuleSnapshot] = {}
    events: list[AlarmEvent] = []
    for start in range(0, len(stored), batch):
        chunk = stored[start : start + batch]
        produced = live.ingest_many(chunk)
        events += produced
        book.apply(produced, 0)
        for snapshot in live.snapshots_due({r.device_id for r in chunk}):
            snapshots[snapshot.device_id] = snapshot  # replaced, as in the table
    again = Engine(devices, config, started_us=0)
    by_position = sorted(stored, key=lambda r: (r.ts_us, r.seq))
    for device in devices:
        kept = snapshots.get(device.id)
        assert kept is not None
        assert again.restore_snapshot(kept)
        # A collector's storage keeps one copy of each reading: judge those after the snapshot.
        after = {(r.ts_us, r.seq): r for r in by_position if r.device_id == device.id}
        again.ingest_many(r for key, r in sorted(after.items()) if key > (kept.ts_us, kept.seq))
    again.reconcile(a for a in book.open.values() if a.active)
    return live, again, events


def states(engine: Engine) -> dict[str, bytes]:
    """Every device's whole rule state, as a snapshot writes it."""
    out = {}
    for device_id, device in engine.devices.items():
        snapshot = capture(device)
        assert snapshot is not None
        out[device_id] = snapshot.state
    return out


def judged_after(live: Engine, rest: list[EngineReading], horizon_s: float) -> list[EngineReading]:
    """The readings of ``rest`` both engines must judge alike: after the restart, within the horizon.

    Older than the restart, a reading is too late for the restored rules (they begin their
    history there). Beyond the horizon, whether a reading is judged again depends on where
    the last checkpoint before it lies (at least the horizon is kept), which differs once
    the checkpoints are taken from another point on.
    """
    restart = {d: live.devices[d].position() or (-(2**63), -1) for d in live.devices}
    newest = dict(restart)
    horizon_us = round(horizon_s * US)
    out = []
    for r in rest:
        position, device_id = (r.ts_us, r.seq), r.device_id
        if position <= restart[device_id]:
            continue
        if position < newest[device_id] and (horizon_us == 0 or r.ts_us < newest[device_id][0] - horizon_us):
            continue
        out.append(r)
        newest[device_id] = max(newest[device_id], position)
    return out


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(KINDS),
    st.integers(0, 2**32),
    st.sampled_from([0.0, 600.0, 3600.0]),
    st.integers(1, 50),
    st.integers(100, 700),
)
def test_a_restart_from_snapshots_judges_on_exactly_as_without_it(
    kind: str, seed: int, horizon_s: float, batch: int, cut: int
) -> None:
    """Restored from snapshots and the readings stored after them, rules hold the live state, judge alike."""
    readings = feed(kind, fleet(kind)[0], seed, 400)
    stored, rest = readings[:cut], readings[cut:]
    live, again, _ = restarted(kind, stored, batch, horizon_s)
    assert states(again) == states(live)  # window sums, latches and pending runs, door
    after = judged_after(live, rest, horizon_s)
    assert describe(again.ingest_many(after)) == describe(live.ingest_many(after))
    assert states(again) == states(live)


def test_a_snapshot_of_other_rules_is_not_taken() -> None:
    """A snapshot whose rules differ from the device's (configuration changed) is refused."""
    devices, rules = fleet("windowed")
    live = Engine(devices, RulesConfig.model_validate(rules), started_us=0)
    live.ingest_many(feed("windowed", devices, 1, 50))
    [snapshot, _] = live.snapshots_due(["d0", "d1"])
    other = Engine(devices, RulesConfig.model_validate({**rules, "reorder_horizon_s": 60}), started_us=0)
    assert not other.restore_snapshot(snapshot)
    assert other.devices["d0"].position() is None


def test_a_damaged_snapshot_is_refused_and_leaves_the_device_fresh() -> None:
    """A snapshot damaged in storage raises SnapshotError and leaves the device as it was, fresh."""
    devices, rules = fleet("windowed")
    config = RulesConfig.model_validate(rules)
    live = Engine(devices, config, started_us=0)
    live.ingest_many(feed("windowed", devices, 2, 80))
    [good, _] = live.snapshots_due(["d0", "d1"])
    size = int.from_bytes(good.state[4:8], "big")
    header, blobs = good.state[8 : 8 + size], good.state[8 + size :]
    # Each keeps the header's length (what a damaged page or a bug would leave).
    damaged = [
        good.state[:-3],  # cut short
        good.state[:8] + header.replace(b"[", b"{", 1) + blobs,  # not JSON of a state
        good.state[:8] + header.replace(b'{"b":0}', b'{"c":0}', 1) + blobs,  # not a blob reference
        good.state[:8] + header.replace(b"[[[null", b"[[[true", 1) + blobs,  # state for a stateless rule
        b"XXXX" + good.state[4:],
    ]
    for state in damaged:
        again = Engine(devices, config, started_us=0)
        with pytest.raises(SnapshotError):
            again.restore_snapshot(replace(good, state=state))
        assert again.devices["d0"].position() is None
        assert again.devices["d0"].floor is None
