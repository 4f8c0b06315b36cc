"""Report periods in the site's time zone, and when a scheduled report is due. Pure: no clock, no I/O.

A day runs from local midnight to the next local midnight (23 or 25 hours across a
daylight-saving change), a week from Monday 00:00 (ISO weeks), a month from the 1st 00:00.
A scheduled report covers a period once it has ended; the decision is a function of the
time now and the periods already generated, so restarts and cluster members agree.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Final, Literal
from zoneinfo import ZoneInfo

__all__ = [
    "Every",
    "Period",
    "due_periods",
    "parse_day",
    "period_containing",
    "period_of_range",
    "requested_period",
]

Every = Literal["daily", "weekly", "monthly"]
US: Final = 1_000_000
MAX_DAYS: Final = 400  # a year and a bit: longer ranges are split into several reports
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Period:
    """[start, end) in microseconds, with a label people read (``2026-11``, ``2026-W47``, ``2026-11-03``)."""

    start_us: int
    end_us: int
    label: str
    every: Every | None = None  # None: any range


def _us(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _local_midnight(day: date, zone: ZoneInfo) -> int:
    return _us(datetime.combine(day, time(0), tzinfo=zone))


def _first_day(every: Every, day: date) -> date:
    if every == "weekly":
        return day - timedelta(days=day.weekday())
    if every == "monthly":
        return day.replace(day=1)
    return day


def _next_first(every: Every, first: date) -> date:
    if every == "daily":
        return first + timedelta(days=1)
    if every == "weekly":
        return first + timedelta(days=7)
    return (first.replace(day=28) + timedelta(days=4)).replace(day=1)


def _label(every: Every, first: date) -> str:
    if every == "monthly":
        return first.strftime("%Y-%m")
    if every == "weekly":
        year, week, _ = first.isocalendar()
        return f"{year}-W{week:02d}"
    return first.isoformat()


def period_containing(every: Every, day: date, zone: str) -> Period:
    """The calendar day, ISO week or month that contains ``day``, in the site's time zone."""
    tz = ZoneInfo(zone)
    first = _first_day(every, day)
    return Period(
        _local_midnight(first, tz),
        _local_midnight(_next_first(every, first), tz),
        _label(every, first),
        every,
    )


def period_of_range(start: date, end: date, zone: str) -> Period:
    """Local midnight of ``start`` to local midnight of ``end`` (exclusive)."""
    if end <= start:
        raise ValueError(f"the period's end {end} must be after its start {start}")
    tz = ZoneInfo(zone)
    return Period(
        _local_midnight(start, tz), _local_midnight(end, tz), f"{start.isoformat()}..{end.isoformat()}"
    )


def parse_day(text: str) -> date:
    """A date ``YYYY-MM-DD`` (or ``YYYY-MM`` for a month's first day); ValueError with the text otherwise."""
    try:
        return date.fromisoformat(text if len(text) != 7 else text + "-01")
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a date (YYYY-MM-DD)") from exc


def _local_day(at_us: int, zone: str) -> date:
    return (_EPOCH + timedelta(microseconds=at_us)).astimezone(ZoneInfo(zone)).date()


def due_periods(
    every: Every, zone: str, now_us: int, done_starts: Collection[int], *, catch_up: int = 1
) -> list[Period]:
    """The ended periods to generate now, oldest first.

    The ``catch_up`` most recent periods that have ended by ``now_us``, less those already
    generated (``done_starts``: their start times); with nothing generated yet, only the
    last ended one (a new schedule does not fill the past).
    """
    current = period_containing(every, _local_day(now_us, zone), zone)
    ended: list[Period] = []
    day = _local_day(current.start_us - 1, zone)
    for _ in range(max(1, catch_up)):
        period = period_containing(every, day, zone)
        ended.append(period)
        day = _local_day(period.start_us - 1, zone)
    if not done_starts:
        ended = ended[:1]
    else:
        newest_done = max(done_starts)
        ended = [p for p in ended if p.start_us > newest_done]
    return [p for p in reversed(ended) if p.start_us not in done_starts]


_KINDS: Final[dict[str, Every]] = {"day": "daily", "week": "weekly", "month": "monthly"}


def requested_period(  # noqa: PLR0917 - the two ways to name a period
    kind: str | None, day: str | None, start: str | None, end: str | None, zone: str, now_us: int
) -> Period:
    """The period a person asked for; one not yet over ends now ("to date").

    Either a calendar ``kind`` (day, week, month) containing ``day``, or ``start`` to
    ``end`` (dates, end excluded).
    """
    if kind is not None:
        if kind not in _KINDS or not day or start or end:
            raise ValueError("give a period (day, week or month) and a date, or a start and an end date")
        period = period_containing(_KINDS[kind], parse_day(day), zone)
    elif start and end and not day:
        period = period_of_range(parse_day(start), parse_day(end), zone)
    else:
        raise ValueError("give a period (day, week or month) and a date, or a start and an end date")
    if period.end_us - period.start_us > MAX_DAYS * 86_400 * US:
        raise ValueError(f"a report covers at most {MAX_DAYS} days")
    if period.start_us >= now_us:
        raise ValueError(f"the period {period.label} has not begun yet")
    if period.end_us > now_us:
        return Period(period.start_us, now_us, f"{period.label} (to date)", period.every)
    return period
