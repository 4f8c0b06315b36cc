"""Rule signals for a whole series at once: the batched twin of ``update``. Pure.

An evaluator that has a ``signals`` method computes, from a fresh state, what ``update``
would return for every reading of one device's series, with the same floating-point
operations (element-wise NumPy arithmetic is IEEE double, like Python's), so the latch
fed from these arrays raises exactly the alarms the reading-by-reading engine raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from coldwatch.rules.model import Severity, Signal

__all__ = ["Bools", "Floats", "Ints", "SignalArrays", "graded"]

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]
Levels = npt.NDArray[np.int8]


@dataclass(frozen=True, slots=True)
class SignalArrays:
    """The signals of one rule at the readings where it judges (``index`` into the series).

    Levels are severities as small integers (0: none). NaN stands for "no value".
    """

    index: Ints
    level: Levels
    keeps: Levels
    value: Floats
    limit: Floats
    with_hold: bool  # whether the rule has an off-margin (Signal.with_hold)

    def signal(self, position: int, *, suppressed: bool = False) -> Signal:
        """The :class:`Signal` at ``position`` (held back: no level, as during door recovery)."""
        value = float(self.value[position])
        limit = float(self.limit[position])
        v = None if np.isnan(value) else value
        lim = None if np.isnan(limit) else limit
        if suppressed:
            return Signal(None, v, lim)
        level = int(self.level[position])
        sev = Severity(level) if level else None
        if self.with_hold:
            keeps = int(self.keeps[position])
            return Signal.with_hold(sev, Severity(keeps) if keeps else None, v, lim)
        return Signal(sev, v, lim)


def graded(
    judged: Floats, levels: Sequence[tuple[Severity, float, float]], *, high: bool = True
) -> tuple[Levels, Levels, Floats]:
    """Level, kept level and limit of each value against (severity, limit, clear-at) levels.

    Levels go from the mildest to the worst; the last one met wins, as in ``update``.
    """
    level = np.zeros(len(judged), dtype=np.int8)
    keeps = np.zeros(len(judged), dtype=np.int8)
    limit = np.full(len(judged), levels[0][1])
    for severity, lim, clear_at in levels:
        beyond = judged > lim if high else judged < lim
        kept = judged > clear_at if high else judged < clear_at
        level[beyond] = int(severity)
        limit[beyond] = lim
        keeps[kept] = int(severity)
    return level, keeps, limit


def present(values: dict[str, Floats] | None, metric: str, size: int) -> tuple[Ints, Floats]:
    """Positions where ``metric`` has a value, and those values."""
    series = None if values is None else values.get(metric)
    if series is None:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    index = np.flatnonzero(~np.isnan(series[:size]))
    return index.astype(np.int64), series[index]
