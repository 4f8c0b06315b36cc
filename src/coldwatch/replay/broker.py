"""End-to-end replay: a scenario's readings published through a real broker to a running daemon.

The timeline is published on the devices' own topics (QoS 1) at a chosen speed, with
device timestamps shifted to the present. Once the daemon has stored every reading, the
alarms it stored are read back from its database, shifted back to scenario time, and
judged by the same expectations as an in-process replay. At a speed other than 1,
communication loss cannot be reproduced (it is timed by arrival), so expectations on it
are reported as not run, which fails the run; use ``--speed 1`` for those.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime

import aiomqtt
import numpy as np

from coldwatch.catalogue import KINDS, Kind
from coldwatch.config import Config, parse_broker_url
from coldwatch.errors import ColdwatchError
from coldwatch.replay.runner import AlarmRecord, ScenarioResult, check_expectations
from coldwatch.replay.scenario import LoadedScenario
from coldwatch.replay.timeline import DeviceStream, build_streams, merged_arrivals
from coldwatch.rules.config import CommLossRule
from coldwatch.rules.engine import Engine
from coldwatch.rules.lifecycle import Alarm
from coldwatch.rules.model import US
from coldwatch.rules.profiles import rules_for
from coldwatch.storage.base import QuarantineEntry
from simulators.fleet import encode_payload, telemetry_topic

__all__ = [
    "ReplayViaBrokerError",
    "device_values",
    "rejections_summary",
    "replay_via_broker",
    "stored_alarms",
]

STORED_TIMEOUT_S = 120.0


class ReplayViaBrokerError(ColdwatchError):
    """The end-to-end replay could not be carried out."""


def _comm_loss_rules(loaded: LoadedScenario) -> set[tuple[str, str]]:
    return {
        (device.id, spec.rule_id())
        for device in loaded.devices
        for spec in rules_for(device, loaded.rules)
        if isinstance(spec, CommLossRule)
    }


def device_values(kind: Kind, values: Mapping[str, float]) -> dict[str, float | bool]:
    """A reading's values as its device sends them: booleans (door, lid) as true/false, not 0.0/1.0."""
    specs = KINDS[kind]
    out: dict[str, float | bool] = {}
    for metric, value in values.items():
        spec = specs.get(metric)
        out[metric] = bool(value) if spec is not None and spec.boolean else value
    return out


def rejections_summary(entries: list[QuarantineEntry], devices: set[str], since_us: int) -> tuple[int, str]:
    """How many of ``devices``' messages since ``since_us`` were rejected; why (reasons, counts, examples)."""
    mine = [e for e in entries if e.device_id in devices and e.received_us >= since_us]
    if not mine:
        return 0, ""
    counts = Counter(e.reason for e in mine)
    example = {e.reason: e.detail for e in reversed(mine)}
    parts = [f"{reason} x{count} (e.g. {example[reason]})" for reason, count in counts.most_common()]
    return len(mine), f"the daemon rejected {len(mine)} message(s): " + "; ".join(parts)


def _check_config(loaded: LoadedScenario, config: Config) -> None:
    registered = config.device_map()
    missing = [d.id for d in loaded.devices if d.id in loaded.scenario.timeline and d.id not in registered]
    if missing:
        msg = f"the daemon's configuration does not register {', '.join(missing)}"
        raise ReplayViaBrokerError(msg)
    ours = Engine(loaded.devices, loaded.rules, started_us=0).all_limits()
    theirs = Engine(list(registered.values()), config.rules, started_us=0).all_limits()
    devices = {d.id for d in loaded.devices}
    if sorted(r for r in ours if r[0] in devices) != sorted(r for r in theirs if r[0] in devices):
        msg = (
            "the daemon's rules for the scenario's devices differ from the scenario's: it would prove nothing"
        )
        raise ReplayViaBrokerError(msg)


async def _publish(  # noqa: PLR0917 - one run's parts
    loaded: LoadedScenario,
    streams: dict[str, DeviceStream],
    config: Config,
    shift_us: int,
    speed: float,
    progress: Callable[[int], None] | None,
) -> None:
    broker = parse_broker_url(config.mqtt.url)
    devices = {d.id: d for d in loaded.devices}
    start = loaded.scenario.start_us
    began = time.monotonic()
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        username=broker.username,
        password=None if broker.password is None else broker.password.get_secret_value(),
        identifier=f"coldwatch-replay-{loaded.name}"[:64],
    ) as client:
        for received, stream, index in merged_arrivals(streams):
            if speed > 0:
                wait = (received - start) / US / speed - (time.monotonic() - began)
                if wait > 0:
                    await asyncio.sleep(wait)
            reading = stream.reading(index)
            ts = datetime.fromtimestamp((reading.ts_us + shift_us) / US, tz=UTC)
            device = devices[stream.device_id]
            values = device_values(device.kind, reading.values)
            payload = encode_payload(ts, reading.seq, values, buffered=reading.buffered)
            topic = telemetry_topic(device, config.mqtt.topic_prefix)
            await client.publish(topic, payload, qos=1)
            if progress is not None:
                progress(1)


History = dict[int, list[dict[str, object]]]


async def stored_alarms(
    streams: dict[str, DeviceStream], config: Config, shift_us: int, published_from_us: int
) -> tuple[list[Alarm], History]:
    """Wait until the daemon has stored every reading; return its alarms of these devices.

    A run that cannot complete (the daemon rejected readings published since
    ``published_from_us``, or stored too few in time) fails naming the rejections.
    """
    from coldwatch.storage import SqliteStorage  # noqa: PLC0415 - the daemon's own backend

    storage = SqliteStorage(config.storage.path)
    await storage.open()
    try:
        await storage.register_devices(config.devices)
        deadline = time.monotonic() + STORED_TIMEOUT_S
        for device_id, stream in streams.items():
            metric = next(iter(stream.values))
            sent = int((~np.isnan(stream.values[metric])).sum())
            lo = int(stream.ts_us[0]) + shift_us if len(stream) else 0
            hi = int(stream.ts_us[-1]) + shift_us + 1 if len(stream) else 0
            while True:
                rows = await storage.metric_readings(device_id, metric, lo, hi, sent + 1)
                if len(rows) >= sent:
                    break
                rejected, why = rejections_summary(
                    await storage.quarantine(limit=10_000), {device_id}, published_from_us
                )
                # Every reading is either stored or rejected: no point waiting for the rest.
                if time.monotonic() > deadline or (rejected and len(rows) + rejected >= sent):
                    msg = f"the daemon stored {len(rows)} of {sent} {metric} readings of {device_id}"
                    _, why = rejections_summary(
                        await storage.quarantine(limit=10_000), set(streams), published_from_us
                    )
                    raise ReplayViaBrokerError(f"{msg}; {why}" if why else f"{msg}; it rejected none")
                await asyncio.sleep(0.2)
        # The daemon commits the alarms a batch raises with its readings: they are stored now.
        alarms: list[Alarm] = []
        histories: History = {}
        for device_id in streams:
            for alarm in await storage.alarms(device_id=device_id, limit=100_000):
                alarms.append(alarm)
                histories[alarm.id] = await storage.alarm_history(alarm.id)
    finally:
        await storage.close()
    return alarms, histories


def _records(alarms: list[Alarm], histories: History, origin_us: int) -> list[AlarmRecord]:
    out = []
    for alarm in alarms:
        reached: dict[str, float] = {}
        for step in histories.get(alarm.id, []):
            if step["event"] in {"raised", "severity_changed"} and step["severity"]:
                reached.setdefault(str(step["severity"]), (int(str(step["ts_us"])) - origin_us) / US)
        raised_s = (alarm.raised_ts_us - origin_us) / US
        reached.setdefault(alarm.severity.label, raised_s)
        out.append(
            AlarmRecord(
                id=alarm.id,
                device=alarm.key.device_id,
                metric=alarm.key.metric,
                rule=alarm.key.rule,
                severity=max(reached, key=("alert", "action").index),
                state=alarm.state.value,
                raised_s=raised_s,
                reached_s=reached,
                cleared_s=None if alarm.cleared_ts_us is None else (alarm.cleared_ts_us - origin_us) / US,
                acknowledged_by=alarm.acknowledged_by,
                late=alarm.late,
                revoked=alarm.detail.startswith("revoked"),
                detail=alarm.detail,
                value=alarm.value,
                limit=alarm.limit,
            )
        )
    return sorted(out, key=lambda r: (r.raised_s, r.id))


def replay_via_broker(
    loaded: LoadedScenario,
    config: Config,
    *,
    speed: float = 60.0,
    progress: Callable[[int], None] | None = None,
) -> ScenarioResult:
    """Publish one scenario to the daemon that ``config`` describes and judge what it stored."""
    if loaded.scenario.actions:
        msg = "user actions are not replayed through the broker: replay this scenario in process"
        raise ReplayViaBrokerError(msg)
    _check_config(loaded, config)
    began = time.perf_counter()
    streams = build_streams(loaded.scenario)
    now_us = time.time_ns() // 1000
    duration = loaded.scenario.duration_us
    # Live at speed 1 (so that silence is real silence); otherwise wholly in the past, so no
    # reading is ever ahead of the clock, however fast it is sent.
    origin_us = now_us if speed == 1 else now_us - duration - US
    shift_us = origin_us - loaded.scenario.start_us
    asyncio.run(_publish(loaded, streams, config, shift_us, speed, progress))
    stored, histories = asyncio.run(stored_alarms(streams, config, shift_us, now_us))
    records = _records(stored, histories, origin_us)
    results = check_expectations(loaded.scenario.expect, records)
    if speed != 1:
        timed_by_arrival = _comm_loss_rules(loaded)
        records = [r for r in records if (r.device, r.rule) not in timed_by_arrival]
        results = [
            replace(
                r,
                status="not_run",
                detail="communication loss is timed by arrival: replay at --speed 1 to check it "
                f"(ran at {speed:g})",
            )
            if (r.expectation.device, r.expectation.rule) in timed_by_arrival
            else r
            for r in results
        ]
    return ScenarioResult(
        loaded=loaded,
        mode=f"via broker at {speed:g}x",
        readings=sum(len(s) for s in streams.values()),
        elapsed_s=time.perf_counter() - began,
        alarms=records,
        results=results,
        transitions=[],
        streams=streams,
        limits=Engine(loaded.devices, loaded.rules, started_us=0).limits(),
    )
