"""Plain-Python reference of the periodic figures, from raw exported readings (tests only).

Written from the definitions, one reading at a time, with no code shared with
:mod:`coldwatch.records`: tests compare the two.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

US = 1_000_000


@dataclass(frozen=True)
class Reference:
    """The figures of one series."""

    n: int
    min: float | None
    max: float | None
    mean: float | None
    mkt_c: float | None
    covered_s: float
    beyond_s: list[float]


def holds_s(ts_us: Sequence[int], end_us: int, cap_s: float) -> list[float]:
    """How long each reading holds its value: to the next one (or end), at most ``cap_s``."""
    out = []
    for i, t in enumerate(ts_us):
        nxt = ts_us[i + 1] if i + 1 < len(ts_us) else end_us
        out.append(min(nxt - t, cap_s * US) / US)
    return out


def mkt(values_c: Sequence[float], weights: Sequence[float]) -> float:
    """USP <1079> MKT with dH/R = 10,000 K."""
    total = sum(weights)
    s = sum(w * math.exp(-10_000.0 / (v + 273.15)) for v, w in zip(values_c, weights, strict=True))
    return 10_000.0 / -math.log(s / total) - 273.15


def reference(
    rows: Sequence[tuple[int, float]],
    end_us: int,
    cap_s: float,
    levels: Sequence[tuple[float, bool]],
    *,
    temperature: bool,
) -> Reference:
    """Figures of one series from its (ts_us, value) readings in time order."""
    ts = [t for t, _ in rows]
    values = [v for _, v in rows]
    w = holds_s(ts, end_us, cap_s)
    covered = sum(w)
    beyond = [
        sum(h for v, h in zip(values, w, strict=True) if (v > lv if above else v < lv))
        for lv, above in levels
    ]
    return Reference(
        n=len(rows),
        min=min(values) if values else None,
        max=max(values) if values else None,
        mean=sum(v * h for v, h in zip(values, w, strict=True)) / covered if covered else None,
        mkt_c=mkt(values, w) if temperature and covered else None,
        covered_s=covered,
        beyond_s=beyond,
    )
