"""What an alarm's value and limit measure, by rule: a reading, a count, a time, a forecast. Pure.

A threshold alarm's value is a reading in its metric's unit, but an events-in-window
alarm's is a number of events, a time-out-of-range alarm's a number of seconds, a
forecast's a number of hours: shown with the metric's unit they would mislead.
"""

from __future__ import annotations

from typing import Final

__all__ = ["value_unit"]

# Rules whose value is not in the metric's own unit, and the unit it is in.
_OWN_UNITS: Final[dict[str, str]] = {
    "events_in_window": " events",
    "time_out_of_range": " s",
    "forecast": " h",
    "calibration_due": " days",
    "held": "",
}


def value_unit(rule: str, metric_unit: str) -> str:
    """The unit to print after an alarm's value and limit ("" for none)."""
    if rule == "rate":
        return f"{metric_unit}/min" if metric_unit else "/min"
    if rule == "mkt":
        return "°C"
    return _OWN_UNITS.get(rule, metric_unit)
