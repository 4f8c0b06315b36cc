"""Statistics of one metric's series over a window, as every report computes them. Pure NumPy.

The hold convention (the same in every report, and in README "Records and reports"):

- the readings with ``start_us <= ts_us < end_us`` are taken;
- each reading holds its value until the next reading, but never longer than
  ``hold_cap_s`` (3 x the device's ``interval_s``); the last one holds until ``end_us``,
  with the same cap;
- time not held by any reading (before the first reading, or the rest of a gap longer
  than the cap) is no data: it lowers completeness and is never counted as in range
  nor as beyond a level.

The time weights of the readings (seconds) are therefore :func:`holds_s`; every
time-weighted figure (mean, MKT, time beyond a level) uses them.

No I/O, no clock: the window and the readings are arguments.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "DH_OVER_R_K",
    "KELVIN",
    "Level",
    "LevelTime",
    "SeriesStats",
    "completeness",
    "holds_s",
    "mkt_c",
    "series_stats",
    "time_beyond_s",
    "time_weighted_mean",
    "uncovered",
]

US: Final = 1_000_000
# USP <1079>: dH = 83.144 kJ/mol, R = 8.3144 J/(mol K): dH/R = 10,000 K.
DH_OVER_R_K: Final = 10_000.0
KELVIN: Final = 273.15


class Level(NamedTuple):
    """A configured level of a metric: ``above`` True for a high limit, False for a low one."""

    name: str
    level: float
    above: bool


@dataclass(frozen=True, slots=True)
class LevelTime:
    """How long the series was strictly beyond one level."""

    name: str
    level: float
    above: bool
    seconds: float


@dataclass(frozen=True, slots=True)
class SeriesStats:
    """The figures of one series over a window (None where there is no data)."""

    n: int
    min: float | None
    max: float | None
    mean_tw: float | None
    mkt_c: float | None  # only for temperatures (degC)
    covered_s: float  # seconds held by a reading (the rest of the window is no data)
    beyond: list[LevelTime] = field(default_factory=list)
    first_us: int | None = None
    last_us: int | None = None


def _weighted(values: ArrayLike, weights_s: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The values and weights that count: finite values with a positive weight."""
    vals = np.asarray(values, dtype=np.float64).reshape(-1)
    wts = np.asarray(weights_s, dtype=np.float64).reshape(-1)
    if vals.shape != wts.shape:
        raise ValueError(f"{vals.size} values but {wts.size} weights")
    keep = np.isfinite(vals) & (wts > 0)
    return vals[keep], wts[keep]


def holds_s(ts_us: ArrayLike, end_us: int, hold_cap_s: float) -> NDArray[np.float64]:
    """How long each reading (times sorted ascending, all before ``end_us``) holds its value, seconds."""
    ts = np.asarray(ts_us, dtype=np.int64).reshape(-1)
    if ts.size == 0:
        return np.zeros(0, dtype=np.float64)
    nxt = np.empty_like(ts)
    nxt[:-1] = ts[1:]
    nxt[-1] = max(int(end_us), int(ts[-1]))
    held = (nxt - ts).astype(np.float64) / US
    return np.clip(held, 0.0, max(float(hold_cap_s), 0.0))


def uncovered(ts_us: ArrayLike, start_us: int, end_us: int, hold_cap_s: float) -> list[tuple[int, int]]:
    """The intervals of [start_us, end_us) that no reading holds (no data), in time order."""
    ts = np.sort(np.asarray(ts_us, dtype=np.int64).reshape(-1))
    ts = ts[(ts >= start_us) & (ts < end_us)]
    if ts.size == 0:
        return [(start_us, end_us)] if end_us > start_us else []
    held_until = ts + holds_s(ts, end_us, hold_cap_s) * US
    out: list[tuple[int, int]] = []
    if ts[0] > start_us:
        out.append((start_us, int(ts[0])))
    nxt = np.append(ts[1:], end_us)
    for until, after in zip(held_until.astype(np.int64).tolist(), nxt.tolist(), strict=True):
        if after > until:
            out.append((int(until), int(after)))
    return out


def mkt_c(values_c: ArrayLike, weights_s: ArrayLike) -> float | None:
    """Mean kinetic temperature (USP <1079>, dH/R = 10,000 K) of time-weighted readings, degC.

    MKT = (dH/R) / -ln( sum(t_i exp(-(dH/R) / T_i)) / sum(t_i) ), T in kelvin. Summed in the
    log domain, so the very cold (LN2 at -196 degC: exp(-130)) stays exact.
    """
    vals, wts = _weighted(values_c, weights_s)
    kelvin = vals + KELVIN
    keep = kelvin > 0
    vals, wts, kelvin = vals[keep], wts[keep], kelvin[keep]
    if wts.size == 0:
        return None
    exponents = -DH_OVER_R_K / kelvin
    top = float(exponents.max())
    log_mean = top + math.log(float(np.sum(wts * np.exp(exponents - top)))) - math.log(float(wts.sum()))
    return DH_OVER_R_K / -log_mean - KELVIN


def time_weighted_mean(values: ArrayLike, weights_s: ArrayLike) -> float | None:
    """The mean of the values, each weighted by how long it held (None without data)."""
    vals, wts = _weighted(values, weights_s)
    total = float(wts.sum())
    return None if total <= 0 else float(np.sum(vals * wts) / total)


def time_beyond_s(values: ArrayLike, weights_s: ArrayLike, level: float, above: bool) -> float:
    """Seconds during which the value was strictly above (``above``) or strictly below ``level``."""
    vals, wts = _weighted(values, weights_s)
    beyond = vals > level if above else vals < level
    return float(wts[beyond].sum())


def completeness(n_received: int, start_us: int, end_us: int, interval_s: float) -> float:
    """The share (0..1) of the readings expected in [start, end) at one per ``interval_s`` that arrived."""
    expected = (end_us - start_us) / US / interval_s if interval_s > 0 else 0.0
    if expected <= 0:
        return 1.0
    return min(1.0, max(0, n_received) / expected)


def series_stats(  # noqa: PLR0917 - the series, its window, its cap and what to measure
    ts_us: ArrayLike,
    values: ArrayLike,
    start_us: int,
    end_us: int,
    hold_cap_s: float,
    levels: Sequence[Level | tuple[str, float, bool]],
    temperature: bool,
) -> SeriesStats:
    """Every figure of one series in [start_us, end_us) under the hold convention."""
    ts = np.asarray(ts_us, dtype=np.int64).reshape(-1)
    vals = np.asarray(values, dtype=np.float64).reshape(-1)
    order = np.argsort(ts, kind="stable")
    ts, vals = ts[order], vals[order]
    inside = (ts >= start_us) & (ts < end_us) & np.isfinite(vals)
    ts, vals = ts[inside], vals[inside]
    weights = holds_s(ts, end_us, hold_cap_s)
    beyond = [
        LevelTime(name, float(level), bool(above), time_beyond_s(vals, weights, float(level), bool(above)))
        for name, level, above in levels
    ]
    if ts.size == 0:
        return SeriesStats(0, None, None, None, None, 0.0, beyond)
    return SeriesStats(
        n=int(ts.size),
        min=float(vals.min()),
        max=float(vals.max()),
        mean_tw=time_weighted_mean(vals, weights),
        mkt_c=mkt_c(vals, weights) if temperature else None,
        covered_s=float(weights.sum()),
        beyond=beyond,
        first_us=int(ts[0]),
        last_us=int(ts[-1]),
    )
