"""An alarm's value and limit are printed in what they measure, which depends on the rule."""

from __future__ import annotations

from coldwatch.alarm_values import value_unit
from coldwatch.console.chart import unit_of


def test_readings_keep_their_metric_unit() -> None:
    """Threshold, consecutive and probe-disagreement values are in the metric's unit."""
    for rule in ("threshold", "consecutive", "probe_disagreement"):
        assert value_unit(rule, unit_of("temp_c")) == unit_of("temp_c") == "°C"


def test_counts_times_and_forecasts_are_not_readings() -> None:
    """Events in a window are a count, time out of range seconds, a forecast hours, a rate per minute."""
    per_m3 = unit_of("particles_5_0um_m3")
    assert per_m3
    assert value_unit("events_in_window", per_m3) == " events"
    assert value_unit("time_out_of_range", "°C") == " s"
    assert value_unit("forecast", "°C") == " h"
    assert value_unit("calibration_due", "") == " days"
    assert value_unit("rate", "°C") == "°C/min"
    assert value_unit("mkt", "") == "°C"
