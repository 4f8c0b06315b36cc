"""Rule evaluators that judge each reading on its own: thresholds, held states, probes. Pure."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Self

import numpy as np

from coldwatch.rules.config import HeldRule, ProbeDisagreementRule, SeverityName, ThresholdRule
from coldwatch.rules.model import US, Severity, Signal
from coldwatch.rules.vector import Floats, Ints, SignalArrays, graded, present

__all__ = [
    "HeldEvaluator",
    "ProbeDisagreementEvaluator",
    "ThresholdEvaluator",
    "graded_signal",
    "level_delays",
]

SEVERITY = {"alert": Severity.ALERT, "action": Severity.ACTION}


def graded_signal(
    judged: float, levels: Sequence[tuple[Severity, float, float]], value: float, *, high: bool = True
) -> Signal:
    """The signal of ``judged`` against (severity, limit, clear-at) levels, mildest first.

    A level is met strictly beyond its limit (the last met wins); a raised alarm keeps the
    worst level whose clear-at is still passed (off-margin). ``graded`` is the array twin.
    """
    level: Severity | None = None
    hold: Severity | None = None
    limit = levels[0][1]
    for severity, lim, clear_at in levels:
        if judged > lim if high else judged < lim:
            level, limit = severity, lim
        if judged > clear_at if high else judged < clear_at:
            hold = severity
    return Signal.with_hold(level, hold, value, limit)


def level_delays(levels: Mapping[SeverityName, object]) -> dict[Severity, int]:
    """On-delays in microseconds from levels that carry ``delay_s``."""
    return {SEVERITY[name]: round(getattr(level, "delay_s", 0.0) * US) for name, level in levels.items()}


class _Stateless:
    """An evaluator that judges each reading on its own.

    One instance serves every device with its rule, and a checkpoint need not copy it.
    """

    stateless = True

    def __deepcopy__(self, memo: dict[int, object]) -> Self:
        return self


class ThresholdEvaluator(_Stateless):
    """High or low limits with per-level off-margins."""

    def __init__(self, spec: ThresholdRule) -> None:
        self.rule = spec.rule_id()
        self.metric = spec.metric
        self.suppressible = spec.suppress_after_door
        self.delays_us = level_delays(spec.levels)
        self._high = spec.direction == "high"
        # (severity, limit, clear-at) from the mildest level to the worst.
        self._levels = sorted(
            (
                SEVERITY[name],
                level.limit,
                level.limit - level.margin if self._high else level.limit + level.margin,
            )
            for name, level in spec.levels.items()
        )
        # No level is met at or within the mildest limit (the lowest high one, the highest low one).
        limits = [limit for _, limit, _ in self._levels]
        self._calm_bound = min(limits) if self._high else max(limits)
        # ``calm`` as a range: calm when the metric is absent or lo <= value <= hi.
        bound = self._calm_bound
        self.calm_range = (self.metric, -math.inf, bound) if self._high else (self.metric, bound, math.inf)

    def calm(self, values: Mapping[str, float]) -> bool:
        """Whether ``update`` would give no signal, or one without a level (cheap, no signal built)."""
        value = values.get(self.metric)
        if value is None:
            return True
        return value <= self._calm_bound if self._high else value >= self._calm_bound

    def update(self, ts_us: int, values: Mapping[str, float]) -> Signal | None:  # noqa: ARG002
        """Judge one reading: beyond the limit (strict), or still within the off-margin."""
        value = values.get(self.metric)
        if value is None:
            return None
        return graded_signal(value, self._levels, value, high=self._high)

    def signals(self, ts_us: Ints, values: Mapping[str, Floats]) -> SignalArrays:
        """``update`` at every reading of a series, from a fresh state."""
        index, value = present(dict(values), self.metric, len(ts_us))
        level, keeps, limit = graded(value, self._levels, high=self._high)
        return SignalArrays(index, level, keeps, value, limit, with_hold=True)


class HeldEvaluator(_Stateless):
    """A boolean that must not stay true longer than each level's delay."""

    def __init__(self, spec: HeldRule) -> None:
        self.rule = spec.rule_id()
        self.metric = spec.metric
        self.suppressible = False
        self.delays_us = level_delays(spec.levels)
        self._worst = max(SEVERITY[name] for name in spec.levels)
        # ``calm`` as a range: below 0.5 is at most the float just below it.
        self.calm_range = (self.metric, -math.inf, math.nextafter(0.5, -math.inf))

    def calm(self, values: Mapping[str, float]) -> bool:
        """Whether ``update`` would give no signal, or one without a level (cheap, no signal built)."""
        value = values.get(self.metric)
        return value is None or value < 0.5

    def update(self, ts_us: int, values: Mapping[str, float]) -> Signal | None:  # noqa: ARG002
        """True counts toward every level; the latch's delays decide which is reached."""
        value = values.get(self.metric)
        if value is None:
            return None
        return Signal(self._worst if value >= 0.5 else None, value, 1.0)

    def signals(self, ts_us: Ints, values: Mapping[str, Floats]) -> SignalArrays:
        """``update`` at every reading of a series, from a fresh state."""
        index, value = present(dict(values), self.metric, len(ts_us))
        level = np.where(value >= 0.5, int(self._worst), 0).astype(np.int8)
        return SignalArrays(index, level, level, value, np.full(len(index), 1.0), with_hold=False)


class ProbeDisagreementEvaluator(_Stateless):
    """Two probes that should read alike: |a - b| above a limit."""

    def __init__(self, spec: ProbeDisagreementRule) -> None:
        self.rule = spec.rule_id()
        self.metric = spec.metric
        self.suppressible = False
        self.delays_us = level_delays(spec.levels)
        self._other = spec.other
        self._levels = sorted(
            (SEVERITY[name], level.limit, level.limit - level.margin) for name, level in spec.levels.items()
        )
        self._calm_bound = min(limit for _, limit, _ in self._levels)
        # ``calm`` as data, for a device's screen (coldwatch.rules.device).
        self.calm_pair = (self.metric, self._other, self._calm_bound)

    def calm(self, values: Mapping[str, float]) -> bool:
        """Whether ``update`` would give no signal, or one without a level (cheap, no signal built)."""
        a, b = values.get(self.metric), values.get(self._other)
        return a is None or b is None or abs(a - b) <= self._calm_bound

    def update(self, ts_us: int, values: Mapping[str, float]) -> Signal | None:  # noqa: ARG002
        """Judge the difference when the reading carries both probes."""
        a, b = values.get(self.metric), values.get(self._other)
        if a is None or b is None:
            return None
        diff = abs(a - b)
        return graded_signal(diff, self._levels, diff)

    def signals(self, ts_us: Ints, values: Mapping[str, Floats]) -> SignalArrays:
        """``update`` at every reading of a series, from a fresh state."""
        size = len(ts_us)
        a_index, _ = present(dict(values), self.metric, size)
        b_index, _ = present(dict(values), self._other, size)
        both = np.zeros(size, dtype=np.bool_)
        both[a_index] = True
        index = b_index[both[b_index]]
        diff = np.abs(values[self.metric][index] - values[self._other][index]) if len(index) else np.zeros(0)
        level, keeps, limit = graded(diff, self._levels)
        return SignalArrays(index, level, keeps, diff, limit, with_hold=True)
