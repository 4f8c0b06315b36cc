"""Readings taken out of calibration, as the excursion, batch and shipment records show them. Pure.

A point's readings are GMP-valid only while an instrument in calibration was installed on
it. :func:`coldwatch.records.instrument_model.calibration_states` gives each point the
intervals of a window during which that was not so (no instrument, or one out of
calibration); :func:`count_in_spans` counts the readings fetched for a report that fall in
them (NumPy over their timestamps: no query per reading), and :func:`calibration_facts`
gives the figures and the warning line the reports print and store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from coldwatch.records.calibration import PointCalibration, flags
from coldwatch.records.pdf import utc

__all__ = ["calibration_facts", "count_in_spans", "warning_line"]


def count_in_spans(ts_us: ArrayLike, spans: Sequence[tuple[int, int]]) -> int:
    """How many of the timestamps fall in any of the half-open spans ``[a, b)`` (spans do not overlap)."""
    return int(flags(np.asarray(ts_us, dtype=np.int64), sorted(spans)).sum())


def warning_line(flagged: int, readings: int) -> str | None:
    """The report's warning when some readings were taken out of calibration (None: none were)."""
    if flagged <= 0:
        return None
    return (
        f"{flagged} of {readings} readings were taken while the point's instrument was out of "
        "calibration (or none was installed): they are not GMP-valid measurements."
    )


def calibration_facts(state: PointCalibration | None, flagged: int, readings: int) -> dict[str, Any]:
    """A point's calibration over a report's window: instrument, state, due date, spans, count."""
    return {
        "instrument": None if state is None else state.instrument_serial,
        "state": None if state is None else state.state,
        "due_utc": None if state is None else utc(state.due_us) or None,
        "uncalibrated": [] if state is None else [[utc(a), utc(b)] for a, b in state.uncalibrated],
        "readings": readings,
        "out_of_calibration": flagged,
        "warning": warning_line(flagged, readings),
    }
