"""Late readings judged again from the history in the database, through the whole collector.

The collector keeps only the readings not yet committed (``rules.late_history:
database``, the default) and reads a device's readings since a checkpoint back from
SQLite or PostgreSQL when a late one arrives. Its stored alarm history must be exactly
what the pure engine, holding the whole horizon in memory, makes of the same readings in
the same order: late readings that move an alarm (revoked and raised again), a repeated
reading, and readings too late to be judged again.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from coldwatch.broker import RunningBroker
from coldwatch.config import DeviceConfig
from coldwatch.payload import Telemetry
from coldwatch.rules.config import RulesConfig
from coldwatch.rules.engine import Engine
from coldwatch.rules.lifecycle import AlarmBook
from coldwatch.rules.model import US, EngineReading
from coldwatch.rules.snapshot import capture
from coldwatch.storage import Batch, open_storage
from tests.conftest import (
    Backend,
    db_query,
    eventually,
    publish_all,
    reading,
    running_daemon,
    telemetry_topic,
    write_config,
)
from tests.test_alarms_e2e import NO_COMM_LOSS

DUPLICATES = "coldwatch_duplicate_readings_total"
Sent = tuple[int, float, float]  # (seq, ts in s, temperature)
# A windowed rule: its state holds every reading of its window, so one missing from a
# replay shows.
OUT_OF_RANGE = {
    "type": "time_out_of_range",
    "metric": "temp_c",
    "low": 36.0,
    "high": 37.5,
    "window_s": 1800,
    "levels": {"alert": {"budget_s": 900}},
}


def arrivals(base: float) -> tuple[list[Sent], list[Sent]]:
    """(live, late): an incubator run every 10 s, and what arrives after it, late.

    In band for 1,000 s (longer than the test's 600 s reorder horizon), 1 min above the
    alert limit, 3 min above the action limit, in band again. Some
    of the excursion's readings arrive late, with in-band readings between the others'
    times that break the on-delay runs (the alarm raised live is revoked and raised later),
    one reading sent twice, and one older than the reorder horizon (stored, not judged).
    """
    temps = [37.0] * 106 + [37.8] * 6 + [38.6] * 18 + [37.0] * 6
    run = [(i, base + 10 * i, t) for i, t in enumerate(temps)]
    held = {108, 109, 120, 133}
    live = [r for r in run if r[0] not in held]
    late = [run[108], (200, base + 10 * 114 + 5, 37.0), run[120], (201, base + 10 * 122 + 5, 37.0)]
    late += [run[109], run[133], live[125], (202, base + 100, 39.0)]
    return live, late


def uninterrupted(rules: RulesConfig, sent: list[Sent]) -> tuple[list[tuple[str, int, str]], Engine]:
    """The pure engine (the horizon's readings in memory) on ``sent`` in order: transitions, engine."""
    device = DeviceConfig(id="inc-1", kind="incubator", site="s", area="lab")
    engine = Engine([device], rules, started_us=0)
    book = AlarmBook()
    out = []
    for seq, ts, temp in sent:
        events = engine.ingest(
            EngineReading("inc-1", round(ts * US), {"temp_c": temp, "co2_pct": 5.0}, seq=seq)
        )
        out += [(tr.event, tr.ts_us, tr.alarm.severity.label) for tr in book.apply(events, 0)]
    return out, engine


def _stored(db: Path | str) -> int:
    return int(db_query(db, "SELECT count(*) FROM (SELECT DISTINCT seq, ts_us FROM readings) AS r")[0][0])


async def test_late_readings_are_judged_from_the_database_as_from_memory(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend
) -> None:
    """Revoked and raised again, a repeat ignored, one too late: as the in-memory engine says."""
    devices = [{"id": "inc-1", "kind": "incubator", "site": "s", "area": "lab"}]
    config = write_config(
        tmp_path / "c.yaml",
        storage={"path": backend.location},
        broker=broker,
        prefix=prefix,
        devices=devices,
        rules={"profiles": {"incubator": [*NO_COMM_LOSS, OUT_OF_RANGE]}, "reorder_horizon_s": 600},
    )
    assert config.rules.late_history == "database", "the collector's default"
    topic = telemetry_topic(config, "inc-1")
    live, late = arrivals(datetime.now(UTC).timestamp() - 2400)
    db = config.storage.location
    async with running_daemon(config) as running:
        messages = [(topic, reading(s, {"temp_c": t, "co2_pct": 5.0}, ts=ts)) for s, ts, t in live]
        await publish_all(broker, messages, clients=1, window=1)
        await eventually(lambda: _stored(db) == len(live), what="live readings stored")
        stored = len(live)
        for seq, ts, temp in late:
            # One at a time, each committed before the next: the order the pure engine sees.
            await publish_all(
                broker, [(topic, reading(seq, {"temp_c": temp, "co2_pct": 5.0}, ts=ts))], clients=1
            )
            stored += (seq, ts, temp) not in live
            await eventually(lambda n=stored: _stored(db) == n, what=f"late reading {seq} stored")
        await asyncio.sleep(0.2)  # the batch's commit reported to the rules
        engine = running.daemon.engine
        assert engine is not None
        device = engine.devices["inc-1"]
        assert device.stored is not None
        assert not device.stored.pending, device.stored.pending
        assert len(device.history) == 0, "the horizon's readings are not held in the process"
        state = capture(device)
        reads = running.sample("coldwatch_rules_history_reads_total")
        too_late = running.sample("coldwatch_rules_too_late_readings")
    expected, memory = uninterrupted(config.rules, live + late)
    # The rules' alarms (the readings numbered out of turn also open a data-integrity alarm).
    got = db_query(
        db,
        "SELECT t.event, t.ts_us, t.severity FROM alarm_transitions AS t "
        "JOIN alarms AS a ON a.id = t.alarm_id WHERE a.rule != 'data_integrity' ORDER BY t.id",
    )
    assert [tuple(t) for t in got] == expected
    assert "revoked" in [e[0] for e in expected], "the late readings moved an alarm: it tests a rewind"
    assert too_late == memory.too_late() == 1
    # Window sums, latches and pending on-delays: the very state of the in-memory engine.
    in_memory = capture(memory.devices["inc-1"])
    assert state is not None
    assert in_memory is not None
    assert (state.ts_us, state.seq, state.state) == (in_memory.ts_us, in_memory.seq, in_memory.state)
    # Every late reading but the one too late was judged with its history read back.
    assert reads == len(late) - 1


async def test_a_rewind_reads_back_only_the_readings_after_its_checkpoint(backend: Backend) -> None:
    """A device whose clock is stuck stamps every reading alike: the read back starts after the seq."""
    store = open_storage(backend.location)
    await store.open()
    try:
        device = DeviceConfig(id="inc-1", kind="incubator", site="s", area="lab")
        await store.register_devices([device])
        stuck_us = 1_800_000_000 * US
        batch = Batch()
        for seq in range(50):
            values = (("temp_c", 37.0 + seq / 100), ("co2_pct", 5.0))
            batch.readings.append((Telemetry("inc-1", seq, stuck_us, False, values), stuck_us))
        batch.readings.append((Telemetry("inc-1", 50, stuck_us + US, False, (("temp_c", 37.0),)), stuck_us))
        await store.write_batch(batch)
        everything = [r async for r in store.readings_since("inc-1", stuck_us)]
        after = [r async for r in store.readings_since("inc-1", stuck_us, after_seq=40)]
    finally:
        await store.close()
    assert [r.seq for r in everything] == list(range(51))
    assert [(r.seq, r.values["temp_c"]) for r in after] == [(s, 37.0 + s / 100) for s in range(41, 50)] + [
        (50, 37.0)
    ]
    assert after[0].values == {"temp_c": 37.41, "co2_pct": 5.0}


async def test_a_reading_is_stored_as_first_received_whatever_a_later_copy_adds(backend: Backend) -> None:
    """A later message at the same (seq, ts) with a value more adds nothing: the rules judged the first.

    Read back for a rewind, the stored reading must be the one the rules judged, in the
    same batch as in a later one.
    """
    store = open_storage(backend.location)
    await store.open()
    try:
        await store.register_devices([DeviceConfig(id="inc-1", kind="incubator", site="s", area="lab")])
        ts = 1_800_000_000 * US
        first = (("temp_c", 37.0), ("co2_pct", 5.0))
        later = (("temp_c", 39.0), ("co2_pct", 5.0), ("door_open", 1.0))
        same_batch = Batch()
        same_batch.readings += [
            (Telemetry("inc-1", 1, ts, False, first), ts),
            (Telemetry("inc-1", 1, ts, False, later), ts),
        ]
        await store.write_batch(same_batch)
        await store.write_batch(Batch(readings=[(Telemetry("inc-1", 2, ts + US, False, first), ts)]))
        again = await store.write_batch(Batch(readings=[(Telemetry("inc-1", 2, ts + US, False, later), ts)]))
        stored = [(r.seq, r.values) async for r in store.readings_since("inc-1", ts)]
    finally:
        await store.close()
    assert stored == [(1, dict(first)), (2, dict(first))]
    assert again.duplicates == {("inc-1", 2, ts + US)}
    assert again.stored == 0


async def test_a_second_message_with_a_used_seq_and_other_values_is_not_added_to_the_first(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend
) -> None:
    """Against the payload contract, a seq and time used twice: the reading stays as the rules judged it.

    The second message carries only a metric the first lacked, so the database sees no
    copy of any stored value; the rules know the reading, and it is not stored. A late
    reading's rewind then reads back the reading the rules judged: no alarm appears that
    the in-memory history would not give.
    """
    config = write_config(
        tmp_path / "c.yaml",
        storage={"path": backend.location},
        broker=broker,
        prefix=prefix,
        devices=[{"id": "inc-1", "kind": "incubator", "site": "s", "area": "lab"}],
        rules={"profiles": {"incubator": NO_COMM_LOSS}},
    )
    topic = telemetry_topic(config, "inc-1")
    base = datetime.now(UTC).timestamp() - 1800
    first = [
        (i, base + 10 * i, {"co2_pct": 5.0} if i == 10 else {"temp_c": 37.0, "co2_pct": 5.0})
        for i in range(30)
    ]
    live = [f for f in first if f[0] != 5]
    then = [(10, base + 100, {"temp_c": 39.0}), (5, base + 50, {"temp_c": 37.0, "co2_pct": 5.0})]
    db = config.storage.location
    async with running_daemon(config) as running:
        await publish_all(broker, [(topic, reading(s, v, ts=ts)) for s, ts, v in live], clients=1, window=1)
        await eventually(lambda: _stored(db) == len(live), what="live readings stored")
        copy, late = then
        await publish_all(broker, [(topic, reading(copy[0], copy[2], ts=copy[1]))], clients=1)
        await asyncio.sleep(0.5)  # received; then judged, committed and acknowledged
        await eventually(
            lambda: running.sample("coldwatch_unacked_messages") == 0, what="the second seq 10 taken"
        )
        await publish_all(broker, [(topic, reading(late[0], late[2], ts=late[1]))], clients=1)
        await eventually(lambda: _stored(db) == len(live) + 1, what="the late reading stored")
        await asyncio.sleep(0.3)
        duplicates = running.sample(DUPLICATES)
    stored = db_query(
        db, "SELECT m.name, r.value FROM readings AS r JOIN metrics AS m ON m.id = r.metric WHERE r.seq = 10"
    )
    assert [tuple(row) for row in stored] == [("co2_pct", 5.0)], "kept as first received"
    assert duplicates == 1
    got = db_query(db, "SELECT event FROM alarm_transitions")
    device = DeviceConfig(id="inc-1", kind="incubator", site="s", area="lab")
    memory = Engine([device], config.rules, started_us=0)
    expected = memory.ingest_many(
        EngineReading("inc-1", round(ts * US), v, seq=s) for s, ts, v in live + then
    )
    assert expected == [], "the in-memory history judged no temperature excursion"
    assert got == [], "nor did the collector, its history read back"
