"""The ``reports:`` section: periodic reports generated on a schedule into folders.

reports:
schedules:
- {name: cleanroom-daily, every: daily, site: s1, area: grade-b, folder: /srv/reports/daily}
- {name: site-monthly, every: monthly, site: s1, folder: /srv/reports/monthly}
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from coldwatch.records.periods import Every

__all__ = ["ReportsConfig", "ScheduleConfig"]

_Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScheduleConfig(_Model):
    """One scheduled report: which points, how often, where its files go."""

    name: _Name
    every: Every
    site: _Name
    area: _Name | None = None
    devices: list[_Name] = Field(default_factory=list)
    folder: Path
    # After downtime, the missed periods generated (at most this many); a new schedule
    # generates only the last ended period.
    catch_up: int = Field(7, ge=1, le=366)


class ReportsConfig(_Model):
    """Scheduled periodic reports (times are the site's, ``site.timezone``)."""

    schedules: list[ScheduleConfig] = Field(default_factory=list)
    # The longest the scheduler sleeps before looking again (it wakes at each period's end).
    check_every_s: float = Field(3600.0, ge=1.0, le=86_400.0)

    @field_validator("schedules")
    @classmethod
    def _unique_names(cls, schedules: list[ScheduleConfig]) -> list[ScheduleConfig]:
        names = [s.name for s in schedules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"schedule names must be unique: {', '.join(duplicates)}")
        return schedules
