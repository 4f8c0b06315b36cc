"""Window rules: rate, N of M, events in a window, time out of range, MKT and the hold-time forecast."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coldwatch.rules.config import (
    BudgetLevel,
    ConsecutiveLevel,
    ConsecutiveRule,
    EventsInWindowRule,
    EventsLevel,
    ForecastLevel,
    ForecastRule,
    MktLevel,
    MktRule,
    RateLevel,
    RateRule,
    TimeOutOfRangeRule,
)
from coldwatch.rules.forecast import ForecastEvaluator
from coldwatch.rules.latch import Latch
from coldwatch.rules.model import AlarmKey, EventKind, RuleEvaluator, Severity, Signal
from coldwatch.rules.windows import (
    ConsecutiveEvaluator,
    EventsInWindowEvaluator,
    MktEvaluator,
    RateEvaluator,
    TimeOutOfRangeEvaluator,
    mean_kinetic_temperature_c,
)

US = 1_000_000
T0 = 1_714_564_800 * US
HOUR = 3600
ALERT, ACTION = Severity.ALERT, Severity.ACTION
RAISED, CHANGED, CLEARED = EventKind.RAISED, EventKind.SEVERITY_CHANGED, EventKind.CLEARED

Event = tuple[EventKind, int, Severity | None]
Values = float | Mapping[str, float]


def at(seconds: float) -> int:
    """Device time ``seconds`` after T0, microseconds."""
    return T0 + round(seconds * US)


def _values(evaluator: RuleEvaluator, value: Values) -> Mapping[str, float]:
    return value if isinstance(value, Mapping) else {evaluator.metric: value}


def run(evaluator: RuleEvaluator, readings: Iterable[tuple[float, Values]]) -> list[Event]:
    """Feed (seconds, value) readings through the evaluator and a latch; the alarm events."""
    latch = Latch(AlarmKey("dev-01", evaluator.metric, evaluator.rule), dict(evaluator.delays_us))
    events: list[Event] = []
    for seconds, value in readings:
        signal = evaluator.update(at(seconds), _values(evaluator, value))
        if signal is not None:
            events += [(e.kind, e.ts_us, e.severity) for e in latch.feed(at(seconds), signal)]
    return events


def signal_at(evaluator: RuleEvaluator, seconds: float, value: Values) -> Signal:
    """The evaluator's signal for one reading, which must carry its metric."""
    signal = evaluator.update(at(seconds), _values(evaluator, value))
    assert signal is not None
    return signal


# --- rate of change ----------------------------------------------------------------------


def _rate(window_s: float = 60, direction: str = "rise", action: RateLevel | None = None) -> RateEvaluator:
    levels = {"alert": RateLevel(limit_per_min=1.0, margin=0.5)}
    if action is not None:
        levels["action"] = action
    return RateEvaluator(
        RateRule.model_validate(
            {"metric": "temp_c", "window_s": window_s, "direction": direction, "levels": levels}
        )
    )


def test_rate_exactly_at_limit_is_not_beyond() -> None:
    """A rise of exactly the limit per minute raises nothing; the first rate beyond it does."""
    evaluator = _rate(window_s=300)
    steady = [(60.0 * i, float(i)) for i in range(7)]  # 1.0 per minute throughout

    events = run(evaluator, [*steady, (420, 7.5)])  # (7.5 - 2) / 5 min = 1.1 per minute

    assert events == [(RAISED, at(420), ALERT)]


def test_rate_off_margin_keeps_raised_alarm_until_at_or_below_margin() -> None:
    """A raised rate alarm holds while the rate stays above limit - margin and clears at it."""
    events = run(_rate(), [(0, 0.0), (60, 2.0), (120, 2.75), (180, 3.25)])

    assert events == [(RAISED, at(60), ALERT), (CLEARED, at(180), None)]


def test_rate_within_margin_does_not_raise() -> None:
    """Within the off-margin but not beyond the limit, a rate that was never raised stays quiet."""
    assert run(_rate(), [(0, 0.0), (60, 0.75), (120, 1.5)]) == []


def test_rate_escalates_after_delay_and_steps_down_through_margin() -> None:
    """Action is reached when its delay has elapsed, falls back to alert within margin, then clears."""
    evaluator = _rate(action=RateLevel(limit_per_min=2.0, delay_s=120))

    events = run(evaluator, [(0, 0.0), (60, 3.0), (120, 6.0), (180, 9.0), (240, 10.0), (300, 10.0)])

    assert events == [
        (RAISED, at(60), ALERT),
        (CHANGED, at(180), ACTION),
        (CHANGED, at(240), ALERT),
        (CLEARED, at(300), None),
    ]


@pytest.mark.parametrize(
    ("direction", "expected"),
    [
        ("rise", [(RAISED, at(60), ALERT), (CLEARED, at(120), None)]),
        ("fall", [(RAISED, at(120), ALERT)]),
        ("either", [(RAISED, at(60), ALERT)]),
    ],
)
def test_rate_direction(direction: str, expected: list[Event]) -> None:
    """Rise judges the rate, fall its negative and either its magnitude."""
    events = run(_rate(direction=direction), [(0, 10.0), (60, 12.0), (120, 10.5)])

    assert events == expected


def test_rate_signal_carries_signed_rate_and_level_limit() -> None:
    """The signal's value is the signed rate per minute, its limit the level's limit."""
    evaluator = _rate(direction="fall")
    signal_at(evaluator, 0, 10.0)

    signal = signal_at(evaluator, 30, 9.0)

    assert signal == Signal.with_hold(ALERT, ALERT, -2.0, 1.0)


def test_rate_window_is_closed_at_its_start() -> None:
    """A point exactly window_s old is still the rate's oldest point."""
    evaluator = _rate(window_s=300)
    signal_at(evaluator, 0, 0.0)
    signal_at(evaluator, 60, 0.5)

    signal = signal_at(evaluator, 300, 5.0)  # from t=0: 1.0 (at the limit); from t=60 it would be 1.125

    assert signal.value == 1.0
    assert signal.level is None


def test_rate_gap_inside_window_uses_oldest_point() -> None:
    """After a gap inside the window the rate runs from the oldest point still in it."""
    events = run(_rate(window_s=300), [(0, 0.0), (240, 4.8)])  # 1.2 per minute over 4 minutes

    assert events == [(RAISED, at(240), ALERT)]


def test_rate_gap_longer_than_window_clears() -> None:
    """With one point left in the window there is no rate, and a raised alarm clears."""
    evaluator = _rate(window_s=300)

    events = run(evaluator, [(0, 0.0), (60, 3.0), (1000, 3.0)])

    assert events == [(RAISED, at(60), ALERT), (CLEARED, at(1000), None)]
    assert evaluator.update(at(1060), {"co2_pct": 5.0}) is None


# --- N of the last M ---------------------------------------------------------------------


def _consecutive() -> ConsecutiveEvaluator:
    return ConsecutiveEvaluator(
        ConsecutiveRule(
            metric="particles_0_5um_m3",
            levels={
                "alert": ConsecutiveLevel(limit=100.0, n=2, m=3),
                "action": ConsecutiveLevel(limit=200.0, n=3, m=3),
            },
        )
    )


def test_consecutive_n_of_m_with_limit_edges() -> None:
    """Exactly N of the last M beyond raises; a value exactly at the limit does not count."""
    values = [150.0, 100.0, 150.0, 50.0, 250.0, 250.0, 250.0, 200.0]

    events = run(_consecutive(), enumerate(values, start=1))

    assert events == [
        (RAISED, at(3), ALERT),  # 150, 100 (at limit), 150: 2 of 3
        (CLEARED, at(4), None),  # 100, 150, 50: 1 of 3
        (RAISED, at(5), ALERT),  # 150, 50, 250
        (CHANGED, at(7), ACTION),  # 250, 250, 250: 3 of 3 above 200
        (CHANGED, at(8), ALERT),  # 200 is at the action limit, not beyond
    ]


def test_consecutive_before_m_samples_still_needs_n() -> None:
    """Before M samples exist the ones there are count, and N of them are still needed."""
    evaluator = _consecutive()

    first = signal_at(evaluator, 1, 150.0)
    second = signal_at(evaluator, 2, 150.0)

    assert first.level is None
    assert second == Signal(ALERT, 150.0, 100.0)
    assert evaluator.delays_us == {ALERT: 0, ACTION: 0}


# --- events in a window ------------------------------------------------------------------


def _events() -> EventsInWindowEvaluator:
    return EventsInWindowEvaluator(
        EventsInWindowRule(
            metric="particles_5_0um_m3",
            window_s=600,
            levels={"alert": EventsLevel(limit=10.0, count=2), "action": EventsLevel(limit=20.0, count=3)},
        )
    )


def test_events_in_window_counts_and_boundary() -> None:
    """Counts events strictly above the limit in (ts - window, ts]; one exactly window_s old is out."""
    readings = [
        (0, 25.0),
        (60, 10.0),  # at the limit: not an event
        (300, 15.0),  # 2 alert events
        (600, 5.0),  # the event at 0 is exactly 600 s old: out
        (700, 25.0),
        (800, 25.0),
        (900, 25.0),  # 3 action events
        (1299, 0.0),
        (1300, 0.0),  # the one at 700 leaves
        (1500, 0.0),  # the one at 900 leaves
    ]

    events = run(_events(), readings)

    assert events == [
        (RAISED, at(300), ALERT),
        (CLEARED, at(600), None),
        (RAISED, at(700), ALERT),
        (CHANGED, at(900), ACTION),
        (CHANGED, at(1300), ALERT),
        (CLEARED, at(1500), None),
    ]


def test_events_in_window_signal_is_count_against_count() -> None:
    """The signal's value is the number of events, its limit the level's count."""
    evaluator = _events()
    signal_at(evaluator, 0, 15.0)

    assert signal_at(evaluator, 10, 15.0) == Signal(ALERT, 2.0, 2.0)
    assert signal_at(evaluator, 700, 0.0) == Signal(None, 0.0, 2.0)


# --- time out of range -------------------------------------------------------------------


def _out_of_range() -> TimeOutOfRangeEvaluator:
    return TimeOutOfRangeEvaluator(
        TimeOutOfRangeRule(
            metric="temp_c",
            low=2.0,
            high=8.0,
            window_s=HOUR,
            levels={"alert": BudgetLevel(budget_s=600), "action": BudgetLevel(budget_s=1200)},
        )
    )


def test_time_out_of_range_held_state_gap_and_window_clipping() -> None:
    """Out-of-range time is held until the next reading, across gaps, and clipped at the window start."""
    readings = [
        (0, 5.0),
        (60, 9.0),  # out from 60
        (120, 8.0),  # exactly at high: in; 60 s counted
        (600, 1.0),  # below low: out from 600
        (1200, 5.0),  # the gap held out: 660 s >= 600
        (1500, 9.0),
        (2100, 9.0),  # 1260 s >= 1200
        (2200, 5.0),  # 1360 s
        (3660, 5.0),  # window (60, 3660]: all still in
        (3720, 5.0),  # [60, 120) left: 1300 s
        (4260, 5.0),  # [600, 1200) clipped to 660: 1240 s
        (4320, 5.0),  # clipped to 720: 1180 s
        (5200, 5.0),  # only [1600, 2200): exactly 600 s
        (5260, 5.0),  # 540 s
    ]

    events = run(_out_of_range(), readings)

    assert events == [
        (RAISED, at(1200), ALERT),
        (CHANGED, at(2100), ACTION),
        (CHANGED, at(4320), ALERT),
        (CLEARED, at(5260), None),
    ]


def test_time_out_of_range_signal_is_seconds_against_budget() -> None:
    """The signal's value is the cumulative seconds out of range, its limit the budget in seconds."""
    evaluator = _out_of_range()
    signal_at(evaluator, 0, 9.0)

    assert signal_at(evaluator, 600, 5.0) == Signal(ALERT, 600.0, 600.0)
    assert signal_at(evaluator, 601, 5.0) == Signal(ALERT, 600.0, 600.0)
    assert signal_at(evaluator, HOUR + 1, 5.0) == Signal(None, 599.0, 600.0)


def test_time_out_of_range_high_only() -> None:
    """With only a high bound (a cryoshipper above -150 C) a cold reading is never out."""
    evaluator = TimeOutOfRangeEvaluator(
        TimeOutOfRangeRule(
            metric="temp_c", high=-150.0, window_s=HOUR, levels={"alert": BudgetLevel(budget_s=60)}
        )
    )

    events = run(evaluator, [(0, -190.0), (60, -149.0), (120, -190.0), (300, -150.0)])

    assert events == [(RAISED, at(120), ALERT)]


# --- mean kinetic temperature ------------------------------------------------------------


@pytest.mark.parametrize(
    ("temps_c", "weights", "expected_c"),
    [
        ([20.0, 25.0, 30.0], [1.0, 1.0, 1.0], 25.86),
        ([25.0, 40.0], [23.0, 1.0], 26.37),
        ([5.0, 25.0], [23.0, 1.0], 7.76),
    ],
)
def test_mkt_check_values(temps_c: list[float], weights: list[float], expected_c: float) -> None:
    """The USP <1079> check values of domain.md are reproduced to 0.01 C."""
    assert mean_kinetic_temperature_c(temps_c, weights) == pytest.approx(expected_c, abs=0.005)


def test_mkt_rejects_bad_input() -> None:
    """Mismatched, empty or all-zero weights are refused."""
    with pytest.raises(ValueError, match="one weight"):
        mean_kinetic_temperature_c([20.0, 25.0], [1.0])
    with pytest.raises(ValueError, match="one weight"):
        mean_kinetic_temperature_c([], [])
    with pytest.raises(ValueError, match="weights"):
        mean_kinetic_temperature_c([20.0], [0.0])


def _mkt(window_s: float, limit_c: float, min_coverage: float = 0.5) -> MktEvaluator:
    return MktEvaluator(
        MktRule(window_s=window_s, min_coverage=min_coverage, levels={"alert": MktLevel(limit_c=limit_c)})
    )


def test_mkt_evaluator_hourly_check_value() -> None:
    """23 hourly readings at 25 C and one at 40 C over a full 24 h window give 26.37 C."""
    evaluator = _mkt(24 * HOUR, 26.0, min_coverage=1.0)
    readings = [(h * HOUR, 25.0) for h in range(23)] + [(23 * HOUR, 40.0)]

    events = run(evaluator, readings[:-1])
    signal = signal_at(evaluator, *readings[-1])

    assert events == []
    assert signal.level is ALERT
    assert signal.value == pytest.approx(26.37, abs=0.005)
    assert signal.value == pytest.approx(
        mean_kinetic_temperature_c([25.0] * 23 + [40.0], [1.0] * 24), abs=1e-9
    )


def test_mkt_window_boundary_excludes_reading_exactly_window_old() -> None:
    """A reading exactly window_s old has left (ts - window, ts]; the alarm clears when it does."""
    evaluator = _mkt(3 * HOUR, 26.0)
    readings = [(0, 40.0), (HOUR, 25.0), (2 * HOUR, 25.0), (3 * HOUR, 25.0)]

    events = run(evaluator, readings)

    assert events == [(RAISED, at(HOUR), ALERT), (CLEARED, at(3 * HOUR), None)]
    assert signal_at(evaluator, 4 * HOUR, 25.0).value == pytest.approx(25.0, abs=1e-9)


def test_mkt_needs_coverage() -> None:
    """The MKT is judged only once the readings cover min_coverage of the window."""
    evaluator = _mkt(24 * HOUR, 26.0, min_coverage=0.5)

    events = run(evaluator, [(h * HOUR, 40.0) for h in range(14)])

    assert events == [(RAISED, at(11 * HOUR), ALERT)]  # 11 h spanned + the last hour's weight = 12 h


def _brute_mkt(series: list[tuple[int, float]], index: int, window_us: int) -> float:
    """MKT by the pure function over the readings in the window ending at ``series[index]``."""
    ts = series[index][0]
    inside = [(t, c) for t, c in series[: index + 1] if t > ts - window_us]
    times = np.array([t for t, _ in inside], dtype=np.float64)
    gaps = np.diff(times)
    weights = np.append(gaps, gaps[-1])
    return mean_kinetic_temperature_c([c for _, c in inside], weights)


def _check_incremental_mkt(intervals_s: list[int], temps_c: list[float], window_s: int) -> None:
    evaluator = _mkt(window_s, 1e9, min_coverage=1e-9)
    series: list[tuple[int, float]] = []
    t = T0
    for gap, temp in zip(intervals_s, temps_c, strict=True):
        t += gap * US
        series.append((t, temp))
        signal = evaluator.update(t, {"temp_c": temp})
        assert signal is not None
        if signal.value is None:
            assert len([1 for ts, _ in series if ts > t - window_s * US]) < 2
            continue
        assert signal.value == pytest.approx(_brute_mkt(series, len(series) - 1, window_s * US), abs=1e-6)


def test_mkt_incremental_agrees_with_pure_function_on_random_series() -> None:
    """Over a random series with a hot spell and a cryogenic stretch the running MKT matches the pure one."""
    rng = np.random.default_rng(20240501)
    n = 3000
    intervals = rng.integers(1, 400, size=n).tolist()
    temps = np.concatenate(
        [rng.uniform(2.0, 8.0, 1000), rng.uniform(30.0, 60.0, 200), rng.uniform(-196.0, -150.0, 1800)]
    ).tolist()

    _check_incremental_mkt(intervals, temps, window_s=6 * HOUR)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 3 * HOUR), st.floats(-196.0, 80.0, allow_nan=False)), min_size=1, max_size=80
    ),
    st.integers(60, 12 * HOUR),
)
def test_mkt_incremental_property(readings: list[tuple[int, float]], window_s: int) -> None:
    """For any series and window the running MKT matches the pure function to 1e-6 C."""
    _check_incremental_mkt([g for g, _ in readings], [c for _, c in readings], window_s)


# --- hold-time forecast ------------------------------------------------------------------


def _forecast(window_s: float = HOUR, min_points: int = 4, min_span_s: float = 0) -> ForecastEvaluator:
    return ForecastEvaluator(
        ForecastRule(
            window_s=window_s,
            min_points=min_points,
            min_span_s=min_span_s,
            levels={"alert": ForecastLevel(hours=4.05), "action": ForecastLevel(hours=2.05)},
        )
    )


def test_forecast_linear_level_gives_exact_hours_and_escalates() -> None:
    """A level falling 10 %/h from 100 % predicts 10 - t hours; alert at 6 h, action at 8 h."""
    evaluator = _forecast()
    latch = Latch(AlarmKey("ship-01", evaluator.metric, evaluator.rule), dict(evaluator.delays_us))
    events: list[Event] = []
    for k in range(55):  # every 10 minutes up to 9 h
        hours = k / 6
        signal = evaluator.update(at(hours * HOUR), {"ln2_level_pct": 100.0 - 10.0 * hours, "temp_c": -190.0})
        assert signal is not None
        if k < 3:
            assert evaluator.prediction_h is None
        else:
            assert evaluator.prediction_h == pytest.approx(10.0 - hours, abs=1e-9)
            assert signal.value == evaluator.prediction_h
        events += [(e.kind, e.ts_us, e.severity) for e in latch.feed(at(hours * HOUR), signal)]

    assert events == [(RAISED, at(6 * HOUR), ALERT), (CHANGED, at(8 * HOUR), ACTION)]


def test_forecast_warming_temperature_gives_hours_to_limit() -> None:
    """A shipper warming 5 C/h from -180 C reaches -150 C in 6 - t hours; at -150 C the forecast stops."""
    evaluator = _forecast()
    for k in range(36):
        hours = k / 6
        evaluator.update(at(hours * HOUR), {"ln2_level_pct": 80.0, "temp_c": -180.0 + 5.0 * hours})
        if k >= 3:
            assert evaluator.prediction_h == pytest.approx(6.0 - hours, abs=1e-9)

    # At the limit the temperature rules judge, with their on-delay: no instant forecast alarm.
    signal = evaluator.update(at(6 * HOUR), {"ln2_level_pct": 80.0, "temp_c": -150.0})
    assert evaluator.prediction_h is None
    assert signal == Signal(None)


def test_forecast_waits_until_its_points_span_min_span() -> None:
    """Ten noisy readings over minutes predict nothing; the same trend over the minimum span does."""
    evaluator = _forecast(window_s=2 * HOUR, min_points=3, min_span_s=HOUR)
    for k in range(6):  # every 10 minutes: 50 minutes of points
        evaluator.update(at(k * 600), {"ln2_level_pct": 90.0 - k, "temp_c": -190.0})
        assert evaluator.prediction_h is None
    evaluator.update(at(3600), {"ln2_level_pct": 84.0, "temp_c": -190.0})
    assert evaluator.prediction_h == pytest.approx(84.0 / 6.0, abs=1e-9)


def test_forecast_takes_the_sooner_prediction() -> None:
    """With the level and the temperature both heading for their limits the sooner one counts."""
    evaluator = _forecast(min_points=3)
    for k in range(4):
        hours = k / 6
        signal = evaluator.update(
            at(hours * HOUR), {"ln2_level_pct": 50.0 - hours, "temp_c": -180.0 + 10.0 * hours}
        )

    assert evaluator.prediction_h == pytest.approx(2.5, abs=1e-9)  # temperature: 2.5 h, level: 49.5 h
    assert signal == Signal(ALERT, evaluator.prediction_h, 4.05)


def test_forecast_without_a_trend_predicts_nothing() -> None:
    """A steady level and temperature predict nothing; a reading with neither metric is ignored."""
    evaluator = _forecast()
    for k in range(10):
        signal = evaluator.update(at(k * 600), {"ln2_level_pct": 80.0, "temp_c": -190.0})

    assert signal == Signal(None)
    assert evaluator.prediction_h is None
    assert evaluator.update(at(6001), {"battery_pct": 90.0}) is None


def test_forecast_temperature_only_readings() -> None:
    """Readings that carry only the temperature still forecast from it."""
    evaluator = _forecast()
    for k in range(5):
        evaluator.update(at(k * 600), {"temp_c": -170.0 + k})  # 6 C/h

    assert evaluator.prediction_h == pytest.approx((-150.0 - (-166.0)) / 6.0, abs=1e-9)


def test_forecast_fit_matches_numpy_over_the_window() -> None:
    """The running fit over a long noisy series equals numpy's least squares over the window."""
    evaluator = _forecast(window_s=2 * HOUR, min_points=5)
    rng = np.random.default_rng(7)
    times = np.cumsum(rng.integers(30, 900, size=600))
    levels = 100.0 - 0.8 * times / HOUR + rng.normal(0.0, 0.3, size=times.size)
    for i, (t, level) in enumerate(zip(times.tolist(), levels.tolist(), strict=True)):
        evaluator.update(at(t), {"ln2_level_pct": level})
        inside = times[: i + 1] > t - 2 * HOUR
        if inside.sum() < 5:
            assert evaluator.prediction_h is None
            continue
        x = times[: i + 1][inside] / HOUR
        slope, intercept = np.polyfit(x, levels[: i + 1][inside], 1)
        now = intercept + slope * t / HOUR
        expected = max(0.0, now / -slope) if slope < 0 else None
        if expected is None:
            assert evaluator.prediction_h is None
        else:
            assert evaluator.prediction_h == pytest.approx(expected, rel=1e-6, abs=1e-6)


# --- all of them -------------------------------------------------------------------------

FACTORIES: dict[str, Callable[[], RuleEvaluator]] = {
    "rate": lambda: _rate(window_s=300, action=RateLevel(limit_per_min=2.0)),
    "consecutive": _consecutive,
    "events": _events,
    "time_out_of_range": _out_of_range,
    "mkt": lambda: _mkt(HOUR, 5.0),
    "forecast": lambda: _forecast(min_points=3),
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_deepcopy_checkpoint_resumes_identically(name: str) -> None:
    """A deep copy taken mid-stream judges the rest of the readings exactly like the original."""
    evaluator = FACTORIES[name]()
    rng = np.random.default_rng(11)
    t = 0
    readings = []
    for value in rng.uniform(0.0, 12.0, size=400).tolist():
        t += int(rng.integers(1, 300))
        readings.append((at(t), {"temp_c": value - 180.0, evaluator.metric: value}))
    for ts, values in readings[:200]:
        evaluator.update(ts, values)

    clone = copy.deepcopy(evaluator)

    for ts, values in readings[200:]:
        assert clone.update(ts, values) == evaluator.update(ts, values)


def test_evaluators_are_not_suppressible_and_mkt_is_finite() -> None:
    """Window rules are never held after a door closes, and MKT stays finite for any sane series."""
    assert not any(factory().suppressible for factory in FACTORIES.values())
    assert math.isfinite(mean_kinetic_temperature_c([-196.0, 80.0], [1.0, 1.0]))
