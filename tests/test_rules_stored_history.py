"""The history for late data kept in the database: judging exactly as with it in memory.

The differential test runs the engine twice on the same random feed (late, far too late
and repeated readings included): once holding the reorder horizon's readings itself, once
holding only the readings not yet committed and reading the rest back from a store, as
the collector does. The store here is a dict that keeps the first copy of every reading
fed, too-late ones included, and commits a batch only after the next one is judged (the
collector's pipeline). A read back may run while a batch commits: it then sees that
batch or not, at random. The event streams and rule states must be identical.
The collector's own database is exercised by ``tests/test_late_history_db.py``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coldwatch.rules.config import RulesConfig
from coldwatch.rules.engine import Engine
from coldwatch.rules.evaluators import ThresholdEvaluator
from coldwatch.rules.model import US, AlarmEvent, EngineReading, Signal
from coldwatch.rules.snapshot import capture
from tests.test_rules_checkpoints import KINDS, describe, feed, fleet, states

Key = tuple[str, int, int]


class Collector:
    """An engine with its history in a store, fed in batches as the collector's pipeline does."""

    def __init__(self, engine: Engine, rng: random.Random) -> None:
        self.engine = engine
        self.rng = rng
        self.database: dict[Key, EngineReading] = {}
        self.judged_batch: list[EngineReading] = []  # judged, its commit under way
        self.readbacks = 0

    def commit(self) -> None:
        for reading in self.judged_batch:
            self.database.setdefault((reading.device_id, reading.ts_us, reading.seq), reading)
        self.engine.committed((r.device_id, r.ts_us, r.seq) for r in self.judged_batch)
        self.judged_batch = []

    def read_back(self, device_id: str, since_us: int) -> list[EngineReading]:
        rows = [r for (d, ts, _), r in self.database.items() if d == device_id and ts >= since_us]
        return sorted(rows, key=lambda r: (r.ts_us, r.seq))

    def judge(self, batch: list[EngineReading]) -> list[AlarmEvent]:
        events: list[AlarmEvent] = []
        for reading in batch:
            wanted = self.engine.stored_wanted(reading.device_id, reading.ts_us, reading.seq)
            if wanted is not None:
                self.readbacks += 1
                # The batch under way commits while the database is read: before or after.
                sees_commit = self.rng.random() < 0.5
                if sees_commit:
                    self.commit()
                rows = self.read_back(wanted.device_id, wanted.since_us)
                if not sees_commit and self.rng.random() < 0.5:
                    self.commit()
                self.engine.give_stored(wanted, rows)
            events += self.engine.ingest(reading)
        self.commit()  # the batch before this one
        self.judged_batch = list(batch)
        return events


def with_repeats(readings: list[EngineReading], rng: random.Random) -> list[EngineReading]:
    """``readings`` with a few sent again a little later (a redelivery or a device's re-send)."""
    out = list(readings)
    for index in sorted(rng.sample(range(len(readings)), len(readings) // 30), reverse=True):
        out.insert(min(len(out), index + rng.choice([1, 5, 50, 400])), readings[index])
    return out


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(KINDS),
    st.integers(0, 2**32),
    st.sampled_from([600.0, 3600.0]),
    st.integers(1, 40),
)
def test_a_history_in_the_database_judges_exactly_as_one_in_memory(
    kind: str, seed: int, horizon_s: float, batch: int
) -> None:
    """Late, too-late and repeated readings: the very events, too-late counts and states."""
    rng = random.Random(seed)
    readings = with_repeats(feed(kind, fleet(kind)[0], seed, 400), rng)
    devices, rules = fleet(kind)
    config = RulesConfig.model_validate({**rules, "reorder_horizon_s": horizon_s})
    memory = Engine(devices, config, started_us=0)
    collector = Collector(Engine(devices, config, started_us=0, stored_history=True), rng)
    expected: list[AlarmEvent] = []
    got: list[AlarmEvent] = []
    for start in range(0, len(readings), batch):
        chunk = readings[start : start + batch]
        expected += memory.ingest_many(chunk)
        got += collector.judge(chunk)
    assert describe(got) == describe(expected)
    assert collector.engine.too_late() == memory.too_late()
    assert states(collector.engine) == states(memory)
    assert expected, "the feed raised nothing: it tests too little"
    assert collector.readbacks, "no reading was late: it tests too little"
    # Nothing but what is in flight is held: the batch under way at most.
    collector.commit()
    assert all(not d.stored.pending for d in collector.engine.devices.values() if d.stored is not None)


def test_the_history_holds_only_readings_not_yet_committed() -> None:
    """Hours of readings: the devices hold none of them once committed, and count them."""
    devices, _ = fleet("incubator")
    engine = Engine(devices, RulesConfig(), started_us=0, stored_history=True)
    rng = random.Random(3)
    for step in range(2_000):
        readings = [EngineReading(d.id, step * 10_000_000, feed_values(rng), seq=step) for d in devices]
        engine.ingest_many(readings)
        if step % 7 == 0:
            engine.committed((r.device_id, r.ts_us, r.seq) for r in readings)
    for device in engine.devices.values():
        assert device.stored is not None
        assert len(device.history) == 0
        # Only the readings of steps whose commit was never reported are still held.
        assert len(device.stored.pending) < 2_000 // 7 * 7
        assert len(device.stored.pending) <= (3600 // 10) + 64 * 2, "bounded by the horizon"


def feed_values(rng: random.Random) -> dict[str, float]:
    return {"temp_c": rng.choice([37.0, 37.1, 38.4]), "co2_pct": 5.0}


def test_a_rewind_without_the_readings_read_back_is_refused() -> None:
    """The engine never judges a late reading on a partial history: it says what is missing."""
    devices, _ = fleet("incubator")
    engine = Engine(devices, RulesConfig(), started_us=0, stored_history=True)
    for step in range(200):
        engine.ingest(EngineReading("d0", step * 10_000_000, {"temp_c": 37.0}, seq=step))
    engine.committed(("d0", step * 10_000_000, step) for step in range(200))
    late = EngineReading("d0", 1_005_000_000, {"temp_c": 39.0}, seq=1000)
    assert engine.stored_wanted(late.device_id, late.ts_us, late.seq) is not None
    with pytest.raises(RuntimeError, match="read back"):
        engine.ingest(late)


def test_a_reading_a_rule_failed_on_is_never_judged_again_as_in_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Stored but never judged (a rule raised on it): a later rewind leaves it out, as memory does.

    The collector stores a reading whose rules raised, counts the fault, and tells the
    engine (``Engine.failed``). Read back with the device's other readings, it must not be
    replayed: the history in memory never held it.
    """
    update = ThresholdEvaluator.update
    faults = {"left": 0}

    def flaky(self: ThresholdEvaluator, ts_us: int, values: Mapping[str, float]) -> Signal | None:
        if values.get("temp_c") == 39.0 and faults["left"] > 0:
            faults["left"] -= 1
            raise ValueError("a rule's own fault")
        return update(self, ts_us, values)

    monkeypatch.setattr(ThresholdEvaluator, "update", flaky)
    devices, _ = fleet("incubator")

    def reading(i: int, temp: float) -> EngineReading:
        return EngineReading("d0", (i + 1) * 60 * US, {"temp_c": temp, "co2_pct": 5.0}, seq=i)

    live = [reading(i, 39.0 if 10 <= i < 20 else 37.0) for i in range(40) if i != 5]
    arrivals = [*live, reading(5, 37.0), reading(10, 39.0)]  # a late one, then the failed one sent again
    # Per arrival, the events it produced: when a change shows matters, not only that it does.
    got: dict[bool, tuple[list[list[tuple[object, ...]]], dict[str, bytes | None]]] = {}
    for stored in (False, True):
        faults["left"] = 1  # the first reading at 39.0 fails once
        engine = Engine(devices, RulesConfig(), started_us=0, stored_history=stored)
        collector = Collector(engine, random.Random(1))
        events: list[AlarmEvent] = []
        produced: list[list[tuple[object, ...]]] = []
        for r in arrivals:
            wanted = engine.stored_wanted(r.device_id, r.ts_us, r.seq)
            if wanted is not None:
                engine.give_stored(wanted, collector.read_back(wanted.device_id, wanted.since_us))
            try:
                now = engine.ingest(r)
            except ValueError:
                engine.failed(r)  # the pipeline's part: stored all the same
                now = []
            events += now
            produced.append(describe(now))
            collector.judged_batch = [r]
            collector.commit()
        got[stored] = (produced, {d: snapshot_of(engine, d) for d in engine.devices})
    assert got[True] == got[False]
    kinds = [event.kind.value for event in events]  # the last run's
    assert "revoked" in kinds, "the failed reading, sent again and judged, moved the alarm's start"


def snapshot_of(engine: Engine, device_id: str) -> bytes | None:
    """A device's whole rule state as a snapshot writes it (None before any reading)."""
    snapshot = capture(engine.devices[device_id])
    return None if snapshot is None else snapshot.state


def test_after_a_restart_copies_of_readings_judged_again_are_copies_as_in_memory() -> None:
    """A message redelivered after a crash is a copy, not too late, while memory would hold it."""
    devices, _ = fleet("incubator")
    config = RulesConfig(reorder_horizon_s=600)

    def reading(i: int) -> EngineReading:
        return EngineReading("d0", (i + 1) * 10 * US, {"temp_c": 37.0 + (i % 7) / 10, "co2_pct": 5.0}, seq=i)

    restored = [reading(i) for i in range(50)]
    # Copies of readings judged at the restart, new readings (a trim: 600 s), then copies again.
    arrivals = [restored[-1], restored[45], restored[3], *(reading(i) for i in range(50, 200)), restored[45]]
    seen = {}
    for stored in (False, True):
        engine = Engine(devices, config, started_us=0, stored_history=stored)
        engine.ingest_many(restored)  # the restart's replay of stored readings
        engine.reconcile([])
        collector = Collector(engine, random.Random(1))
        seen[stored] = [(describe(collector.judge([r])), engine.too_late()) for r in arrivals]
    assert seen[True] == seen[False]
    assert seen[False][2][1] == 0, "copies of readings judged at the restart: not too late"
    assert seen[False][-1][1] == 1, "after the trim, as in memory: too late"
