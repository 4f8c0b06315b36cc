"""Calibration state of monitoring points, and the readings taken out of calibration. Pure.

A monitoring point is a device id: readings belong to it. Instruments measure a point
for a while (a *stay*: from an instant until another, or until now); swapping one keeps
the point's history. Each instrument has calibration records; a correction is a new
record that supersedes the old one (the old one stays visible, but no longer counts).

Rules (the README's "Instruments and calibration" says the same):

- an instrument is in calibration from a passed calibration's ``performed_us`` until its
  ``due_us`` (exclusive: at the due instant it is overdue), or until the next calibration
  performed after it, whichever comes first; a failed calibration puts it out of
  calibration from its ``performed_us`` until a later passed one;
- a point's state at ``now_us``: ``no_instrument`` (none installed), ``never_calibrated``
  (the instrument has no calibration performed by then), ``overdue`` (its due date has come,
  or its latest calibration failed: due then), ``due_soon`` (due within ``alert_before_us``,
  the window's start included), else ``in_calibration``;
- a point's readings are taken out of calibration wherever no instrument in calibration
  was installed on it: its uncalibrated intervals, half-open ``[from, until)``.

The alarm decision is pure too: :func:`calibration_events` turns the points' states and the
open alarms into the events the alarm lifecycle applies (alert when due soon, action when
overdue or never calibrated, cleared otherwise), so a check repeated any number of times,
on any collector, raises nothing twice.

No I/O and no clock: every time is an argument (UTC microseconds).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

import numpy as np
from numpy.typing import NDArray

from coldwatch.rules.lifecycle import Alarm
from coldwatch.rules.model import AlarmEvent, AlarmKey, EventKind, Severity

__all__ = [
    "CALIBRATION_METRIC",
    "CALIBRATION_RULE",
    "DAY_US",
    "CalibrationFacts",
    "PointCalibration",
    "State",
    "Stay",
    "calibration_events",
    "calibration_key",
    "effective",
    "flagged",
    "flags",
    "in_calibration_spans",
    "point_calibration",
    "severity_of",
]

State = Literal["in_calibration", "due_soon", "overdue", "no_instrument", "never_calibrated"]
Span = tuple[int, int]
DAY_US: Final = 86_400_000_000
CALIBRATION_RULE: Final = "calibration_due"
CALIBRATION_METRIC: Final = "calibration"
_NO_END: Final = 2**63 - 1


@dataclass(frozen=True, slots=True)
class CalibrationFacts:
    """What the state needs of one calibration record."""

    id: int
    instrument_id: int
    performed_us: int
    due_us: int
    passed: bool
    supersedes: int | None = None


@dataclass(frozen=True, slots=True)
class Stay:
    """An instrument installed on a point from ``from_us`` until ``until_us`` (None: still there)."""

    instrument_id: int
    serial: str
    from_us: int
    until_us: int | None = None

    def end(self) -> int:
        """The stay's end, the far future while it lasts."""
        return _NO_END if self.until_us is None else self.until_us


@dataclass(frozen=True, slots=True)
class PointCalibration:
    """A monitoring point's calibration: state at a time, and uncalibrated intervals over a span."""

    device_id: str
    instrument_serial: str | None
    state: State
    due_us: int | None
    uncalibrated: list[Span] = field(default_factory=list)
    instrument_id: int | None = None
    calibration_id: int | None = None  # the record in force at the time (None: none)
    last_passed: bool | None = None


def effective(records: Iterable[CalibrationFacts]) -> list[CalibrationFacts]:
    """The records that count: those no other record supersedes, in the order they were performed."""
    listed = list(records)
    superseded = {r.supersedes for r in listed if r.supersedes is not None}
    return sorted((r for r in listed if r.id not in superseded), key=lambda r: (r.performed_us, r.id))


def in_calibration_spans(records: Sequence[CalibrationFacts]) -> list[Span]:
    """When one instrument was in calibration, from its effective records (as :func:`effective` gives)."""
    spans: list[Span] = []
    for i, record in enumerate(records):
        if not record.passed:
            continue
        end = record.due_us
        if i + 1 < len(records):
            end = min(end, records[i + 1].performed_us)
        if end > record.performed_us:
            spans.append((record.performed_us, end))
    return _merged(spans)


def _merged(spans: Iterable[Span]) -> list[Span]:
    out: list[Span] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _clip(spans: Iterable[Span], start_us: int, end_us: int) -> list[Span]:
    return [(max(a, start_us), min(b, end_us)) for a, b in spans if a < end_us and b > start_us]


def _complement(covered: list[Span], start_us: int, end_us: int) -> list[Span]:
    gaps: list[Span] = []
    at = start_us
    for a, b in covered:
        if a > at:
            gaps.append((at, a))
        at = max(at, b)
    if at < end_us:
        gaps.append((at, end_us))
    return gaps


def _state_at(
    stay: Stay | None, records: Sequence[CalibrationFacts], now_us: int, alert_before_us: int
) -> tuple[State, int | None, CalibrationFacts | None]:
    if stay is None:
        return "no_instrument", None, None
    done = [r for r in records if r.performed_us <= now_us]
    if not done:
        return "never_calibrated", None, None
    latest = done[-1]
    if not latest.passed:
        return "overdue", latest.performed_us, latest
    if now_us >= latest.due_us:
        return "overdue", latest.due_us, latest
    if now_us >= latest.due_us - alert_before_us:
        return "due_soon", latest.due_us, latest
    return "in_calibration", latest.due_us, latest


def point_calibration(  # noqa: PLR0917 - a point, its history, the span and the clock
    device_id: str,
    stays: Sequence[Stay],
    records: Mapping[int, Sequence[CalibrationFacts]],
    start_us: int,
    end_us: int,
    now_us: int,
    alert_before_us: int,
) -> PointCalibration:
    """The point's state at ``now_us`` and its uncalibrated intervals within ``[start_us, end_us)``.

    ``records``: each instrument's calibration records (all of them; superseded ones are
    left out here). Without an instrument installed, a reading is out of calibration too.
    """
    counted = {instrument: effective(rs) for instrument, rs in records.items()}
    covered: list[Span] = []
    for stay in stays:
        spans = in_calibration_spans(counted.get(stay.instrument_id, []))
        covered += _clip(_clip(spans, stay.from_us, stay.end()), start_us, end_us)
    current = next((s for s in stays if s.from_us <= now_us < s.end()), None)
    own = counted.get(current.instrument_id, []) if current is not None else []
    state, due_us, record = _state_at(current, own, now_us, alert_before_us)
    return PointCalibration(
        device_id,
        current.serial if current is not None else None,
        state,
        due_us,
        _complement(_merged(covered), start_us, end_us) if end_us > start_us else [],
        current.instrument_id if current is not None else None,
        record.id if record is not None else None,
        record.passed if record is not None else None,
    )


def flagged(ts_us: int, uncalibrated: Sequence[Span]) -> bool:
    """Whether a reading at ``ts_us`` was taken out of calibration (intervals sorted and disjoint)."""
    i = bisect.bisect_right(uncalibrated, (ts_us, _NO_END)) - 1
    return i >= 0 and uncalibrated[i][0] <= ts_us < uncalibrated[i][1]


def flags(ts_us: NDArray[np.int64], uncalibrated: Sequence[Span]) -> NDArray[np.bool_]:
    """:func:`flagged` for many readings at once (any order)."""
    if not uncalibrated:
        return np.zeros(len(ts_us), dtype=np.bool_)
    starts = np.array([a for a, _ in uncalibrated], dtype=np.int64)
    ends = np.array([b for _, b in uncalibrated], dtype=np.int64)
    i = np.searchsorted(starts, ts_us, side="right") - 1
    inside = i >= 0
    j = np.where(inside, i, 0)
    return inside & (ts_us < ends[j])


# ----- alarms ------------------------------------------------------------------------------


def calibration_key(device_id: str) -> AlarmKey:
    """The one calibration alarm slot of a point."""
    return AlarmKey(device_id, CALIBRATION_METRIC, CALIBRATION_RULE)


def severity_of(state: State) -> Severity | None:
    """Alert when due soon; action when overdue or never calibrated; no alarm otherwise."""
    if state == "due_soon":
        return Severity.ALERT
    if state in {"overdue", "never_calibrated"}:
        return Severity.ACTION
    return None


def _detail(point: PointCalibration, now_us: int) -> str:
    serial = point.instrument_serial or "no instrument"
    if point.state == "never_calibrated":
        return f"instrument {serial} has no calibration on record"
    assert point.due_us is not None
    days = (point.due_us - now_us) / DAY_US
    if point.state == "due_soon":
        return f"calibration of instrument {serial} due in {days:.1f} days"
    failed = " (its latest calibration failed)" if point.last_passed is False else ""
    return f"calibration of instrument {serial} overdue by {-days:.1f} days{failed}"


def calibration_events(
    points: Iterable[PointCalibration], open_alarms: Mapping[AlarmKey, Alarm], now_us: int, alert_days: float
) -> list[AlarmEvent]:
    """The events that bring each point's calibration alarm in line with its state at ``now_us``.

    Nothing when the open alarm already says it: repeating a check (a restart, another
    collector of a cluster after a failover) raises nothing twice. A cleared alarm still
    waiting for its acknowledgement is superseded by a new raise only when the point is
    due again. The value is the days left until the due date (negative: overdue).
    """
    out: list[AlarmEvent] = []
    for point in points:
        key = calibration_key(point.device_id)
        current = open_alarms.get(key)
        wanted = severity_of(point.state)
        value = None if point.due_us is None else round((point.due_us - now_us) / DAY_US, 2)
        limit = alert_days if wanted is Severity.ALERT else 0.0
        if wanted is None:
            if current is not None and current.active:
                out.append(AlarmEvent(EventKind.CLEARED, key, now_us, None))
            continue
        detail = _detail(point, now_us)
        if current is None or not current.active:
            out.append(AlarmEvent(EventKind.RAISED, key, now_us, wanted, value, limit, detail=detail))
        elif current.severity != wanted:
            changed = EventKind.SEVERITY_CHANGED
            out.append(AlarmEvent(changed, key, now_us, wanted, value, limit, detail=detail))
    return out
