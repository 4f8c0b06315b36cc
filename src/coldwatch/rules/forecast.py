"""Remaining hold time of an LN2 shipper, forecast by linear fits over a window. Pure.

Two least-squares lines over the readings in ``(ts - window, ts]``: the LN2 level and the
temperature against time. The hold time left is the sooner of the level reaching
``empty_level_pct`` and the temperature reaching ``temp_limit_c``. The fits keep running
sums (amortised O(1) a reading); time is measured in hours from an origin that moves
with the window, so the sums stay small and precise, and are rebuilt when it moves.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from coldwatch.rules.config import ForecastRule
from coldwatch.rules.evaluators import SEVERITY
from coldwatch.rules.model import US, Severity, Signal

__all__ = ["ForecastEvaluator"]

HOUR_US = 3600 * US
# Time spreads this small relative to the times themselves are one instant to the fit.
_DEGENERATE = 1e-12


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

    def _hours_to_empty(self, ts_us: int) -> float | None:
        fit = self._level
        if len(fit.points) < self._min_points:
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
        if len(fit.points) < self._min_points:
            return None
        if fit.points[-1][1] >= self._temp_limit_c:
            return 0.0
        line = fit.line(ts_us)
        if line is None or line[1] <= 0:
            return None
        now, slope = line
        return max(0.0, (self._temp_limit_c - now) / slope)
