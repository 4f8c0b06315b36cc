"""Tests of the simulators: pure models and fleet (fast, synchronous) and one broker run."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import statistics
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import aiomqtt
import numpy as np
import pytest

from coldwatch.broker import run_mosquitto
from coldwatch.catalogue import KINDS, Kind
from coldwatch.config import Config, DeviceConfig, MqttConfig, ReconnectConfig
from coldwatch.payload import Status, Telemetry, decode
from simulators import (
    ACTION_LIMITS_M3,
    AnyModel,
    CryoshipperModel,
    IncubatorModel,
    OutagePlan,
    ParticleCounterModel,
    Reading,
    Values,
    build_models,
    derive_seed,
    encode_payload,
    encode_reading,
    run_simulation,
    status_topic,
    telemetry_topic,
    timeline,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from pathlib import Path

START = datetime(2026, 11, 22, 6, 0, tzinfo=UTC)
DEVICES = [
    DeviceConfig(id="pc-1", kind=Kind.PARTICLE_COUNTER, site="s1", area="fill", grade="A"),
    DeviceConfig(id="inc-1", kind=Kind.INCUBATOR, site="s1", area="lab", interval_s=30),
    DeviceConfig(id="cs-1", kind=Kind.CRYOSHIPPER, site="s1", area="dock", interval_s=60),
]


def _rng(seed: int, stream: str) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, "test-device", stream))


def _counter(grade: str, seed: int = 0) -> ParticleCounterModel:
    # No random activity: a forced burst must be the only one.
    return ParticleCounterModel(
        grade, noise_rng=_rng(seed, "n"), event_rng=_rng(seed, "e"), activity_mean_gap_s=math.inf
    )


def _incubator() -> IncubatorModel:
    return IncubatorModel(noise_rng=_rng(0, "n"), event_rng=_rng(0, "e"), door_mean_gap_s=math.inf)


def _shipper(**kwargs: float) -> CryoshipperModel:
    return CryoshipperModel(
        noise_rng=_rng(0, "n"),
        event_rng=_rng(0, "e"),
        tilt_mean_gap_s=math.inf,
        lid_mean_gap_s=math.inf,
        **kwargs,
    )


def _run(model: AnyModel, dt_s: float, n: int) -> list[Values]:
    return [model.step(dt_s) for _ in range(n)]


def _numbers(readings: Sequence[Values], metric: str) -> list[float]:
    return [float(r[metric]) for r in readings]


def _key(reading: Reading) -> tuple[str, int, datetime, Values]:
    return reading.device.id, reading.seq, reading.ts, reading.values


# --- seeds and determinism -------------------------------------------------------------


def test_derive_seed_is_stable_across_processes() -> None:
    """A device's seed is a fixed SHA-256 derivation, not the per-process salted hash()."""
    assert derive_seed(0, "pc-1") == 9645764959029662021
    assert derive_seed(0, "pc-1", "noise") != derive_seed(0, "pc-1", "events")
    assert derive_seed(1, "pc-1") != derive_seed(0, "pc-1")


def test_same_seed_gives_identical_timeline() -> None:
    """Two timelines with the same seed yield exactly the same readings in the same order."""
    first = list(timeline(DEVICES, start=START, seed=7, until_s=6 * 3600))
    second = list(timeline(DEVICES, start=START, seed=7, until_s=6 * 3600))
    assert first == second
    assert len(first) > 1000


def test_different_seed_gives_different_timeline() -> None:
    """A different seed changes the values (and the devices' phases)."""
    first = [_key(r) for r in timeline(DEVICES, start=START, seed=7, until_s=3600)]
    second = [_key(r) for r in timeline(DEVICES, start=START, seed=8, until_s=3600)]
    assert first != second


def test_timeline_is_in_send_order_on_each_device_interval() -> None:
    """Readings come in time order, each device every interval_s with seq counting from 0."""
    readings = list(timeline(DEVICES, start=START, seed=1, until_s=3600))
    assert [r.due_s for r in readings] == sorted(r.due_s for r in readings)
    for device in DEVICES:
        mine = [r for r in readings if r.device.id == device.id]
        assert [r.seq for r in mine] == list(range(len(mine)))
        assert 0 < mine[0].due_s <= device.interval_s
        gaps_s = {round((b.ts - a.ts).total_seconds(), 3) for a, b in itertools.pairwise(mine)}
        assert gaps_s == {device.interval_s}
        assert all(r.ts == START + timedelta(seconds=r.due_s) for r in mine)
        assert not any(r.buffered for r in mine)
    assert readings[-1].due_s <= 3600


def test_step_rejects_non_positive_dt() -> None:
    """A model cannot step backwards or by zero, which would divide by a zero sample volume."""
    with pytest.raises(ValueError, match="dt_s"):
        _counter("A").step(0)
    with pytest.raises(ValueError, match="dt_s"):
        _incubator().step(-1)


# --- particle counter -------------------------------------------------------------------


def test_particle_counts_scale_with_grade_and_stay_below_limits() -> None:
    """Mean counts follow the room's grade and normally sit well below its Annex 1 limit."""
    means = {}
    for grade in "ABC":
        readings = _run(_counter(grade), 10.0, 2000)
        fine = _numbers(readings, "particles_0_5um_m3")
        means[grade] = statistics.fmean(fine)
        assert means[grade] < 0.2 * ACTION_LIMITS_M3[grade][0]
        assert statistics.quantiles(fine, n=100)[98] < ACTION_LIMITS_M3[grade][0]
    assert means["A"] * 10 < means["B"] < means["C"] / 5


def test_particle_flow_and_sample_volume() -> None:
    """Flow stays near 28.3 L/min and the sample volume is flow times the interval."""
    for reading in _run(_counter("B"), 60.0, 200):
        assert abs(float(reading["flow_lpm"]) - 28.3) < 1.0
        assert float(reading["sample_volume_l"]) == pytest.approx(float(reading["flow_lpm"]), abs=0.01)


def test_grade_a_coarse_counts_are_mostly_zero_with_single_events() -> None:
    """In grade A, 5.0 um samples are nearly all zero and a non-zero one is a single count."""
    model = ParticleCounterModel("A", noise_rng=_rng(0, "n"), event_rng=_rng(0, "e"))
    readings = _run(model, 10.0, 3 * 8640)  # three days, with the usual bursts of activity
    coarse = _numbers(readings, "particles_5_0um_m3")
    events = [(c, float(r["sample_volume_l"])) for c, r in zip(coarse, readings, strict=True) if c]
    assert 0 < len(events) < 0.01 * len(coarse)
    assert all(c * volume_l / 1000 == pytest.approx(1.0, abs=0.01) for c, volume_l in events)


def test_forced_activity_raises_both_channels() -> None:
    """A period of activity multiplies 0.5 um and 5.0 um counts while it lasts."""
    model = _counter("C")
    model.start_activity(at_s=3600, duration_s=3600, factor=10.0)
    before = _run(model, 10.0, 360)
    during = _run(model, 10.0, 360)
    for metric in ("particles_0_5um_m3", "particles_5_0um_m3"):
        assert statistics.fmean(_numbers(during, metric)) > 5 * statistics.fmean(_numbers(before, metric))


# --- incubator --------------------------------------------------------------------------


def test_incubator_holds_its_set_points() -> None:
    """With the door shut, readings stay at 37.0 C, 5.0 % CO2 and about 95 % RH."""
    readings = _run(_incubator(), 30.0, 500)
    assert all(abs(float(r["temp_c"]) - 37.0) < 0.2 for r in readings)
    assert all(abs(float(r["co2_pct"]) - 5.0) < 0.2 for r in readings)
    assert all(abs(float(r["rh_pct"]) - 95.0) < 2.0 for r in readings)
    assert not any(r["door_open"] for r in readings)


def test_door_opening_drops_co2_and_temperature_then_they_recover() -> None:
    """An open door drops CO2 and temperature; after closing both recover within minutes."""
    model = _incubator()
    model.open_door(at_s=600, duration_s=60)
    readings = _run(model, 10.0, 180)
    by_t = {10 * (i + 1): r for i, r in enumerate(readings)}
    assert [t for t, r in by_t.items() if r["door_open"]] == list(range(600, 670, 10))
    assert float(by_t[660]["co2_pct"]) < 3.0
    assert float(by_t[660]["temp_c"]) < 36.5
    assert float(by_t[700]["co2_pct"]) < 4.0  # still recovering 40 s after closing
    co2_after = _numbers([by_t[t] for t in range(670, 1800, 10)], "co2_pct")
    assert co2_after[5] > co2_after[0]  # rising again once the door is shut
    assert abs(float(by_t[660 + 300]["co2_pct"]) - 5.0) < 0.2  # CO2 back within 5 min
    assert abs(float(by_t[1800]["temp_c"]) - 37.0) < 0.2


def test_short_door_opening_is_seen_at_a_long_interval() -> None:
    """door_open latches, so a 20 s opening between two 60 s readings is still reported."""
    model = _incubator()
    model.open_door(at_s=70, duration_s=20)
    assert [r["door_open"] for r in _run(model, 60.0, 3)] == [False, True, False]


def test_random_door_openings_happen_and_last_20_to_90_s() -> None:
    """With the default schedule the door opens now and then, each time for 20-90 s."""
    model = IncubatorModel(noise_rng=_rng(3, "n"), event_rng=_rng(3, "e"), door_mean_gap_s=1800)
    flags = [bool(r["door_open"]) for r in _run(model, 1.0, 6 * 3600)]
    runs = [len(list(group)) for is_open, group in itertools.groupby(flags) if is_open]
    assert 4 <= len(runs) <= 30
    assert all(20 <= n <= 91 for n in runs)


# --- cryoshipper ------------------------------------------------------------------------


def test_shipper_stays_cold_while_ln2_remains() -> None:
    """With LN2 left the vapour stays near -190 C and probe B tracks probe A within 1 C."""
    readings = _run(_shipper(), 600.0, 6 * 24 * 7)  # a week
    assert all(-193 < float(r["temp_c"]) < -185 for r in readings)
    assert all(abs(float(r["temp_c"]) - float(r["temp_b_c"])) < 1.0 for r in readings)
    levels = _numbers(readings, "ln2_level_pct")
    assert levels == sorted(levels, reverse=True)
    assert 15 < levels[-1] < 50  # a default 10-day (+/- 10 %) hold time, 7 days in


def test_shipper_warms_past_minus_150_and_minus_135_when_ln2_runs_out() -> None:
    """Once the LN2 is gone the vapour warms through -150 C and then -135 C within hours."""
    model = _shipper()
    model.set_ln2_level(0.5)
    readings = _run(model, 300.0, 12 * 6)  # 6 hours
    temps = _numbers(readings, "temp_c")
    assert readings[-1]["ln2_level_pct"] == 0
    first_150 = next(i for i, t in enumerate(temps) if t > -150)
    first_135 = next(i for i, t in enumerate(temps) if t > -135)
    assert 0 < first_150 < first_135
    assert temps[-1] > temps[first_135]


def test_tilt_speeds_ln2_loss() -> None:
    """A shipper on its side boils off LN2 many times faster than an upright one."""
    upright, tilted = _shipper(), _shipper()
    tilted.tilt(at_s=0, angle_deg=90, duration_s=3 * 3600)
    upright_tilts = _numbers(_run(upright, 60.0, 180), "tilt_deg")
    tilted_readings = _run(tilted, 60.0, 180)
    lost_upright = 100 - upright.ln2_level_pct
    lost_tilted = 100 - tilted.ln2_level_pct
    assert lost_tilted > 10 * lost_upright
    assert max(upright_tilts) < 10
    assert all(float(r["tilt_deg"]) > 85 for r in tilted_readings[:-1])


def test_lid_open_warms_and_is_reported() -> None:
    """An open lid is reported (latched per interval) and warms the vapour, which then cools."""
    model = _shipper()
    model.open_lid(at_s=600, duration_s=300)
    readings = _run(model, 60.0, 60)
    assert [60 * (i + 1) for i, r in enumerate(readings) if r["lid_open"]] == list(range(600, 960, 60))
    assert float(readings[13]["temp_c"]) > -180
    assert float(readings[-1]["temp_c"]) < float(readings[13]["temp_c"]) - 5


def test_battery_drains_slowly() -> None:
    """The logger battery falls steadily over its life and never below 0 %."""
    model = _shipper(battery_life_s=10 * 86400)
    battery = _numbers(_run(model, 6 * 3600.0, 4 * 15), "battery_pct")  # 15 days
    assert battery[0] > 97
    assert battery == sorted(battery, reverse=True)
    assert 45 < battery[4 * 5] < 55
    assert battery[-1] == 0


def test_forced_events_reach_the_fleet_timeline() -> None:
    """Events forced on models from build_models show up in the fleet's readings."""
    models = build_models(DEVICES, seed=1)
    incubator = models["inc-1"]
    assert isinstance(incubator, IncubatorModel)
    incubator.open_door(at_s=1800, duration_s=60)
    readings = timeline(DEVICES, start=START, seed=1, until_s=3600, models=models)
    opened = [r.ts for r in readings if r.device.id == "inc-1" and r.values["door_open"]]
    assert opened
    assert all(START + timedelta(seconds=1800) <= ts <= START + timedelta(seconds=1890) for ts in opened)


# --- outages and the payload contract ----------------------------------------------------


def test_outage_buffers_readings_with_original_timestamps_and_seqs() -> None:
    """Readings inside an outage are sent at its end, flagged buffered, ts and seq unchanged."""
    outage = OutagePlan(start_s=1800, duration_s=1200)
    plain = list(timeline(DEVICES, start=START, seed=2, until_s=7200))
    held = list(timeline(DEVICES, start=START, seed=2, until_s=7200, outage=outage))
    assert sorted(map(_key, plain), key=repr) == sorted(map(_key, held), key=repr)
    buffered = [r for r in held if r.buffered]
    assert buffered
    assert all(r.due_s == outage.end_s for r in buffered)
    assert all(1800 <= (r.ts - START).total_seconds() < 3000 for r in buffered)
    assert not any(outage.start_s <= r.due_s < outage.end_s for r in held)
    first = held.index(buffered[0])
    assert held[first : first + len(buffered)] == buffered  # backfill goes out first, in one go
    assert [r.ts for r in buffered] == sorted(r.ts for r in buffered)
    for device in DEVICES:
        seqs = [r.seq for r in held if r.device.id == device.id]
        assert sorted(seqs) == list(range(len(seqs)))  # contiguous: nothing lost
        in_buffer = [r.seq for r in buffered if r.device.id == device.id]
        assert in_buffer == list(range(in_buffer[0], in_buffer[0] + len(in_buffer)))


def test_outage_of_named_devices_leaves_the_others_live() -> None:
    """An outage limited to one device id holds back only that device's readings."""
    outage = OutagePlan(start_s=600, duration_s=600, device_ids=frozenset({"pc-1"}))
    readings = list(timeline(DEVICES, start=START, seed=2, until_s=3600, outage=outage))
    assert {r.device.id for r in readings if r.buffered} == {"pc-1"}


def test_timeline_ending_inside_an_outage_never_sends_the_held_readings() -> None:
    """If the run stops during an outage, its held readings are not emitted."""
    outage = OutagePlan(start_s=600, duration_s=6000)
    readings = list(timeline(DEVICES, start=START, seed=2, until_s=3600, outage=outage))
    assert not any(r.buffered for r in readings)
    assert max(r.due_s for r in readings) < 600


def test_every_reading_passes_the_collectors_decoder() -> None:
    """Each reading, encoded as the publisher sends it, decodes to the same telemetry."""
    outage = OutagePlan(start_s=3600, duration_s=1800)
    readings = list(timeline(DEVICES, start=START, seed=5, until_s=4 * 3600, outage=outage))
    now_us = round(max(r.ts for r in readings).timestamp() * 1_000_000)
    devices = {d.id: d for d in DEVICES}
    for reading in readings:
        decoded = decode(telemetry_topic(reading.device), encode_reading(reading), now_us, devices)
        assert isinstance(decoded, Telemetry), decoded
        assert decoded.seq == reading.seq
        assert decoded.buffered == reading.buffered
        assert decoded.ts_us == round(reading.ts.timestamp() * 1_000_000)
        assert {name for name, _ in decoded.values} == set(KINDS[reading.device.kind])


def test_status_topic_decodes_as_a_status() -> None:
    """The status topic the publisher uses is the one the collector reads."""
    for device in DEVICES:
        status = decode(status_topic(device), b"online", 0, {device.id: device})
        assert status == Status(device.id, online=True)


def test_encode_payload_shape() -> None:
    """The payload has ts with offset, seq and values, and 'buffered' only when true."""
    ts = START + timedelta(microseconds=250_000)
    assert encode_payload(ts, 3, {"temp_c": -190.5, "lid_open": False}) == (
        b'{"ts":"2026-11-22T06:00:00.250000+00:00","seq":3,"values":{"temp_c":-190.5,"lid_open":false}}'
    )
    assert encode_payload(ts, 3, {"temp_c": 1.0}, buffered=True).endswith(b',"buffered":true}')
    with pytest.raises(ValueError, match="timezone"):
        encode_payload(ts.replace(tzinfo=None), 0, {"temp_c": 1.0})
    with pytest.raises(ValueError, match="Out of range float"):
        encode_payload(ts, 0, {"temp_c": math.nan})


def test_reading_replace_keeps_values() -> None:
    """Flagging a reading as buffered leaves its measurement untouched (frozen dataclass)."""
    reading = next(iter(timeline(DEVICES, start=START, until_s=60)))
    assert _key(replace(reading, buffered=True)) == _key(reading)


# --- against a real broker ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def _mosquitto(tmp_path: Path, port: int | None = None) -> AsyncIterator[tuple[str, int]]:
    """Run a private Mosquitto (recommended settings) on a free or given port; yield (host, port)."""
    async with run_mosquitto(port, data_dir=tmp_path / "broker") as broker:
        yield broker.host, broker.port


async def _collect(client: aiomqtt.Client, count: int, timeout_s: float) -> list[aiomqtt.Message]:
    messages: list[aiomqtt.Message] = []
    async with asyncio.timeout(timeout_s):
        async for message in client.messages:
            messages.append(message)
            if len(messages) == count:
                break
    return messages


async def test_run_simulation_publishes_to_a_real_broker(tmp_path: Path) -> None:
    """Devices announce a retained online status, send decodable telemetry and end offline."""
    devices = [
        DeviceConfig(id="pc-9", kind=Kind.PARTICLE_COUNTER, site="s1", area="fill", grade="B"),
        DeviceConfig(id="inc-9", kind=Kind.INCUBATOR, site="s1", area="lab"),
        DeviceConfig(id="cs-9", kind=Kind.CRYOSHIPPER, site="s1", area="dock"),
    ]
    registry = {d.id: d for d in devices}
    async with _mosquitto(tmp_path) as (host, port):
        config = Config(mqtt=MqttConfig(url=f"mqtt://{host}:{port}"), devices=devices)
        watcher = aiomqtt.Client(host, port, identifier="test-watcher", protocol=aiomqtt.ProtocolVersion.V5)
        async with watcher:
            await watcher.subscribe("coldwatch/#", qos=1)
            run = asyncio.create_task(run_simulation(config, seed=3, speed=600, duration_s=2))
            first = await _collect(watcher, 1, timeout_s=10)
            # A client arriving mid-run is told, by retained messages, that devices are online.
            async with aiomqtt.Client(host, port, identifier="test-late") as late:
                await late.subscribe("coldwatch/+/+/+/+/status", qos=1)
                statuses = await _collect(late, 3, timeout_s=10)
            assert {(str(m.topic), m.payload, m.retain) for m in statuses} == {
                (status_topic(d), b"online", True) for d in devices
            }
            async with asyncio.timeout(30):
                stats = await run
            # 2 wall s x 600 = 1200 simulated s: exactly what the pure timeline holds.
            pure = list(timeline(devices, start=START, seed=3, until_s=1200))
            expected = {d.id: sum(r.device.id == d.id for r in pure) for d in devices}
            assert stats.published == expected
            assert stats.connects == dict.fromkeys(registry, 1)
            rest = await _collect(watcher, stats.total + 2 * len(devices) - 1, timeout_s=10)
        now_us = round(datetime.now(UTC).timestamp() * 1_000_000)
        seqs: dict[str, list[int]] = {d: [] for d in registry}
        status_log: dict[str, list[bool]] = {d: [] for d in registry}
        for message in first + rest:
            assert isinstance(message.payload, bytes)
            decoded = decode(str(message.topic), message.payload, now_us, registry)
            if isinstance(decoded, Status):
                status_log[decoded.device_id].append(decoded.online)
            else:
                assert isinstance(decoded, Telemetry), decoded
                assert now_us - 1300 * 1_000_000 < decoded.ts_us <= now_us
                seqs[decoded.device_id].append(decoded.seq)
        assert status_log == {d: [True, False] for d in registry}
        assert seqs == {d: list(range(n)) for d, n in expected.items()}
        # Once the run is over, the retained status says offline.
        async with aiomqtt.Client(host, port, identifier="test-after") as after:
            await after.subscribe("coldwatch/+/+/+/+/status", qos=1)
            final = await _collect(after, 3, timeout_s=10)
        assert {m.payload for m in final} == {b"offline"}


async def test_run_simulation_reconnects_and_backfills_after_a_broker_restart(tmp_path: Path) -> None:
    """When the broker goes away, devices buffer readings, reconnect and send them as backfill."""
    devices = [DeviceConfig(id=f"inc-{i}", kind=Kind.INCUBATOR, site="s1", area="lab") for i in range(3)]
    registry = {d.id: d for d in devices}
    reconnect = ReconnectConfig(initial_s=0.05, max_s=0.2)
    async with _mosquitto(tmp_path) as (host, port):
        config = Config(mqtt=MqttConfig(url=f"mqtt://{host}:{port}", reconnect=reconnect), devices=devices)
        async with aiomqtt.Client(host, port, identifier="test-before") as before:
            await before.subscribe("coldwatch/+/+/+/+/telemetry", qos=1)
            run = asyncio.create_task(run_simulation(config, seed=4, speed=60, duration_s=2))
            await _collect(before, 1, timeout_s=10)
    # The broker stays down for half a wall second (30 simulated s, 3 readings per device):
    # the outage being simulated, not a wait for something to happen.
    await asyncio.sleep(0.5)
    async with _mosquitto(tmp_path, port=port):
        async with asyncio.timeout(30):
            stats = await run
        async with aiomqtt.Client(host, port, identifier="test-after") as after:
            await after.subscribe("coldwatch/+/+/+/+/status", qos=1)
            final = await _collect(after, 3, timeout_s=10)
    pure = list(timeline(devices, start=START, seed=4, until_s=120))
    assert stats.published == {d: sum(r.device.id == d for r in pure) for d in registry}
    assert stats.connects == dict.fromkeys(registry, 2)
    assert all(stats.buffered[d] >= 2 for d in registry)
    assert stats.dropped == dict.fromkeys(registry, 0)
    assert {m.payload for m in final} == {b"offline"}


async def test_stop_and_cancel_end_a_real_time_run_with_offline_status(tmp_path: Path) -> None:
    """At speed 1 readings carry wall-clock time; setting stop or cancelling ends with offline."""
    devices = [DeviceConfig(id="cs-8", kind=Kind.CRYOSHIPPER, site="s1", area="dock", interval_s=0.05)]
    registry = {d.id: d for d in devices}
    async with _mosquitto(tmp_path) as (host, port):
        config = Config(mqtt=MqttConfig(url=f"mqtt://{host}:{port}"), devices=devices)
        for how in ("stop", "cancel"):
            stop = asyncio.Event()
            async with aiomqtt.Client(host, port, identifier=f"test-{how}") as watcher:
                await watcher.subscribe("coldwatch/+/+/+/+/telemetry", qos=1)
                run = asyncio.create_task(run_simulation(config, stop=stop))
                [message] = await _collect(watcher, 1, timeout_s=10)
                now_us = round(datetime.now(UTC).timestamp() * 1_000_000)
                assert isinstance(message.payload, bytes)
                reading = decode(str(message.topic), message.payload, now_us, registry)
                assert isinstance(reading, Telemetry), reading
                assert 0 <= now_us - reading.ts_us < 2_000_000  # simulated time is wall time
                if how == "stop":
                    stop.set()
                    async with asyncio.timeout(10):
                        stats = await run
                    assert stats.published["cs-8"] >= 1
                else:
                    run.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        async with asyncio.timeout(10):
                            await run
            async with aiomqtt.Client(host, port, identifier=f"test-{how}-status") as after:
                await after.subscribe(status_topic(devices[0]), qos=1)
                [status] = await _collect(after, 1, timeout_s=10)
            assert status.payload == b"offline", how


async def test_faster_than_real_time_needs_a_duration() -> None:
    """An accelerated run without an end would stamp readings in the future, so it is refused."""
    with pytest.raises(ValueError, match="duration_s"):
        await run_simulation(Config(devices=DEVICES), speed=60)
