"""Report periods in the site's time zone, the scheduling decision, and scheduled reports in a real daemon."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from coldwatch.broker import RunningBroker
from coldwatch.records.periods import (
    Period,
    due_periods,
    parse_day,
    period_containing,
    period_of_range,
    requested_period,
)
from coldwatch.records.schedule import run_schedules_once
from coldwatch.records.schedule_config import ReportsConfig
from coldwatch.records.store import ReportStore
from coldwatch.storage import open_storage
from coldwatch.storage.identity_store import identity_store
from tests.conftest import Backend, device_entries, eventually, running_daemon, write_config

US = 1_000_000
BERLIN = "Europe/Berlin"


def at(text: str, zone: str = "UTC") -> int:
    """Microseconds of an ISO time (naive: in ``zone``)."""
    from zoneinfo import ZoneInfo  # noqa: PLC0415

    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(zone))
    return int(moment.timestamp() * US)


def test_calendar_periods_in_the_site_zone() -> None:
    """Days, ISO weeks and months start at local midnight; the DST day is 23 hours long."""
    day = period_containing("daily", date(2026, 3, 29), BERLIN)
    assert day.start_us == at("2026-03-29T00:00", BERLIN)
    assert day.end_us - day.start_us == 23 * 3600 * US
    assert day.label == "2026-03-29"
    week = period_containing("weekly", date(2026, 12, 31), BERLIN)
    assert week.label == "2026-W53"
    assert week.start_us == at("2026-12-28T00:00", BERLIN)
    assert week.end_us == at("2027-01-04T00:00", BERLIN)
    month = period_containing("monthly", date(2026, 2, 14), BERLIN)
    assert (month.start_us, month.end_us, month.label) == (
        at("2026-02-01T00:00", BERLIN), at("2026-03-01T00:00", BERLIN), "2026-02",
    )  # fmt: skip
    span = period_of_range(date(2026, 11, 1), date(2026, 11, 15), BERLIN)
    assert span.end_us - span.start_us == 14 * 86_400 * US
    with pytest.raises(ValueError, match="after its start"):
        period_of_range(date(2026, 11, 2), date(2026, 11, 1), BERLIN)
    assert parse_day("2026-11") == date(2026, 11, 1)
    with pytest.raises(ValueError, match="at most 400 days"):
        requested_period(None, None, "2020-01-01", "2026-01-01", BERLIN, at("2026-11-04T00:00"))
    to_date = requested_period("month", "2026-11-20", None, None, BERLIN, at("2026-11-04T00:00"))
    assert (to_date.label, to_date.end_us) == ("2026-11 (to date)", at("2026-11-04T00:00"))
    with pytest.raises(ValueError, match="not a date"):
        parse_day("yesterday")


def test_due_periods_decision() -> None:
    """Only ended periods are due, each once; a new schedule starts with the last; downtime is caught up."""
    now = at("2026-11-04T00:30", BERLIN)  # 30 minutes into the 4th, local time
    [last] = due_periods("daily", BERLIN, now, ())
    assert last.label == "2026-11-03"
    assert due_periods("daily", BERLIN, now, {last.start_us}) == []
    # Just before local midnight the 3rd has not ended: the 2nd is the last ended day.
    assert [p.label for p in due_periods("daily", BERLIN, at("2026-11-03T23:59", BERLIN), ())] == [
        "2026-11-02"
    ]
    # Down since the 31st was generated: the days since are due, oldest first, within catch_up.
    done = {period_containing("daily", date(2026, 10, 31), BERLIN).start_us}
    caught = due_periods("daily", BERLIN, now, done, catch_up=7)
    assert [p.label for p in caught] == ["2026-11-01", "2026-11-02", "2026-11-03"]
    assert [p.label for p in due_periods("daily", BERLIN, now, done, catch_up=2)] == [
        "2026-11-02",
        "2026-11-03",
    ]
    [month] = due_periods("monthly", BERLIN, now, ())
    assert month.label == "2026-10"


def test_schedules_config_is_strict() -> None:
    """Unknown keys, bad periods and duplicate names are refused when the configuration loads."""
    good = {"name": "d", "every": "daily", "site": "s1", "folder": "/tmp/x"}
    ReportsConfig.model_validate({"schedules": [good]})
    for bad in ({**good, "colour": "red"}, {**good, "every": "hourly"}):
        with pytest.raises(ValidationError):
            ReportsConfig.model_validate({"schedules": [bad]})
    with pytest.raises(ValidationError, match="unique"):
        ReportsConfig.model_validate({"schedules": [good, good]})


def yesterday(now_us: int) -> Period:
    """The last ended day in UTC."""
    [period] = due_periods("daily", "UTC", now_us, ())
    return period


async def test_run_once_is_idempotent_even_concurrently(backend: Backend, tmp_path: Path) -> None:
    """Two scheduler passes at once (two cluster members) generate the report once; files appear once."""
    from coldwatch.config import Config  # noqa: PLC0415

    folder = tmp_path / "out"
    config = Config.model_validate(
        {
            "devices": device_entries("incubator", 2, site="s1"),
            "reports": {
                "schedules": [{"name": "daily-s1", "every": "daily", "site": "s1", "folder": str(folder)}]
            },
        }
    )
    now = at("2026-11-04T06:00")
    first, second = open_storage(backend.location), open_storage(backend.location)
    await first.open()
    await second.open()
    try:
        await first.register_devices(config.devices)
        runs = await asyncio.gather(
            run_schedules_once(first, config, now), run_schedules_once(second, config, now)
        )
        assert sorted(len(r) for r in runs) == [0, 1]
        assert await run_schedules_once(first, config, now + 3600 * US) == []
        reports = await ReportStore(identity_store(first), "UTC").list("periodic")
        # Files removed after a crash are written again from the stored report, not regenerated.
        (folder / "daily-s1-2026-11-03.pdf").unlink()
        assert await run_schedules_once(first, config, now) == []
        stored = await ReportStore(identity_store(first), "UTC").get(reports[0].id)
    finally:
        await first.close()
        await second.close()
    assert [r.subject for r in reports] == ["schedule daily-s1: site=s1 area=* 2026-11-03"]
    assert sorted(p.name for p in folder.iterdir()) == [
        "daily-s1-2026-11-03.csv", "daily-s1-2026-11-03.json", "daily-s1-2026-11-03.pdf",
    ]  # fmt: skip
    assert stored is not None
    assert (folder / "daily-s1-2026-11-03.pdf").read_bytes() == stored.pdf


async def test_daemon_writes_a_due_report_once(
    broker: RunningBroker, prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A daemon with a daily schedule writes yesterday's report on start; restarted, it writes no more."""
    caplog.set_level(logging.INFO, logger="coldwatch.records.schedule")
    folder = tmp_path / "reports"
    config = write_config(
        tmp_path / "c.yaml", broker=broker, prefix=prefix, devices=device_entries("incubator", 2, site="s1"),
        reports={"schedules": [{"name": "day", "every": "daily", "site": "s1", "folder": str(folder)}]},
    )  # fmt: skip
    label = yesterday(int(datetime.now(UTC).timestamp() * US)).label
    pdf = folder / f"day-{label}.pdf"

    def passes() -> int:
        return sum(1 for r in caplog.records if r.getMessage().startswith("scheduled reports checked"))

    async with running_daemon(config):
        await eventually(lambda: passes() >= 1, timeout_s=60, what="the scheduler's first pass")
    assert pdf.exists()
    first = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert sorted(first) == [f"day-{label}.csv", f"day-{label}.json", f"day-{label}.pdf"]
    async with running_daemon(config):
        await eventually(lambda: passes() >= 2, timeout_s=60, what="the second start's pass")
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == first
    store = open_storage(config.storage.path)
    await store.open()
    try:
        reports = await ReportStore(identity_store(store), "UTC").list("periodic")
        audit = [e async for e in store.audit_entries() if e.action == "report.generated"]
        verified = await store.verify_audit()
    finally:
        await store.close()
    assert len(reports) == 1
    assert len(audit) == 1
    assert audit[0].actor == "scheduler"
    assert verified.ok
