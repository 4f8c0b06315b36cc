"""The pure part of shipments: forecast replay, margin, events."""

from __future__ import annotations

import numpy as np

from coldwatch.records.shipment_model import (
    Event,
    bool_events,
    forecast_series,
    margins_s,
    over_events,
    smallest_margin,
)
from coldwatch.rules.config import ForecastLevel, ForecastRule
from coldwatch.rules.forecast import ForecastEvaluator

US = 1_000_000


def test_forecast_replay_matches_the_live_rule() -> None:
    """The replayed forecast at each reading is the prediction the live rule holds after that reading."""
    spec = ForecastRule(levels={"alert": ForecastLevel(hours=48)}, min_points=3, min_span_s=60)
    ts = np.arange(0, 3600 * US, 60 * US, dtype=np.int64)
    level = 80.0 - np.arange(len(ts), dtype=np.float64) * 0.01
    temp = -190.0 + np.arange(len(ts), dtype=np.float64) * 0.002
    at, hours = forecast_series(spec, ts, {"ln2_level_pct": level, "temp_c": temp})
    live = ForecastEvaluator(spec)
    predictions = []
    for t, lv, tc in zip(ts.tolist(), level.tolist(), temp.tolist(), strict=True):
        live.update(t, {"ln2_level_pct": lv, "temp_c": tc})
        if live.prediction_h is not None:
            predictions.append((t, live.prediction_h))
    assert [int(t) for t in at] == [t for t, _ in predictions]
    assert np.allclose(hours, [h for _, h in predictions], rtol=1e-9)


def test_margin_is_forecast_left_minus_hold_still_required() -> None:
    """Dispatch at 0 needing 10 h: a 12 h forecast at 0 is 2 h of margin; at 4 h a 5 h forecast is -1 h."""
    at = np.array([0, 4 * 3600 * US, 12 * 3600 * US], dtype=np.int64)
    forecast_h = np.array([12.0, 5.0, 1.0])
    margins = margins_s(at, forecast_h, 0, 10 * 3600)
    assert margins.tolist() == [2 * 3600.0, -1 * 3600.0, 1 * 3600.0]  # after 10 h nothing is required
    smallest = smallest_margin(at, forecast_h, 0, 10 * 3600)
    assert smallest is not None
    assert (smallest.seconds, smallest.at_us) == (-3600.0, 4 * 3600 * US)
    assert smallest_margin(at[:0], forecast_h[:0], 0, 3600) is None


def test_events_hold_until_the_next_reading() -> None:
    """A lid open from the 2nd to the 4th reading is one event; one still open lasts to the end."""
    ts = np.array([0, 10, 20, 30, 40], dtype=np.int64) * US
    lid = np.array([0.0, 1.0, 1.0, 0.0, 1.0])
    assert bool_events("lid open", ts, lid, 50 * US) == [
        Event("lid open", 10 * US, 30 * US),
        Event("lid open", 40 * US, 50 * US),
    ]
    tilt = np.array([10.0, 50.0, 45.0, 46.0, 3.0])
    assert over_events("tilt", ts, tilt, 45.0, 50 * US) == [
        Event("tilt", 10 * US, 20 * US),
        Event("tilt", 30 * US, 40 * US),
    ]
