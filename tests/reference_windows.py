"""The rules engine's windowed evaluators as they were before checkpoints became indices.

Kept only as the reference the differential tests compare the engine with: plain
deques and running sums, checkpointed by ``copy.deepcopy``. Not used by the product.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from coldwatch.rules.config import (
    ConsecutiveRule,
    EventsInWindowRule,
    ForecastRule,
    MktRule,
    RateRule,
    TimeOutOfRangeRule,
)
from coldwatch.rules.evaluators import SEVERITY, graded_signal
from coldwatch.rules.forecast import _DEGENERATE, HOUR_US
from coldwatch.rules.model import US, Severity, Signal
from coldwatch.rules.windows import _MKT_DRIFT_RATIO, _MKT_REBUILD_EVERY, ABSOLUTE_ZERO_C, KELVIN, _no_delays

_US_PER_MIN = 60 * US


class RateEvaluator:
    """Rate of change per minute between the oldest and the newest reading in the window.

    The window here is closed, ``[ts - window, ts]``: with readings every ``window_s`` the
    rate still has two points. A level is met when the judged rate is strictly beyond its
    limit; a raised alarm is kept while it stays above ``limit - margin`` (off-margin).
    """

    def __init__(self, spec: RateRule) -> None:
        self.rule = spec.rule_id()
        self.metric = spec.metric
        self.suppressible = False
        # level_delays() would do, but its Mapping[str, ...] parameter rejects Literal keys.
        self.delays_us = {SEVERITY[name]: round(level.delay_s * US) for name, level in spec.levels.items()}
        self._window_us = round(spec.window_s * US)
        self._direction = spec.direction
        # (severity, limit, clear-at) from the mildest level to the worst.
        self._levels = sorted(
            (SEVERITY[name], level.limit_per_min, level.limit_per_min - level.margin)
            for name, level in spec.levels.items()
        )
        self._points: deque[tuple[int, float]] = deque()

    def update(self, ts_us: int, values: Mapping[str, float]) -> Signal | None:
        """Judge the rate at ``ts_us``; no level while fewer than two instants are in the window."""
        value = values.get(self.metric)
        if value is None:
            return None
        points = self._points
        points.append((ts_us, value))
        start = ts_us - self._window_us
        while points[0][0] < start:  # the newest is never older than the window start
            points.popleft()
        oldest_us, oldest = points[0]
        if ts_us <= oldest_us:
            return Signal(None)
        rate = (value - oldest) * _US_PER_MIN / (ts_us - oldest_us)
        if self._direction == "rise":
            judged = rate
        elif self._direction == "fall":
            judged = -rate
        else:
            judged = abs(rate)
        return graded_signal(judged, self._levels, rate)


class ConsecutiveEvaluator:
    """N of the last M samples beyond a level's limit (strictly above). No delays, no margin."""

    def __init__(self, spec: ConsecutiveRule) -> None:
        self.rule = spec.rule_id()
        self.metric = spec.metric
        self.suppressible = False
        self.delays_us = _no_delays(spec.levels)
        # (severity, limit, n) from the mildest level to the worst.
        self._levels = sorted((SEVERITY[name], level.limit, level.n) for name, level in spec.levels.items())
        by_severity = {SEVERITY[name]: level.m for name, level in spec.levels.items()}
        # Per level: whether each of the last M samples was beyond, and how many were.
        self._flags: list[deque[bool]] = [deque(maxlen=by_severity[sev]) for sev, _, _ in self._levels]
        self._beyond = [0] * len(self._levels)

    def update(self, ts_us: int, values: Mapping[str, float]) -> Signal | None:
        """Count this sample into each level's last M; before M samples, N are still needed."""
        value = values.get(self.metric)
        if value is None:
            return None
        level: Severity | None = None
        limit = self._levels[0][1]
        for index, (severity, lim, n) in enumerate(self._levels):
            flags = self._flags[index]
            beyond = value > lim
            if len(flags) == flags.maxlen:
                self._beyond[index] -= flags[0]
            flags.append(beyond)
            self._beyond[index] += beyond
            if self._beyond[index] >= n:
                level, limit = severity, lim
        return Signal(level, value, limit)


class EventsInWindowEvaluator:
    """At least ``count`` samples above a level's limit within ``(ts - window, ts]``.

    Judged at sample times only. The signal's value is the number of such samples, its
    limit the level's count.
    """

    def __init__(self, spec: EventsInWindowRule) -> None:
        self.rule = spec.rule_id()
        self.metric = spec.metric
        self.suppressible = False
        self.delays_us = _no_delays(spec.levels)
        self._window_us = round(spec.window_s * US)
        # (severity, limit, count) from the mildest level to the worst.
        self._levels = sorted(
            (SEVERITY[name], level.limit, level.count) for name, level in spec.levels.items()
        )
        # Per level: the times of the samples above its limit still in the window.
        self._events: list[deque[int]] = [deque() for _ in self._levels]

    def update(self, ts_us: int, values: Mapping[str, float]) -> Signal | None:
        """Count the events of each level in the window ending at this sample."""
        value = values.get(self.metric)
        if value is None:
            return None
        start = ts_us - self._window_us
        level: Severity | None = None
        count = 0
        needed = self._levels[0][2]
        for index, (severity, lim, k) in enumerate(self._levels):
            events = self._events[index]
            if value > lim:
                events.append(ts_us)
            while events and events[0] <= start:
                events.popleft()
            if index == 0 or len(events) >= k:
                count, needed = len(events), k
            if len(events) >= k:
                level = severity
        return Signal(level, float(count), float(needed))


class TimeOutOfRangeEvaluator:
    """Cumulative time outside ``[low, high]`` within ``(ts - window, ts]`` (sample and hold).

    Each reading's in-or-out state is assumed to last until the next reading, across a
    data gap too: an excursion counts until a reading shows it has ended (conservative).
    A level is met when the cumulative time reaches its budget. The signal's value is the
    cumulative time in seconds, its limit the budget in seconds.
    """

    def __init__(self, spec: TimeOutOfRangeRule) -> None:
        self.rule = spec.rule_id()
        self.metric = spec.metric
        self.suppressible = False
        self.delays_us = _no_delays(spec.levels)
        self._low = spec.low
        self._high = spec.high
        self._window_us = round(spec.window_s * US)
        # (severity, budget in us, budget in s) from the mildest level to the worst.
        self._levels = sorted(
            (SEVERITY[name], round(level.budget_s * US), level.budget_s)
            for name, level in spec.levels.items()
        )
        # Out-of-range spans [start, end) inside the window, oldest first, adjacent ones
        # merged, the first clipped to the window start; and their total (exact integers).
        self._spans: deque[tuple[int, int]] = deque()
        self._total_us = 0
        self._last_us: int | None = None
        self._last_out = False

    def _out(self, value: float) -> bool:
        return (self._low is not None and value < self._low) or (
            self._high is not None and value > self._high
        )

    def update(self, ts_us: int, values: Mapping[str, float]) -> Signal | None:
        """Add the previous reading's held state up to ``ts_us``; drop what left the window."""
        value = values.get(self.metric)
        if value is None:
            return None
        spans = self._spans
        last_us = self._last_us
        if last_us is not None and self._last_out and ts_us > last_us:
            start = spans.pop()[0] if spans and spans[-1][1] == last_us else last_us
            spans.append((start, ts_us))
            self._total_us += ts_us - last_us
        self._last_us, self._last_out = ts_us, self._out(value)
        window_start = ts_us - self._window_us
        while spans and spans[0][1] <= window_start:
            first, end = spans.popleft()
            self._total_us -= end - first
        if spans and spans[0][0] < window_start:
            first, end = spans[0]
            self._total_us -= window_start - first
            spans[0] = (window_start, end)
        total = self._total_us
        level: Severity | None = None
        budget_s = self._levels[0][2]
        for severity, budget_us, budget in self._levels:
            if total >= budget_us:
                level, budget_s = severity, budget
        return Signal(level, total / US, budget_s)


class MktEvaluator:
    """Mean kinetic temperature of the readings in ``(ts - window, ts]`` above a limit.

    Each reading weighs the time until the next one (sample and hold); the newest weighs
    the interval before it, so equally spaced readings weigh alike. The data covers the
    sum of those weights; below ``min_coverage`` of the window the rule does not judge.
    """

    def __init__(self, spec: MktRule) -> None:
        self.rule = spec.rule_id()
        self.metric = spec.metric
        self.suppressible = False
        self.delays_us = _no_delays(spec.levels)
        self._window_us = round(spec.window_s * US)
        self._min_cover_us = spec.min_coverage * self._window_us
        self._k = spec.activation_k
        self._levels = sorted((SEVERITY[name], level.limit_c) for name, level in spec.levels.items())
        # (ts, Boltzmann factor exp(-k / T)) of the readings in the window.
        self._points: deque[tuple[int, float]] = deque()
        # Sum of (t_next - t) * factor over every point but the newest (weights in us).
        self._sum = 0.0
        self._churn = 0.0  # magnitudes added and removed since the sum was last rebuilt
        self._since_rebuild = 0

    def update(self, ts_us: int, values: Mapping[str, float]) -> Signal | None:
        """Slide the window to ``ts_us`` and judge its MKT."""
        temp = values.get(self.metric)
        if temp is None or temp <= ABSOLUTE_ZERO_C:
            # Not a temperature (a probe fault or a sentinel): it cannot enter the Arrhenius sum.
            return None
        points = self._points
        if points:
            previous_us, previous = points[-1]
            term = (ts_us - previous_us) * previous
            self._sum += term
            self._churn += term
        points.append((ts_us, math.exp(-self._k / (temp + KELVIN))))
        start = ts_us - self._window_us
        while points[0][0] <= start:  # the newest is always inside the window
            oldest_us, oldest = points.popleft()
            term = (points[0][0] - oldest_us) * oldest
            self._sum -= term
            self._churn += term
        self._since_rebuild += 1
        if self._churn > _MKT_DRIFT_RATIO * self._sum or self._since_rebuild >= max(
            len(points), _MKT_REBUILD_EVERY
        ):
            self._rebuild()
        if len(points) < 2:
            return Signal(None)
        newest_us, newest = points[-1]
        last_interval = newest_us - points[-2][0]
        covered = newest_us - points[0][0] + last_interval
        if covered < self._min_cover_us or covered <= 0:
            return Signal(None)
        mean = (self._sum + last_interval * newest) / covered
        mkt_c = -self._k / math.log(mean) - KELVIN
        level: Severity | None = None
        limit = self._levels[0][1]
        for severity, lim in self._levels:
            if mkt_c > lim:
                level, limit = severity, lim
        return Signal(level, mkt_c, limit)

    def _rebuild(self) -> None:
        """Recompute the running sum exactly from the window's points."""
        self._since_rebuild = 0
        self._churn = 0.0
        if len(self._points) < 2:
            self._sum = 0.0
            return
        times = np.fromiter((t for t, _ in self._points), dtype=np.int64, count=len(self._points))
        factors = np.fromiter((f for _, f in self._points), dtype=np.float64, count=len(self._points))
        self._sum = float(np.dot(np.diff(times).astype(np.float64), factors[:-1]))


@dataclass(slots=True)
class _LinearFit:
    """Least squares over a sliding window of (ts, y) points, by running sums.

    Sums are kept of x = hours since ``origin_us`` and dy = y - ``origin_y``, both taken
    from the point that set the origin: the sums stay small (a level that does not move
    has a slope of exactly zero) and the origin moves, with an exact rebuild, once it is
    a window behind.
    """

    points: deque[tuple[int, float]] = field(default_factory=deque)
    origin_us: int = 0
    origin_y: float = 0.0
    sum_x: float = 0.0
    sum_dy: float = 0.0
    sum_xx: float = 0.0
    sum_xdy: float = 0.0

    def add(self, ts_us: int, y: float, window_us: int) -> None:
        """Append a point (no older than the newest); move the origin if it is a window behind."""
        self.points.append((ts_us, y))
        if len(self.points) == 1 or ts_us - self.origin_us > window_us:
            self.origin_us, self.origin_y = ts_us, y
            self._rebuild()
        else:
            self._accumulate(ts_us, y, 1.0)

    def evict(self, start_us: int) -> None:
        """Drop the points at or before ``start_us``."""
        points = self.points
        while points and points[0][0] <= start_us:
            ts_us, y = points.popleft()
            self._accumulate(ts_us, y, -1.0)
        if not points:
            self.sum_x = self.sum_dy = self.sum_xx = self.sum_xdy = 0.0

    def line(self, at_us: int) -> tuple[float, float] | None:
        """The fitted value at ``at_us`` and the slope per hour; None if the points share one instant."""
        n = len(self.points)
        if n < 2:
            return None
        mean_x = self.sum_x / n
        mean_dy = self.sum_dy / n
        var_x = self.sum_xx / n - mean_x * mean_x
        if var_x <= _DEGENERATE * (self.sum_xx / n):
            return None
        slope = (self.sum_xdy / n - mean_x * mean_dy) / var_x
        x = (at_us - self.origin_us) / HOUR_US
        return self.origin_y + mean_dy + slope * (x - mean_x), slope

    def _accumulate(self, ts_us: int, y: float, sign: float) -> None:
        x = (ts_us - self.origin_us) / HOUR_US
        dy = y - self.origin_y
        self.sum_x += sign * x
        self.sum_dy += sign * dy
        self.sum_xx += sign * x * x
        self.sum_xdy += sign * x * dy

    def _rebuild(self) -> None:
        n = len(self.points)
        times = np.fromiter((t for t, _ in self.points), dtype=np.int64, count=n)
        dys = np.fromiter((y for _, y in self.points), dtype=np.float64, count=n) - self.origin_y
        xs = (times - self.origin_us).astype(np.float64) / HOUR_US
        self.sum_x = float(xs.sum())
        self.sum_dy = float(dys.sum())
        self.sum_xx = float(np.dot(xs, xs))
        self.sum_xdy = float(np.dot(xs, dys))


class ForecastEvaluator:
    """Predicted hours until the shipper is empty or too warm, below each level's ``hours``.

    A reading counts when it carries the level (``metric``), the temperature
    (``temp_metric``) or both; each fit needs ``min_points`` readings of its own. The
    latest prediction is kept in :attr:`prediction_h` (None when neither fit predicts).
    """

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
        self._level = _LinearFit()
        self._temp = _LinearFit()
        self.prediction_h: float | None = None

    def update(self, ts_us: int, values: Mapping[str, float]) -> Signal | None:
        """Refit both lines at ``ts_us`` and judge the sooner of the two predictions."""
        level_pct = values.get(self.metric)
        temp_c = values.get(self._temp_metric)
        if level_pct is None and temp_c is None:
            return None
        start = ts_us - self._window_us
        for fit, y in ((self._level, level_pct), (self._temp, temp_c)):
            fit.evict(start)
            if y is not None:
                fit.add(ts_us, y, self._window_us)
        candidates = [
            hours for hours in (self._hours_to_empty(ts_us), self._hours_to_warm(ts_us)) if hours is not None
        ]
        self.prediction_h = prediction = min(candidates, default=None)
        if prediction is None:
            return Signal(None)
        level: Severity | None = None
        limit = self._levels[0][1]
        for severity, hours in self._levels:
            if prediction < hours:
                level, limit = severity, hours
        return Signal(level, prediction, limit)

    def _fits(self, fit: _LinearFit) -> bool:
        points = fit.points
        return len(points) >= self._min_points and points[-1][0] - points[0][0] >= self._min_span_us

    def _hours_to_empty(self, ts_us: int) -> float | None:
        fit = self._level
        if not self._fits(fit):
            return None
        if fit.points[-1][1] <= self._empty_pct:
            return 0.0
        line = fit.line(ts_us)
        if line is None or line[1] >= 0:
            return None
        now, slope = line
        return max(0.0, (now - self._empty_pct) / -slope)

    def _hours_to_warm(self, ts_us: int) -> float | None:
        fit = self._temp
        # Already at the limit: the temperature rules judge it, with their own on-delay.
        if not self._fits(fit) or fit.points[-1][1] >= self._temp_limit_c:
            return None
        line = fit.line(ts_us)
        if line is None or line[1] <= 0:
            return None
        now, slope = line
        return max(0.0, (self._temp_limit_c - now) / slope)
