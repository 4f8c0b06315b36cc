"""Alarm state across restarts: rebuild the rules engine from what storage holds.

Readings and the alarm transitions they caused are committed in one transaction, and so
is, every few minutes of device time, a snapshot of each device's rule state
(coldwatch.rules.snapshot). After a restart a device's rules take its snapshot's state and
judge again only the readings stored after it; a device without a usable snapshot (none
yet, or its rules changed) is rebuilt by judging again the stored readings of its recent
past (long enough for every window and delay of its rules). The alarms that were already
open are restored first. Nothing is raised twice and nothing is forgotten; events
produced by this replay are already stored and are dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from coldwatch.config import Config
from coldwatch.metrics import Metrics
from coldwatch.records.calibration import calibration_key
from coldwatch.recovery import integrity_key
from coldwatch.rules.config import (
    CommLossRule,
    ConsecutiveRule,
    EventsInWindowRule,
    ForecastRule,
    MktRule,
    RateRule,
    RuleSpec,
    TimeOutOfRangeRule,
)
from coldwatch.rules.engine import Engine
from coldwatch.rules.lifecycle import AlarmBook
from coldwatch.rules.snapshot import RuleSnapshot, SnapshotError
from coldwatch.storage.base import DeviceState, Storage

__all__ = ["memory_s", "restore", "run_ticks", "start_alarming"]

log = logging.getLogger(__name__)
US = 1_000_000
# Consecutive-sample rules remember samples, not seconds: give them this much history.
MIN_MEMORY_S = 3600.0


def memory_s(specs: list[RuleSpec], interval_s: float, horizon_s: float) -> float:
    """How far back a device's readings must be judged again to rebuild its rule state."""
    spans = [MIN_MEMORY_S, horizon_s]
    for spec in specs:
        if isinstance(spec, RateRule | EventsInWindowRule | TimeOutOfRangeRule | MktRule | ForecastRule):
            spans.append(spec.window_s)
        if isinstance(spec, ConsecutiveRule):
            spans += [level.m * interval_s for level in spec.levels.values()]
        if isinstance(spec, CommLossRule):
            continue
        levels = getattr(spec, "levels", {})
        spans += [getattr(level, "delay_s", 0.0) for level in levels.values()]
    return max(spans) + 2 * interval_s


async def restore(
    config: Config,
    engine: Engine,
    book: AlarmBook,
    storage: Storage,
    states: dict[str, DeviceState],
    *,
    only_own_alarms: bool = False,
) -> int:
    """Load open alarms into ``book`` and rebuild ``engine``; return the readings judged again.

    ``only_own_alarms``: load the open alarms of the configured devices only (a cluster
    member's partition; the other alarms belong to other partitions).
    """
    alarms, next_id = await storage.open_alarms([d.id for d in config.devices] if only_own_alarms else None)
    judged = engine.keys()
    # Data-integrity alarms come from gap recovery (coldwatch.recovery), calibration alarms
    # from the due dates (coldwatch.calibrating): not from a rule.
    known = judged | {k(d.id) for d in config.devices for k in (integrity_key, calibration_key)}
    kept = [a for a in alarms if a.key in known]
    for alarm in alarms:
        if alarm.key not in known:
            log.warning(
                "alarm %d (%s) has no registered device or rule now: it stays open in storage, untracked",
                alarm.id,
                alarm.key,
            )
    book.load(kept, next_id)
    replayed = 0
    snapshots = {s.device_id: s for s in await storage.rule_snapshots([d.id for d in config.devices])}
    from_snapshot = 0
    for device in config.devices:
        newest = states.get(device.id, DeviceState()).last_ts_us
        if newest is None:
            continue
        snapshot = snapshots.get(device.id)
        floor = (-(2**63), -1)
        if snapshot is not None and _restored(engine, snapshot):
            # Exactly the state after the readings up to the snapshot: judge those after it.
            since, floor = snapshot.ts_us, (snapshot.ts_us, snapshot.seq)
            from_snapshot += 1
        else:
            since = newest - round(
                memory_s(engine.rules[device.id], device.interval_s, config.rules.reorder_horizon_s) * US
            )
        async for reading in storage.readings_since(device.id, since):
            if (reading.ts_us, reading.seq) > floor:
                engine.ingest(reading)
                replayed += 1
    # The stored alarms are the record: whatever the replay could not know (state from
    # before its span, readings that were too late when they arrived), the engine now
    # agrees with them exactly, and judges on from here.
    engine.reconcile([a for a in kept if a.active and a.key in judged])
    log.info(
        "rules restored: %d open alarm(s), %d device(s) from snapshots, %d reading(s) judged again",
        len(book.open),
        from_snapshot,
        replayed,
    )
    return replayed


def _restored(engine: Engine, snapshot: RuleSnapshot) -> bool:
    """Whether the device now holds its snapshot's state (not when the rules changed, or it is damaged)."""
    try:
        return engine.restore_snapshot(snapshot)
    except SnapshotError as exc:
        log.warning(
            "rule snapshot of %s unreadable (%s): its readings are judged again", snapshot.device_id, exc
        )
        return False


async def start_alarming(
    config: Config,
    storage: Storage,
    states: dict[str, DeviceState],
    metrics: Metrics,
    *,
    only_own_alarms: bool = False,
) -> tuple[Engine, AlarmBook]:
    """Build the rules engine and the alarm book, restore them, and publish their metrics."""
    engine = Engine(
        config.devices,
        config.rules,
        started_us=time.time_ns() // 1000,
        stored_history=config.rules.late_history == "database",
    )
    book = AlarmBook()
    await restore(config, engine, book, storage, states, only_own_alarms=only_own_alarms)
    metrics.set_limits(engine.iter_limits)
    metrics.open_alarms = lambda: list(book.open.values())
    metrics.forecasts = engine.predictions_h
    metrics.too_late = engine.too_late
    return engine, book


async def run_ticks(tick: Callable[[int], None], interval_s: float = 1.0) -> None:
    """Tell the rules the time every ``interval_s`` (communication-loss timers)."""
    while True:
        tick(time.time_ns() // 1000)
        await asyncio.sleep(interval_s)
