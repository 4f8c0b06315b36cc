"""Alarms end to end: simulated excursions through a real broker into the daemon's alarm store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from coldwatch.broker import RunningBroker
from coldwatch.config import Config, DeviceConfig
from coldwatch.rules.config import RulesConfig
from coldwatch.rules.engine import Engine
from coldwatch.rules.lifecycle import AlarmBook
from coldwatch.rules.model import US, EngineReading
from simulators import build_models, encode_reading, timeline
from simulators.fleet import telemetry_topic as sim_topic
from tests.conftest import (
    COMM_LOSS_OPEN,
    Backend,
    db_query,
    eventually,
    publish_all,
    reading,
    running_daemon,
    telemetry_topic,
    write_config,
)

NO_COMM_LOSS = [{"type": "comm_loss", "timeout_s": 1, "enabled": False}]


def stored_alarms(db: Path | str) -> list[tuple[Any, ...]]:
    """(device, metric, rule, severity, state, raised_ts_us, cleared_ts_us) of every stored alarm."""
    return db_query(
        db,
        "SELECT device_id, metric, rule, severity, state, raised_ts_us, cleared_ts_us "
        "FROM alarms ORDER BY id",
    )


def transitions(db: Path | str) -> list[tuple[Any, ...]]:
    """(alarm, event, ts_us, severity) of every stored transition."""
    return db_query(db, "SELECT alarm_id, event, ts_us, severity FROM alarm_transitions ORDER BY id")


def simulated(config: Config, span_s: float, force: Any, seed: int = 5) -> list[tuple[str, bytes]]:
    """A simulated timeline that ends now, with events forced on the models by ``force``."""
    models = build_models(config.devices, seed=seed)
    force(models)
    start = datetime.now(UTC) - timedelta(seconds=span_s + 60)
    return [
        (sim_topic(r.device, config.mqtt.topic_prefix), encode_reading(r))
        for r in timeline(config.devices, start=start, seed=seed, until_s=span_s, models=models)
    ]


async def test_simulated_excursion_of_each_kind_raises_its_alarm(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend
) -> None:
    """A long door opening, a dry shipper and a particle burst each raise their profile's alarm."""
    devices = [
        {"id": "inc-1", "kind": "incubator", "site": "s", "area": "lab", "interval_s": 10},
        {"id": "ln2-1", "kind": "cryoshipper", "site": "s", "area": "store", "interval_s": 60},
        {
            "id": "pc-1",
            "kind": "particle_counter",
            "site": "s",
            "area": "fill",
            "grade": "B",
            "interval_s": 60,
        },
    ]
    config = write_config(
        tmp_path / "c.yaml",
        storage={"path": backend.location},
        broker=broker,
        prefix=prefix,
        devices=devices,
        rules={"profiles": dict.fromkeys(("incubator", "cryoshipper", "particle_counter"), NO_COMM_LOSS)},
    )

    def force(models: Any) -> None:
        models["inc-1"].open_door(3600, 400)  # open 400 s: door alert at 180 s, not action (600 s)
        models["ln2-1"].set_ln2_level(0.3)  # nearly dry: warms past -150 C, then -135 C
        models["pc-1"].start_activity(3600, 900, factor=40.0)  # a burst far over the grade B limit

    messages = simulated(config, 8 * 3600, force)
    async with running_daemon(config) as running:
        await publish_all(broker, messages, clients=1)
        await eventually(
            lambda: (
                running.sample(
                    "coldwatch_readings_total",
                    {"device": "ln2-1", "kind": "cryoshipper", "site": "s", "area": "store"},
                )
                >= 8 * 60 - 2
            ),
            timeout_s=60,
            what="all readings judged",
        )
        pc = {
            "device": "pc-1",
            "kind": "particle_counter",
            "site": "s",
            "area": "fill",
            "metric": "particles_0_5um_m3",
        }
        limit = {**pc, "rule": "consecutive", "direction": "high"}
        # Annex 1 grade B in operation: 352,000 per m3 at 0.5 um; alert at the stated half.
        assert running.sample("coldwatch_rule_limit", {**limit, "severity": "action"}) == 352_000
        assert running.sample("coldwatch_rule_limit", {**limit, "severity": "alert"}) == 176_000
        ln2 = {"device": "ln2-1", "kind": "cryoshipper", "site": "s", "area": "store"}
        assert running.registry.get_sample_value("coldwatch_hold_time_forecast_hours", ln2) is not None
        open_action = {**ln2, "metric": "temp_c", "rule": "high", "severity": "action"}
        assert running.sample("coldwatch_alarms_open", {**open_action, "state": "active_unacknowledged"}) == 1
    listed = subprocess.run(
        [
            sys.executable,
            "-m",
            "coldwatch",
            "alarms",
            "list",
            "--config",
            str(tmp_path / "c.yaml"),
            "--open",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("COLDWATCH_")},
    )
    open_listed = [json.loads(line) for line in listed.stdout.splitlines()]
    assert {(a["device"], a["metric"], a["rule"]) for a in open_listed} >= {("ln2-1", "temp_c", "high")}
    assert all(a["state"] != "closed" for a in open_listed)
    alarms = stored_alarms(config.storage.location)
    by_rule = {(a[0], a[1], a[2]): a for a in alarms}
    door = by_rule[("inc-1", "door_open", "held_open")]
    assert door[3] == "alert", "open 400 s: past the 180 s alert delay, short of the 600 s action delay"
    door_readings = [
        (payload["ts"], payload["values"]["door_open"])
        for topic, raw in messages
        if "/inc-1/" in topic
        for payload in [json.loads(raw)]
    ]
    opened = next(i for i, (_, is_open) in enumerate(door_readings) if is_open)
    closed = next(i for i in range(opened, len(door_readings)) if not door_readings[i][1])
    assert door[5] == _us(door_readings[opened][0]) + 180 * US, "raised when open for the 180 s delay"
    assert door[6] == _us(door_readings[closed][0]), "cleared at the first reading with the door closed"
    temp = by_rule[("ln2-1", "temp_c", "high")]
    assert temp[3] == "action", "the dry shipper warmed past -135 C"
    history = [t for t in transitions(config.storage.location) if t[0] == alarms.index(temp) + 1]
    assert [t[1] for t in history][:2] == ["raised", "severity_changed"]
    assert [t[3] for t in history][:2] == ["alert", "action"]
    burst = by_rule[("pc-1", "particles_0_5um_m3", "consecutive")]
    assert burst[3] == "action"
    assert not any(a[0] == "inc-1" and a[1] in {"temp_c", "co2_pct"} for a in alarms), (
        "the door's temperature and CO2 dip is held during recovery"
    )


async def test_silent_device_raises_communication_loss(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend
) -> None:
    """A silent device raises communication loss with no reading arriving, and clears on the next one."""
    devices = [{"id": "inc-1", "kind": "incubator", "site": "s", "area": "lab"}]
    config = write_config(
        tmp_path / "c.yaml",
        storage={"path": backend.location},
        broker=broker,
        prefix=prefix,
        devices=devices,
        rules={"devices": {"inc-1": [{"type": "comm_loss", "timeout_s": 2}]}},
    )
    topic = telemetry_topic(config, "inc-1")
    values = {"temp_c": 37.0, "co2_pct": 5.0}
    async with running_daemon(config) as running:
        last = datetime.now(UTC).timestamp()
        await publish_all(broker, [(topic, reading(0, values, ts=last))], clients=1)
        labels = COMM_LOSS_OPEN
        await eventually(
            lambda: running.sample("coldwatch_alarms_open", labels) == 1, timeout_s=15, what="comm loss"
        )
        alarm = stored_alarms(config.storage.location)[0]
        assert alarm[:5] == ("inc-1", "device", "comm_loss", "action", "active_unacknowledged")
        received_us = db_query(config.storage.location, "SELECT max(received_us) FROM readings")[0][0]
        # Silence is timed by arrival: stamped when it reached its timeout on the collector's clock.
        assert alarm[5] == received_us + 2 * US
        await publish_all(broker, [(topic, reading(1, values))], clients=1)
        await eventually(
            lambda: running.sample("coldwatch_alarms_open", labels) == 0, timeout_s=15, what="cleared"
        )
    assert stored_alarms(config.storage.location)[0][4] == "cleared_unacknowledged"


def incubator_run(base_s: float) -> list[tuple[float, float]]:
    """Incubator temperature every 10 s: in band, 1 min above the alert limit, 3 min above action, in band."""
    temps = [37.0] * 6 + [37.8] * 6 + [38.6] * 18 + [37.0] * 6
    return [(base_s + 10 * i, t) for i, t in enumerate(temps)]


async def test_restart_mid_delay_and_mid_alarm_changes_nothing(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend
) -> None:
    """Restarting inside an on-delay and inside an open alarm leaves the history of an uninterrupted run."""
    devices = [{"id": "inc-1", "kind": "incubator", "site": "s", "area": "lab"}]
    config = write_config(
        tmp_path / "c.yaml",
        storage={"path": backend.location},
        broker=broker,
        prefix=prefix,
        devices=devices,
        rules={"profiles": {"incubator": NO_COMM_LOSS}},
    )
    topic = telemetry_topic(config, "inc-1")
    base = datetime.now(UTC).timestamp() - 3600
    run = incubator_run(base)
    messages = [(topic, reading(i, {"temp_c": t, "co2_pct": 5.0}, ts=ts)) for i, (ts, t) in enumerate(run)]
    # Pieces: up to 60 s into the excursion (inside the 120 s delay), then to mid-alarm, then the rest.
    pieces = [messages[:12], messages[12:20], messages[20:]]
    for piece in pieces:
        async with running_daemon(config) as running:
            await publish_all(broker, piece, clients=1)
            await eventually(
                lambda n=piece[-1]: _stored(config.storage.location) >= messages.index(n) + 1,
                what="piece stored",
            )
            del running
    expected = _uninterrupted(config, run)
    first_beyond_us = round(run[6][0] * US)
    assert [e[0] for e in expected] == ["raised", "severity_changed", "cleared"]
    assert expected[0][1] == first_beyond_us + 120 * US, "raised when the 120 s delay elapsed"
    assert expected[1][1] == round(run[12][0] * US) + 120 * US, "escalated when the action delay elapsed"
    assert [(t[1], t[2], t[3]) for t in transitions(config.storage.location)] == expected
    assert len(stored_alarms(config.storage.location)) == 1, "raised once, not again after a restart"


def _us(rfc3339: str) -> int:
    moment = datetime.fromisoformat(rfc3339)
    return int(moment.timestamp()) * US + moment.microsecond


def _stored(db: Path | str) -> int:
    return int(db_query(db, "SELECT count(DISTINCT seq) FROM readings")[0][0])


def _uninterrupted(config: Config, run: list[tuple[float, float]]) -> list[tuple[str, int, str]]:
    """The transitions the pure engine produces for the same readings in one go."""
    device = DeviceConfig(id="inc-1", kind="incubator", site="s", area="lab")
    engine = Engine([device], RulesConfig.model_validate(config.rules.model_dump()), started_us=0)
    book = AlarmBook()
    out = []
    for i, (ts, t) in enumerate(run):
        events = engine.ingest(EngineReading("inc-1", round(ts * US), {"temp_c": t, "co2_pct": 5.0}, seq=i))
        out += [(tr.event, tr.ts_us, tr.alarm.severity.label) for tr in book.apply(events, 0)]
    return out
