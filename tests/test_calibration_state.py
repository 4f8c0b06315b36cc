"""The pure calibration state of a point: boundaries, intervals, swaps, corrections and the alarm decision."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from coldwatch.records.calibration import (
    DAY_US,
    CalibrationFacts,
    PointCalibration,
    Stay,
    calibration_events,
    calibration_key,
    flagged,
    flags,
    point_calibration,
)
from coldwatch.rules.lifecycle import Alarm, AlarmState
from coldwatch.rules.model import EventKind, Severity

T0 = 1_800_000_000_000_000
ALERT_US = 30 * DAY_US
DUE = T0 + 365 * DAY_US


def _cal(
    i: int, performed: int, due: int, *, passed: bool = True, supersedes: int | None = None
) -> CalibrationFacts:
    return CalibrationFacts(i, 1, performed, due, passed, supersedes)


def _state(now_us: int, records: list[CalibrationFacts], stays: list[Stay] | None = None) -> PointCalibration:
    stays = [Stay(1, "SN-1", T0)] if stays is None else stays
    return point_calibration("p", stays, {1: records}, T0, now_us + 1, now_us, ALERT_US)


def test_state_boundaries_at_the_alert_window_and_the_due_date() -> None:
    """In calibration until the window opens; due soon from its first instant; overdue at the due date."""
    records = [_cal(1, T0, DUE)]
    assert _state(DUE - ALERT_US - 1, records).state == "in_calibration"
    assert _state(DUE - ALERT_US, records).state == "due_soon"
    assert _state(DUE - 1, records).state == "due_soon"
    at_due = _state(DUE, records)
    assert (at_due.state, at_due.due_us, at_due.instrument_serial) == ("overdue", DUE, "SN-1")


def test_no_instrument_and_never_calibrated() -> None:
    """No stay: no instrument; an installed instrument without a calibration by then: never calibrated."""
    assert _state(T0 + 5, [_cal(1, T0, DUE)], stays=[]).state == "no_instrument"
    assert _state(T0 + 5, []).state == "never_calibrated"
    # A calibration performed later does not count yet.
    assert _state(T0 + 5, [_cal(1, T0 + 10, DUE)]).state == "never_calibrated"


def test_a_failed_calibration_is_overdue_from_when_it_was_performed() -> None:
    """A failed calibration ends the previous one's validity; a later passed one restores it."""
    failed_at = T0 + 100 * DAY_US
    records = [_cal(1, T0, DUE), _cal(2, failed_at, DUE, passed=False)]
    late = _state(failed_at + 1, records)
    assert (late.state, late.due_us, late.last_passed) == ("overdue", failed_at, False)
    fixed = [*records, _cal(3, failed_at + DAY_US, DUE)]
    assert _state(failed_at + 2 * DAY_US, fixed).state == "in_calibration"
    whole = point_calibration("p", [Stay(1, "SN-1", T0)], {1: fixed}, T0, DUE + DAY_US, DUE, ALERT_US)
    assert whole.uncalibrated == [(failed_at, failed_at + DAY_US), (DUE, DUE + DAY_US)]


def test_a_correction_replaces_the_record_it_supersedes() -> None:
    """The superseded record no longer counts: the corrected due date does."""
    records = [_cal(1, T0, T0 + 10 * DAY_US), _cal(2, T0, DUE, supersedes=1)]
    state = _state(T0 + 20 * DAY_US, records)
    assert (state.state, state.due_us, state.calibration_id) == ("in_calibration", DUE, 2)


def test_uncalibrated_intervals_follow_the_points_instruments_across_a_swap() -> None:
    """Before installation, between calibrations, after the due date and with each instrument in turn."""
    swap = T0 + 50 * DAY_US
    stays = [Stay(1, "SN-1", T0 + DAY_US, swap), Stay(2, "SN-2", swap)]
    records = {
        1: [_cal(1, T0, T0 + 40 * DAY_US)],  # lapses ten days before the swap
        2: [CalibrationFacts(2, 2, swap - DAY_US, swap + 30 * DAY_US, True)],
    }
    end = T0 + 100 * DAY_US
    state = point_calibration("p", stays, records, T0, end, end, ALERT_US)
    assert state.uncalibrated == [(T0, T0 + DAY_US), (T0 + 40 * DAY_US, swap), (swap + 30 * DAY_US, end)]
    assert state.instrument_serial == "SN-2"
    assert state.state == "overdue"
    # Each reading's flag, checked against the intervals by plain comparison.
    ts = np.array(
        [T0, T0 + DAY_US, T0 + 45 * DAY_US, swap, swap + 30 * DAY_US - 1, swap + 30 * DAY_US], dtype=np.int64
    )
    expected = [any(a <= t < b for a, b in state.uncalibrated) for t in ts.tolist()]
    assert expected == [True, False, True, False, False, True]
    assert [flagged(int(t), state.uncalibrated) for t in ts] == expected
    assert flags(ts, state.uncalibrated).tolist() == expected
    assert flags(ts, []).tolist() == [False] * len(ts)


def _alarm(severity: Severity, state: AlarmState = AlarmState.ACTIVE_UNACK) -> Alarm:
    return Alarm(7, calibration_key("p"), severity, state, T0, T0)


def test_alarm_events_raise_once_escalate_and_clear() -> None:
    """Due soon raises an alert, overdue escalates to action, a repeat changes nothing, in date clears."""
    due_soon = _state(DUE - DAY_US, [_cal(1, T0, DUE)])
    [raised] = calibration_events([due_soon], {}, DUE - DAY_US, 30)
    assert (raised.kind, raised.severity, raised.key.rule) == (
        EventKind.RAISED,
        Severity.ALERT,
        "calibration_due",
    )
    assert raised.value == 1.0
    due_text = datetime.fromtimestamp(DUE // 1_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert raised.detail == f"instrument SN-1: calibration due {due_text}"
    assert calibration_events([due_soon], {raised.key: _alarm(Severity.ALERT)}, DUE, 30) == []
    overdue = _state(DUE, [_cal(1, T0, DUE)])
    [up] = calibration_events([overdue], {raised.key: _alarm(Severity.ALERT)}, DUE, 30)
    assert (up.kind, up.severity) == (EventKind.SEVERITY_CHANGED, Severity.ACTION)
    fine = _state(DUE + 1, [_cal(1, T0, DUE), _cal(2, DUE + 1, DUE + 365 * DAY_US)])
    [cleared] = calibration_events([fine], {raised.key: _alarm(Severity.ACTION)}, DUE + 1, 30)
    assert cleared.kind is EventKind.CLEARED
    # A cleared alarm awaiting acknowledgement is not cleared again; no instrument raises nothing.
    waiting = {raised.key: _alarm(Severity.ACTION, AlarmState.CLEARED_UNACK)}
    assert calibration_events([fine], waiting, DUE + 2, 30) == []
    nothing = _state(T0, [], stays=[])
    assert calibration_events([nothing], {}, T0, 30) == []
    [never] = calibration_events([_state(T0, [])], {}, T0, 30)
    assert (never.severity, never.detail) == (Severity.ACTION, "instrument SN-1: no calibration on record")


def test_a_lesser_state_waits_for_the_acknowledgement_and_a_worse_one_does_not() -> None:
    """Overdue, then calibrated but due soon: the action clears; the alert comes once it is acknowledged."""
    key = calibration_key("p")
    due_soon = _state(DUE - DAY_US, [_cal(1, T0, DUE)])
    [cleared] = calibration_events([due_soon], {key: _alarm(Severity.ACTION)}, DUE - DAY_US, 30)
    assert cleared.kind is EventKind.CLEARED
    waiting = {key: _alarm(Severity.ACTION, AlarmState.CLEARED_UNACK)}
    assert calibration_events([due_soon], waiting, DUE - DAY_US, 30) == []
    [after_ack] = calibration_events([due_soon], {}, DUE - DAY_US, 30)  # closed: no longer open
    assert (after_ack.kind, after_ack.severity) == (EventKind.RAISED, Severity.ALERT)
    # A worse state supersedes a cleared alert that nobody has acknowledged yet.
    failed = _state(T0 + 2, [_cal(1, T0, DUE), _cal(2, T0 + 1, DUE, passed=False)])
    [worse] = calibration_events(
        [failed], {key: _alarm(Severity.ALERT, AlarmState.CLEARED_UNACK)}, T0 + 2, 30
    )
    assert (worse.kind, worse.severity) == (EventKind.RAISED, Severity.ACTION)
    assert "its latest calibration, on " in worse.detail
    assert worse.detail.endswith(", failed")
