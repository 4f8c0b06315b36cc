"""The collector's calibration check: due dates in, calibration alarms out, every minute or so.

At start-up and then every ``calibration.check_interval_s`` the collector reads its points'
instruments and calibration records (:func:`coldwatch.records.instruments.calibration_states`)
and hands the writer a :class:`coldwatch.pipeline.BookCheck`: the writer compares each
point's state with its open calibration alarm (:func:`coldwatch.records.calibration.calibration_events`)
and applies only the difference, through the ordinary alarm lifecycle (stored with its
transitions, notified, acknowledged with a signature). The open alarms are restored at
start-up like any other, and a cluster member checks only its own partition's points, so
the same alarm is never raised twice, across restarts or members.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Final

from coldwatch.config import Config
from coldwatch.errors import ColdwatchError
from coldwatch.pipeline import BookCheck, Pipeline
from coldwatch.records.calibration import calibration_events
from coldwatch.records.instruments import calibration_states
from coldwatch.storage.identity_store import IdentityStore

__all__ = ["check_once", "run_calibration_checks"]

log = logging.getLogger(__name__)
_ERROR_PAUSE_S: Final = 5.0


async def check_once(store: IdentityStore, config: Config, pipeline: Pipeline, now_us: int) -> None:
    """Read the points' calibration state at ``now_us`` and queue the alarm check for the writer."""
    devices = [d.id for d in config.devices]
    days = config.calibration.alert_before_days
    states = await calibration_states(store, devices, now_us, now_us, now_us, alert_before_days=days)
    points = list(states.values())
    pipeline.check(BookCheck(now_us, lambda alarms: calibration_events(points, alarms, now_us, days)))


async def run_calibration_checks(
    store: IdentityStore,
    config: Config,
    pipeline: Pipeline,
    clock_us: Callable[[], int] = lambda: time.time_ns() // 1000,
) -> None:
    """Check at once, then every ``calibration.check_interval_s``; a failure is logged and retried."""
    interval_s = config.calibration.check_interval_s
    while True:
        try:
            await check_once(store, config, pipeline, clock_us())
        except ColdwatchError as exc:
            log.warning("calibration check failed (%s): trying again", exc)
            await asyncio.sleep(min(interval_s, _ERROR_PAUSE_S))
            continue
        except Exception:
            # A fault of this check must never stop the collector's ingest: logged, tried again.
            log.exception("calibration check failed")
            await asyncio.sleep(max(interval_s, _ERROR_PAUSE_S))
            continue
        await asyncio.sleep(interval_s)
