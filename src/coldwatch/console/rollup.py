"""Per-minute rollups of readings, so that a long chart reads minutes, not every reading.

A 30-day chart of a 1 Hz device aggregates 2.6 million readings: about a second of
database time on every view. The console instead keeps, per device and metric, one row
per minute (lowest and highest value, first and last time, count, backfilled count) for
the ranges it has charted, and aggregates those (43,200 rows for 30 days).

Rollups are built by the reading side, lazily, for minutes that are *settled*: older
than :data:`SETTLE_US` (plus a safety margin) at build time. A reading that arrives
later than :data:`SETTLE_US` after its own time (backfilled from a device's buffer,
re-sent after a seq gap, delayed) may fall into a minute already built: the writer marks
that minute dirty in the same transaction as the reading (:func:`late_minutes`), and the
next chart rebuilds it from the readings before using it. So a chart drawn from
rollups shows the same lowest and highest values as one drawn from every reading.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from coldwatch.payload import Telemetry

__all__ = [
    "MINUTE_US",
    "ROLLUP_FROM_SPAN_US",
    "ROLLUP_SCHEMA",
    "SETTLE_US",
    "build_ranges",
    "late_minutes",
    "settled_until",
]

MINUTE_US: Final = 60_000_000
# A reading received more than this after its own time is late: its minute may be built.
SETTLE_US: Final = 10 * MINUTE_US
# Rollups stop this much earlier still, for a reading received before a build but
# committed after it (a batch commits within a second or two; a minute is generous).
_SAFETY_US: Final = MINUTE_US
# Charts spanning less than this read the readings themselves (a day at 1 Hz: 40 ms).
ROLLUP_FROM_SPAN_US: Final = 2 * 86_400 * 1_000_000

# Appended to both backends' migrations ({rowid}: SQLite's WITHOUT ROWID, nothing on PostgreSQL).
ROLLUP_SCHEMA: Final = """
CREATE TABLE chart_rollup (
    device BIGINT NOT NULL,
    metric INTEGER NOT NULL,
    minute_us BIGINT NOT NULL,
    first_us BIGINT NOT NULL,
    last_us BIGINT NOT NULL,
    low DOUBLE PRECISION NOT NULL,
    high DOUBLE PRECISION NOT NULL,
    n BIGINT NOT NULL,
    buffered_n BIGINT NOT NULL,
    PRIMARY KEY (device, metric, minute_us)
){rowid};
-- The minutes built so far, one contiguous range per device and metric.
CREATE TABLE chart_rollup_built (
    device BIGINT NOT NULL,
    metric INTEGER NOT NULL,
    from_us BIGINT NOT NULL,
    until_us BIGINT NOT NULL,
    PRIMARY KEY (device, metric)
){rowid};
-- Minutes that received a late reading: rebuilt before they are used again.
CREATE TABLE chart_rollup_dirty (
    device BIGINT NOT NULL,
    metric INTEGER NOT NULL,
    minute_us BIGINT NOT NULL,
    PRIMARY KEY (device, metric, minute_us)
){rowid};
"""


def settled_until(now_us: int) -> int:
    """The end of the minutes that may be built at wall-clock time ``now_us``."""
    return (now_us - SETTLE_US - _SAFETY_US) // MINUTE_US * MINUTE_US


def late_minutes(
    readings: Iterable[tuple[Telemetry, int]], devices: Mapping[str, int], metrics: Mapping[str, int]
) -> list[tuple[int, int, int]]:
    """(device row id, metric row id, minute) of every value received later than SETTLE_US after its time."""
    out: set[tuple[int, int, int]] = set()
    for reading, received_us in readings:
        if received_us - reading.ts_us > SETTLE_US:
            minute = reading.ts_us // MINUTE_US * MINUTE_US
            device = devices[reading.device_id]
            out.update((device, metrics[name], minute) for name, _ in reading.values)
    return sorted(out)


def build_ranges(
    built: tuple[int, int] | None, want_from: int, want_until: int
) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """Which minute ranges to build so that [want_from, want_until) is covered, and the new built range.

    The built range stays one contiguous range (extended at either end). Times are minute-aligned.
    """
    if want_until <= want_from:
        return [], built or (want_from, want_from)
    if built is None or built[0] >= built[1]:
        return [(want_from, want_until)], (want_from, want_until)
    lo, hi = built
    todo = []
    if want_from < lo:
        todo.append((want_from, lo))
    if want_until > hi:
        todo.append((hi, want_until))
    return todo, (min(lo, want_from), max(hi, want_until))
