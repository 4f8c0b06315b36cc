"""Regressions from the rules review: restart restore, communication loss, late readings, faults.

Each test replays one of the reviewer's reproductions. Those that need storage drive the
real SQLite storage, restore and writer (``Pipeline._commit``) without MQTT, on a
virtual collector clock that also sets the time the collector starts at.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import coldwatch.alarms
from coldwatch.alarms import start_alarming
from coldwatch.config import Config, DeviceConfig
from coldwatch.metrics import Metrics, render
from coldwatch.mqtt import Delivery
from coldwatch.payload import decode
from coldwatch.pipeline import Pipeline, Tick, _Item
from coldwatch.rules.config import RulesConfig
from coldwatch.rules.device import CHECKPOINT_EVERY, MAX_CHECKPOINTS, MAX_HISTORY
from coldwatch.rules.engine import Engine
from coldwatch.rules.lifecycle import AlarmBook, AlarmState
from coldwatch.rules.model import US, EngineReading, Severity
from coldwatch.storage.sqlite import SqliteStorage

T0 = 1_800_000_000  # device timelines start here (whole seconds, so stamps compare exactly)
H = 3600
INCUBATOR = {"id": "inc-1", "kind": "incubator", "site": "s", "area": "a", "interval_s": 10}
PARTICLES = {
    "id": "pc-1",
    "kind": "particle_counter",
    "site": "s",
    "area": "a",
    "grade": "B",
    "interval_s": 60,
}
SHIPPER = {"id": "ln2-1", "kind": "cryoshipper", "site": "s", "area": "a", "interval_s": 60}
NO_COMM_LOSS_OR_FORECAST = {
    "profiles": {
        "cryoshipper": [
            {"type": "comm_loss", "timeout_s": 1, "enabled": False},
            {"type": "forecast", "levels": {"alert": {"hours": 1}}, "enabled": False},
        ]
    }
}


def incubator(temp: float = 37.0, *, door: bool = False) -> dict[str, Any]:
    """Incubator values, in band unless told otherwise."""
    return {"temp_c": temp, "co2_pct": 5.0, "rh_pct": 95, "door_open": door}


def shipper(temp: float) -> dict[str, Any]:
    """Cryoshipper values with both probes at ``temp``."""
    return {
        "temp_c": temp,
        "temp_b_c": temp,
        "ln2_level_pct": 80.0,
        "lid_open": False,
        "tilt_deg": 2.0,
        "battery_pct": 90.0,
    }


class Clock:
    """The collector's wall clock, moved by the test (start-up, arrivals and ticks)."""

    def __init__(self, now_s: float) -> None:
        self.now_us = round(now_s * US)

    def set(self, now_s: float) -> None:
        """Move the clock to ``now_s``."""
        self.now_us = round(now_s * US)

    def time_ns(self) -> int:
        """What ``time.time_ns`` would say."""
        return self.now_us * 1000

    def time(self) -> float:
        """What ``time.time`` would say."""
        return self.now_us / US


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """A virtual clock, also the one the rules engine takes its start-up time from."""
    virtual = Clock(T0 - 60)
    monkeypatch.setattr(coldwatch.alarms, "time", virtual)
    return virtual


def make_config(db: Path, devices: list[dict[str, Any]], rules: dict[str, Any] | None = None) -> Config:
    """A configuration storing in ``db``."""
    return Config.model_validate({"storage": {"path": str(db)}, "devices": devices, "rules": rules or {}})


class Collector:
    """One run of the collector: storage, restored rules and the writer, without MQTT."""

    def __init__(self, config: Config, clock: Clock, storage: SqliteStorage) -> None:
        self.config = config
        self.clock = clock
        self.storage = storage
        self.acked = 0
        self.mid = 0
        self.engine: Engine
        self.book: AlarmBook
        self.metrics: Metrics
        self.pipeline: Pipeline

    async def start(self) -> None:
        """Open storage and restore the rules, as the daemon does at start-up."""
        await self.storage.open()
        states = await self.storage.register_devices(self.config.devices)
        self.metrics = Metrics(CollectorRegistry(), self.config.devices, clock=self.clock.time)
        self.engine, self.book = await start_alarming(self.config, self.storage, states, self.metrics)
        self.pipeline = Pipeline(
            self.config,
            self.storage,
            self.metrics,
            states,
            self._ack,
            engine=self.engine,
            book=self.book,
            clock_us=lambda: self.clock.now_us,
        )

    def _ack(self, deliveries: list[Delivery]) -> None:
        self.acked += len(deliveries)

    def item(
        self,
        device_id: str,
        seq: int,
        ts_s: float,
        values: dict[str, Any],
        *,
        buffered: bool = False,
        received_s: float | None = None,
    ) -> _Item:
        """A telemetry message as the MQTT task hands it to the writer (the clock moves to its arrival)."""
        arrived_us = round((ts_s if received_s is None else received_s) * US)
        self.clock.now_us = max(self.clock.now_us, arrived_us)
        device = self.config.device_map()[device_id]
        prefix, kind = self.config.mqtt.topic_prefix, device.kind.value
        topic = f"{prefix}/{device.site}/{device.area}/{kind}/{device_id}/telemetry"
        body: dict[str, Any] = {"ts": ts_s, "seq": seq, "values": values}
        if buffered:
            body["buffered"] = True
        payload = json.dumps(body).encode()
        self.mid += 1
        delivery = Delivery(topic, payload, 1, self.mid, False, 1, arrived_us)
        decoded = decode(
            topic,
            payload,
            self.clock.now_us,
            self.config.device_map(),
            prefix=self.config.mqtt.topic_prefix,
            max_future_skew_s=self.config.ingest.max_future_skew_s,
        )
        return _Item(delivery, decoded)

    async def send(
        self,
        device_id: str,
        seq: int,
        ts_s: float,
        values: dict[str, Any],
        *,
        buffered: bool = False,
        received_s: float | None = None,
    ) -> None:
        """Commit one telemetry message through the writer."""
        item = self.item(device_id, seq, ts_s, values, buffered=buffered, received_s=received_s)
        await self.pipeline._commit([item])

    async def tick(self, now_s: float) -> None:
        """Commit a timer tick at ``now_s`` (communication-loss timers)."""
        self.clock.set(now_s)
        await self.pipeline._commit([_Item(None, Tick(self.clock.now_us))])


@contextlib.asynccontextmanager
async def running(config: Config, clock: Clock) -> AsyncIterator[Collector]:
    """A collector started at the clock's time, stopped when the block ends."""
    collector = Collector(config, clock, SqliteStorage(Path(config.storage.path), synchronous="NORMAL"))
    try:
        await collector.start()
        yield collector
    finally:
        await collector.storage.close()


def stored_alarms(db: Path) -> list[dict[str, Any]]:
    """Every stored alarm, oldest first."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(
            "SELECT id, device_id, metric, rule, severity, state, raised_ts_us, cleared_ts_us "
            "FROM alarms ORDER BY id"
        ).fetchall()
    return [dict(row) for row in rows]


def stored_events(db: Path) -> list[str]:
    """The event of every stored alarm transition, in order."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return [row[0] for row in conn.execute("SELECT event FROM alarm_transitions ORDER BY id")]


def of_rule(db: Path, rule: str) -> list[dict[str, Any]]:
    """The stored alarms of one rule."""
    return [alarm for alarm in stored_alarms(db) if alarm["rule"] == rule]


# --- communication loss -----------------------------------------------------------


async def test_comm_loss_raised_again_after_restart_with_cleared_unacknowledged_alarm(
    tmp_path: Path, clock: Clock
) -> None:
    """After a restart with a cleared-unacknowledged comm-loss alarm, a new silence raises a new one."""
    config = make_config(tmp_path / "c.db", [INCUBATOR])
    async with running(config, clock) as collector:
        for i in range(10):
            await collector.send("inc-1", i, T0 + 10 * i, incubator())
        await collector.tick(T0 + 1100)  # 1000 s of silence: comm loss (timeout 300 s)
        await collector.send("inc-1", 10, T0 + 1100, incubator())  # clears it
    [first] = of_rule(tmp_path / "c.db", "comm_loss")
    assert first["state"] == AlarmState.CLEARED_UNACK
    assert first["raised_ts_us"] == (T0 + 90 + 300) * US

    restart_s = T0 + 1105
    clock.set(restart_s)
    async with running(config, clock) as collector:
        await collector.tick(T0 + 1100 + H)  # silent for an hour after the last reading
    alarms = of_rule(tmp_path / "c.db", "comm_loss")
    assert len(alarms) == 2, alarms
    assert alarms[0]["state"] == AlarmState.CLOSED  # superseded by the new excursion
    assert alarms[1]["state"] == AlarmState.ACTIVE_UNACK
    assert (T0 + 1100 + 300) * US <= alarms[1]["raised_ts_us"] <= (restart_s + 300) * US


async def test_slow_device_clock_reporting_regularly_raises_no_comm_loss(
    tmp_path: Path, clock: Clock
) -> None:
    """A device whose clock runs 10 minutes slow but reports every 10 s raises no comm-loss alarm."""
    config = make_config(tmp_path / "c.db", [INCUBATOR])
    async with running(config, clock) as collector:
        for i in range(180):
            arrive = T0 + 10 * i
            await collector.send("inc-1", i, arrive - 600, incubator(), received_s=arrive)
            await collector.tick(arrive + 5)
    assert stored_alarms(tmp_path / "c.db") == []


async def test_fast_device_clock_does_not_delay_comm_loss(tmp_path: Path, clock: Clock) -> None:
    """Silence after a reading stamped 290 s ahead is timed from its arrival, not its device time."""
    config = make_config(tmp_path / "c.db", [INCUBATOR])
    async with running(config, clock) as collector:
        await collector.send("inc-1", 0, T0 + 290, incubator(), received_s=T0)
        await collector.tick(T0 + 290)
        assert stored_alarms(tmp_path / "c.db") == []
        await collector.tick(T0 + 300)
    [alarm] = stored_alarms(tmp_path / "c.db")
    assert (alarm["rule"], alarm["state"]) == ("comm_loss", AlarmState.ACTIVE_UNACK)
    assert alarm["raised_ts_us"] == (T0 + 300) * US


async def test_backlog_after_restart_raises_no_comm_loss(tmp_path: Path, clock: Clock) -> None:
    """A tick before the broker's queued backlog arrives after a restart raises no comm-loss alarm."""
    config = make_config(tmp_path / "c.db", [INCUBATOR])
    async with running(config, clock) as collector:
        for i in range(30):
            await collector.send("inc-1", i, T0 + 10 * i, incubator())
    # Down for 10 minutes; the device kept publishing and the broker kept its messages.
    clock.set(T0 + 890)
    async with running(config, clock) as collector:
        await collector.tick(T0 + 890)  # the first tick is queued before MQTT connects
        for i in range(30, 90):
            await collector.send("inc-1", i, T0 + 10 * i, incubator(), received_s=T0 + 890)
        await collector.tick(T0 + 890 + 299)
    assert stored_alarms(tmp_path / "c.db") == []


# --- restart restore --------------------------------------------------------------


async def test_late_reading_after_restart_keeps_restored_alarm_clearable(
    tmp_path: Path, clock: Clock
) -> None:
    """A harmless late reading after a restart does not lose the restored alarm, which then clears."""
    config = make_config(tmp_path / "c.db", [{**INCUBATOR, "interval_s": 60}])
    t, seq = T0, 0
    async with running(config, clock) as collector:
        for _ in range(5):  # 37.7 C for 4 min: temperature high alert after 120 s
            await collector.send("inc-1", seq, t, incubator(37.7))
            t, seq = t + 60, seq + 1
        for _ in range(120):  # 37.4 C for 2 h: within the 0.2 off-margin, stays raised
            await collector.send("inc-1", seq, t, incubator(37.4))
            t, seq = t + 60, seq + 1
    newest = t - 60
    [alarm] = stored_alarms(tmp_path / "c.db")
    assert (alarm["metric"], alarm["rule"], alarm["state"]) == ("temp_c", "high", AlarmState.ACTIVE_UNACK)

    async with running(config, clock) as collector:
        await collector.send("inc-1", 10_000, newest - 30, incubator(37.4), received_s=newest + 5)
        latch = next(x for x in collector.engine.devices["inc-1"].judged.latches if x.key.rule == "high")
        assert latch.key.metric == "temp_c"
        assert latch.active is Severity.ALERT
        back_in_band = t
        for _ in range(30):  # back to 37.0 C for 30 min
            await collector.send("inc-1", seq, t, incubator(37.0))
            t, seq = t + 60, seq + 1
    # The late reading's out-of-sequence seq is a data-integrity matter of its own (its
    # own alarm, rule data_integrity); the restored temperature alarm is the one pinned here.
    [alarm] = [a for a in stored_alarms(tmp_path / "c.db") if a["rule"] == "high"]
    assert alarm["state"] == AlarmState.CLEARED_UNACK
    assert alarm["cleared_ts_us"] == back_in_band * US
    assert "revoked" not in stored_events(tmp_path / "c.db")


async def _run_across_replay_start(
    tmp_path: Path, clock: Clock, value_at: Callable[[float], dict[str, Any]], after: dict[str, Any]
) -> float:
    """400 readings 10 s apart (``value_at`` of the time since the restart's replay start), a
    restart, then 30 more minutes of ``after``; return the newest timestamp before the restart."""
    config = make_config(tmp_path / "c.db", [INCUBATOR])
    n = 400
    newest = T0 + 10 * (n - 1)
    since = newest - 3620  # the incubator's restore memory: 3600 s + 2 intervals
    async with running(config, clock) as collector:
        for i in range(n):
            ts = T0 + 10 * i
            await collector.send("inc-1", i, ts, value_at(ts - since))
    async with running(config, clock) as collector:
        for i in range(1, 181):
            await collector.send("inc-1", n + i, newest + 10 * i, after)
    return newest


async def test_alarm_raised_across_replay_start_clears_in_band_after_restart(
    tmp_path: Path, clock: Clock
) -> None:
    """An alarm raised just before the restart's replay span clears when the value returns in band."""

    def value_at(rel: float) -> dict[str, Any]:
        if -60 <= rel <= 70:
            return incubator(37.7)  # raised live at rel = 60
        return incubator(37.4 if rel > 70 else 37.0)  # then within the off-margin

    newest = await _run_across_replay_start(tmp_path, clock, value_at, incubator(37.0))
    [alarm] = stored_alarms(tmp_path / "c.db")
    assert (alarm["metric"], alarm["rule"], alarm["severity"]) == ("temp_c", "high", "alert")
    assert alarm["state"] == AlarmState.CLEARED_UNACK
    assert alarm["cleared_ts_us"] == (newest + 10) * US


async def test_action_excursion_after_restart_is_raised_when_replay_missed_the_door(
    tmp_path: Path, clock: Clock
) -> None:
    """After a restart whose replay began during a door recovery, a persisting action excursion is raised."""

    def value_at(rel: float) -> dict[str, Any]:
        if rel < -100:
            return incubator(37.0, door=rel > -300)  # door closed 100 s before the replay start
        return incubator(37.7 if rel <= 300 else 37.4)  # held during the recovery, never raised

    newest = await _run_across_replay_start(tmp_path, clock, value_at, incubator(38.6))
    high = [a for a in stored_alarms(tmp_path / "c.db") if (a["metric"], a["rule"]) == ("temp_c", "high")]
    assert len(high) == 1, stored_alarms(tmp_path / "c.db")
    assert (high[0]["severity"], high[0]["state"]) == ("action", AlarmState.ACTIVE_UNACK)
    assert high[0]["raised_ts_us"] == (newest + 10 + 120) * US  # first reading after restart + delay


# --- late, duplicate and faulty readings -------------------------------------------


@pytest.mark.parametrize("horizon_s", [3600, 0])
async def test_duplicate_delivery_is_judged_once(tmp_path: Path, clock: Clock, horizon_s: int) -> None:
    """One 0.5 um sample over the alert level delivered twice is one sample: no 2-of-2 alarm."""
    config = make_config(tmp_path / "c.db", [PARTICLES], {"reorder_horizon_s": horizon_s})
    async with running(config, clock) as collector:
        await collector.send("pc-1", 0, T0, {"particles_0_5um_m3": 1000, "particles_5_0um_m3": 0})
        over = {"particles_0_5um_m3": 200_000, "particles_5_0um_m3": 0}  # alert: 0.5 x 352,000
        await collector.send("pc-1", 1, T0 + 60, over)
        await collector.send("pc-1", 1, T0 + 60, over)  # QoS 1 redelivery
    with contextlib.closing(sqlite3.connect(tmp_path / "c.db")) as conn:
        assert conn.execute("SELECT count(DISTINCT ts_us) FROM readings").fetchone()[0] == 2
    assert stored_alarms(tmp_path / "c.db") == []


async def test_mkt_reading_at_or_below_absolute_zero_does_not_stop_the_writer(
    tmp_path: Path, clock: Clock
) -> None:
    """Under an MKT rule the writer survives a -273.15 C reading (stored) and a -280 C one (refused)."""
    rules = {
        "devices": {
            "inc-1": [
                {
                    "type": "mkt",
                    "metric": "temp_c",
                    "window_s": 86400,
                    "levels": {"action": {"limit_c": 37.5}},
                }
            ]
        }
    }
    config = make_config(tmp_path / "c.db", [{**INCUBATOR, "interval_s": 60}], rules)
    async with running(config, clock) as collector:
        await collector.send("inc-1", 0, T0, {"temp_c": 37.0})
        await collector.send("inc-1", 1, T0 + 60, {"temp_c": -280.0})
        await collector.send("inc-1", 2, T0 + 120, {"temp_c": -273.15})
        await collector.send("inc-1", 3, T0 + 180, {"temp_c": 37.0})
        assert collector.acked == 4
    with contextlib.closing(sqlite3.connect(tmp_path / "c.db")) as conn:
        values = [row[0] for row in conn.execute("SELECT value FROM readings ORDER BY ts_us")]
        refused = conn.execute("SELECT reason FROM quarantine").fetchall()
    # Below absolute zero is physically impossible: quarantined as out_of_range, not stored.
    assert values == [37.0, -273.15, 37.0]
    assert refused == [("out_of_range",)]


@pytest.mark.parametrize("restart", [False, True], ids=["no-restart", "restart"])
async def test_live_time_out_of_range_raised_after_too_late_backfill(
    tmp_path: Path, clock: Clock, restart: bool
) -> None:
    """A live 35-min warm spell raises time-out-of-range after a too-late 40-min backfill, restart or not."""
    config = make_config(tmp_path / "c.db", [SHIPPER], NO_COMM_LOSS_OR_FORECAST)
    async with contextlib.AsyncExitStack() as stack:
        collector = await stack.enter_async_context(running(config, clock))

        async def send(
            k: int, temp: float, *, buffered: bool = False, received_s: float | None = None
        ) -> None:
            await collector.send(
                "ln2-1", k, T0 + 60 * k, shipper(temp), buffered=buffered, received_s=received_s
            )

        lost = range(600, 640)  # 10:00-10:40 lost in transit ...
        for k in range(13 * 60):
            if k not in lost:
                await send(k, -190.0)
        for k in lost:  # ... and resent from the device's buffer at 13:00: 40 min above -150 C
            await send(k, -140.0, buffered=True, received_s=T0 + 13 * H)
        assert collector.engine.too_late() == 40
        assert of_rule(tmp_path / "c.db", "time_out_of_range") == []
        if restart:
            await stack.aclose()
            collector = await stack.enter_async_context(running(config, clock))
        for k in range(13 * 60, 16 * 60):
            await send(k, -190.0)
        for k in range(16 * 60, 16 * 60 + 35):  # live: 35 min above -150 C (budget 30 min)
            await send(k, -140.0)
        for k in range(16 * 60 + 35, 17 * 60):
            await send(k, -190.0)
    alarms = of_rule(tmp_path / "c.db", "time_out_of_range")
    assert [(a["severity"], a["state"]) for a in alarms] == [("alert", AlarmState.ACTIVE_UNACK)]


async def test_metrics_render_after_device_with_open_alarm_is_removed(tmp_path: Path, clock: Clock) -> None:
    """/metrics still renders after a device with an open alarm is removed from the configuration."""
    db = tmp_path / "c.db"
    devices = [INCUBATOR, {**INCUBATOR, "id": "inc-2"}]
    async with running(make_config(db, devices), clock) as collector:
        for i in range(20):
            await collector.send("inc-2", i, T0 + 10 * i, incubator(39.0))
    [alarm] = stored_alarms(db)
    assert (alarm["device_id"], alarm["state"]) == ("inc-2", AlarmState.ACTIVE_UNACK)

    async with running(make_config(db, devices[:1]), clock) as collector:
        assert collector.book.open == {}
        text = render(collector.metrics.registry).decode()
    assert "coldwatch_alarms_open" in text
    assert 'device="inc-2"' not in text
    [alarm] = stored_alarms(db)  # still open in storage, untouched
    assert alarm["state"] == AlarmState.ACTIVE_UNACK


# --- the pure engine ---------------------------------------------------------------


def test_revoked_escalation_falls_back_to_the_severity_before_it() -> None:
    """A late reading that revokes an action escalation leaves engine and book both at alert."""
    rules = RulesConfig.model_validate(
        {
            "devices": {
                "d": [
                    {
                        "type": "threshold",
                        "id": "t",
                        "metric": "x",
                        "direction": "high",
                        "levels": {"alert": {"limit": 5}, "action": {"limit": 8, "delay_s": 30}},
                    },
                    {"type": "comm_loss", "timeout_s": 1, "enabled": False},
                ]
            }
        }
    )
    engine = Engine(
        [DeviceConfig(id="d", kind="incubator", site="s", area="a", interval_s=10)], rules, started_us=0
    )
    book = AlarmBook()

    def feed(ts: int, x: float, seq: int) -> None:
        book.apply(engine.ingest(EngineReading("d", ts * US, {"x": x}, seq, False, ts * US)), ts * US)

    seq = 0
    for ts in range(0, 8000, 10):  # alert level for over 2 h (longer than the 1-h horizon)
        feed(ts, 6.0, seq)
        seq += 1
    for ts in range(8000, 8050, 10):  # action level for 50 s: escalates after its 30-s delay
        feed(ts, 9.0, seq)
        seq += 1
    for ts in range(8050, 8100, 10):
        feed(ts, 6.0, seq)
        seq += 1
    assert [a.severity for a in book.open.values()] == [Severity.ALERT]
    feed(8015, 6.0, 10_000)  # late: the action run never lasted 30 s
    latch = next(x for x in engine.devices["d"].judged.latches if x.key.rule == "t")
    assert latch.active is Severity.ALERT
    assert [(a.severity, a.state) for a in book.open.values()] == [(Severity.ALERT, AlarmState.ACTIVE_UNACK)]


def _most_kept(*, stuck: bool, readings: int) -> tuple[int, int]:
    """The most history entries and checkpoints a 1-s incubator holds over ``readings`` readings."""
    engine = Engine(
        [DeviceConfig(id="d", kind="incubator", site="s", area="a", interval_s=1)],
        RulesConfig(),
        started_us=0,
    )
    device = engine.devices["d"]
    values = {"temp_c": 37.0, "co2_pct": 5.0, "rh_pct": 95.0, "door_open": 0.0}
    history = checkpoints = 0
    for i in range(1, readings + 1):
        ts_us = T0 * US if stuck else (T0 + i) * US  # stuck: every reading carries the same stamp
        engine.ingest(EngineReading("d", ts_us, values, i))
        history = max(history, len(device.history))
        checkpoints = max(checkpoints, len(device.checkpoints))
    return history, checkpoints


def test_stuck_device_clock_keeps_rule_memory_bounded() -> None:
    """With its clock stuck a device's rule memory stays within the history bound and stops growing."""
    working_history, _ = _most_kept(stuck=False, readings=10_000)
    stuck_history, stuck_checkpoints = _most_kept(stuck=True, readings=10_000)
    longer_history, longer_checkpoints = _most_kept(stuck=True, readings=20_000)
    assert stuck_checkpoints <= MAX_CHECKPOINTS + 1
    bound = MAX_HISTORY + 8 * CHECKPOINT_EVERY  # the bound plus one checkpoint's worth
    assert working_history <= bound
    assert stuck_history <= bound, f"stuck clock kept {stuck_history} (bound {bound})"
    assert (longer_history, longer_checkpoints) == (stuck_history, stuck_checkpoints), "no growth with time"


def test_streamed_exposition_equals_the_registry_families() -> None:
    """The /metrics text streamed from plain data says exactly what the registry's families say."""
    from prometheus_client import CollectorRegistry, generate_latest  # noqa: PLC0415

    from coldwatch.config import DeviceConfig  # noqa: PLC0415
    from coldwatch.metrics import Metrics, render  # noqa: PLC0415
    from coldwatch.rules.config import RulesConfig  # noqa: PLC0415
    from coldwatch.rules.engine import Engine  # noqa: PLC0415

    devices = [
        DeviceConfig(id="inc-1", kind="incubator", site="s", area="a"),
        DeviceConfig(id="pc-1", kind="particle_counter", site="s", area="b", grade="A"),
    ]
    registry = CollectorRegistry()
    metrics = Metrics(registry, devices)
    metrics.set_limits(Engine(devices, RulesConfig(), started_us=0).all_limits)
    data = metrics.per_device
    data.add(data.readings, "inc-1", 3)
    data.add(data.buffered, "pc-1")
    data.last_value["inc-1"] = {"temp_c": 37.25, "door_open": 1.0}
    data.last_ts_s["pc-1"] = 1.5e9
    data.online["inc-1"] = 0
    streamed = render(registry).decode().splitlines()
    families = generate_latest(registry).decode().splitlines()
    assert sorted(streamed) == sorted(families)
    assert 'coldwatch_readings_total{area="a",device="inc-1",kind="incubator",site="s"} 3.0' in streamed
    assert (
        'coldwatch_last_value{area="a",device="inc-1",kind="incubator",metric="temp_c",site="s"} 37.25'
        in streamed
    )
    assert any(line.startswith('coldwatch_rule_limit{area="b",device="pc-1"') for line in streamed)
