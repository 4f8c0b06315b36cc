"""The device kinds coldwatch accepts and the metrics each kind may report.

This is the device payload contract's vocabulary: a metric that is not listed here for a
device's kind is rejected. Pure data, no I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

__all__ = ["DEFAULT_RANGES", "KINDS", "Kind", "MetricSpec", "metric_spec"]


class Kind(enum.StrEnum):
    """A device kind, as it appears in the topic and the configuration."""

    PARTICLE_COUNTER = "particle_counter"
    INCUBATOR = "incubator"
    CRYOSHIPPER = "cryoshipper"


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric a device kind reports."""

    name: str
    unit: str
    boolean: bool = False
    description: str = ""


def _specs(*specs: MetricSpec) -> dict[str, MetricSpec]:
    return {s.name: s for s in specs}


KINDS: Final[dict[Kind, dict[str, MetricSpec]]] = {
    Kind.PARTICLE_COUNTER: _specs(
        MetricSpec("particles_0_5um_m3", "count/m3", description=">= 0.5 um particles per m3"),
        MetricSpec("particles_5_0um_m3", "count/m3", description=">= 5.0 um particles per m3"),
        MetricSpec("flow_lpm", "L/min", description="sample flow rate"),
        MetricSpec("sample_volume_l", "L", description="air volume of this sample"),
    ),
    Kind.INCUBATOR: _specs(
        MetricSpec("temp_c", "degC", description="chamber temperature"),
        MetricSpec("co2_pct", "%", description="CO2 concentration"),
        MetricSpec("rh_pct", "%", description="relative humidity"),
        MetricSpec("door_open", "bool", boolean=True, description="door open"),
    ),
    Kind.CRYOSHIPPER: _specs(
        MetricSpec("temp_c", "degC", description="probe A temperature"),
        MetricSpec("temp_b_c", "degC", description="probe B temperature (optional)"),
        MetricSpec("ln2_level_pct", "%", description="LN2 level"),
        MetricSpec("lid_open", "bool", boolean=True, description="lid open"),
        MetricSpec("tilt_deg", "deg", description="tilt from vertical"),
        MetricSpec("battery_pct", "%", description="logger battery"),
    ),
}


ABSOLUTE_ZERO_C: Final = -273.15

# The physically plausible range of each numeric metric (inclusive), by metric name: a
# value outside it is a broken sensor or a broken device, never a reading to store. Wide on
# purpose (a rule judges the process; this only judges physics and the instruments);
# ``ingest.plausible_ranges`` in the configuration overrides any of them.
DEFAULT_RANGES: Final[dict[str, tuple[float, float]]] = {
    "particles_0_5um_m3": (0.0, 1e10),  # ISO 9 allows 3.52e7 per m3 at 0.5 um
    "particles_5_0um_m3": (0.0, 1e10),
    "flow_lpm": (0.0, 1000.0),  # counters sample 28.3 to 100 L/min
    "sample_volume_l": (0.0, 1e6),
    "temp_c": (ABSOLUTE_ZERO_C, 1000.0),
    "temp_b_c": (ABSOLUTE_ZERO_C, 1000.0),
    "co2_pct": (0.0, 100.0),
    "rh_pct": (0.0, 100.0),
    "ln2_level_pct": (0.0, 100.0),
    "tilt_deg": (0.0, 180.0),
    "battery_pct": (0.0, 100.0),
}


def metric_spec(kind: Kind, metric: str) -> MetricSpec | None:
    """Return the spec of ``metric`` for ``kind``, or None when the kind has no such metric."""
    return KINDS[kind].get(metric)
