"""Scheduled periodic reports: generated once each period has ended, written into a folder.

Which periods are due is a pure function (:func:`coldwatch.records.periods.due_periods`)
of the time now and the reports already stored: the ``reports`` table is the memory, so a
restart generates nothing twice and a missed period is caught up. Cluster members take a
PostgreSQL advisory lock per report and look again before generating, so only one of them
generates it. The PDF, CSV and JSON go into the schedule's folder under temporary names,
renamed into place (a reader never sees half a file); a report stored but whose files are
missing (a crash between the two) gets its files written from the stored copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from coldwatch.config import Config
from coldwatch.errors import ColdwatchError
from coldwatch.records.periodic import Scope, generate_periodic
from coldwatch.records.periods import Period, due_periods, period_containing
from coldwatch.records.schedule_config import ScheduleConfig
from coldwatch.records.store import ReportStore
from coldwatch.records.twins import twins
from coldwatch.storage.base import Storage
from coldwatch.storage.identity_store import identity_store

__all__ = ["SCHEDULER", "run_schedules", "run_schedules_once", "subject_of"]

log = logging.getLogger(__name__)
SCHEDULER = "scheduler"  # who generated a scheduled report (the audit trail's actor)
US = 1_000_000
_LOCAL: dict[str, asyncio.Lock] = {}


def subject_of(schedule: ScheduleConfig, period: Period) -> str:
    """The stored subject of a scheduled report: its schedule and its period."""
    return f"schedule {schedule.name}: {_scope(schedule).text()} {period.label}"


def _scope(schedule: ScheduleConfig) -> Scope:
    return Scope(schedule.site, schedule.area, tuple(schedule.devices))


def _files(schedule: ScheduleConfig, period: Period) -> dict[str, Path]:
    stem = f"{schedule.name}-{period.label}"
    return {ext: schedule.folder / f"{stem}.{ext}" for ext in ("pdf", "csv", "json")}


def _write_atomically(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temporary.open("wb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    temporary.replace(path)


def _write_files(files: dict[str, Path], pdf: bytes, data: dict[str, object]) -> None:
    csv_text, json_bytes = twins(data)
    _write_atomically(files["csv"], csv_text.encode())
    _write_atomically(files["json"], json_bytes)
    _write_atomically(files["pdf"], pdf)  # last: its presence says the set is complete


async def _stored_subjects(storage: Storage, schedule: ScheduleConfig) -> dict[str, int]:
    rows = await identity_store(storage).fetch(
        "SELECT subject, id FROM reports WHERE kind = 'periodic' AND subject LIKE ?",
        f"schedule {schedule.name}:%",
    )
    return {str(r[0]): int(r[1]) for r in rows}


@contextlib.asynccontextmanager
async def _exclusive(storage: Storage, key: str) -> AsyncIterator[None]:
    """One generator of ``key`` at a time across cluster members (PostgreSQL); SQLite has one daemon."""
    from coldwatch.storage.postgres import PostgresStorage  # noqa: PLC0415 - asyncpg only when used

    if not isinstance(storage, PostgresStorage):
        # One collector writes a SQLite file; its tasks (and tests) share this process's lock.
        lock = _LOCAL.setdefault(key, asyncio.Lock())
        async with lock:
            yield
        return
    import asyncpg  # noqa: PLC0415

    conn = await asyncpg.connect(storage.url)
    try:
        await conn.execute("SELECT pg_advisory_lock(hashtext($1))", f"coldwatch report {key}")
        yield
    finally:
        await conn.close()  # ends the session: the lock goes with it


async def _restore(
    storage: Storage, config: Config, schedule: ScheduleConfig, period: Period, report_id: int
) -> None:
    """Write a stored report's files again (they went missing, e.g. a crash right after it was stored)."""
    stored = await ReportStore(identity_store(storage), config.site.timezone).get(report_id)
    if stored is not None:
        _write_files(_files(schedule, period), stored.pdf, stored.data)
        log.warning("report %s: files missing, written again from the stored copy", stored.summary.subject)


async def _one(
    storage: Storage, config: Config, schedule: ScheduleConfig, period: Period, now_us: int
) -> bool:
    """Generate (or restore the files of) one scheduled report; whether a report was generated."""
    subject = subject_of(schedule, period)
    files = _files(schedule, period)
    async with _exclusive(storage, subject):
        existing = (await _stored_subjects(storage, schedule)).get(subject)
        if existing is not None:
            if not files["pdf"].exists():
                stored = await ReportStore(identity_store(storage), config.site.timezone).get(existing)
                if stored is not None:
                    _write_files(files, stored.pdf, stored.data)
                    log.warning(
                        "report %s: its files were missing, written again from the stored copy", subject
                    )
            return False
        report = await generate_periodic(
            storage, config, _scope(schedule), period, SCHEDULER, now_us, str(files["pdf"]), subject=subject
        )
        _write_files(files, report.pdf, report.data)
        log.info("report %s generated into %s (report %s)", subject, schedule.folder, report.report_id)
        return True


async def run_schedules_once(storage: Storage, config: Config, now_us: int) -> list[str]:
    """Generate every scheduled report due at ``now_us``; the subjects generated."""
    zone = config.site.timezone
    generated = []
    for schedule in config.reports.schedules:
        stored = await _stored_subjects(storage, schedule)
        recent = due_periods(schedule.every, zone, now_us, (), catch_up=schedule.catch_up * 2)
        done = {p.start_us for p in recent if subject_of(schedule, p) in stored}
        for period in recent:
            report_id = stored.get(subject_of(schedule, period))
            if report_id is not None and not _files(schedule, period)["pdf"].exists():
                await _restore(storage, config, schedule, period, report_id)
        if stored and not done:
            done = {0}  # generated before, longer ago than the catch-up window
        for period in due_periods(schedule.every, zone, now_us, done, catch_up=schedule.catch_up):
            try:
                if await _one(storage, config, schedule, period, now_us):
                    generated.append(subject_of(schedule, period))
            except (ColdwatchError, OSError) as exc:
                log.error("scheduled report %s %s failed: %s", schedule.name, period.label, exc)  # noqa: TRY400
    return generated


def _next_wake_us(config: Config, now_us: int) -> int:
    """The end of the earliest current period (a report falls due then), at most ``check_every_s`` away."""
    zone = config.site.timezone
    today = datetime.fromtimestamp(now_us / US, ZoneInfo(zone)).date()
    ends = [period_containing(s.every, today, zone).end_us for s in config.reports.schedules]
    soonest = min([e for e in ends if e > now_us], default=now_us)
    return int(min(soonest + US, now_us + round(config.reports.check_every_s * US)))


async def run_schedules(storage: Storage, config: Config) -> None:
    """Generate due reports now and at each period's end, until cancelled."""
    while True:
        now_us = time.time_ns() // 1000
        try:
            generated = await run_schedules_once(storage, config, now_us)
            log.info("scheduled reports checked: %d generated", len(generated))
        except Exception:  # a task boundary: the scheduler must not stop the collector
            log.exception("scheduled reports failed; trying again later")
        now_us = time.time_ns() // 1000
        await asyncio.sleep(max(1.0, (_next_wake_us(config, now_us) - now_us) / US))
