"""Server-side downsampling: bounded output, every bucket's extremes kept, gaps kept as breaks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coldwatch.console.downsample import Series, lttb, mark_gaps, minmax

US = 1_000_000


@st.composite
def series(draw: st.DrawFn) -> tuple[Series, int]:
    """A sorted series (repeated timestamps allowed, some NaN breaks) and a point budget."""
    n = draw(st.integers(0, 3000))
    steps = draw(st.lists(st.integers(0, 5 * US), min_size=n, max_size=n))
    ts = 1_700_000_000 * US + np.cumsum(np.asarray(steps, dtype=np.int64))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    values = rng.normal(0, 10, n)
    if n and draw(st.booleans()):
        values[rng.integers(0, n, size=draw(st.integers(1, 20)))] = np.nan
    if n and draw(st.booleans()):
        values[rng.integers(0, n)] = draw(st.sampled_from([1e9, -1e9]))  # one extreme spike
    buffered = rng.random(n) < 0.1
    return Series.of(ts, values, buffered), draw(st.integers(5, 700))


def buckets_of(s: Series, max_points: int) -> np.ndarray:
    """Each point's bucket, computed as the documentation states it."""
    count = max_points // 5 if np.isnan(s.values).any() else max_points // 2
    span = int(s.ts_us[-1]) + 1 - int(s.ts_us[0])
    return np.asarray((s.ts_us - s.ts_us[0]) * count // span, dtype=np.int64)


@settings(max_examples=150, deadline=None)
@given(series())
def test_minmax_bounds_the_output_and_keeps_every_bucket_extreme(case: tuple[Series, int]) -> None:
    """minmax returns at most max_points points, keeping each bucket's lowest and highest, in time order."""
    s, max_points = case
    out = minmax(s, max_points)
    assert len(out) <= max_points
    assert bool(np.all(np.diff(out.ts_us) >= 0))
    if len(s) <= max_points:
        assert len(out) == len(s)
        return
    bucket = buckets_of(s, max_points)
    out_bucket = buckets_of_points(s, out, bucket)
    for b in np.unique(bucket):
        inside = s.values[bucket == b]
        real = inside[~np.isnan(inside)]
        kept = out.values[out_bucket == b]
        if real.size:
            assert real.max() in kept
            assert real.min() in kept
        if np.isnan(inside).any():
            assert np.isnan(kept).any()  # a break in the bucket stays a break
    # Every output point is an input point (value, time and backfill flag unchanged).
    pairs = set(
        zip(s.ts_us.tolist(), np.nan_to_num(s.values, nan=np.inf).tolist(), s.buffered.tolist(), strict=True)
    )
    for point in zip(
        out.ts_us.tolist(), np.nan_to_num(out.values, nan=np.inf).tolist(), out.buffered.tolist(), strict=True
    ):
        assert point in pairs


def buckets_of_points(s: Series, out: Series, bucket: np.ndarray) -> np.ndarray:
    """The bucket of each output point (by its time, as in the input)."""
    index = np.searchsorted(s.ts_us, out.ts_us, side="left")
    return bucket[index]


@settings(max_examples=100, deadline=None)
@given(series())
def test_lttb_bounds_the_output_and_keeps_breaks(case: tuple[Series, int]) -> None:
    """LTTB never returns more than max_points, keeps time order, and keeps every break while it can."""
    s, max_points = case
    out = lttb(s, max_points)
    assert len(out) <= max_points
    assert bool(np.all(np.diff(out.ts_us) >= 0))
    breaks = int(np.isnan(s.values).sum())
    if len(s) <= max_points:
        assert len(out) == len(s)
    elif breaks:
        assert np.isnan(out.values).any()


def test_a_one_sample_spike_survives_a_million_points() -> None:
    """A single reading above every other in 2.6 million (30 days at 1 Hz) is in the 2,000 points drawn."""
    n = 30 * 86_400
    ts = np.arange(n, dtype=np.int64) * US
    values = np.sin(np.arange(n) / 1000.0)
    values[1_234_567] = 5.0
    out = minmax(Series.of(ts, values), 2000)
    assert len(out) == 2000
    assert out.values.max() == 5.0
    assert int(out.ts_us[np.argmax(out.values)]) == 1_234_567 * US


def test_a_communication_loss_is_a_break_not_a_line() -> None:
    """Readings further apart than the gap time get a break between them, kept exactly after downsampling."""
    ts = np.r_[np.arange(0, 1000), np.arange(5000, 9000)].astype(np.int64) * US
    s = mark_gaps(Series.of(ts, np.ones(ts.size)), 60 * US)
    assert s.gaps() == [(999 * US, 5000 * US)]
    out = minmax(s, 200)
    assert out.gaps() == [(999 * US, 5000 * US)]
    out = lttb(s, 200)
    assert out.gaps() == [(999 * US, 5000 * US)]


def test_unsorted_input_is_sorted_and_bad_input_refused() -> None:
    """A series is put in time order; mismatched lengths and tiny budgets are refused."""
    s = Series.of([3, 1, 2], [30.0, 10.0, 20.0])
    assert s.ts_us.tolist() == [1, 2, 3]
    assert s.values.tolist() == [10.0, 20.0, 30.0]
    with pytest.raises(ValueError, match="same length"):
        Series.of([1, 2], [1.0])
    with pytest.raises(ValueError, match="at least"):
        minmax(s, 2)
    with pytest.raises(ValueError, match="positive"):
        mark_gaps(s, 0)
