"""Shipments on a cryoshipper: input checks, signed facts, hold-time forecast and margin, events. Pure.

Hold-time forecast: the shipper's ``hold_time_forecast`` rule (:mod:`coldwatch.rules.forecast`)
fits two least-squares lines over its window (default 6 h) of LN2 level and probe A
temperature, and predicts the hours until the level reaches empty or the temperature
reaches its limit (the sooner). :func:`forecast_series` replays that very evaluator over
stored readings, so the forecast at dispatch and during transit is the one the rule saw.

Margin, at a moment t of the transit: the forecast hold time left at t minus the time the
shipment still has to hold at t, ``required_hold_s - (t - dispatched)`` (never below 0).
A positive margin means the shipper was forecast to hold beyond the end of the required
hold; the smallest margin over the transit is the closest it came to not holding.

No I/O and no clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from coldwatch.identity_model import RefusedError
from coldwatch.rules.config import ForecastRule
from coldwatch.rules.forecast import ForecastEvaluator

__all__ = [
    "MAX_HOLD_S",
    "Event",
    "Margin",
    "bool_events",
    "check_shipment_text",
    "dispatch_object_id",
    "forecast_series",
    "margins_s",
    "over_events",
    "shipment_facts",
    "smallest_margin",
]

MAX_HOLD_S = 60 * 86_400  # dry shippers hold about 10+ days; 60 days is no real requirement
_TEXT_MAX = 200


@dataclass(frozen=True, slots=True)
class Margin:
    """The smallest margin of a transit and when it was reached."""

    seconds: float
    at_us: int


@dataclass(frozen=True, slots=True)
class Event:
    """An interval [start, end) during which a condition held (lid open, tilt over its limit)."""

    what: str
    start_us: int
    end_us: int

    @property
    def seconds(self) -> float:
        """Its duration."""
        return (self.end_us - self.start_us) / 1e6


def check_shipment_text(coi: str, origin: str, destination: str, required_hold_s: float) -> None:
    """Refuse (422) an empty or too long text, or a required hold time that is not a real duration."""
    for name, value in (("chain-of-identity id", coi), ("origin", origin), ("destination", destination)):
        if not value.strip():
            raise RefusedError(f"the {name} must not be empty")
        if len(value) > _TEXT_MAX:
            raise RefusedError(f"the {name} has at most {_TEXT_MAX} characters")
        if "\x00" in value:
            raise RefusedError(f"the {name} must not contain NUL characters")
    if not math.isfinite(required_hold_s) or not 0 < required_hold_s <= MAX_HOLD_S:
        raise RefusedError(
            f"the required hold time must be more than 0 and at most {MAX_HOLD_S // 86_400} days"
        )


def dispatch_object_id(device_id: str, dispatched_us: int) -> str:
    """The signed object of a shipment: its shipper and dispatch time (one open shipment per shipper)."""
    return f"{device_id}@{dispatched_us}"


def shipment_facts(  # noqa: PLR0917 - the shipment's identifying facts
    device_id: str,
    coi: str,
    origin: str,
    destination: str,
    required_hold_s: int,
    dispatched_us: int,
    forecast_s: float | None,
    received_us: int | None = None,
) -> dict[str, object]:
    """What the dispatch signature covers; the receipt signature covers it with the receipt time."""
    facts: dict[str, object] = {
        "device": device_id,
        "coi": coi,
        "origin": origin,
        "destination": destination,
        "required_hold_s": required_hold_s,
        "dispatched_us": dispatched_us,
        "dispatch_forecast_s": forecast_s,
    }
    if received_us is not None:
        facts["received_us"] = received_us
    return facts


def forecast_series(
    spec: ForecastRule, ts_us: NDArray[np.int64], values: Mapping[str, NDArray[np.float64]]
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """(times, hours left) of the hold-time forecast at every reading where it predicts.

    ``values`` holds the rule's metrics aligned on ``ts_us`` (NaN where a reading lacks one).
    """
    signals = ForecastEvaluator(spec).signals(ts_us, dict(values))
    known = ~np.isnan(signals.value)
    return ts_us[signals.index][known], signals.value[known]


def margins_s(
    at_us: NDArray[np.int64], forecast_h: NDArray[np.float64], dispatched_us: int, required_hold_s: float
) -> NDArray[np.float64]:
    """The margin at each forecast: hold time forecast left minus hold time still required (seconds)."""
    still_required = np.maximum(0.0, required_hold_s - (at_us - dispatched_us) / 1e6)
    return forecast_h * 3600.0 - still_required


def smallest_margin(
    at_us: NDArray[np.int64], forecast_h: NDArray[np.float64], dispatched_us: int, required_hold_s: float
) -> Margin | None:
    """The smallest margin during the transit, or None when there was no forecast."""
    if len(at_us) == 0:
        return None
    margins = margins_s(at_us, forecast_h, dispatched_us, required_hold_s)
    i = int(np.argmin(margins))
    return Margin(float(margins[i]), int(at_us[i]))


def over_events(
    what: str, ts_us: NDArray[np.int64], values: NDArray[np.float64], limit: float, end_us: int
) -> list[Event]:
    """Intervals during which ``values`` were strictly above ``limit`` (each reading holds until the next)."""
    events: list[Event] = []
    start: int | None = None
    for t, v in zip(ts_us.tolist(), values.tolist(), strict=True):
        if v > limit and start is None:
            start = t
        elif v <= limit and start is not None:
            events.append(Event(what, start, t))
            start = None
    if start is not None:
        events.append(Event(what, start, max(end_us, start)))
    return events


def bool_events(what: str, ts_us: NDArray[np.int64], values: NDArray[np.float64], end_us: int) -> list[Event]:
    """Intervals during which a boolean metric (lid_open: 1 open, 0 closed) was true."""
    return over_events(what, ts_us, values, 0.5, end_us)
