"""Rule evaluators that judge a rolling window of one device's readings. Pure.

Each evaluator sees one device's readings in timestamp order. Its window lives on an
append-only :class:`~coldwatch.rules.tape.Tape`, and a checkpoint of it is a few indices
and running sums (``checkpoint``/``rollback``/``forget``), whatever the window length.
Every update is amortised O(1): the engine replays millions of readings. Times are
integer microseconds; a window of ``window_s`` at ``ts`` is ``(ts - window, ts]``
unless a class says otherwise.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Mapping

import numpy as np
import numpy.typing as npt

from coldwatch.rules.config import (
    ConsecutiveRule,
    EventsInWindowRule,
    MktRule,
    RateRule,
    TimeOutOfRangeRule,
)
from coldwatch.rules.evaluators import SEVERITY, graded_signal
from coldwatch.rules.model import US, Severity, Signal
from coldwatch.rules.tape import Renewable, Tape, tapes_restore, tapes_snapshot
from coldwatch.rules.vector import Floats, Ints, SignalArrays, graded, present

__all__ = [
    "ConsecutiveEvaluator",
    "EventsInWindowEvaluator",
    "MktEvaluator",
    "RateEvaluator",
    "TimeOutOfRangeEvaluator",
    "mean_kinetic_temperature_c",
]

KELVIN = 273.15
_US_PER_MIN = 60 * US
# The MKT running sum is rebuilt exactly once the magnitudes added to and removed from it
# since the last rebuild exceed this multiple of its value: beyond that, cancellation
# (a hot spell leaving the window) could cost more than about 1e-12 relative accuracy.
_MKT_DRIFT_RATIO = 1e4
# ... and at least every max(window length, this) readings, to bound rounding build-up.
_MKT_REBUILD_EVERY = 256


def _no_delays(level_names: Iterable[str]) -> dict[Severity, int]:
    return dict.fromkeys((SEVERITY[name] for name in level_names), 0)


class RateEvaluator(Renewable):
    """Rate of change per minute between the oldest and the newest reading in the window.

    The window here is closed, ``[ts - window, ts]``: with readings every ``window_s`` the
    rate still has two points. A level is met when the judged rate is strictly beyond its
    limit; a raised alarm is kept while it stays above ``limit - margin`` (off-margin).
    """

    __slots__ = (
        "_direction",
        "_head",
        "_levels",
        "_tape",
        "_times",
        "_values",
        "_window_us",
        "delays_us",
        "metric",
        "rule",
        "suppressible",
    )

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
        self._reset()

    def _reset(self) -> None:
        # (ts, value) of the readings in the window: from ``_head`` to the tape's end.
        self._times: array[int] = array("q")
        self._values: array[float] = array("d")
        self._tape = Tape(self._times, self._values)
        self._head = 0

    def checkpoint(self) -> tuple[int, int]:
        """(tape end, window start)."""
        return self._tape.end, self._head

    def rollback(self, token: tuple[int, int]) -> None:
        """Return to the state of ``token``."""
        self._tape.truncate(token[0])
        self._head = token[1]

    def forget(self, token: tuple[int, int]) -> None:
        """Drop the points before ``token``'s window."""
        self._tape.forget(token[1])

    def snapshot(self) -> list[object]:
        """The whole state as plain data (the window's points)."""
        return tapes_snapshot(self.checkpoint(), [(self._tape, self._head)])

    def restore_snapshot(self, state: list[object]) -> None:
        """Take the state of a :meth:`snapshot`."""
        token, _ = tapes_restore([self._tape], state)
        self.rollback(token)  # type: ignore[arg-type]

    def update(self, ts_us: int, values: Mapping[str, float]) -> Signal | None:
        """Judge the rate at ``ts_us``; no level while fewer than two instants are in the window."""
        value = values.get(self.metric)
        if value is None:
            return None
        times = self._times
        times.append(ts_us)
        self._values.append(value)
        start = ts_us - self._window_us
        base = self._tape.base
        head = self._head - base
        while times[head] < start:  # the newest is never older than the window start
            head += 1
        self._head = head + base
        oldest_us, oldest = times[head], self._values[head]
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

    def signals(self, ts_us: Ints, values: Mapping[str, Floats]) -> SignalArrays:
        """``update`` at every reading of a series, from a fresh state."""
        index, value = present(dict(values), self.metric, len(ts_us))
        times = ts_us[index]
        oldest = np.searchsorted(times, times - self._window_us, side="left")
        valid = times > times[oldest]
        rate = np.full(len(index), np.nan)
        rate[valid] = (
            (value[valid] - value[oldest[valid]])
            * float(_US_PER_MIN)
            / (times[valid] - times[oldest[valid]]).astype(np.float64)
        )
        if self._direction == "rise":
            judged = rate
        elif self._direction == "fall":
            judged = -rate
        else:
            judged = np.abs(rate)
        level, keeps, limit = graded(np.where(valid, judged, -np.inf), self._levels)
        limit[~valid] = np.nan
        return SignalArrays(index, level, keeps, rate, limit, with_hold=True)


class ConsecutiveEvaluator(Renewable):
    """N of the last M samples beyond a level's limit (strictly above). No delays, no margin."""

    __slots__ = (
        "_beyond",
        "_levels",
        "_longest",
        "_m",
        "_tape",
        "delays_us",
        "metric",
        "rule",
        "suppressible",
    )

    def __init__(self, spec: ConsecutiveRule) -> None:
        self.rule = spec.rule_id()
        self.metric = spec.metric
        self.suppressible = False
        self.delays_us = _no_delays(spec.levels)
        # (severity, limit, n) from the mildest level to the worst.
        self._levels = sorted((SEVERITY[name], level.limit, level.n) for name, level in spec.levels.items())
        by_severity = {SEVERITY[name]: level.m for name, level in spec.levels.items()}
        self._m = [by_severity[sev] for sev, _, _ in self._levels]
        self._longest = max(self._m)
        self._reset()

    def _reset(self) -> None:
        # Per level: whether each sample was beyond (a column each), and how many of the
        # last M were.
        self._tape = Tape(*(array("b") for _ in self._levels))
        self._beyond = [0] * len(self._levels)

    def checkpoint(self) -> tuple[int, tuple[int, ...]]:
        """(tape end, count beyond in the last M of each level)."""
        return self._tape.end, tuple(self._beyond)

    def rollback(self, token: tuple[int, tuple[int, ...]]) -> None:
        """Return to the state of ``token``."""
        self._tape.truncate(token[0])
        self._beyond = list(token[1])

    def forget(self, token: tuple[int, tuple[int, ...]]) -> None:
        """Drop the samples no longer among the last M at ``token``."""
        self._tape.forget(token[0] - self._longest)

    def snapshot(self) -> list[object]:
        """The whole state as plain data (the last M samples' flags)."""
        return tapes_snapshot(self.checkpoint(), [(self._tape, self._tape.end - self._longest)])

    def restore_snapshot(self, state: list[object]) -> None:
        """Take the state of a :meth:`snapshot`."""
        token, _ = tapes_restore([self._tape], state)
        self.rollback(token)  # type: ignore[arg-type]

    def update(self, ts_us: int, values: Mapping[str, float]) -> Signal | None:  # noqa: ARG002
        """Count this sample into each level's last M; before M samples, N are still needed."""
        value = values.get(self.metric)
        if value is None:
            return None
        level: Severity | None = None
        limit = self._levels[0][1]
        tape = self._tape
        size = tape.end
        beyond_counts = self._beyond
        for index, (severity, lim, n) in enumerate(self._levels):
            flags = tape.columns[index]
            beyond = value > lim
            leaving = size - self._m[index]
            if leaving >= 0:
                beyond_counts[index] -= flags[leaving - tape.base]
            flags.append(beyond)
            beyond_counts[index] += beyond
            if beyond_counts[index] >= n:
                level, limit = severity, lim
        return Signal(level, value, limit)

    def signals(self, ts_us: Ints, values: Mapping[str, Floats]) -> SignalArrays:
        """``update`` at every reading of a series, from a fresh state."""
        index, value = present(dict(values), self.metric, len(ts_us))
        level = np.zeros(len(index), dtype=np.int8)
        for (severity, lim, n), m in zip(self._levels, self._m, strict=True):
            beyond = np.concatenate([[0], np.cumsum(value > lim)])
            last_m = beyond[1:] - beyond[np.maximum(np.arange(1, len(index) + 1) - m, 0)]
            level[last_m >= n] = int(severity)
        limit = np.full(len(index), self._levels[0][1])
        for severity, lim, _ in self._levels:
            limit[level == int(severity)] = lim
        return SignalArrays(index, level, level, value, limit, with_hold=False)


class EventsInWindowEvaluator(Renewable):
    """At least ``count`` samples above a level's limit within ``(ts - window, ts]``.

    Judged at sample times only. The signal's value is the number of such samples, its
    limit the level's count.
    """

    __slots__ = (
        "_heads",
        "_levels",
        "_tapes",
        "_window_us",
        "delays_us",
        "metric",
        "rule",
        "suppressible",
    )

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
        self._reset()

    def _reset(self) -> None:
        # Per level: the times of the samples above its limit, the window's from its head.
        self._tapes = [Tape(array("q")) for _ in self._levels]
        self._heads = [0] * len(self._levels)

    def checkpoint(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(tape ends, window starts) of each level."""
        return tuple(tape.end for tape in self._tapes), tuple(self._heads)

    def rollback(self, token: tuple[tuple[int, ...], tuple[int, ...]]) -> None:
        """Return to the state of ``token``."""
        for tape, end in zip(self._tapes, token[0], strict=True):
            tape.truncate(end)
        self._heads = list(token[1])

    def forget(self, token: tuple[tuple[int, ...], tuple[int, ...]]) -> None:
        """Drop the events before ``token``'s windows."""
        for tape, head in zip(self._tapes, token[1], strict=True):
            tape.forget(head)

    def snapshot(self) -> list[object]:
        """The whole state as plain data (the events in each level's window)."""
        return tapes_snapshot(self.checkpoint(), list(zip(self._tapes, self._heads, strict=True)))

    def restore_snapshot(self, state: list[object]) -> None:
        """Take the state of a :meth:`snapshot`."""
        token, _ = tapes_restore(self._tapes, state)
        self.rollback(token)  # type: ignore[arg-type]

    def update(self, ts_us: int, values: Mapping[str, float]) -> Signal | None:
        """Count the events of each level in the window ending at this sample."""
        value = values.get(self.metric)
        if value is None:
            return None
        start = ts_us - self._window_us
        level: Severity | None = None
        count = 0
        needed = self._levels[0][2]
        heads = self._heads
        for index, (severity, lim, k) in enumerate(self._levels):
            tape = self._tapes[index]
            times = tape.columns[0]
            if value > lim:
                times.append(ts_us)
            base = tape.base
            head = heads[index] - base
            size = len(times)
            while head < size and times[head] <= start:
                head += 1
            heads[index] = head + base
            in_window = size - head
            if index == 0 or in_window >= k:
                count, needed = in_window, k
            if in_window >= k:
                level = severity
        return Signal(level, float(count), float(needed))

    def signals(self, ts_us: Ints, values: Mapping[str, Floats]) -> SignalArrays:
        """``update`` at every reading of a series, from a fresh state."""
        index, value = present(dict(values), self.metric, len(ts_us))
        times = ts_us[index]
        level = np.zeros(len(index), dtype=np.int8)
        count = np.zeros(len(index), dtype=np.int64)
        needed = np.zeros(len(index), dtype=np.int64)
        for position, (severity, lim, k) in enumerate(self._levels):
            beyond = value > lim
            events = times[beyond]
            in_window = np.cumsum(beyond) - np.searchsorted(events, times - self._window_us, side="right")
            chosen = in_window >= k
            if position == 0:
                chosen = np.ones(len(index), dtype=np.bool_)
            count[chosen] = in_window[chosen]
            needed[chosen] = k
            level[in_window >= k] = int(severity)
        return SignalArrays(
            index, level, level, count.astype(np.float64), needed.astype(np.float64), with_hold=False
        )


class TimeOutOfRangeEvaluator(Renewable):
    """Cumulative time outside ``[low, high]`` within ``(ts - window, ts]`` (sample and hold).

    Each reading's in-or-out state is assumed to last until the next reading, across a
    data gap too: an excursion counts until a reading shows it has ended (conservative).
    A level is met when the cumulative time reaches its budget. The signal's value is the
    cumulative time in seconds, its limit the budget in seconds.
    """

    __slots__ = (
        "_before_base",
        "_cumulative",
        "_ends",
        "_head",
        "_high",
        "_in_range",
        "_last_us",
        "_levels",
        "_low",
        "_open_us",
        "_starts",
        "_tape",
        "_window_us",
        "delays_us",
        "metric",
        "rule",
        "suppressible",
    )

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
        self._in_range = self._signal(0)  # immutable: shared by every reading it fits
        self._reset()

    def _reset(self) -> None:
        # Closed out-of-range spans [start, end), oldest first, on a tape with the running
        # total of their lengths (exact integers); the window's first is at ``_head``. The
        # run still open (the newest reading was out) is [``_open_us``, ``_last_us``).
        self._starts: array[int] = array("q")
        self._ends: array[int] = array("q")
        self._cumulative: array[int] = array("q")
        self._tape = Tape(self._starts, self._ends, self._cumulative)
        self._before_base = 0  # the running total before the tape's first span
        self._head = 0
        self._open_us: int | None = None
        self._last_us: int | None = None

    def checkpoint(self) -> tuple[int, int, int | None, int | None]:
        """(tape end, window's first span, open run start, newest reading time)."""
        return self._tape.end, self._head, self._open_us, self._last_us

    def rollback(self, token: tuple[int, int, int | None, int | None]) -> None:
        """Return to the state of ``token``."""
        end, self._head, self._open_us, self._last_us = token
        self._tape.truncate(end)

    def forget(self, token: tuple[int, int, int | None, int | None]) -> None:
        """Drop the spans before ``token``'s window."""
        tape = self._tape
        drop = token[1] - tape.base
        if drop > 0:
            self._before_base = self._cumulative[drop - 1]
            tape.forget(token[1])

    def snapshot(self) -> list[object]:
        """The whole state as plain data (the spans from the window's first on)."""
        head = self._head - self._tape.base
        before = self._cumulative[head - 1] if head > 0 else self._before_base
        return tapes_snapshot(self.checkpoint(), [(self._tape, self._head)], before)

    def restore_snapshot(self, state: list[object]) -> None:
        """Take the state of a :meth:`snapshot`."""
        token, before = tapes_restore([self._tape], state)
        assert isinstance(before, int)
        self._before_base = before
        self.rollback(token)  # type: ignore[arg-type]

    def _closed_in_window(self, head: int, window_start: int) -> int:
        """Time of the closed spans from ``head`` (relative to the tape) inside the window."""
        cumulative = self._cumulative
        total = cumulative[-1] - (cumulative[head - 1] if head > 0 else self._before_base)
        first = self._starts[head]
        if first < window_start:
            total -= window_start - first
        return total

    def update(self, ts_us: int, values: Mapping[str, float]) -> Signal | None:
        """Hold the previous reading's state up to ``ts_us``; count what is inside the window."""
        value = values.get(self.metric)
        if value is None:
            return None
        low, high = self._low, self._high
        out = (low is not None and value < low) or (high is not None and value > high)
        open_us = self._open_us
        if open_us is None:
            if out:
                self._open_us = ts_us
        elif not out:
            # The run ends at this reading: it becomes a closed span.
            length = ts_us - open_us
            cumulative = self._cumulative
            self._starts.append(open_us)
            self._ends.append(ts_us)
            cumulative.append((cumulative[-1] if cumulative else self._before_base) + length)
            self._open_us = None
        self._last_us = ts_us
        window_start = ts_us - self._window_us
        base = self._tape.base
        ends = self._ends
        size = len(ends)
        head = self._head - base
        while head < size and ends[head] <= window_start:
            head += 1
        self._head = head + base
        total = self._closed_in_window(head, window_start) if head < size else 0
        if open_us is not None and out:
            # The run held up to this reading and goes on (an ended one is a closed span now).
            total += ts_us - max(open_us, window_start)
        elif not total:
            return self._in_range  # nothing out of range in the window (most readings)
        return self._signal(total)

    def _signal(self, total: int) -> Signal:
        level: Severity | None = None
        budget_s = self._levels[0][2]
        for severity, budget_us, budget in self._levels:
            if total >= budget_us:
                level, budget_s = severity, budget
        return Signal(level, total / US, budget_s)

    def signals(self, ts_us: Ints, values: Mapping[str, Floats]) -> SignalArrays:
        """``update`` at every reading of a series, from a fresh state (exact integer time)."""
        index, value = present(dict(values), self.metric, len(ts_us))
        times = ts_us[index]
        out = np.zeros(len(index), dtype=np.bool_)
        if self._low is not None:
            out |= value < self._low
        if self._high is not None:
            out |= value > self._high
        # Time held out of range up to each reading: the interval before it, when the reading
        # before was out; and the part inside the window of the interval the window starts in.
        held = np.zeros(len(index), dtype=np.int64)
        if len(index) > 1:
            held[1:] = np.where(out[:-1], np.diff(times), 0)
        cumulative = np.cumsum(held)
        window_start = times - self._window_us
        first = np.searchsorted(times, window_start, side="left")
        total = cumulative - cumulative[first]
        partial = (first > 0) & out[np.maximum(first - 1, 0)]
        total[partial] += times[first[partial]] - window_start[partial]
        level = np.zeros(len(index), dtype=np.int8)
        limit = np.full(len(index), self._levels[0][2])
        for severity, budget_us, budget_s in self._levels:
            met = total >= budget_us
            level[met] = int(severity)
            limit[met] = budget_s
        return SignalArrays(index, level, level, total.astype(np.float64) / US, limit, with_hold=False)


def mean_kinetic_temperature_c(
    temps_c: npt.ArrayLike, weights: npt.ArrayLike, activation_k: float = 10_000.0
) -> float:
    """Mean kinetic temperature (USP <1079>) of time-weighted readings, degrees C.

    ``activation_k`` is dH/R in kelvin (83.144 kJ/mol / 8.3144 J/(mol K) = 10,000 K).
    """
    temps_k = np.asarray(temps_c, dtype=np.float64).ravel() + KELVIN
    w = np.asarray(weights, dtype=np.float64).ravel()
    if temps_k.size == 0 or temps_k.shape != w.shape:
        raise ValueError("give one weight per temperature, and at least one of each")
    if not (np.all(np.isfinite(temps_k)) and np.all(temps_k > 0)):
        raise ValueError("temperatures must be finite and above absolute zero")
    if not (np.all(np.isfinite(w)) and np.all(w >= 0)) or not w.sum() > 0:
        raise ValueError("weights must be finite, non-negative and not all zero")
    exponent = -activation_k / temps_k
    # Log-sum-exp: the Boltzmann factors of cryogenic temperatures underflow otherwise.
    top = float(exponent.max())
    log_mean = top + math.log(float(np.dot(w, np.exp(exponent - top))) / float(w.sum()))
    return -activation_k / log_mean - KELVIN


ABSOLUTE_ZERO_C = -273.15


class MktEvaluator(Renewable):
    """Mean kinetic temperature of the readings in ``(ts - window, ts]`` above a limit.

    Each reading weighs the time until the next one (sample and hold); the newest weighs
    the interval before it, so equally spaced readings weigh alike. The data covers the
    sum of those weights; below ``min_coverage`` of the window the rule does not judge.
    """

    __slots__ = (
        "_churn",
        "_factors",
        "_head",
        "_k",
        "_levels",
        "_min_cover_us",
        "_since_rebuild",
        "_sum",
        "_tape",
        "_times",
        "_window_us",
        "delays_us",
        "metric",
        "rule",
        "suppressible",
    )

    def __init__(self, spec: MktRule) -> None:
        self.rule = spec.rule_id()
        self.metric = spec.metric
        self.suppressible = False
        self.delays_us = _no_delays(spec.levels)
        self._window_us = round(spec.window_s * US)
        self._min_cover_us = spec.min_coverage * self._window_us
        self._k = spec.activation_k
        self._levels = sorted((SEVERITY[name], level.limit_c) for name, level in spec.levels.items())
        self._reset()

    def _reset(self) -> None:
        # (ts, Boltzmann factor exp(-k / T)) of the readings in the window, from ``_head``.
        self._times: array[int] = array("q")
        self._factors: array[float] = array("d")
        self._tape = Tape(self._times, self._factors)
        self._head = 0
        # Sum of (t_next - t) * factor over every point but the newest (weights in us).
        self._sum = 0.0
        self._churn = 0.0  # magnitudes added and removed since the sum was last rebuilt
        self._since_rebuild = 0

    def checkpoint(self) -> tuple[int, int, float, float, int]:
        """(tape end, window start, running sum, churn, readings since the last rebuild)."""
        return self._tape.end, self._head, self._sum, self._churn, self._since_rebuild

    def rollback(self, token: tuple[int, int, float, float, int]) -> None:
        """Return to the state of ``token``."""
        end, self._head, self._sum, self._churn, self._since_rebuild = token
        self._tape.truncate(end)

    def forget(self, token: tuple[int, int, float, float, int]) -> None:
        """Drop the points before ``token``'s window."""
        self._tape.forget(token[1])

    def snapshot(self) -> list[object]:
        """The whole state as plain data (the window's points and running sum)."""
        return tapes_snapshot(self.checkpoint(), [(self._tape, self._head)])

    def restore_snapshot(self, state: list[object]) -> None:
        """Take the state of a :meth:`snapshot`."""
        token, _ = tapes_restore([self._tape], state)
        self.rollback(token)  # type: ignore[arg-type]

    def update(self, ts_us: int, values: Mapping[str, float]) -> Signal | None:
        """Slide the window to ``ts_us`` and judge its MKT."""
        temp = values.get(self.metric)
        if temp is None or temp <= ABSOLUTE_ZERO_C:
            # Not a temperature (a probe fault or a sentinel): it cannot enter the Arrhenius sum.
            return None
        times, factors = self._times, self._factors
        base = self._tape.base
        head = self._head - base
        if len(times) > head:
            term = (ts_us - times[-1]) * factors[-1]
            self._sum += term
            self._churn += term
        times.append(ts_us)
        factors.append(math.exp(-self._k / (temp + KELVIN)))
        start = ts_us - self._window_us
        while times[head] <= start:  # the newest is always inside the window
            term = (times[head + 1] - times[head]) * factors[head]
            head += 1
            self._sum -= term
            self._churn += term
        self._head = head + base
        count = len(times) - head
        self._since_rebuild += 1
        if self._churn > _MKT_DRIFT_RATIO * self._sum or self._since_rebuild >= max(
            count, _MKT_REBUILD_EVERY
        ):
            self._rebuild()
        if count < 2:
            return Signal(None)
        newest_us, newest = times[-1], factors[-1]
        last_interval = newest_us - times[-2]
        covered = newest_us - times[head] + last_interval
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
        head = self._head - self._tape.base
        if len(self._times) - head < 2:
            self._sum = 0.0
            return
        # Copied into arrays of their own: the tape's arrays must stay free to grow.
        times = np.array(self._times[head:], dtype=np.int64)
        factors = np.array(self._factors[head:], dtype=np.float64)
        self._sum = float(np.dot(np.diff(times).astype(np.float64), factors[:-1]))
