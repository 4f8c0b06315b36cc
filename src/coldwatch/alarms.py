"""Alarm state across restarts: rebuild the rules engine from what storage holds.

Readings and the alarm transitions they caused are committed in one transaction, so
after a restart the rule state is rebuilt by judging again the stored readings of each
device's recent past (long enough for every window and delay of its rules), with the
alarms that were already open before that restored first. Nothing is raised twice and
nothing is forgotten; events produced by this replay are already stored and are dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from coldwatch.config import Config
from coldwatch.metrics import Metrics
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
    # Data-integrity alarms come from gap recovery (coldwatch.recovery), not from a rule.
    known = judged | {integrity_key(d.id) for d in config.devices}
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
    for device in config.devices:
        newest = states.get(device.id, DeviceState()).last_ts_us
        if newest is None:
            continue
        since = newest - round(
            memory_s(engine.rules[device.id], device.interval_s, config.rules.reorder_horizon_s) * US
        )
        async for reading in storage.readings_since(device.id, since):
            engine.ingest(reading)
            replayed += 1
    # The stored alarms are the record: whatever the replay could not know (state from
    # before its span, readings that were too late when they arrived), the engine now
    # agrees with them exactly, and judges on from here.
    engine.reconcile([a for a in kept if a.active and a.key in judged])
    log.info("rules restored: %d open alarm(s), %d reading(s) judged again", len(book.open), replayed)
    return replayed


async def start_alarming(
    config: Config,
    storage: Storage,
    states: dict[str, DeviceState],
    metrics: Metrics,
    *,
    only_own_alarms: bool = False,
) -> tuple[Engine, AlarmBook]:
    """Build the rules engine and the alarm book, restore them, and publish their metrics."""
    engine = Engine(config.devices, config.rules, started_us=time.time_ns() // 1000)
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
