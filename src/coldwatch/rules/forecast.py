"""Remaining hold time of an LN2 shipper, forecast by linear fits over a window. Pure.

Two least-squares lines over the readings in ``(ts - window, ts]``: the LN2 level and the
temperature against time. The hold time left is the sooner of the level reaching
``empty_level_pct`` and the temperature reaching ``temp_limit_c``. The fits keep running
sums (amortised O(1) a reading); time is measured in hours from an origin that moves
with the window, so the sums stay small and precise, and are rebuilt when it moves.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from coldwatch.rules.config import ForecastRule
from coldwatch.rules.evaluators import SEVERITY
from coldwatch.rules.model import US, Severity, Signal
from coldwatch.rules.tape import Renewable, Tape, tapes_restore, tapes_snapshot
from coldwatch.rules.vector import Bools, Floats, Ints, SignalArrays, present

__all__ = ["ForecastEvaluator"]

HOUR_US = 3600 * US
# Time spreads this small relative to the times themselves are one instant to the fit.
_DEGENERATE = 1e-12
_NO_PREDICTION = Signal(None)  # immutable: one serves every reading without a prediction


class _LinearFit:
    """Least squares over a sliding window of (ts, y) points, by running sums.

    Sums are kept of x = hours since ``origin_us`` and dy = y - ``origin_y``, both taken
    from the point that set the origin: the sums stay small (a level that does not move
    has a slope of exactly zero) and the origin moves, with an exact rebuild, once it is
    a window behind. The points live on an append-only tape from ``head`` (see
    :mod:`coldwatch.rules.tape`): a checkpoint is the tape's end, the head and the sums.
    """

    __slots__ = (
        "head",
        "min_points",
        "min_span_us",
        "origin_us",
        "origin_y",
        "sum_dy",
        "sum_x",
        "sum_xdy",
        "sum_xx",
        "tape",
        "times",
        "ys",
    )

    def __init__(self, min_points: int, min_span_us: int) -> None:
        # What a line needs: this many points, spanning this long.
        self.min_points = min_points
        self.min_span_us = min_span_us
        self.times: array[int] = array("q")
        self.ys: array[float] = array("d")
        self.tape = Tape(self.times, self.ys)
        self.head = 0  # absolute index of the oldest point in the window
        self.origin_us = 0
        self.origin_y = 0.0
        self.sum_x = self.sum_dy = self.sum_xx = self.sum_xdy = 0.0

    def checkpoint(self) -> tuple[int, int, int, float, float, float, float, float]:
        """The state as a small tuple."""
        return (
            self.tape.end,
            self.head,
            self.origin_us,
            self.origin_y,
            self.sum_x,
            self.sum_dy,
            self.sum_xx,
            self.sum_xdy,
        )

    def rollback(self, token: tuple[int, int, int, float, float, float, float, float]) -> None:
        """Return to the state of ``token``."""
        end, self.head, self.origin_us, self.origin_y, self.sum_x, self.sum_dy, self.sum_xx, self.sum_xdy = (
            token
        )
        self.tape.truncate(end)

    def step(
        self, start_us: int, ts_us: int, y: float | None, window_us: int
    ) -> tuple[float, float, float | None] | None:
        """Slide the window to ``(start_us, ts_us]`` (adding ``y`` unless None) and fit the line.

        None when the window holds fewer than ``min_points`` points or spans less than
        ``min_span_us``; else (newest y, fitted value at ``ts_us``, slope per hour), the
        slope None when the points share one instant. One call a reading, the sums in
        local variables: this runs twice for every cryoshipper reading. Subtracting a
        point is adding its negated terms, exactly (IEEE negation and rounding are
        symmetric), so the sums are those of signed accumulation.
        """
        times = self.times
        base = self.tape.base
        head = self.head - base
        size = len(times)
        origin_us, origin_y = self.origin_us, self.origin_y
        sum_x, sum_dy, sum_xx, sum_xdy = self.sum_x, self.sum_dy, self.sum_xx, self.sum_xdy
        if head < size and times[head] <= start_us:
            ys = self.ys
            while head < size and times[head] <= start_us:
                x = (times[head] - origin_us) / HOUR_US
                dy = ys[head] - origin_y
                sum_x -= x
                sum_dy -= dy
                sum_xx -= x * x
                sum_xdy -= x * dy
                head += 1
            self.head = head + base
            if head == size:
                sum_x = sum_dy = sum_xx = sum_xdy = 0.0
        if y is not None:
            times.append(ts_us)
            self.ys.append(y)
            if size == head or ts_us - origin_us > window_us:
                self.origin_us = origin_us = ts_us
                self.origin_y = origin_y = y
                self._rebuild()
                sum_x, sum_dy, sum_xx, sum_xdy = self.sum_x, self.sum_dy, self.sum_xx, self.sum_xdy
            else:
                x = (ts_us - origin_us) / HOUR_US
                dy = y - origin_y
                sum_x += x
                sum_dy += dy
                sum_xx += x * x
                sum_xdy += x * dy
            size += 1
        self.sum_x, self.sum_dy, self.sum_xx, self.sum_xdy = sum_x, sum_dy, sum_xx, sum_xdy
        # The line, inline: a call costs as much as the arithmetic.
        n = size - head
        if n < self.min_points or n == 0 or times[-1] - times[head] < self.min_span_us:
            return None
        newest = self.ys[-1]
        if n < 2:
            return newest, 0.0, None
        mean_x = sum_x / n
        mean_dy = sum_dy / n
        var_x = sum_xx / n - mean_x * mean_x
        if var_x <= _DEGENERATE * (sum_xx / n):
            return newest, 0.0, None
        slope = (sum_xdy / n - mean_x * mean_dy) / var_x
        return newest, origin_y + mean_dy + slope * ((ts_us - origin_us) / HOUR_US - mean_x), slope

    def _rebuild(self) -> None:
        head = self.head - self.tape.base
        # Copied into arrays of their own: the tape's arrays must stay free to grow.
        times = np.array(self.times[head:], dtype=np.int64)
        dys = np.array(self.ys[head:], dtype=np.float64) - self.origin_y
        xs = (times - self.origin_us).astype(np.float64) / HOUR_US
        self.sum_x = float(xs.sum())
        self.sum_dy = float(dys.sum())
        self.sum_xx = float(np.dot(xs, xs))
        self.sum_xdy = float(np.dot(xs, dys))


class ForecastEvaluator(Renewable):
    """Predicted hours until the shipper is empty or too warm, below each level's ``hours``.

    A reading counts when it carries the level (``metric``), the temperature
    (``temp_metric``) or both; each fit needs ``min_points`` readings of its own. The
    latest prediction is kept in :attr:`prediction_h` (None when neither fit predicts).
    """

    __slots__ = (
        "_empty_pct",
        "_level",
        "_levels",
        "_min_points",
        "_min_span_us",
        "_temp",
        "_temp_limit_c",
        "_temp_metric",
        "_window_us",
        "delays_us",
        "metric",
        "prediction_h",
        "rule",
        "suppressible",
    )

    def __init__(self, spec: ForecastRule) -> None:
        self.rule = spec.rule_id()
        self.metric = spec.metric
        self.suppressible = False
        self.delays_us = dict.fromkeys((SEVERITY[name] for name in spec.levels), 0)
        self._temp_metric = spec.temp_metric
        self._temp_limit_c = spec.temp_limit_c
        self._empty_pct = spec.empty_level_pct
        self._window_us = round(spec.window_s * US)
        self._min_points = spec.min_points
        self._min_span_us = round(spec.min_span_s * US)
        # (severity, hours) from the mildest level to the worst.
        self._levels = sorted((SEVERITY[name], level.hours) for name, level in spec.levels.items())
        self._reset()

    def _reset(self) -> None:
        self._level = _LinearFit(self._min_points, self._min_span_us)
        self._temp = _LinearFit(self._min_points, self._min_span_us)
        self.prediction_h: float | None = None

    def update(self, ts_us: int, values: Mapping[str, float]) -> Signal | None:  # noqa: C901 - both fits inline
        """Refit both lines at ``ts_us`` and judge the sooner of the two predictions."""
        level_pct = values.get(self.metric)
        temp_c = values.get(self._temp_metric)
        if level_pct is None and temp_c is None:
            return None
        window_us = self._window_us
        start = ts_us - window_us
        to_empty = to_warm = None
        fit = self._level.step(start, ts_us, level_pct, window_us)
        if fit is not None:
            newest, now, slope = fit
            empty = self._empty_pct
            if newest <= empty:
                to_empty = 0.0
            elif slope is not None and slope < 0:
                to_empty = max(0.0, (now - empty) / -slope)
        fit = self._temp.step(start, ts_us, temp_c, window_us)
        if fit is not None:
            newest, now, slope = fit
            limit_c = self._temp_limit_c
            # Already at the limit: the temperature rules judge it, with their own on-delay.
            if newest < limit_c and slope is not None and slope > 0:
                to_warm = max(0.0, (limit_c - now) / slope)
        if to_empty is None:
            prediction = to_warm
        elif to_warm is None:
            prediction = to_empty
        else:
            prediction = min(to_empty, to_warm)
        self.prediction_h = prediction
        if prediction is None:
            return _NO_PREDICTION
        level: Severity | None = None
        limit = self._levels[0][1]
        for severity, hours in self._levels:
            if prediction < hours:
                level, limit = severity, hours
        return Signal(level, prediction, limit)

    def signals(self, ts_us: Ints, values: Mapping[str, Floats]) -> SignalArrays:
        """``update`` at every reading of a series, from a fresh state (bit-identical sums)."""
        size = len(ts_us)
        level_index, _ = present(dict(values), self.metric, size)
        temp_index, _ = present(dict(values), self._temp_metric, size)
        either = np.zeros(size, dtype=np.bool_)
        either[level_index] = True
        either[temp_index] = True
        index = np.flatnonzero(either).astype(np.int64)
        step_ts = ts_us[index]
        nan = np.full(size, np.nan)
        level_y = values.get(self.metric, nan)[index]
        temp_y = values.get(self._temp_metric, nan)[index]
        level = _fit_series(step_ts, ~np.isnan(level_y), self._window_us, level_y)
        temp = _fit_series(step_ts, ~np.isnan(temp_y), self._window_us, temp_y)
        enough_l = (level.count >= self._min_points) & (level.span_us >= self._min_span_us)
        with np.errstate(invalid="ignore", divide="ignore"):
            to_empty = np.where(
                enough_l & (level.slope < 0),
                np.maximum(0.0, (level.at - self._empty_pct) / -level.slope),
                np.nan,
            )
            to_empty = np.where(enough_l & (level.newest <= self._empty_pct), 0.0, to_empty)
            enough_t = (temp.count >= self._min_points) & (temp.span_us >= self._min_span_us)
            enough_t &= ~(temp.newest >= self._temp_limit_c)
            to_warm = np.where(
                enough_t & (temp.slope > 0),
                np.maximum(0.0, (self._temp_limit_c - temp.at) / temp.slope),
                np.nan,
            )
        prediction = np.where(
            np.isnan(to_empty), to_warm, np.where(np.isnan(to_warm), to_empty, np.minimum(to_empty, to_warm))
        )
        known = ~np.isnan(prediction)
        grade = np.zeros(len(index), dtype=np.int8)
        limit = np.where(known, self._levels[0][1], np.nan)
        for severity, hours in self._levels:
            below = known & (prediction < hours)
            grade[below] = int(severity)
            limit[below] = hours
        return SignalArrays(index, grade, grade, prediction, limit, with_hold=False)

    def checkpoint(self) -> tuple[object, object, float | None]:
        """Both fits' states and the latest prediction."""
        return self._level.checkpoint(), self._temp.checkpoint(), self.prediction_h

    def rollback(self, token: tuple[object, object, float | None]) -> None:
        """Return to the state of ``token``."""
        level, temp, self.prediction_h = token
        self._level.rollback(level)  # type: ignore[arg-type]
        self._temp.rollback(temp)  # type: ignore[arg-type]

    def forget(self, token: tuple[object, object, float | None]) -> None:
        """Drop the points before ``token``'s windows."""
        for fit, state in ((self._level, token[0]), (self._temp, token[1])):
            fit.tape.forget(state[1])  # type: ignore[index]

    def snapshot(self) -> list[object]:
        """The whole state as plain data (both fits' points and sums)."""
        fits = [(self._level.tape, self._level.head), (self._temp.tape, self._temp.head)]
        return tapes_snapshot(self.checkpoint(), fits)

    def restore_snapshot(self, state: list[object]) -> None:
        """Take the state of a :meth:`snapshot`."""
        token, _ = tapes_restore([self._level.tape, self._temp.tape], state)
        self.rollback(token)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class _FitSeries:
    """A fit's state after each step of a series: points held, newest value, and the line."""

    count: Ints
    span_us: Ints  # newest minus oldest point time (0 with fewer than two)
    newest: Floats
    at: Floats  # fitted value at the step's time (NaN: no line)
    slope: Floats  # per hour (NaN: no line)


def _rebuilt(times: Ints, ys: Floats, origin_us: int, origin_y: float) -> tuple[float, float, float, float]:
    """Exactly :meth:`_LinearFit._rebuild` over these points."""
    dys = ys - origin_y
    xs = (times - origin_us).astype(np.float64) / HOUR_US
    return float(xs.sum()), float(dys.sum()), float(np.dot(xs, xs)), float(np.dot(xs, dys))


def _fit_series(  # noqa: PLR0915 - one fit, step by step, as the running sums go
    step_ts: Ints, step_has: Bools, window_us: int, ys_at_steps: Floats
) -> _FitSeries:
    """What a :class:`_LinearFit` fed at every step (``add`` where ``step_has``) holds after each.

    The running sums are the same sequence of floating-point additions as the fit's:
    each step first subtracts the points leaving the window, then adds its own point or
    rebuilds; ``np.cumsum`` adds strictly left to right, so the sums are bit-identical.
    """
    steps = len(step_ts)
    own = np.flatnonzero(step_has)  # steps that add a point
    times = step_ts[own]
    ys = ys_at_steps[own]
    added: Ints = np.cumsum(step_has, dtype=np.int64)  # points added up to each step
    evicted = np.minimum(np.searchsorted(times, step_ts - window_us, side="right"), added)
    count = added - evicted
    # Which step evicts each point (points never evicted: none).
    evict_step = np.searchsorted(evicted, np.arange(len(own)), side="right")
    # Rebuilds: at an add that finds the fit empty, or a window past the origin.
    alone = np.flatnonzero(count[own] == 1)
    rebuild_at: list[int] = []  # indexes into ``own``
    j = 0
    while j < len(own):
        rebuild_at.append(j)
        past = int(np.searchsorted(times, times[j] + window_us, side="right"))
        nxt = (
            int(alone[np.searchsorted(alone, j, side="right")]) if alone.size and alone[-1] > j else len(own)
        )
        j = min(past, nxt)
    # Ops in the order the fit performs them: per step, evictions (oldest first), then the add.
    sub_points = np.flatnonzero(evict_step < steps)
    op_step = np.concatenate([evict_step[sub_points], own])
    op_kind = np.concatenate([np.zeros(len(sub_points), np.int8), np.ones(len(own), np.int8)])
    op_point = np.concatenate([sub_points, np.arange(len(own))])
    order = np.lexsort((op_point, op_kind, op_step))
    op_step, op_kind, op_point = op_step[order], op_kind[order], op_point[order]
    add_op = np.empty(len(own), dtype=np.int64)
    add_op[op_point[op_kind == 1]] = np.flatnonzero(op_kind == 1)
    rebuild_ops = add_op[np.asarray(rebuild_at, dtype=np.int64)]
    sums = np.zeros((4, len(op_step)))
    origin_of_op = np.zeros(len(op_step), dtype=np.int64)  # index into ``own`` of the origin point
    bounds = [*rebuild_ops.tolist(), len(op_step)]
    for segment, (begin, end) in enumerate(pairwise(bounds)):
        o = rebuild_at[segment]
        origin_us, origin_y = int(times[o]), float(ys[o])
        first = int(evicted[own[o]])
        start = _rebuilt(times[first : o + 1], ys[first : o + 1], origin_us, origin_y)
        points = op_point[begin + 1 : end]
        sign = np.where(op_kind[begin + 1 : end] == 1, 1.0, -1.0)
        x = sign * ((times[points] - origin_us).astype(np.float64) / HOUR_US)
        x_plain = (times[points] - origin_us).astype(np.float64) / HOUR_US
        dy = ys[points] - origin_y
        terms = (x, sign * dy, x * x_plain, x * dy)
        for row, (s0, term) in enumerate(zip(start, terms, strict=True)):
            sums[row, begin:end] = np.cumsum(np.concatenate([[s0], term]))
        origin_of_op[begin:end] = o
    before_ops = np.searchsorted(op_step, np.arange(steps), side="right")
    last_op = before_ops - 1  # the last op at or before each step (-1: none yet)
    valid = (last_op >= 0) & (count >= 2)
    at = np.full(steps, np.nan)
    slope = np.full(steps, np.nan)
    k = np.flatnonzero(valid)
    s = sums[:, last_op[k]]
    n: Floats = count[k].astype(np.float64)
    mean_x = s[0] / n
    mean_dy = s[1] / n
    var_x = s[2] / n - mean_x * mean_x
    fitted = ~(var_x <= _DEGENERATE * (s[2] / n))
    origins = origin_of_op[last_op[k]]
    slope_k = (s[3] / n - mean_x * mean_dy) / var_x
    x_now = (step_ts[k] - times[origins]).astype(np.float64) / HOUR_US
    at_k = ys[origins] + mean_dy + slope_k * (x_now - mean_x)
    at[k[fitted]] = at_k[fitted]
    slope[k[fitted]] = slope_k[fitted]
    newest = np.where(added > 0, ys[np.maximum(added - 1, 0)] if len(ys) else 0.0, np.nan)
    span = np.zeros(steps, dtype=np.int64)
    held = np.flatnonzero(count > 0)
    if len(times):
        span[held] = times[added[held] - 1] - times[evicted[held]]
    return _FitSeries(count, span, newest, at, slope)
