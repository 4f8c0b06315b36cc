"""The records' statistics against plain-Python recomputation and the USP <1079> check values."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from coldwatch.records.stats import (
    Level,
    completeness,
    holds_s,
    mkt_c,
    series_stats,
    time_beyond_s,
    time_weighted_mean,
    uncovered,
)

H = 3600.0
US = 1_000_000


def py_mkt(values: list[float], weights: list[float]) -> float:
    """USP <1079> written out term by term, as the chapter gives it."""
    num = sum(w * math.exp(-83144.0 / (8.3144 * (v + 273.15))) for v, w in zip(values, weights, strict=True))
    return (83144.0 / 8.3144) / -math.log(num / sum(weights)) - 273.15


def py_holds(ts: list[int], end: int, cap_s: float) -> list[float]:
    out = []
    for i, t in enumerate(ts):
        nxt = ts[i + 1] if i + 1 < len(ts) else end
        out.append(min((nxt - t) / US, cap_s))
    return out


@pytest.mark.parametrize(
    ("values", "weights", "expected"),
    [
        ([20.0, 25.0, 30.0], [1.0, 1.0, 1.0], 25.86),
        ([25.0, 40.0], [23 * H, 1 * H], 26.37),
        ([5.0, 25.0], [23 * H, 1 * H], 7.76),
    ],
)
def test_mkt_matches_the_usp_check_values(values: list[float], weights: list[float], expected: float) -> None:
    """MKT gives USP <1079>'s three check values to the hundredth."""
    got = mkt_c(np.array(values), np.array(weights))
    assert got is not None
    assert round(got, 2) == expected


def test_mkt_of_hourly_readings_equals_the_weighted_form() -> None:
    """23 hourly readings at 25 C and one at 40 C, held under the convention, give 26.37 C."""
    ts = [i * int(H) * US for i in range(24)]
    vals = [25.0] * 23 + [40.0]
    weights = holds_s(np.array(ts), 24 * int(H) * US, 3 * H)
    got = mkt_c(np.array(vals), weights)
    assert got is not None
    assert round(got, 2) == 26.37


def test_mkt_stays_exact_at_ln2_temperatures() -> None:
    """At -196 C the plain formula's terms are about 1e-57; the result is still the temperature."""
    got = mkt_c(np.array([-196.0, -196.0]), np.array([1.0, 1.0]))
    assert got == pytest.approx(-196.0, abs=1e-9)
    assert mkt_c(np.array([]), np.array([])) is None


def test_random_series_against_plain_python() -> None:
    """Every figure of series_stats equals a loop-by-loop recomputation on random irregular series."""
    rng = random.Random(17)
    for _ in range(40):
        start = 1_000 * US
        end = start + rng.randint(600, 7200) * US
        interval = 10.0
        t = start - rng.randint(0, 50) * US
        ts: list[int] = []
        vals: list[float] = []
        while t < end + 100 * US:
            ts.append(t)
            vals.append(rng.uniform(-5, 15))
            t += rng.choice([5, 10, 10, 10, 20, 45, 200]) * US
        cap = 3 * interval
        levels = [Level("high", 8.0, True), Level("low", 0.0, False)]
        got = series_stats(np.array(ts), np.array(vals), start, end, cap, levels, temperature=True)
        inside = [(a, v) for a, v in zip(ts, vals, strict=True) if start <= a < end]
        its = [a for a, _ in inside]
        ivs = [v for _, v in inside]
        w = py_holds(its, end, cap)
        assert got.n == len(inside)
        assert got.min == min(ivs)
        assert got.max == max(ivs)
        assert got.covered_s == pytest.approx(sum(w))
        assert got.mean_tw == pytest.approx(sum(v * x for v, x in zip(ivs, w, strict=True)) / sum(w))
        assert got.mkt_c == pytest.approx(py_mkt(ivs, w), abs=1e-9)
        high = sum(x for v, x in zip(ivs, w, strict=True) if v > 8.0)
        low = sum(x for v, x in zip(ivs, w, strict=True) if v < 0.0)
        assert [b.seconds for b in got.beyond] == [pytest.approx(high), pytest.approx(low)]
        assert (got.first_us, got.last_us) == (its[0], its[-1])


def test_hold_cap_leaves_gaps_as_no_data() -> None:
    """A reading holds at most the cap: a long gap is neither in range nor beyond."""
    ts = np.array([0, 10, 500], dtype=np.int64) * US
    vals = np.array([20.0, 20.0, 20.0])
    w = holds_s(ts, 600 * US, 30.0)
    assert w.tolist() == [10.0, 30.0, 30.0]
    stats = series_stats(ts, vals, 0, 600 * US, 30.0, [("hi", 10.0, True)], temperature=False)
    assert stats.covered_s == 70.0
    assert stats.beyond[0].seconds == 70.0
    assert stats.mkt_c is None


def test_beyond_is_strict_and_empty_windows_have_no_figures() -> None:
    """A value equal to the level is not beyond it; a window without readings has no min, max or mean."""
    assert time_beyond_s(np.array([8.0, 8.1]), np.array([10.0, 5.0]), 8.0, True) == 5.0
    assert time_beyond_s(np.array([8.0, 7.9]), np.array([10.0, 5.0]), 8.0, False) == 5.0
    assert time_weighted_mean(np.array([]), np.array([])) is None
    stats = series_stats(np.array([5 * US]), np.array([1.0]), 10 * US, 20 * US, 30, [], temperature=True)
    assert (stats.n, stats.min, stats.max, stats.mean_tw, stats.mkt_c) == (0, None, None, None, None)


def test_completeness_is_received_over_expected() -> None:
    """Completeness is readings received over the window divided by the interval, at most 1."""
    assert completeness(360, 0, 3600 * US, 10.0) == 1.0
    assert completeness(180, 0, 3600 * US, 10.0) == 0.5
    assert completeness(999, 0, 3600 * US, 10.0) == 1.0
    assert completeness(0, 0, 0, 10.0) == 1.0


def test_uncovered_is_the_complement_of_the_holds() -> None:
    """The no-data intervals plus the held time make up the whole window."""
    rng = random.Random(3)
    for _ in range(30):
        ts = sorted({rng.randint(0, 1000) * US for _ in range(rng.randint(0, 30))})
        start, end = 100 * US, 900 * US
        gaps = uncovered(np.array(ts, dtype=np.int64), start, end, 20.0)
        inside = [t for t in ts if start <= t < end]
        held = sum(py_holds(inside, end, 20.0))
        assert sum(b - a for a, b in gaps) / US + held == pytest.approx((end - start) / US)
        assert all(start <= a < b <= end for a, b in gaps)
    assert uncovered(np.array([], dtype=np.int64), 0, 10, 5.0) == [(0, 10)]
