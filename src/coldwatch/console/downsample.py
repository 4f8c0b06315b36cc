"""Server-side downsampling of one metric's readings for a chart. Pure: NumPy only, no I/O.

A chart never needs more points than it has pixel columns: a 30-day chart of a 1 Hz
device (2.6 million readings) is drawn from at most ``max_points`` points.

- :func:`minmax` (the default, and the one GMP charts use) splits the time range into
  equal buckets and keeps, in each, the reading with the lowest and the one with the
  highest value, at their own timestamps. Every excursion peak survives: the global
  minimum and maximum of every bucket are in the output.
- :func:`lttb` (Largest-Triangle-Three-Buckets) keeps the visual shape with one point per
  bucket; it may drop a short peak, so it is offered for trend views only.

Gaps: a ``NaN`` value is a break in the line (a communication loss). :func:`mark_gaps`
inserts one between readings further apart than a given time, and both downsamplers
keep breaks, so a chart shows a gap rather than a line across it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

__all__ = ["DEFAULT_MAX_POINTS", "Series", "lttb", "mark_gaps", "minmax"]

DEFAULT_MAX_POINTS: Final = 2_000  # 2 points (min and max) x 1,000 buckets

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Series:
    """Points of one metric in time order. A ``NaN`` value breaks the line (a gap).

    ``buffered`` marks readings a device sent late from its own buffer (backfilled).
    """

    ts_us: IntArray
    values: FloatArray
    buffered: BoolArray

    @classmethod
    def of(
        cls,
        ts_us: object,
        values: object,
        buffered: object | None = None,
    ) -> Series:
        """A series from array-likes, sorted by time (stable: equal times keep their order)."""
        ts = np.asarray(ts_us, dtype=np.int64).reshape(-1)
        vals = np.asarray(values, dtype=np.float64).reshape(-1)
        buf = (
            np.zeros(ts.shape, dtype=np.bool_)
            if buffered is None
            else np.asarray(buffered, dtype=np.bool_).reshape(-1)
        )
        if not ts.shape == vals.shape == buf.shape:
            raise ValueError("timestamps, values and buffered flags must have the same length")
        if ts.size > 1 and bool(np.any(np.diff(ts) < 0)):
            order = np.argsort(ts, kind="stable")
            ts, vals, buf = ts[order], vals[order], buf[order]
        return cls(ts, vals, buf)

    @classmethod
    def empty(cls) -> Series:
        """A series without points."""
        return cls.of([], [])

    def __len__(self) -> int:
        return int(self.ts_us.size)

    def take(self, index: IntArray) -> Series:
        """The points at ``index`` (ascending)."""
        return Series(self.ts_us[index], self.values[index], self.buffered[index])

    def gaps(self) -> list[tuple[int, int]]:
        """(from_us, to_us) of every break: from the last point before it to the first after it."""
        breaks = np.flatnonzero(np.isnan(self.values))
        out: list[tuple[int, int]] = []
        for i in breaks:
            before = int(self.ts_us[i - 1]) if i > 0 else int(self.ts_us[i])
            after = int(self.ts_us[i + 1]) if i + 1 < len(self) else int(self.ts_us[i])
            if not out or out[-1][1] < before:
                out.append((before, after))
            else:  # consecutive breaks: one gap
                out[-1] = (out[-1][0], after)
        return out


def mark_gaps(series: Series, max_gap_us: int) -> Series:
    """``series`` with a break (a ``NaN`` point) between readings more than ``max_gap_us`` apart.

    The break's timestamp is the one of the reading before it, so timestamps stay sorted.
    """
    if max_gap_us <= 0:
        raise ValueError("max_gap_us must be positive")
    if len(series) < 2:
        return series
    wide = np.flatnonzero(np.diff(series.ts_us) > max_gap_us)
    if wide.size == 0:
        return series
    at = wide + 1  # insert before the reading after the gap
    ts = np.insert(series.ts_us, at, series.ts_us[wide])
    values = np.insert(series.values, at, np.nan)
    buffered = np.insert(series.buffered, at, False)
    return Series(ts, values, buffered)


def _bucket_of(ts: IntArray, start_us: int, end_us: int, buckets: int) -> IntArray:
    span = max(end_us - start_us, 1)
    # Integer arithmetic: exact for any microsecond range (no float rounding at edges).
    offset = np.clip(ts - start_us, 0, span - 1).astype(np.int64)
    return (offset * buckets // span).astype(np.int64)


def _firsts(bucket: IntArray, mask: BoolArray) -> IntArray:
    """Index of the first point of each bucket where ``mask`` holds."""
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return idx.astype(np.int64)
    _, first = np.unique(bucket[idx], return_index=True)
    return idx[first].astype(np.int64)


def minmax(
    series: Series,
    max_points: int = DEFAULT_MAX_POINTS,
    *,
    start_us: int | None = None,
    end_us: int | None = None,
) -> Series:
    """At most ``max_points`` points keeping the lowest and highest reading of every time bucket.

    The range [start_us, end_us) (default: the series' own) is cut into equal buckets:
    ``max_points // 2`` of them, or ``max_points // 5`` when the series has breaks (each
    bucket may then also keep its first break with the readings on either side of it, so a
    gap is drawn exactly where the data stops and resumes). A series no longer than
    ``max_points`` is returned unchanged. Points keep their own timestamps, in time order.
    """
    if max_points < 5:
        raise ValueError("max_points must be at least 5")
    n = len(series)
    if n <= max_points:
        return series
    values = series.values
    nan = np.isnan(values)
    has_breaks = bool(nan.any())
    buckets = max_points // 5 if has_breaks else max_points // 2
    lo = int(series.ts_us[0]) if start_us is None else start_us
    hi = int(series.ts_us[-1]) + 1 if end_us is None else end_us
    bucket = _bucket_of(series.ts_us, lo, hi, buckets)
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])  # sorted by time: contiguous
    counts = np.diff(np.r_[starts, n])
    real = ~nan
    low = np.where(nan, np.inf, values)
    high = np.where(nan, -np.inf, values)
    mins = np.minimum.reduceat(low, starts)
    maxs = np.maximum.reduceat(high, starts)
    keep = [
        _firsts(bucket, real & (low == np.repeat(mins, counts))),
        _firsts(bucket, real & (high == np.repeat(maxs, counts))),
    ]
    if has_breaks:
        cuts = _firsts(bucket, nan)
        keep += [cuts, np.maximum(cuts - 1, 0), np.minimum(cuts + 1, n - 1)]
    return series.take(np.unique(np.concatenate(keep)))


def _lttb_segment(ts: FloatArray, values: FloatArray, out: int) -> IntArray:
    """LTTB over one unbroken segment: ``out`` indexes (first and last always kept)."""
    n = ts.size
    if out >= n or n <= 2:
        return np.arange(n, dtype=np.int64)
    out = max(out, 2)
    chosen = np.empty(out, dtype=np.int64)
    chosen[0], chosen[-1] = 0, n - 1
    edges = np.linspace(1, n - 1, out - 1).astype(np.int64)  # out - 2 inner buckets
    a = 0
    for i in range(out - 2):
        lo, hi = int(edges[i]), max(int(edges[i + 1]), int(edges[i]) + 1)
        nxt_lo = hi
        nxt_hi = int(edges[i + 2]) if i + 2 < edges.size else n
        nxt_hi = max(nxt_hi, nxt_lo + 1)
        cx, cy = ts[nxt_lo:nxt_hi].mean(), values[nxt_lo:nxt_hi].mean()
        ax, ay = ts[a], values[a]
        area = np.abs((ax - cx) * (values[lo:hi] - ay) - (ax - ts[lo:hi]) * (cy - ay))
        a = lo + int(np.argmax(area))
        chosen[i + 1] = a
    return chosen


def lttb(series: Series, max_points: int = DEFAULT_MAX_POINTS) -> Series:
    """At most ``max_points`` points chosen by Largest-Triangle-Three-Buckets, breaks kept.

    Each unbroken segment gets a share of the budget by its length (first and last point of
    each kept). When the series has too many breaks for that (more than a quarter of
    ``max_points``), :func:`minmax` is used instead, which bounds breaks per bucket.
    """
    if max_points < 5:
        raise ValueError("max_points must be at least 5")
    n = len(series)
    if n <= max_points:
        return series
    nan = np.isnan(series.values)
    breaks = np.flatnonzero(nan)
    bounds = np.r_[-1, breaks, n]
    segments = [(int(s) + 1, int(e)) for s, e in itertools.pairwise(bounds) if e - s > 1]
    budget = max_points - breaks.size - 2 * len(segments)  # every segment keeps its two ends
    if breaks.size * 4 > max_points or budget < 0:
        return minmax(series, max_points)
    real = n - breaks.size
    ts = series.ts_us.astype(np.float64)
    keep: list[IntArray] = [breaks.astype(np.int64)]
    for s, e in segments:
        share = 2 + (budget * (e - s)) // max(real, 1)
        keep.append(s + _lttb_segment(ts[s:e], series.values[s:e], int(share)))
    return series.take(np.unique(np.concatenate(keep)))
